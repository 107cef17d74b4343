/**
 * The event-loop lag gauges subtract the delay monitor's own period: its
 * timer fires every 10 ms and records the time since it last fired, so an
 * idle loop records 10 ms and must read 0, not 0.010 s.
 */
import assert from 'node:assert/strict';
import { createHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import { test } from 'node:test';
import { LOOP_DELAY_RESOLUTION_MS, loopLagSeconds } from '../src/thread-stats.ts';

const MS = 1e6;
/** The histograms keep 3 significant digits: a 10 ms sample reads back within 0.1%, 10 µs. */
const PRECISION_S = 0.00001;

test('an idle loop (every sample one period) reads 0', () => {
  const h = createHistogram();
  for (let i = 0; i < 500; i++) h.record(LOOP_DELAY_RESOLUTION_MS * MS);
  const lag = loopLagSeconds(h);
  assert.ok(lag.mean <= PRECISION_S && lag.p99 <= PRECISION_S, JSON.stringify(lag));
});

test('what is over the period is the lag, for the mean and for p99', () => {
  const h = createHistogram();
  for (let i = 0; i < 98; i++) h.record(LOOP_DELAY_RESOLUTION_MS * MS);
  h.record((LOOP_DELAY_RESOLUTION_MS + 30) * MS);
  h.record((LOOP_DELAY_RESOLUTION_MS + 170) * MS);
  const lag = loopLagSeconds(h);
  // 200 ms of lag over 100 samples (the histogram keeps 3 significant digits).
  assert.ok(Math.abs(lag.mean - 0.002) < 0.002 * 0.01, `mean ${lag.mean}`);
  // p99 is the 40 ms sample, within the histogram's precision.
  assert.ok(Math.abs(lag.p99 - 0.03) <= 0.04 * 0.002, `p99 ${lag.p99}`);
});

test('samples a hair under the period are no lag, and an empty interval reads 0', () => {
  const h = createHistogram();
  h.record(LOOP_DELAY_RESOLUTION_MS * MS - 20_000);
  assert.deepEqual(loopLagSeconds(h), { mean: 0, p99: 0 });
  assert.deepEqual(loopLagSeconds(createHistogram()), { mean: 0, p99: 0 });
});

test('on the real monitor, a loop blocked for 60 ms reads at least 45 ms of lag', async () => {
  const monitor = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
  monitor.enable();
  // Let the timer fire first, so that the blocked turn lies between two samples.
  await new Promise((resolve) => setTimeout(resolve, 3 * LOOP_DELAY_RESOLUTION_MS));
  const until = performance.now() + 60;
  while (performance.now() < until);
  await new Promise((resolve) => setTimeout(resolve, 3 * LOOP_DELAY_RESOLUTION_MS));
  monitor.disable();
  // A lower bound only: the sample spanning the block is at least 60 ms, and the period
  // subtracted is 10 ms; whatever else the machine did can only add lag.
  assert.ok(loopLagSeconds(monitor).p99 >= 0.045, `p99 ${loopLagSeconds(monitor).p99}`);
});
