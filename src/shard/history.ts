/**
 * Each room's recent events, in the shard that owns the room: the local
 * {@link RoomLog} (room-log.ts).
 *
 * **Epochs.** The shard draws an epoch when it starts (the time and 32
 * random bits), and each room's log is an incarnation of it:
 * `<shard epoch>.<n>`, n counting the logs this shard ever made. A log is
 * let go of once its room has no member on this shard and it holds no event
 * (the events aged out); the room's next log is a new incarnation, so an
 * epoch never names two sequences, and a position from before gets
 * `recovered: false` rather than a wrong replay. A restarted shard (or
 * node) draws a new shard epoch.
 *
 * **Offsets** are consecutive within an epoch, from 1; 0 is the position
 * before the first event.
 *
 * **Bounds**, all of them applied as events are stamped, and by a sweep
 * once a second:
 * - per room: at most `maxEvents` events and `maxRoomBytes` bytes, the
 *   oldest let go first;
 * - age: an event older than `maxAgeMs` is let go (0: nothing is kept;
 *   offsets and epochs still are);
 * - per shard: `maxBytes`, this shard's share of the process-wide cap. Over
 *   it, the rooms holding the most bytes are emptied first (the one whose
 *   oldest event is the oldest first among equals), until the shard is under
 *   90% of it (so that a room's next events do not each pay a pass over the
 *   rooms). Largest first, not oldest first: one user flooding rooms of its
 *   own up to `maxRoomBytes` loses those rooms' history, not the quiet rooms'
 *   (whose oldest events are the oldest, and whose history is the one a
 *   resume most often needs). To reach a room holding B bytes, a flood must
 *   fill the cap with rooms of B bytes or less: 90% of 512 MiB in rooms of a
 *   typical 42 KB is some 11,000 rooms, more than one user may hold (50
 *   connections of 50 topics).
 *
 * Toward its room's byte bound, an event counts its legacy text's UTF-8
 * bytes plus {@link ENTRY_OVERHEAD}. Toward the shard's cap, a log counts
 * what it holds: {@link LOG_OVERHEAD} and its ring's slots and pages, which
 * come and go with the events and are packed by the sweep when a room
 * shrinks (event-ring.ts). The events are kept off the V8 heap, their texts
 * copied into the ring's pages, so that the garbage collector never copies
 * or marks them (event-ring.ts says why). The spare pages of the thread's
 * pool (8 MiB at most) are not counted.
 */
import { randomBytes } from 'node:crypto';
import { decayPages, EventRing } from './event-ring.ts';
import type { CursorRead, LogCursor, ResumePosition, RoomLog } from './room-log.ts';

/**
 * What an event counts toward its room's byte bound beyond its text's UTF-8
 * bytes: its slot in the ring (event-ring.ts `SLOT_BYTES`) rounded up.
 */
export const ENTRY_OVERHEAD = 32;
/** What a room's log costs while it holds nothing: the log and its ring's objects. */
export const LOG_OVERHEAD = 512;
/** How often aged events are let go and idle logs forgotten. */
export const HISTORY_SWEEP_MS = 1000;

export interface HistoryOptions {
  /** How long an event is kept (ms); 0 keeps none. */
  maxAgeMs: number;
  /** Events kept per room. */
  maxEvents: number;
  /** Bytes kept per room. */
  maxRoomBytes: number;
  /** Bytes kept by this shard over all its rooms. */
  maxBytes: number;
  /** Whether the room has a member on this shard (its log is kept while it has). */
  inUse: (roomKey: string) => boolean;
  /** The clock (tests move it). */
  now?: () => number;
  /** The shard's epoch (tests fix it); drawn at start otherwise. */
  epoch?: string;
}

/** One room's log: its epoch, its last offset, and its events, oldest first, in a ring off the heap. */
class Log {
  readonly key: string;
  readonly epoch: string;
  latest = 0;
  readonly ring = new EventRing();
  /** What the events count toward the room's byte bound: text bytes + ENTRY_OVERHEAD each. */
  bytes = 0;
  /** Forgotten: every cursor on it is gone. */
  dead = false;

  constructor(key: string, epoch: string) {
    this.key = key;
    this.epoch = epoch;
  }

  get count(): number {
    return this.ring.count;
  }

  /** The offset of the oldest event kept (latest + 1 when none is). */
  get first(): number {
    return this.latest - this.ring.count + 1;
  }

  /** Let go of the oldest event. */
  shift(): void {
    this.bytes -= this.ring.shift() + ENTRY_OVERHEAD;
  }

  /** Let go of every event, and of the memory that held them. */
  empty(): void {
    this.ring.clear();
    this.bytes = 0;
  }

  /** What the shard counts for this log: its overhead and what its ring holds. */
  get held(): number {
    return LOG_OVERHEAD + this.ring.held;
  }
}

