/**
 * The {@link RoomLog} of a fleet that shares its history (`--history-stream`,
 * issue 21): offsets are the JetStream stream's sequences and the epoch is
 * the stream's (shard/federation/room-stream.ts), the same on every node.
 *
 * The shard does not give offsets here: a relayed event is published, and
 * comes back from the stream with its sequence ({@link StreamLog.append}),
 * in stream order, on every node that follows the room, the origin
 * included. What this keeps is a window of the events the node delivered
 * per followed room, so that a resume from a recent position is served from
 * memory; an older one is fetched from the stream first
 * (shard/federation/stream-rooms.ts puts it in front, {@link prepend}).
 *
 * Each room's window is `base` and the entries after it: every event of the
 * room with an offset above `base`, up to `latest`, is in it. A resume from
 * N is served iff the epoch is the stream's and base ≤ N ≤ latest. The
 * window's bounds are the local history's (`--history-age`, `-events`,
 * `-room-bytes`); letting go of its oldest entry moves `base` up to it.
 * Offsets are not consecutive (the sequence is the whole stream's), so a
 * cursor searches for its next entry.
 */
import { ENTRY_OVERHEAD, HISTORY_SWEEP_MS, newShardEpoch } from './history.ts';
import { EventRing } from './event-ring.ts';
import type { CursorRead, LogCursor, ResumePosition, RoomLog } from './room-log.ts';

export interface StreamLogOptions {
  maxAgeMs: number;
  maxEvents: number;
  maxRoomBytes: number;
  now?: () => number;
}

class Window {
  base: number;
  latest: number;
  /** Its events, oldest first, off the heap (event-ring.ts). */
  ring = new EventRing();
  /** What the events count toward the room's byte bound: text bytes + ENTRY_OVERHEAD each. */
  bytes = 0;
  dead = false;

  constructor(after: number) {
    this.base = after;
    this.latest = after;
  }

  get count(): number {
    return this.ring.count;
  }

  shift(): void {
    this.base = this.ring.offsetAt(0);
    this.bytes -= this.ring.shift() + ENTRY_OVERHEAD;
  }
}

export class StreamLog implements RoomLog {
  private readonly options: StreamLogOptions;
  private readonly now: () => number;
  private readonly windows = new Map<string, Window>();
  /** The stream's epoch, null until it was read (the node's own, which no resume matches, stands in). */
  private streamEpoch: string | null = null;
  private readonly standIn = `nostream${newShardEpoch()}`;
  private readonly sweeper: NodeJS.Timeout;

  constructor(options: StreamLogOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.sweeper = setInterval(() => this.sweep(), HISTORY_SWEEP_MS);
    this.sweeper.unref();
  }

  get epoch(): string {
    return this.streamEpoch ?? this.standIn;
  }

  /** The stream's epoch was read: a new one (a recreated stream) makes every window void. */
  setEpoch(epoch: string): boolean {
    if (epoch === this.streamEpoch) return false;
    this.streamEpoch = epoch;
    for (const window of this.windows.values()) window.dead = true;
    this.windows.clear();
    return true;
  }

  /** Whether the bus is up (stream-rooms.ts sets it): while it is down, nothing published comes back. */
  busUp: () => boolean = () => true;

  /** Whether the room is followed and the bus up: its events come from the stream. */
  follows(roomKey: string): boolean {
    return this.windows.has(roomKey) && this.busUp();
  }

  /** The room is followed from the event after `after` on. */
  begin(roomKey: string, after: number): void {
    this.end(roomKey);
    this.windows.set(roomKey, new Window(after));
  }

  /** The room is not followed any more. */
  end(roomKey: string): void {
    const window = this.windows.get(roomKey);
    if (window === undefined) return;
    window.dead = true;
    this.windows.delete(roomKey);
    // Its pages go back to the thread's pool (a dead window's cursors read nothing more).
    window.ring.clear();
  }

  /** The sequence before the oldest event the window holds, or null when the room is not followed. */
  base(roomKey: string): number | null {
    return this.windows.get(roomKey)?.base ?? null;
  }

