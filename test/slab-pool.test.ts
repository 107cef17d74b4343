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

test('decay lets go of the slabs a whole period left in the free list, and keeps what its busiest moment took', () => {
  const pool = new SlabPool({ minBytes: MIN_SLAB_BYTES, maxBytes: MIN_SLAB_BYTES, maxSpareBytes: 64 * MIN_SLAB_BYTES });
  const give = (slabs: Buffer[]) => {
    for (const slab of slabs) pool.give(slab);
  };
  const take = (n: number) => Array.from({ length: n }, () => pool.take(1));
  // A burst of 10; then turns that each take 4 and give them back.
  give(take(10));
  pool.decay();
  assert.equal(pool.spareBytes, 10 * MIN_SLAB_BYTES, 'the burst was in this period: all kept');
  for (let turn = 0; turn < 5; turn++) give(take(4));
  assert.equal(pool.allocated, 10, 'turns after the burst allocate nothing');
  pool.decay();
  assert.equal(pool.spareBytes, 4 * MIN_SLAB_BYTES, 'the 6 no turn took are let go; the 4 every turn takes stay');
  for (let turn = 0; turn < 5; turn++) give(take(4));
  assert.equal(pool.allocated, 10, 'and the turns still allocate nothing');
  pool.decay();
  assert.equal(pool.spareBytes, 4 * MIN_SLAB_BYTES);
  // A period that needed more than was spare: the list was empty at some point, nothing is let go.
  give(take(6));
  assert.equal(pool.allocated, 12);
  pool.decay();
  assert.equal(pool.spareBytes, 6 * MIN_SLAB_BYTES);
  pool.decay();
  assert.equal(pool.spareBytes, 0, 'a quiet period lets go of everything');
});