/** A shard epoch: the time (base 36) and 32 random bits, in the characters an epoch may have (protocol/resume.ts). */
export function newShardEpoch(): string {
  return `${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}

export class History implements RoomLog {
  private readonly options: HistoryOptions;
  private readonly now: () => number;
  private readonly epoch: string;
  private readonly logs = new Map<string, Log>();
  private incarnations = 0;
  /** Bytes of every log and entry of the shard. */
  private total = 0;
  private readonly sweeper: NodeJS.Timeout;

  constructor(options: HistoryOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.epoch = options.epoch ?? newShardEpoch();
    this.sweeper = setInterval(() => this.sweep(), HISTORY_SWEEP_MS);
    this.sweeper.unref();
  }

  /** Whether events are kept at all (`maxAgeMs` > 0): when not, an event nobody receives need not be stamped. */
  get recording(): boolean {
    return this.options.maxAgeMs > 0;
  }

  /** Bytes held by the shard's history: every log's overhead and what its ring holds (for the cap, /stats and the tests). */
  get bytes(): number {
    return this.total;
  }

  /** What the events of `roomKey` count toward its byte bound (0 without a log). */
  roomBytes(roomKey: string): number {
    return this.logs.get(roomKey)?.bytes ?? 0;
  }

  /** Rooms with a log. */
  get rooms(): number {
    return this.logs.size;
  }

  stamp(roomKey: string, text: string, nullPayload: boolean): number {
    const log = this.ensure(roomKey);
    const offset = ++log.latest;
    if (this.options.maxAgeMs <= 0) return offset;
    const at = this.now();
    const before = log.held;
    // Copied into the ring's pages (UTF-8): the relay's string, a rope of
    // its parts and a slice of the client's frame, is not kept.
    log.bytes += log.ring.push(offset, at, nullPayload, text) + ENTRY_OVERHEAD;
    const { maxEvents, maxRoomBytes } = this.options;
    while (log.count > maxEvents || (log.bytes > maxRoomBytes && log.count > 0)) log.shift();
    this.trimAge(log, at);
    this.total += log.held - before;
    if (this.total > this.options.maxBytes) this.shed();
    return offset;
  }

  /**
   * The legacy frame, with its offset, of the event {@link stamp} just gave
   * `offset` in `roomKey`, built from the bytes the room keeps (no second
   * encode of its text); null when they are not kept: no history, or a
   * bound let the event go at once (a text over the room's byte bound).
   */
  newestFrame(roomKey: string, offset: number): Buffer | null {
    const log = this.logs.get(roomKey);
    if (log === undefined || log.count === 0 || log.latest !== offset || log.ring.offsetAt(log.count - 1) !== offset) return null;
    return log.ring.newestFrame(offset);
  }

  latest(roomKey: string): ResumePosition {
    const log = this.ensure(roomKey);
    return { epoch: log.epoch, offset: log.latest };
  }

  since(roomKey: string, from: ResumePosition): LogCursor | null {
    const log = this.logs.get(roomKey);
    if (log === undefined || log.epoch !== from.epoch || from.offset > log.latest) return null;
    const before = log.held;
    this.trimAge(log, this.now());
    // Aged events may have given pages back.
    this.total += log.held - before;
    if (from.offset + 1 < log.first) return null;
    return new LocalCursor(log, from.offset + 1);
  }

  /**
   * Let go of `roomKey`'s events (null: every room's), keeping its epoch and
   * offsets: the room's sequence goes on, but no resume from before now is
   * whole any more (the bus may have missed events, shard/federation/).
   */
  clear(roomKey: string | null): void {
    const logs = roomKey === null ? [...this.logs.values()] : [this.logs.get(roomKey)].filter((log) => log !== undefined);
    for (const log of logs) this.empty(log);
  }

  /** Let go of everything (the shard stops). */
  stop(): void {
    clearInterval(this.sweeper);
    for (const log of this.logs.values()) log.dead = true;
    this.logs.clear();
    this.total = 0;
  }

  private ensure(roomKey: string): Log {
    let log = this.logs.get(roomKey);
    if (log === undefined) {
      log = new Log(roomKey, `${this.epoch}.${(++this.incarnations).toString(36)}`);
      this.logs.set(roomKey, log);
      this.total += log.held;
    }
    return log;
  }

  /** Let go of the events older than maxAgeMs (the ring may give pages back: the caller accounts for what it holds). */
  private trimAge(log: Log, now: number): void {
    const oldest = now - this.options.maxAgeMs;
    while (log.count > 0 && log.ring.atAt(0) <= oldest) log.shift();
  }

  private empty(log: Log): void {
    const before = log.held;
    log.empty();
    this.total += log.held - before;
  }

  /** Over the shard's cap: empty the logs holding the most (the oldest first among equals), until under 90% of it. */
  private shed(): void {
    const target = this.options.maxBytes * 0.9;
    const held = [...this.logs.values()].filter((log) => log.count > 0);
    held.sort((a, b) => b.held - a.held || a.ring.atAt(0) - b.ring.atAt(0));
    for (const log of held) {
      if (this.total <= target) return;
      this.empty(log);
    }
  }

  /** Aged events let go, and the memory a shrunken log no longer needs; a log with no event whose room has no member here is forgotten. */
  sweep(): void {
    const now = this.now();
    for (const log of [...this.logs.values()]) {
      const before = log.held;
      this.trimAge(log, now);
      log.ring.trim();
      this.total += log.held - before;
      if (log.count === 0 && !this.options.inUse(log.key)) this.forget(log);
    }
    // Spare pages no ring of this thread took for a sweep's length go back to the GC.
    decayPages();
  }

  private forget(log: Log): void {
    log.dead = true;
    this.logs.delete(log.key);
    this.total -= log.held;
    // Whatever it still held goes back to the pool (a dead log's cursors read nothing more).
    log.ring.clear();
  }
}

/** Reads a local log from an offset on: consecutive offsets make the next entry's index a subtraction. */
class LocalCursor implements LogCursor {
  private readonly log: Log;
  private next: number;
  onReady: (() => void) | null = null;

  constructor(log: Log, next: number) {
    this.log = log;
    this.next = next;
  }

  read(): CursorRead {
    const log = this.log;
    if (log.dead) return 'gone';
    const first = log.first;
    if (this.next < first) return 'gone';
    if (this.next > log.latest) return null;
    const entry = log.ring.entry(this.next - first);
    this.next++;
    return entry;
  }
}
