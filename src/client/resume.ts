/**
 * Where a client is in one desktop's (or topic's) stream of events, so that
 * a reconnect picks up where it left off. The server numbers every relayed
 * event with an `offset` that grows within an `epoch`; the join
 * (`room_joined`, the `subscribed` ack) names the epoch and the latest
 * offset. Both clients keep one `Position` per desktop or topic and:
 * - offer it on each new attempt (`?epoch=E&offset=N`, `recover:{epoch,offset}`);
 * - drop an event whose offset is not past the last one seen (a duplicate);
 * - tell the app how the rejoin went: `recovered` (the missed events follow
 *   the join and are counted), or `gap` (they are lost: reload the state).
 * The first join says neither.
 */

/** A point in a desktop's stream: the epoch and the last offset seen in it. */
export interface ResumePosition {
  epoch: string;
  offset: number;
}

/** The `recovered` event: the server replayed what was missed, and all of it has been handed to the app. */
export interface Recovery {
  epoch: string;
  /** The offset the client resumed from (the last one it had seen). */
  from: number;
  /** The latest offset when it rejoined: the replay's last event. */
  to: number;
  /** Events replayed and handed over (not counted: duplicates, and this client's own events of an earlier session). */
  count: number;
}

/** The `gap` event: events may have been missed and will not come; the app must load the state again. */
export interface Gap {
  /** The new epoch, or null when the server names none (one that does not number events). */
  epoch: string | null;
  /** The latest offset the server named on the rejoin, or null. */
  offset: number | null;
  /** Where the client asked to resume from, or null when it had nothing to offer. */
  from: ResumePosition | null;
}

/** What a join means for the app. */
export type JoinOutcome =
  /** The first join: nothing to say. */
  | { kind: 'first' }
  /** A rejoin that lost events. */
  | { kind: 'gap'; gap: Gap }
  /** A rejoin that recovered; nothing (more) to replay. */
  | { kind: 'recovered'; recovery: Recovery }
  /** A rejoin that recovered; the replay follows (its end emits `recovered`). */
  | { kind: 'replaying' };

/** What an event's offset means: hand it over or not, and whether it ends a replay (before or after it is handed over). */
export interface Accepted {
  deliver: boolean;
  /** The replay ended before this event (a live one): emit `recovered` first. */
  before: Recovery | null;
  /** The replay ended with this event: emit `recovered` after it. */
  after: Recovery | null;
}

const DELIVER: Accepted = { deliver: true, before: null, after: null };
const DUPLICATE: Accepted = { deliver: false, before: null, after: null };

/** An epoch is a short opaque string; a longer one is not kept (it could not be sent back in a URL anyway). */
const MAX_EPOCH_LENGTH = 256;

/** Whether `value` is an offset the server could have sent: an integer ≥ 0 that is exact as a double. */
export function isOffset(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** How many of a client's own session ids it remembers, to know its own events in a replay. */
const OWN_SESSIONS = 16;

/** The sessionIds a client had, newest last (bounded): a replayed event from one of them is the client's own. */
export class OwnSessions {
  private readonly ids: string[] = [];

  add(sessionId: string): void {
    if (this.ids.includes(sessionId)) return;
    this.ids.push(sessionId);
    if (this.ids.length > OWN_SESSIONS) this.ids.shift();
  }

  has(sessionId: unknown): boolean {
    return typeof sessionId === 'string' && this.ids.includes(sessionId);
  }
}

function isEpoch(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_EPOCH_LENGTH;
}

export class Position {
  private epoch: string | null = null;
  private offset: number | null = null;
  private everJoined = false;
  /** The replay under way after a recovering rejoin, or null. */
  private replay: { epoch: string; from: number; to: number; count: number } | null = null;

  /** What to resume from on the next attempt, or null when nothing is known (first attempt, a server that does not number events). */
  get current(): ResumePosition | null {
    return this.epoch === null || this.offset === null ? null : { epoch: this.epoch, offset: this.offset };
  }

  /**
   * The server's join. `asked` is the position offered on this attempt.
   * Values that do not fit (no epoch, an offset that is not an integer) are
   * taken as a server that does not number events: nothing to resume from.
   */
  joined(epoch: unknown, offset: unknown, recovered: unknown, asked: ResumePosition | null): JoinOutcome {
    this.replay = null;
    const first = !this.everJoined;
    this.everJoined = true;
    const known = isEpoch(epoch) && isOffset(offset);
    if (asked !== null && known && recovered === true && epoch === asked.epoch) {
      // The events after asked.offset follow, up to `offset`; the position moves as they come.
      this.epoch = epoch;
      this.offset = asked.offset;
      if (offset <= asked.offset) return { kind: 'recovered', recovery: { epoch, from: asked.offset, to: asked.offset, count: 0 } };
      this.replay = { epoch, from: asked.offset, to: offset, count: 0 };
      return { kind: 'replaying' };
    }
    this.epoch = known ? epoch : null;
    this.offset = known ? offset : null;
    if (first) return { kind: 'first' };
    return { kind: 'gap', gap: { epoch: this.epoch, offset: this.offset, from: asked } };
  }

  /** The socket is gone: a replay under way ends with it, unsaid (the next join decides). */
  lost(): void {
    this.replay = null;
  }

  /**
   * A relayed event's `offset`: a duplicate (not past the last seen) is
   * dropped; an event without one passes. `own`: sent by one of this
   * client's earlier sessions, which a replay may hold (the server cannot
   * tell whose it was): it moves the position but is not handed over,
   * as the relay never echoes a sender's event live.
   */
  accept(offset: unknown, own: boolean): Accepted {
    if (!isOffset(offset) || this.offset === null) return DELIVER;
    if (offset <= this.offset) return DUPLICATE;
    this.offset = offset;
    const deliver = !own;
    const replay = this.replay;
    if (replay === null) return deliver ? DELIVER : DUPLICATE;
    if (offset > replay.to) {
      // A live event, and the replay's last one never came: the replay is over before it.
      this.replay = null;
      return { deliver, before: this.recovery(replay), after: null };
    }
    if (deliver) replay.count++;
    if (offset < replay.to) return deliver ? DELIVER : DUPLICATE;
    this.replay = null;
    return { deliver, before: null, after: this.recovery(replay) };
  }

  private recovery(replay: { epoch: string; from: number; to: number; count: number }): Recovery {
    return { epoch: replay.epoch, from: replay.from, to: replay.to, count: replay.count };
  }
}

/** `?epoch=E&offset=N` for the legacy route, or '' with nothing to resume from. */
export function resumeQuery(position: ResumePosition | null): string {
  if (position === null) return '';
  return `?epoch=${encodeURIComponent(position.epoch)}&offset=${position.offset}`;
}
