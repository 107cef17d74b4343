/**
 * The seam between a room's events and where their sequence and history
 * live (issue 21). The relay, the topic rooms and the server API stamp every
 * relayed event through it; a resume asks it where to read from; nothing
 * else of the shard knows how the history is kept.
 *
 * Today one implementation, {@link ./history.ts}: in the shard's memory, an
 * epoch per room incarnation, consecutive offsets. A fleet implementation
 * (NATS JetStream) can sit behind the same three calls: the offset from the
 * stream's sequence, the epoch from the stream, and a cursor that fetches
 * what this node did not see. Its contract:
 *
 * - **stamp** is called on the room's owner shard, once per relayed event,
 *   before the event is delivered anywhere; its offset is greater than every
 *   offset given before in the same epoch;
 * - **latest** is the position a joiner starts from (`room_joined`, the
 *   `subscribed` ack);
 * - **since** answers a resume: a cursor over every event after the
 *   position, in order, or null when the log cannot give all of them (an
 *   unknown or older epoch, an offset older than what is kept, or one it
 *   never gave). A cursor that later finds events gone says so (`'gone'`),
 *   and never skips them silently.
 */
import type { ResumePosition } from '../protocol/resume.ts';

export type { ResumePosition };

/** One relayed event as the log keeps it: enough to frame it again in either framing. */
export interface LogEntry {
  readonly offset: number;
  /** Its legacy framing without the offset (event-frames.ts `withOffset` adds it). */
  readonly text: string;
  /** Its topic framing says `"payload":null` (event-frames.ts `topicOfLegacy`). */
  readonly nullPayload: boolean;
  /** When it was stamped (ms since the epoch). */
  readonly at: number;
}

/**
 * What a cursor read: the next entry; null once it has caught up (nothing
 * after the last entry read, for now); `'gone'` when the log let go of the
 * next entry before it was read; `'wait'` when the next entries are on
 * their way (a fetch from elsewhere), `onReady` being called when they are.
 */
export type CursorRead = LogEntry | null | 'gone' | 'wait';

export interface LogCursor {
  read(): CursorRead;
  /** Set by the reader: called when a `'wait'` is over. */
  onReady: (() => void) | null;
}

export interface RoomLog {
  /** Give the next event of `roomKey` (`text`: its legacy framing, no offset) its offset, and keep it. */
  stamp(roomKey: string, text: string, nullPayload: boolean): number;
  /** The room's epoch and its latest offset (0 before its first event). */
  latest(roomKey: string): ResumePosition;
  /** A cursor over every event of `roomKey` after `from`, or null when they cannot all be given. */
  since(roomKey: string, from: ResumePosition): LogCursor | null;
}
