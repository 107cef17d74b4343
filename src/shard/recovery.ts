/**
 * Recovery on one shard (issue 21): the rooms' history (history.ts, behind
 * the RoomLog seam of room-log.ts) and the replays that read it
 * (replay.ts), behind the few calls the relay, the topic rooms and the
 * server API make:
 *
 * - {@link Recovery.stamp}: every relayed event of a room this shard owns;
 * - {@link Recovery.joinLegacy} / {@link Recovery.joinSub}: a member joins
 *   its room (here, the owner), resuming or not: the position its join
 *   answer carries, and its replay started;
 * - {@link Recovery.answerJoin} and {@link Recovery.serve}: the owner's side
 *   of a subscriber on another shard, whose replay is read over the link in
 *   batches ({@link Recovery.follow} and {@link Recovery.onBatch} on its
 *   side), each asked for only once the previous one is written.
 */
import { topicOfLegacy, withOffset } from '../protocol/event-frames.ts';
import type { LinkMessage } from '../protocol/messages.ts';
import { positionMembers, type ResumePosition } from '../protocol/resume.ts';
import type { Subscription } from './connection.ts';
import { History } from './history.ts';
import { LinkReplayBudget, type BudgetWaiter } from './link-replay-budget.ts';
import { Replays, type ReplayTarget } from './replay.ts';
import type { CursorRead, LogCursor, LogEntry, RoomLog } from './room-log.ts';
import type { Session } from './session.ts';
import { StreamLog } from './stream-log.ts';

/** Bytes of events one batch to another shard carries (at least one event). */
export const REMOTE_BATCH_BYTES = 32 * 1024;
/** What one user's replays here may hold of other shards' histories at once (link-replay-budget.ts): 8 batches. */
export const LINK_REPLAY_USER_BYTES = 8 * REMOTE_BATCH_BYTES;
/** What all the replays of a shard may hold of other shards' histories at once: 512 batches. */
export const LINK_REPLAY_SHARD_BYTES = 512 * REMOTE_BATCH_BYTES;

export interface RecoveryOptions {
  historyAgeMs: number;
  historyEvents: number;
  historyRoomBytes: number;
  /** The process's cap; this shard keeps `historyMemoryBytes / workers`. */
  historyMemoryBytes: number;
  workers: number;
  /** Whether the room has a member on this shard. */
  inUse: (roomKey: string) => boolean;
  /** Write a replayed frame through the outbound budget. */
  deliver: (target: ReplayTarget, frame: Buffer) => void;
  /** The shard's epoch (tests fix it). */
  epoch?: string;
  /** The fleet shares its history (`--history-stream`): offsets and epochs come from the stream (stream-log.ts). */
  shared?: boolean;
}

/** Who ends a replay the history overtook; set once by {@link Recovery.attach}, when the routes exist. */
export interface RecoveryLost {
  /** A legacy session's replay fell behind the history: close it (4009). */
  legacyLost: (session: Session) => void;
  /** A subscription's replay fell behind the history: end it (`recovery_lost`). */
  subLost: (sub: Subscription) => void;
}

/** What a member needs of its join: the room's position, and whether it was recovered (undefined: no resume asked). */
export interface JoinPosition {
  position: ResumePosition;
  recovered: boolean | undefined;
}

type Batch = Extract<LinkMessage, { k: 'batch' }>;
type ReplayRequest = Extract<LinkMessage, { k: 'replay' }>;

export class Recovery {
  readonly history: History;
  /** With `--history-stream`: the window of the stream each followed room keeps here; else null. */
  readonly stream: StreamLog | null;
  /** Where positions and resumes are read: the stream's window, or the local history. */
  private readonly log: RoomLog & { clear(roomKey: string | null): void };
  private readonly replays: Replays;
  /** Set by attach(); until then (the constructor of the shard) no replay can have started. */
  private lost: RecoveryLost | null = null;
  /** `sid\0topic` → the cursor of a subscriber here replaying a room another shard owns. */
  private readonly remote = new Map<string, RemoteCursor>();
  /** What those cursors hold, per user and for the shard. */
  readonly linkBudget = new LinkReplayBudget(LINK_REPLAY_USER_BYTES, LINK_REPLAY_SHARD_BYTES, REMOTE_BATCH_BYTES);

  constructor(options: RecoveryOptions) {
    this.history = new History({
      maxAgeMs: options.historyAgeMs,
      maxEvents: options.historyEvents,
      maxRoomBytes: options.historyRoomBytes,
      maxBytes: Math.floor(options.historyMemoryBytes / options.workers),
      inUse: options.inUse,
      ...(options.epoch === undefined ? {} : { epoch: options.epoch }),
    });
    this.stream =
      options.shared === true
        ? new StreamLog({ maxAgeMs: options.historyAgeMs, maxEvents: options.historyEvents, maxRoomBytes: options.historyRoomBytes })
        : null;
    this.log = this.stream ?? this.history;
    this.replays = new Replays(options.deliver);
  }

