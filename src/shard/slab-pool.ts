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
 */

export const MIN_SLAB_BYTES = 8 * 1024;
export const MAX_POOLED_BYTES = 128 * 1024;
/** Spare bytes kept across all classes; what is returned beyond this is left to the GC. */
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
  /** Slabs taken from each class since the last {@link decay}. */
  private readonly taken: Uint32Array;
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
    this.taken = new Uint32Array(classes);
  }

  /**
   * Let go of the spare slabs of every class that was not used since the
   * last call (called about once a second): after a burst, or an attack
   * that filled many outboxes, the pool's memory goes back to the GC, and
   * from there to the allocator, instead of staying for good.
   */
  decay(): void {
    for (let k = 0; k < this.free.length; k++) {
      if (this.taken[k] === 0) {
        const list = this.free[k]!;
        this.spareBytes -= list.length * (this.minBytes << k);
        list.length = 0;
      }
      this.taken[k] = 0;
    }
  }

  /** A slab of at least `bytes` (its length is the class size; only the caller's prefix is meaningful). */
  take(bytes: number): Buffer {
    if (bytes > this.maxBytes) {
      this.allocated++;
      return Buffer.allocUnsafeSlow(bytes);
    }
    const k = classOf(bytes, this.minBytes);
    this.taken[k]!++;
    const slab = this.free[k]!.pop();
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