  /** An event the stream delivered (its sequence: `offset`), after every one before. */
  append(roomKey: string, offset: number, text: string, nullPayload: boolean): void {
    const window = this.windows.get(roomKey);
    if (window === undefined || offset <= window.latest) return;
    window.latest = offset;
    if (this.options.maxAgeMs <= 0) {
      window.base = offset;
      return;
    }
    const at = this.now();
    window.bytes += window.ring.push(offset, at, nullPayload, text) + ENTRY_OVERHEAD;
    while (window.count > this.options.maxEvents || (window.bytes > this.options.maxRoomBytes && window.count > 0)) window.shift();
    this.trimAge(window, at);
  }

  /**
   * Events of the room fetched from the stream, every one in (from, upTo]:
   * those before the window go in front of it, which then starts at
   * `from`. Nothing to do when the window starts at `from` or before (a
   * resume fetched at the same time went further back); refused when it
   * starts after `upTo` (it let go of events since: the fetch does not
   * reach it).
   */
  prepend(roomKey: string, from: number, upTo: number, entries: { offset: number; text: string }[]): boolean {
    const window = this.windows.get(roomKey);
    if (window === undefined) return false;
    if (from >= window.base) return true;
    if (upTo < window.base) return false;
    const at = this.now();
    // Rare (a resume from before the window): a new ring, the fetched events, then the window's.
    const ring = new EventRing();
    let bytes = 0;
    const base = window.base;
    for (const { offset, text } of entries) if (offset > from && offset <= base) bytes += ring.push(offset, at, false, text) + ENTRY_OVERHEAD;
    for (let i = 0; i < window.count; i++) {
      const entry = window.ring.entry(i);
      bytes += ring.push(entry.offset, entry.at, entry.nullPayload, entry.text) + ENTRY_OVERHEAD;
    }
    window.ring.clear();
    window.ring = ring;
    window.bytes = bytes;
    window.base = from;
    return true;
  }

  /** Whether a resume from `from` can be served from the window. */
  covers(roomKey: string, from: ResumePosition): boolean {
    const window = this.windows.get(roomKey);
    return window !== undefined && from.epoch === this.streamEpoch && from.offset >= window.base && from.offset <= window.latest;
  }

  stamp(): number {
    // Offsets come from the stream (append); an event the shard relays without it (the room not followed) has none.
    return 0;
  }

  latest(roomKey: string): ResumePosition {
    return { epoch: this.epoch, offset: this.windows.get(roomKey)?.latest ?? 0 };
  }

  since(roomKey: string, from: ResumePosition): LogCursor | null {
    const window = this.windows.get(roomKey);
    if (window === undefined) return null;
    this.trimAge(window, this.now());
    if (!this.covers(roomKey, from)) return null;
    return new WindowCursor(window, from.offset);
  }

  /** Let go of the window's events (null: every room's): no resume from before now is served from memory. */
  clear(roomKey: string | null): void {
    const windows = roomKey === null ? [...this.windows.values()] : [this.windows.get(roomKey)].filter((w) => w !== undefined);
    for (const window of windows) {
      window.ring.clear();
      window.bytes = 0;
      window.base = window.latest;
    }
  }

  stop(): void {
    clearInterval(this.sweeper);
    for (const window of this.windows.values()) window.dead = true;
    this.windows.clear();
  }

  private trimAge(window: Window, now: number): void {
    const oldest = now - this.options.maxAgeMs;
    while (window.count > 0 && window.ring.atAt(0) <= oldest) window.shift();
  }

  private sweep(): void {
    const now = this.now();
    for (const window of this.windows.values()) {
      this.trimAge(window, now);
      window.ring.trim();
    }
  }
}

class WindowCursor implements LogCursor {
  private readonly window: Window;
  private last: number;
  onReady: (() => void) | null = null;

  constructor(window: Window, after: number) {
    this.window = window;
    this.last = after;
  }

  read(): CursorRead {
    const window = this.window;
    if (window.dead || this.last < window.base) return 'gone';
    const index = window.ring.after(this.last);
    if (index >= window.count) return null;
    const entry = window.ring.entry(index);
    this.last = entry.offset;
    return entry;
  }
}
