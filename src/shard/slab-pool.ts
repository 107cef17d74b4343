/**
 * Off-heap byte slabs, reused rather than allocated per use: the write
 * coalescer's outboxes (one pool per shard, {@link OUTBOX_SLABS}) and the
 * pages of the rooms' histories (event-ring.ts, one pool per thread).
 *
 * A slab is `Buffer.allocUnsafeSlow` memory: its own ArrayBuffer, outside
 * the V8 heap and outside Node's shared 8 KiB pool, so holding one for a
 * paced interval (or a minute of history) neither promotes anything nor
 * pins other buffers. Sizes come in powers of two from the pool's
 * `minBytes` to its `maxBytes`; each class has its own free list. Allocating
 * a slab is not free (malloc, page faults on first touch, and V8's
 * external-memory accounting, which can bring a GC forward), so a shard at
 * full load should take every slab from a free list.
 *
 * How much a pool keeps. At the ceiling a shard's outboxes hold ~95 MB at
 * the end of a turn (500 sessions, up to 128 KiB each), all given back by
 * the flush and all taken again by the next turn. With a fixed 32 MiB of
 * spare, the rest was dropped at each flush and allocated again at the next
 * turn: ~230 MB/s of new ArrayBuffers, whose accounting made V8 start a full
 * marking every ~250 ms ("external memory pressure") on helper threads that
 * share the shard's core (docs/performance.md, The ceiling). So a pool keeps
 * what its peak used (up to `maxSpareBytes`, for the coalescer the shard's
 * share of `--max-outbound-memory`), and {@link SlabPool.decay} lets go of
 * what a whole period did not use: the slabs that stayed in a free list from
 * one decay to the next. A burst's slabs leave within two periods.
 */

export const MIN_SLAB_BYTES = 8 * 1024;
export const MAX_POOLED_BYTES = 128 * 1024;
/** Spare bytes a pool keeps across all classes by default; what is returned beyond this is left to the GC. */
export const MAX_SPARE_BYTES = 32 * 1024 * 1024;

/** A pool's sizes: powers of two from `minBytes` to `maxBytes`, at most `maxSpareBytes` kept in the free lists. */
export interface SlabPoolOptions {
  minBytes: number;
  maxBytes: number;
  maxSpareBytes: number;
}

/** The write coalescer's outboxes (write-coalescer.ts). */
export const OUTBOX_SLABS: SlabPoolOptions = { minBytes: MIN_SLAB_BYTES, maxBytes: MAX_POOLED_BYTES, maxSpareBytes: MAX_SPARE_BYTES };

export class SlabPool {
  private readonly minBytes: number;
  private readonly maxBytes: number;
  private readonly maxSpareBytes: number;
  private readonly free: Buffer[][];
  /** The fewest slabs each free list held since the last {@link decay}: those were not needed in the period. */
  private readonly low: Uint32Array;
  /** Bytes held in the free lists. */
  spareBytes = 0;
  /** Slabs allocated rather than taken from a free list, since the pool was made (the tests read it). */
  allocated = 0;

  constructor(options: SlabPoolOptions = OUTBOX_SLABS) {
    this.minBytes = options.minBytes;
    this.maxBytes = options.maxBytes;
    this.maxSpareBytes = options.maxSpareBytes;
    const classes = Math.log2(this.maxBytes / this.minBytes) + 1;
    this.free = Array.from({ length: classes }, () => []);
    this.low = new Uint32Array(classes);
  }

  /**
   * Let go of the spare slabs no one needed since the last call (called
   * about once a second): in each class, as many as its free list never went
   * below. A class not used at all gives back all its spare; a busy one keeps
   * what its busiest moment took. After a burst, or an attack that filled
   * many outboxes, the pool's memory goes back to the GC, and from there to
   * the allocator, instead of staying for good.
   */
  decay(): void {
    for (let k = 0; k < this.free.length; k++) {
      const list = this.free[k]!;
      const unused = this.low[k]!;
      if (unused > 0) {
        this.spareBytes -= unused * (this.minBytes << k);
        list.length -= unused;
      }
      this.low[k] = list.length;
    }
  }

  /** A slab of at least `bytes` (its length is the class size; only the caller's prefix is meaningful). */
  take(bytes: number): Buffer {
    if (bytes > this.maxBytes) {
      this.allocated++;
      return Buffer.allocUnsafeSlow(bytes);
    }
    const k = classOf(bytes, this.minBytes);
    const list = this.free[k]!;
    const slab = list.pop();
    if (list.length < this.low[k]!) this.low[k] = list.length;
    if (slab === undefined) {
      this.allocated++;
      return Buffer.allocUnsafeSlow(this.minBytes << k);
    }
    this.spareBytes -= slab.length;
    return slab;
  }

  /** The length of the slab {@link take} gives for `bytes`: its class size, or `bytes` itself over the largest. */
  slabBytes(bytes: number): number {
    return bytes > this.maxBytes ? bytes : this.minBytes << classOf(bytes, this.minBytes);
  }

  /** Return a slab no one references any more. */
  give(slab: Buffer): void {
    const size = slab.length;
    if (size > this.maxBytes || size < this.minBytes || (size & (size - 1)) !== 0) return;
    if (this.spareBytes + size > this.maxSpareBytes) return;
    this.free[classOf(size, this.minBytes)]!.push(slab);
    this.spareBytes += size;
  }
}

/** Index of the smallest class holding `bytes` (≤ the pool's largest), classes starting at `minBytes`. */
function classOf(bytes: number, minBytes: number): number {
  if (bytes <= minBytes) return 0;
  return 32 - Math.clz32((bytes - 1) / minBytes);
}
