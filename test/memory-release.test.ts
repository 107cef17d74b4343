/**
 * Giving memory back (src/memory-release.ts), in process: when a thread asks
 * for a collection, which kind it gets, and when a crowd counts as gone or
 * come.
 * What it gives back is measured by bench/memory-release.ts, not asserted.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CROWD, HEAP_SLACK_BYTES, MAX_WAIT_MS, MemoryRelease, Peak, Rise, SETTLE_MS, type GcOptions, type Released } from '../src/memory-release.ts';

const MiB = 2 ** 20;

function setup(t: TestContext, startHeap = 20 * MiB) {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  let heap = startHeap;
  const collections: GcOptions['flavor'][] = [];
  const released: Released[] = [];
  const memory = new MemoryRelease({
    heapSize: () => heap,
    collect: (options) => {
      collections.push(options.flavor);
      // A memory-reducing collection gives the pages back.
      if (options.flavor === 'last-resort') heap = startHeap + MiB;
    },
    onReleased: (r) => released.push(r),
  });
  t.after(() => memory.stop());
  return {
    memory,
    collections,
    released,
    grow: (bytes: number) => (heap += bytes),
    tick: (ms: number) => t.mock.timers.tick(ms),
  };
}

test('a request is collected once the thread has had no new one for SETTLE_MS; buffers get a regular GC', (t) => {
  const { memory, collections, tick } = setup(t);
  memory.request('buffers', Date.now());
  tick(SETTLE_MS - 1);
  memory.request('buffers', Date.now());
  tick(SETTLE_MS - 1);
  assert.deepEqual(collections, [], 'the second request pushed it back');
  tick(1);
  assert.deepEqual(collections, ['regular']);
  tick(10 * SETTLE_MS);
  assert.deepEqual(collections, ['regular'], 'once');
});

test('requests that keep coming are collected MAX_WAIT_MS after the first', (t) => {
  const { memory, collections, tick } = setup(t);
  for (let waited = 0; waited < MAX_WAIT_MS + SETTLE_MS; waited += 1000) {
    memory.request('buffers', Date.now());
    tick(1000);
  }
  assert.deepEqual(collections, ['regular']);
});

test('with a longer maxWaitMs (the primary), requests that keep coming wait for it, or for a pause of SETTLE_MS', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const collections: string[] = [];
  const memory = new MemoryRelease({ maxWaitMs: 4 * MAX_WAIT_MS, heapSize: () => 0, collect: (o) => collections.push(o.flavor) });
  t.after(() => memory.stop());
  for (let waited = 0; waited < 3 * MAX_WAIT_MS; waited += 1000) {
    memory.request('buffers', Date.now());
    t.mock.timers.tick(1000);
  }
  assert.deepEqual(collections, []);
  t.mock.timers.tick(SETTLE_MS);
  assert.deepEqual(collections, ['regular']);
});

test('a heap request is a memory-reducing collection when the heap grew by HEAP_SLACK_BYTES, and nothing otherwise', (t) => {
  const { memory, collections, released, grow, tick } = setup(t);
  grow(HEAP_SLACK_BYTES - 1);
  memory.request('heap', Date.now());
  tick(SETTLE_MS);
  assert.deepEqual(collections, [], 'too little to give back: no pause');
  grow(64 * MiB);
  memory.request('heap', Date.now());
  tick(SETTLE_MS);
  assert.deepEqual(collections, ['last-resort']);
  assert.equal(released[0]!.kind, 'heap');
  assert.equal(released[0]!.heapBefore - released[0]!.heapAfter, 64 * MiB + HEAP_SLACK_BYTES - 1 - MiB);
  // The baseline is now what that collection left: growing a little more asks for nothing.
  grow(HEAP_SLACK_BYTES / 2);
  memory.request('heap', Date.now());
  tick(SETTLE_MS);
  assert.deepEqual(collections, ['last-resort']);
});

test('a heap request with too little growth still collects the buffers another request asked for', (t) => {
  const { memory, collections, released, tick } = setup(t);
  memory.request('heap', Date.now());
  memory.request('buffers', Date.now());
  tick(SETTLE_MS);
  assert.deepEqual(collections, ['regular']);
  assert.equal(released[0]!.kind, 'buffers');
});

test('without a collector (--expose-gc refused) requests do nothing', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const memory = new MemoryRelease({ collect: null, heapSize: () => 0 });
  memory.request('heap');
  assert.doesNotThrow(() => t.mock.timers.tick(MAX_WAIT_MS));
  memory.stop();
});

test("with V8's own gc, a memory-reducing collection gives back the pages a dropped crowd of objects took", (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const released: Released[] = [];
  const memory = new MemoryRelease({ onReleased: (r) => released.push(r) });
  t.after(() => memory.stop());
  let crowd: object[] | null = Array.from({ length: 400_000 }, (_, i) => ({ id: `session-${i}`, seen: [i, i + 1, i + 2] }));
  // A few stay, spread over every page, as the sessions that outlive a crowd do.
  const stayed = crowd.filter((_, i) => i % 50 === 0);
  crowd = null;
  memory.request('heap');
  t.mock.timers.tick(SETTLE_MS);
  assert.equal(stayed.length, 8000);
  assert.equal(released.length, 1);
  assert.equal(released[0]!.kind, 'heap');
  // Loose: the pages of tens of MiB go back, which a regular GC keeps committed around the survivors.
  assert.ok(released[0]!.heapBefore - released[0]!.heapAfter > 2 * HEAP_SLACK_BYTES, `${released[0]!.heapBefore / MiB} → ${released[0]!.heapAfter / MiB} MiB`);
});

test('a crowd has gone when the count fell by CROWD and to a quarter of its peak; the peak then starts over', () => {
  const peak = new Peak();
  for (let n = 0; n <= 4 * CROWD; n += 100) assert.equal(peak.update(n), false, `rising: ${n}`);
  assert.equal(peak.update(2 * CROWD), false, 'half of the peak');
  assert.equal(peak.update(CROWD + 1), false, 'just over a quarter');
  assert.equal(peak.update(CROWD), true, 'a quarter, 3,000 gone');
  assert.equal(peak.update(1), false, 'the peak started over, at 1,000: 999 gone');
  assert.equal(peak.update(0), true, '1,000 gone');
  const small = new Peak();
  small.update(CROWD - 1);
  assert.equal(small.update(0), false, 'a shard that never held a crowd');
});

test('a crowd has come while the count is CROWD above its lowest since the last reset; a reset starts over from the count given', () => {
  const rise = new Rise();
  for (let n = 0; n < CROWD; n += 100) assert.equal(rise.update(n), false, `rising: ${n}`);
  assert.equal(rise.update(CROWD), true, '1,000 came');
  assert.equal(rise.update(CROWD + 1), true, 'and more: each join asks again, so the collection waits for the last');
  rise.reset(CROWD + 1);
  assert.equal(rise.update(2 * CROWD), false, 'after a collection, 999 more');
  assert.equal(rise.update(2 * CROWD + 1), true, '1,000 more');
  rise.reset(2 * CROWD + 1);
  assert.equal(rise.update(500), false, 'sessions left: the lowest is now 500');
  assert.equal(rise.update(500 + CROWD - 1), false);
  assert.equal(rise.update(500 + CROWD), true, '1,000 above the lowest, not above the reset');
});
