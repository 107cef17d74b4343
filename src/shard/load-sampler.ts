/**
 * The shard's load for `auto` pacing: its event-loop utilization (the share
 * of wall time the loop spent running code), sampled every window. The
 * control law that turns samples into a pace interval is pace-control.ts.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';

export class LoadSampler {
  private elu: EventLoopUtilization = performance.eventLoopUtilization();
  private readonly timer: NodeJS.Timeout;

  /** Calls `onSample(load)` with the utilization (0–1) of each `windowMs`. */
  constructor(windowMs: number, onSample: (load: number) => void) {
    this.timer = setInterval(() => {
      const sample = performance.eventLoopUtilization();
      const load = performance.eventLoopUtilization(sample, this.elu).utilization;
      this.elu = sample;
      onSample(load);
    }, windowMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
