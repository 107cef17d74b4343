/**
 * The pacing control law (src/shard/pace-control.ts) as a function of load
 * samples: when `auto` starts, how the interval follows the load, when it
 * stops; `always` and `off` ignore the load. (test/write-coalescer.test.ts
 * drives the same law from a real event loop; this pins its arithmetic.)
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PACE_GROW, PACE_MIN_MS, PACE_ON_SAMPLES, PACE_SHRINK, PaceControl } from '../src/shard/pace-control.ts';

/** Feed `loads` and return the interval after each. */
const run = (control: PaceControl, loads: number[]) => loads.map((load) => control.sample(load));
const repeat = (load: number, n: number) => Array.from({ length: n }, () => load);

describe('auto', () => {
  test('a loop below 95% busy is never paced, however long', () => {
    const control = new PaceControl('auto', 32);
    assert.deepEqual(new Set(run(control, [...repeat(0.94, 100), ...repeat(0.3, 10), ...repeat(0.9, 100)])), new Set([0]));
  });

  test('pacing starts at the shortest interval after three saturated samples in a row, not two', () => {
    const control = new PaceControl('auto', 32);
    assert.deepEqual(run(control, [1, 1, 0.5, 1, 1]), [0, 0, 0, 0, 0], 'a quiet sample resets the count');
    assert.equal(PACE_ON_SAMPLES, 3);
    assert.equal(control.sample(1), PACE_MIN_MS);
  });

  test('while saturated the interval grows by half per sample up to the longest; it holds between 70% and 90%', () => {
    const control = new PaceControl('auto', 32);
    run(control, repeat(1, 3));
    const grown = run(control, repeat(1, 7));
    assert.deepEqual(grown, [1, 2, 3, 4, 5].map((n) => PACE_MIN_MS * PACE_GROW ** n).concat([32, 32]));
    // The smoothed load settles at 0.8: the interval stays where it is.
    const held = run(control, repeat(0.8, 30));
    assert.deepEqual(new Set(held.slice(10)), new Set([held.at(-1)]));
    assert.ok(held.at(-1)! > PACE_MIN_MS);
  });

  test('a quiet loop shrinks the interval by a fifth per sample and stops pacing below the shortest', () => {
    const control = new PaceControl('auto', 32);
    run(control, repeat(1, 20));
    assert.equal(control.intervalMs, 32);
    const shrinking = run(control, repeat(0.2, 30));
    const stoppedAt = shrinking.indexOf(0);
    assert.ok(stoppedAt > 0, 'pacing stopped');
    for (let i = 1; i < stoppedAt; i++) {
      const previous = shrinking[i - 1]!;
      assert.ok(shrinking[i] === previous || Math.abs(shrinking[i]! - previous / PACE_SHRINK) < 1e-9, `step ${i}: ${previous} → ${shrinking[i]}`);
    }
    assert.ok(shrinking[stoppedAt - 1]! / PACE_SHRINK < PACE_MIN_MS);
    assert.deepEqual(new Set(shrinking.slice(stoppedAt)), new Set([0]), 'and stays stopped while quiet');
    // Saturated again: it starts over at the shortest interval.
    assert.deepEqual(run(control, repeat(1, 3)), [0, 0, PACE_MIN_MS]);
  });

  test('a longest interval under 4 ms is also the shortest', () => {
    const control = new PaceControl('auto', 2);
    assert.deepEqual(run(control, repeat(1, 5)), [0, 0, 2, 2, 2]);
  });
});

test('always paces at the configured interval and off never paces, whatever the load', () => {
  const always = new PaceControl('always', 50);
  const off = new PaceControl('off', 50);
  assert.equal(always.intervalMs, 50);
  const loads = [...repeat(1, 20), ...repeat(0, 20)];
  assert.deepEqual(new Set(run(always, loads)), new Set([50]));
  assert.deepEqual(new Set(run(off, loads)), new Set([0]));
});
