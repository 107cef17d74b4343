/**
 * What a shard remembers to refuse a signed bus message it has heard
 * before (a captured message published again by someone without the key).
 *
 * Every signed message carries a stamp, its sender's time and an id unique
 * to it (protocol/bus-signature.ts). A receiver takes a stamp only within
 * its window of its own clock (±`--federation-replay-window`), and each id
 * once: it remembers the ids it took until their time is out of the window,
 * when the window refuses them anyway. Heartbeats also carry a sequence per
 * shard incarnation, which must grow.
 */
import type { Stamp } from '../protocol/bus-signature.ts';

/**
 * Ids a shard remembers, all senders together (about 70 bytes each, so
 * about 9 MB at most). Past it, the oldest ids are forgotten first, and
 * stamps as old as those are refused from then on: the window shrinks
 * under a flood of signed messages, it never lets one through twice.
 */
export const MAX_REMEMBERED_IDS = 131_072;
/** The window is kept in this many buckets on each side, forgotten a bucket at a time. */
const BUCKETS_PER_WINDOW = 30;

export type Freshness = 'fresh' | 'stale' | 'replayed';

export class ReplayGuard {
  private readonly windowMs: number;
  private readonly bucketMs: number;
  private readonly capacity: number;
  /** Bucket index (stamp time / bucketMs) → ids taken with a time in it. */
  private readonly buckets = new Map<number, Set<string>>();
  private count = 0;
  /** Stamps older than this are refused: ids of that age were forgotten early, to stay within capacity. */
  private floor = -Infinity;
  private nextSweep = -Infinity;

  constructor(windowMs: number, capacity = MAX_REMEMBERED_IDS) {
    this.windowMs = windowMs;
    this.capacity = capacity;
    this.bucketMs = Math.max(1, Math.ceil(windowMs / BUCKETS_PER_WINDOW));
  }

  /** Ids remembered now. */
  get size(): number {
    return this.count;
  }

  /**
   * `fresh` (and remembered from now on) when `stamp` is within the window
   * of `now` and its id is new; `stale` when its time is out of the window
   * (or older than ids forgotten early); `replayed` when its id was taken
   * before.
   */
  check(stamp: Stamp, now: number): Freshness {
    if (stamp.time < now - this.windowMs || stamp.time > now + this.windowMs || stamp.time < this.floor) return 'stale';
    if (now >= this.nextSweep) this.sweep(now);
    const index = Math.floor(stamp.time / this.bucketMs);
    let bucket = this.buckets.get(index);
    if (bucket?.has(stamp.id)) return 'replayed';
    while (this.count >= this.capacity) this.forgetOldest();
    // Full of ids no older than this one: its own bucket went, and the floor with it.
    if (stamp.time < this.floor) return 'stale';
    bucket = this.buckets.get(index);
    if (bucket === undefined) {
      bucket = new Set();
      this.buckets.set(index, bucket);
    }
    bucket.add(stamp.id);
    this.count++;
    return 'fresh';
  }

  /** Forget the buckets whose every time is out of the window: the window refuses those stamps now. */
  private sweep(now: number): void {
    this.nextSweep = now + this.bucketMs;
    const limit = now - this.windowMs;
    for (const [index, bucket] of this.buckets) {
      if ((index + 1) * this.bucketMs <= limit) {
        this.buckets.delete(index);
        this.count -= bucket.size;
      }
    }
  }

  private forgetOldest(): void {
    let oldest = Infinity;
    for (const index of this.buckets.keys()) if (index < oldest) oldest = index;
    const bucket = this.buckets.get(oldest)!;
    this.buckets.delete(oldest);
    this.count -= bucket.size;
    this.floor = Math.max(this.floor, (oldest + 1) * this.bucketMs);
  }
}

/** What a shard keeps of a peer shard's heartbeats. */
export interface BeatHistory {
  /** The incarnation followed, and the last sequence heard from it. */
  incarnation: string;
  seq: number;
  /** Incarnations the shard had before (at most {@link RETIRED_INCARNATIONS}, newest last). */
  retired: string[];
}

/** Past incarnations of one peer shard remembered: a heartbeat from one of them is a replay. */
export const RETIRED_INCARNATIONS = 8;

/**
 * Where a heartbeat of incarnation `k` and sequence `q` stands against what
 * was heard from that peer shard: the `first` one, the `next` of its
 * incarnation (a sequence above the last), a `restarted` shard (a new
 * incarnation), or `replayed` (a sequence not above the last, or an
 * incarnation the shard had before).
 */
export function beatOrder(known: BeatHistory | undefined, k: string, q: number): 'first' | 'next' | 'restarted' | 'replayed' {
  if (known === undefined) return 'first';
  if (k === known.incarnation) return q > known.seq ? 'next' : 'replayed';
  return known.retired.includes(k) ? 'replayed' : 'restarted';
}

/** The history after a heartbeat of `order` (not `replayed`). */
export function nextHistory(known: BeatHistory | undefined, k: string, q: number): BeatHistory {
  if (known === undefined) return { incarnation: k, seq: q, retired: [] };
  if (k === known.incarnation) return { incarnation: k, seq: q, retired: known.retired };
  const retired = [...known.retired, known.incarnation];
  if (retired.length > RETIRED_INCARNATIONS) retired.shift();
  return { incarnation: k, seq: q, retired };
}