  /**
   * Whether `roomKey`'s relayed events come back from the shared stream with
   * their offsets, to every member here (the sender's own included): then
   * they are only published. False without `--history-stream`, and while
   * the room is not followed (the bus is down): then they are delivered
   * here without an offset.
   */
  streamed(roomKey: string): boolean {
    return this.stream !== null && this.stream.follows(roomKey);
  }

  /** The routes that end a replay the history overtook (the shard calls this once, after building them). */
  attach(lost: RecoveryLost): void {
    this.lost = lost;
  }

  /** Whether events are kept: when not, an event nobody receives need not be stamped. */
  get recording(): boolean {
    return this.history.recording;
  }

  /** Replays under way on this shard. */
  get replaying(): number {
    return this.replays.active;
  }

  /** The offset of a relayed event of `roomKey` (`text`: its legacy framing, no offset), kept in the history. */
  stamp(roomKey: string, text: string, nullPayload: boolean): number {
    return this.log.stamp(roomKey, text, nullPayload);
  }

  /** The legacy frame of the event just stamped with `offset`, from the bytes the local history keeps; null when it keeps none (history.ts). */
  newestFrame(roomKey: string, offset: number): Buffer | null {
    return this.log === this.history ? this.history.newestFrame(roomKey, offset) : null;
  }

  /**
   * `session` joins its room here: the members its `room_joined` carries
   * (epoch, offset, and `recovered` when it resumed), its replay started
   * when recovered. Call before the session is in the room, and queue the
   * `room_joined` in the same turn.
   */
  joinLegacy(session: Session, resume: ResumePosition | undefined): string {
    const { position, recovered, cursor } = this.open(session.desktopId, resume);
    if (cursor !== null) {
      const job = {
        target: session,
        cursor,
        render: (entry: LogEntry) => withOffset(entry.text, entry.offset),
        done: () => {
          if (session.replay === job) session.replay = null;
        },
        lost: () => {
          if (session.replay !== job) return;
          session.replay = null;
          this.lost?.legacyLost(session);
        },
        cancelled: () => session.replay !== job,
      };
      session.replay = job;
      this.replays.start(job);
    }
    return positionMembers(position, recovered);
  }

  /** A subscriber joins a room owned here: the members of its ack; its replay started when `sub.recover` was given and can be served. */
  joinSub(sub: Subscription): string {
    const { position, recovered, cursor } = this.open(sub.roomKey, sub.recover);
    if (cursor !== null) this.startSub(sub, cursor, (entry) => withOffset(topicOfLegacy(sub.topic, entry.text, entry.nullPayload), entry.offset));
    return positionMembers(position, recovered);
  }

  /** The owner's answer to a join from another shard: the room's position and, when `rec` was asked, whether it can be served. */
  answerJoin(roomKey: string, rec: ResumePosition | undefined): JoinPosition {
    const position = this.log.latest(roomKey);
    return { position, recovered: rec === undefined ? undefined : this.log.since(roomKey, rec) !== null };
  }

  /** The owner: a batch of a follower's replay, the events after `request.o` in the topic framing. */
  serve(roomKey: string, request: ReplayRequest): Batch {
    const cursor = this.log.since(roomKey, { epoch: request.e, offset: request.o });
    const texts: string[] = [];
    let last = request.o;
    if (cursor === null) return { k: 'batch', topic: request.topic, sid: request.sid, texts, last, gone: true };
    let bytes = 0;
    while (bytes < REMOTE_BATCH_BYTES) {
      const read = cursor.read();
      if (read === null || read === 'wait') break;
      if (read === 'gone') return { k: 'batch', topic: request.topic, sid: request.sid, texts: [], last, gone: true };
      const text = withOffset(topicOfLegacy(request.topic, read.text, read.nullPayload), read.offset);
      texts.push(text);
      bytes += text.length;
      last = read.offset;
    }
    return { k: 'batch', topic: request.topic, sid: request.sid, texts, last };
  }

  /**
   * A subscriber here of a room `owner` owns was recovered from `from`:
   * its replay reads the owner's history in batches, each asked (`ask`)
   * once the previous one is written.
   */
  follow(sub: Subscription, from: ResumePosition, ask: (message: ReplayRequest) => boolean): void {
    const key = `${sub.conn.id}\0${sub.topic}`;
    const cursor = new RemoteCursor(sub.owner, sub.conn.userId, from, this.linkBudget, (offset) =>
      ask({ k: 'replay', topic: sub.topic, sid: sub.conn.id, e: from.epoch, o: offset }),
    );
    this.remote.set(key, cursor);
    this.startSub(
      sub,
      cursor,
      (entry) => entry.text,
      () => {
        cursor.close();
        if (this.remote.get(key) === cursor) this.remote.delete(key);
      },
    );
  }

  /** A batch from the owner, for a follower's replay. */
  onBatch(message: Batch): void {
    this.remote.get(`${message.sid}\0${message.topic}`)?.answer(message);
  }

