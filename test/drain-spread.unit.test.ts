/**
 * The drain's schedule (src/shard/drain-spread.ts), in process: a random
 * order that is a permutation, close times even over the window with the
 * first at once, and every close called exactly once. The real server's
 * spread is test/drain.test.ts's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { closeAt, closeSpread, shuffle } from '../src/shard/drain-spread.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

test('shuffle: a permutation of its input, and not the identity', () => {
  const items = Array.from({ length: 100 }, (_, i) => i);
  const order = shuffle([...items], mulberry32(7));
  assert.deepEqual(
    [...order].sort((a, b) => a - b),
    items,
  );
  assert.notDeepEqual(order, items);
  // Every position can be drawn: with random() at its extremes the first and the last item move.
  assert.deepEqual(
    shuffle([1, 2, 3], () => 0),
    [2, 3, 1],
  );
  assert.deepEqual(
    shuffle([1, 2, 3], () => 0.999),
    [1, 2, 3],
  );
});

test('closeAt: even over the window, the first at once and the last one step before its end', () => {
  assert.deepEqual(
    [0, 1, 2, 3].map((i) => closeAt(i, 4, 2000)),
    [0, 500, 1000, 1500],
  );
  assert.equal(closeAt(0, 1, 2000), 0, 'a single session goes at once');
  assert.equal(closeAt(0, 0, 2000), 0);
  assert.deepEqual(
    [0, 1, 2].map((i) => closeAt(i, 3, 0)),
    [0, 0, 0],
    'no window: all at once',
  );
});

test('closeSpread: with no window every close is called before it returns, each once, in the random order', async () => {
  const closed: number[] = [];
  const done = closeSpread([1, 2, 3, 4, 5], 0, (n) => closed.push(n), mulberry32(3));
  assert.equal(closed.length, 5, 'synchronously');
  assert.deepEqual(closed, shuffle([1, 2, 3, 4, 5], mulberry32(3)));
  await done;
});

test('closeSpread: over a window, each close is called once and the promise resolves after the last', async () => {
  const items = Array.from({ length: 30 }, (_, i) => i);
  const closed: number[] = [];
  const done = closeSpread(items, 60, (n) => closed.push(n), mulberry32(11));
  assert.equal(closed.length, 1, 'the first at once, the others later');
  await done;
  assert.deepEqual(closed, shuffle([...items], mulberry32(11)));
  await closeSpread([], 60, () => assert.fail('nothing to close'));
});
