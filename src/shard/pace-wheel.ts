/**
 * The pacing wheel: targets whose bytes wait for their slot of the pace
 * interval. The interval is cut into {@link WHEEL_BUCKETS} slots, and each
 * target has a bucket for life, handed out round robin, so paced writes
 * stay spread over the interval instead of bursting together. The write
 * coalescer turns the wheel at the end of every turn; while targets wait, a
 * timer per slot turns it too, so that a shard with no other I/O still
 * writes them on time.
 */

export const WHEEL_BUCKETS = 8;

export class PaceWheel<T> {
  private readonly buckets: T[][] = Array.from({ length: WHEEL_BUCKETS }, () => []);
  private count = 0;
  private slotMs: number;
  /** Last slot (clock / slotMs) whose bucket was written. */
  private lastSlot: number;
  private timer: NodeJS.Timeout | null = null;
  private nextBucket = 0;
  private readonly write: (target: T) => void;
  private readonly tick: () => number;

  /**
   * @param write writes one target's waiting bytes
   * @param tick reads the clock (ms) for a timer's turn, and lets the owner keep its coarse clock current
   */
  constructor(intervalMs: number, now: number, write: (target: T) => void, tick: () => number) {
    this.slotMs = intervalMs / WHEEL_BUCKETS;
    this.lastSlot = Math.floor(now / this.slotMs);
    this.write = write;
    this.tick = tick;
  }

  /** The bucket of a new target. */
  assignBucket(): number {
    this.nextBucket = (this.nextBucket + 1) % WHEEL_BUCKETS;
    return this.nextBucket;
  }

  /** Targets waiting. */
  get size(): number {
    return this.count;
  }

  add(target: T, bucket: number): void {
    this.buckets[bucket]!.push(target);
    if (this.count++ === 0 && this.timer === null) this.arm();
  }

  /** Write the buckets of every slot passed since the last turn (at most one round of the wheel). */
  turn(now: number): void {
    const slot = Math.floor(now / this.slotMs);
    const from = Math.max(this.lastSlot + 1, slot - WHEEL_BUCKETS + 1);
    for (let s = from; s <= slot; s++) this.writeBucket(s % WHEEL_BUCKETS);
    this.lastSlot = slot;
  }

  /** Write every waiting target now (shutdown, or pacing stopped). */
  flushAll(): void {
    for (let b = 0; b < WHEEL_BUCKETS; b++) this.writeBucket(b);
  }

  /** Put a new interval in force. */
  setInterval(intervalMs: number, now: number): void {
    this.slotMs = intervalMs / WHEEL_BUCKETS;
    this.lastSlot = Math.floor(now / this.slotMs);
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private writeBucket(b: number): void {
    const bucket = this.buckets[b]!;
    if (bucket.length === 0) return;
    this.count -= bucket.length;
    for (let i = 0; i < bucket.length; i++) this.write(bucket[i]!);
    bucket.length = 0;
  }

  private arm(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      this.turn(this.tick());
      if (this.count > 0) this.arm();
    }, this.slotMs);
  }
}
