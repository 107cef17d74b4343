/**
 * Samples a thread's event-loop delay and heap into its metrics slot, every
 * `intervalMs`. Runs in the primary and in each shard.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { Metric, type MetricsSlot } from './protocol/metrics.ts';

export function sampleThreadStats(slot: MetricsSlot, intervalMs = 5000): () => void {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const sample = () => {
    slot.set(Metric.LOOP_LAG_P99, delay.percentile(99) / 1e9);
    slot.set(Metric.LOOP_LAG_MEAN, Number.isNaN(delay.mean) ? 0 : delay.mean / 1e9);
    slot.set(Metric.HEAP_USED, getHeapStatistics().used_heap_size);
    delay.reset();
  };
  const timer = setInterval(sample, intervalMs);
  timer.unref();
  sample();
  return () => {
    clearInterval(timer);
    delay.disable();
  };
}