  /** Shard `peer` stopped: the replays reading its history end (its rooms' state died with it; their subscriptions are lost anyway). */
  peerGone(peer: number): void {
    for (const [key, cursor] of [...this.remote]) {
      if (cursor.owner !== peer) continue;
      this.remote.delete(key);
      cursor.answer({ k: 'batch', topic: '', sid: '', texts: [], last: 0, gone: true });
    }
  }

  /** Events of `roomKey` (null: of every room) may have been missed (federation): resumes from before now say `recovered: false`. */
  gap(roomKey: string | null): void {
    this.log.clear(roomKey);
  }

  stop(): void {
    this.history.stop();
    this.stream?.stop();
  }

  private open(roomKey: string, resume: ResumePosition | undefined): JoinPosition & { cursor: LogCursor | null } {
    const cursor = resume === undefined ? null : this.log.since(roomKey, resume);
    const position = this.log.latest(roomKey);
    return { position, recovered: resume === undefined ? undefined : cursor !== null, cursor };
  }

  private startSub(sub: Subscription, cursor: LogCursor, render: (entry: LogEntry) => string, ended: () => void = noop): void {
    const job = {
      target: sub.conn,
      cursor,
      render,
      done: () => {
        if (sub.replay === job) sub.replay = null;
      },
      lost: () => {
        if (sub.replay !== job) return;
        sub.replay = null;
        this.lost?.subLost(sub);
      },
      cancelled: () => sub.replay !== job,
      // However it ends (its connection closed too): what it held is let go.
      ended,
    };
    sub.replay = job;
    this.replays.start(job);
  }
}

function noop(): void {}

/**
 * A follower's cursor into the owner's history: it holds one batch at a
 * time, and asks for the next once the replay has written it. Live events
 * that reach the follower meanwhile are skipped (the next batch has them);
 * an empty batch means caught up, and is read at once (replay.ts), before
 * any later live event can arrive. What it holds and asks for counts in the
 * shard's {@link LinkReplayBudget}: over the user's or the shard's bound it
 * waits for its turn before asking.
 */
class RemoteCursor implements LogCursor, BudgetWaiter {
  /** The shard whose history it reads. */
  readonly owner: number;
  readonly user: string;
  private readonly budget: LinkReplayBudget;
  private batch: LogEntry[] = [];
  private index = 0;
  private after: number;
  private asking = false;
  private ended = false;
  private gone = false;
  /** Bytes counted in the budget for it: the batch it holds, or a batch's worth while it asks. */
  private holding = 0;
  /** Given its turn by the budget, a batch's worth reserved: the next ask needs no other. */
  private reserved = false;
  private queued = false;
  private readonly ask: (after: number) => boolean;
  onReady: (() => void) | null = null;

  constructor(owner: number, user: string, from: ResumePosition, budget: LinkReplayBudget, ask: (after: number) => boolean) {
    this.owner = owner;
    this.user = user;
    this.after = from.offset;
    this.budget = budget;
    this.ask = ask;
  }

  read(): CursorRead {
    if (this.index < this.batch.length) return this.batch[this.index++]!;
    // The batch is written: let go of it.
    if (!this.asking && this.holding > 0) {
      this.batch = [];
      this.index = 0;
      this.release();
    }
    if (this.gone) return 'gone';
    if (this.ended) return null;
    if (!this.asking) {
      if (!this.reserved && !this.budget.acquire(this.user)) {
        if (!this.queued) {
          this.queued = true;
          this.budget.wait(this);
        }
        return 'wait';
      }
      this.reserved = false;
      this.holding = this.budget.batchBytes;
      if (!this.ask(this.after)) {
        this.release();
        return 'gone';
      }
      this.asking = true;
    }
    return 'wait';
  }

  /** Its turn in the budget (a batch's worth reserved): read again, and ask. */
  go(): void {
    this.queued = false;
    this.reserved = true;
    this.onReady?.();
  }

  answer(message: Batch): void {
    this.asking = false;
    let bytes = 0;
    if (message.gone === true) this.gone = true;
    else if (message.texts.length === 0) this.ended = true;
    else {
      this.batch = message.texts.map((text) => {
        bytes += text.length;
        return { offset: 0, text, nullPayload: false, at: 0 };
      });
      this.index = 0;
      this.after = message.last;
    }
    // The reservation becomes what the batch holds.
    this.budget.take(this.user, bytes - this.holding);
    this.holding = bytes;
    this.onReady?.();
  }

  /** The replay ended: let go of what it holds, reserved or waited for. */
  close(): void {
    this.batch = [];
    this.release();
    if (this.reserved) {
      this.reserved = false;
      this.budget.take(this.user, -this.budget.batchBytes);
    }
    if (this.queued) {
      this.queued = false;
      this.budget.leave(this);
    }
  }

  private release(): void {
    if (this.holding === 0) return;
    const held = this.holding;
    this.holding = 0;
    this.budget.take(this.user, -held);
  }
}
