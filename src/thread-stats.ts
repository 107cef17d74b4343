/**
 * Samples a thread's event-loop delay and heap into its metrics slot, every
 * `intervalMs`. Runs in the primary and in each shard.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { Metric, type MetricsSlot } from './protocol/metrics.ts';

/** The timer period of the event-loop delay monitor (ms). */
export const LOOP_DELAY_RESOLUTION_MS = 10;

/** What {@link loopLagSeconds} reads of a histogram (an IntervalHistogram, or a RecordableHistogram in tests). */
export interface DelayHistogram {
  readonly mean: number;
  readonly count: number;
  percentile(p: number): number;
}

/**
 * The event-loop lag a delay histogram shows, in seconds. The monitor's timer
 * fires every `resolutionMs` and records the time since it last fired, so each
 * sample is the period plus the lag: an idle loop records `resolutionMs`
 * (0.010 s was the idle reading before this was subtracted). Samples a hair
 * under the period (the timer's clock is coarser than the histogram's) are 0.
 */
export function loopLagSeconds(delay: DelayHistogram, resolutionMs = LOOP_DELAY_RESOLUTION_MS): { mean: number; p99: number } {
  if (delay.count === 0) return { mean: 0, p99: 0 };
  const periodNs = resolutionMs * 1e6;
  return {
    mean: Math.max(0, delay.mean - periodNs) / 1e9,
    p99: Math.max(0, delay.percentile(99) - periodNs) / 1e9,
  };
}

export function sampleThreadStats(slot: MetricsSlot, intervalMs = 5000): () => void {
  const delay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
  delay.enable();
  const sample = () => {
    const lag = loopLagSeconds(delay);
    slot.set(Metric.LOOP_LAG_P99, lag.p99);
    slot.set(Metric.LOOP_LAG_MEAN, lag.mean);
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
