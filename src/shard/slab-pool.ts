/**
 * Off-heap byte slabs for the write coalescer's outboxes, reused rather
 * than allocated per write.
 *
 * A slab is `Buffer.allocUnsafeSlow` memory: its own ArrayBuffer, outside
 * the V8 heap and outside Node's shared 8 KiB pool, so holding one for a
 * paced interval neither promotes anything nor pins other buffers. Sizes
 * come in powers of two from {@link MIN_SLAB_BYTES} to {@link MAX_POOLED_BYTES};
 * each class has its own free list. Allocating a slab is not free (malloc
 * plus V8's external-memory accounting, which can bring a GC forward), so a
 * shard at full load should take every slab from here.
 */

export const MIN_SLAB_BYTES = 8 * 1024;
export const MAX_POOLED_BYTES = 128 * 1024;
/** Spare bytes kept across all classes; what is returned beyond this is left to the GC. */
export const MAX_SPARE_BYTES = 32 * 1024 * 1024;

const CLASSES = Math.log2(MAX_POOLED_BYTES / MIN_SLAB_BYTES) + 1;

export class SlabPool {
  private readonly free: Buffer[][] = Array.from({ length: CLASSES }, () => []);
  /** Slabs taken from each class since the last {@link decay}. */
  private readonly taken = new Uint32Array(CLASSES);
  /** Bytes held in the free lists. */
  spareBytes = 0;

  /**
   * Let go of the spare slabs of every class that was not used since the
   * last call (called about once a second): after a burst, or an attack
   * that filled many outboxes, the pool's memory goes back to the GC, and
   * from there to the allocator, instead of staying for good.
   */
  decay(): void {
    for (let k = 0; k < CLASSES; k++) {
      if (this.taken[k] === 0) {
        const list = this.free[k]!;
        this.spareBytes -= list.length * (MIN_SLAB_BYTES << k);
        list.length = 0;
      }
      this.taken[k] = 0;
    }
  }

  /** A slab of at least `bytes` (its length is the class size; only the caller's prefix is meaningful). */
  take(bytes: number): Buffer {
    if (bytes > MAX_POOLED_BYTES) return Buffer.allocUnsafeSlow(bytes);
    const k = classOf(bytes);
    this.taken[k]!++;
    const slab = this.free[k]!.pop();
    if (slab === undefined) return Buffer.allocUnsafeSlow(MIN_SLAB_BYTES << k);
    this.spareBytes -= slab.length;
    return slab;
  }

  /** Return a slab no one references any more. */
  give(slab: Buffer): void {
    const size = slab.length;
    if (size > MAX_POOLED_BYTES || size < MIN_SLAB_BYTES || (size & (size - 1)) !== 0) return;
    if (this.spareBytes + size > MAX_SPARE_BYTES) return;
    this.free[classOf(size)]!.push(slab);
    this.spareBytes += size;
  }
}

/** Index of the smallest class holding `bytes` (≤ MAX_POOLED_BYTES). */
function classOf(bytes: number): number {
  if (bytes <= MIN_SLAB_BYTES) return 0;
  return 32 - Math.clz32((bytes - 1) / MIN_SLAB_BYTES);
}
