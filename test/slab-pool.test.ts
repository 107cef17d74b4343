/** The write coalescer's slab pool: power-of-two classes, reuse, and the cap on spare bytes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_POOLED_BYTES, MAX_SPARE_BYTES, MIN_SLAB_BYTES, SlabPool } from '../src/shard/slab-pool.ts';

test('take rounds up to a power-of-two class and reuses what was given back', () => {
  const pool = new SlabPool();
  const sizes = [1, MIN_SLAB_BYTES, MIN_SLAB_BYTES + 1, 3 * MIN_SLAB_BYTES, MAX_POOLED_BYTES];
  assert.deepEqual(
    sizes.map((n) => pool.take(n).length),
    [MIN_SLAB_BYTES, MIN_SLAB_BYTES, 2 * MIN_SLAB_BYTES, 4 * MIN_SLAB_BYTES, MAX_POOLED_BYTES],
  );
  const slab = pool.take(100);
  pool.give(slab);
  assert.equal(pool.spareBytes, MIN_SLAB_BYTES);
  assert.equal(pool.take(MIN_SLAB_BYTES), slab, 'the same slab comes back');
  assert.equal(pool.spareBytes, 0);
  assert.notEqual(pool.take(MIN_SLAB_BYTES + 1).buffer, slab.buffer, 'a larger class does not hand out a smaller slab');
});

test('slabs are off-heap and unshared: each has its own ArrayBuffer', () => {
  const pool = new SlabPool();
  const a = pool.take(10);
  const b = pool.take(10);
  assert.notEqual(a.buffer, b.buffer);
  assert.equal(a.byteOffset, 0);
  assert.equal(a.buffer.byteLength, MIN_SLAB_BYTES, "not a view on Node's shared 8 KiB pool");
});

test('oversized and odd-sized buffers are not pooled; spare bytes stay under the cap', () => {
  const pool = new SlabPool();
  const big = pool.take(MAX_POOLED_BYTES + 1);
  assert.equal(big.length, MAX_POOLED_BYTES + 1);
  pool.give(big);
  pool.give(Buffer.allocUnsafeSlow(MIN_SLAB_BYTES + 5));
  assert.equal(pool.spareBytes, 0);
  const count = MAX_SPARE_BYTES / MAX_POOLED_BYTES + 5;
  const slabs = Array.from({ length: count }, () => pool.take(MAX_POOLED_BYTES));
  for (const slab of slabs) pool.give(slab);
  assert.equal(pool.spareBytes, MAX_SPARE_BYTES);
});

test('decay lets go of the classes unused since the last decay and keeps the busy ones', () => {
  const pool = new SlabPool();
  const small = pool.take(1000);
  const large = pool.take(100_000);
  pool.give(small);
  pool.give(large);
  assert.equal(pool.spareBytes, MIN_SLAB_BYTES + 128 * 1024);
  pool.decay(); // both classes were used since the pool was made: kept
  assert.equal(pool.spareBytes, MIN_SLAB_BYTES + 128 * 1024);
  pool.give(pool.take(1000)); // only the small class is used in this interval
  pool.decay();
  assert.equal(pool.spareBytes, MIN_SLAB_BYTES);
  pool.decay();
  assert.equal(pool.spareBytes, 0);
});
