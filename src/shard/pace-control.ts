/**
 * When a shard paces its fast sockets, and how far apart their writes are:
 * the control law behind `--pacing`, kept apart from the write path so it
 * can be reasoned about (and tested) as a function of load samples.
 *
 * A loop that never idles is saturated, but not yet in trouble: turn
 * batching makes each write carry more as turns grow, so unpaced latency
 * grows with load (the heavy preset: loop 100% busy, 3 ms turns, 12 ms p99;
 * the extreme preset: 100% busy, 10 ms turns, 30–40 ms p99). So `auto`
 * starts pacing, after PACE_ON_SAMPLES consecutive samples ≥ PACE_ON_LOAD
 * busy, at the shortest interval, and the smoothed load then steers the
 * interval like a thermostat: above PACE_GROW_LOAD it grows by half (up to
 * the configured longest), below PACE_SHRINK_LOAD it shrinks by a fifth,
 * and below the shortest pacing stops. A paced stream therefore waits no
 * longer than the load requires: the interval settles at 4–15 ms at the
 * heavy preset and at 32 ms at the extreme one. `always` paces at the
 * configured interval whatever the load; `off` never paces.
 *
 * Growing fast and shrinking gently follows the asymmetry of the costs: a
 * saturated shard delays everyone until it gets relief, while an interval
 * a little too long only delays the fast streams a little.
 */
import type { PacingMode } from '../config.ts';

export const PACE_ON_LOAD = 0.95;
export const PACE_ON_SAMPLES = 3;
export const PACE_MIN_MS = 4;
export const PACE_GROW_LOAD = 0.9;
export const PACE_SHRINK_LOAD = 0.7;
export const PACE_GROW = 1.5;
export const PACE_SHRINK = 1.25;
/** Weight of a new sample in the smoothed load (≈ 1 s of memory at 100 ms samples). */
export const LOAD_SMOOTHING = 0.3;

export class PaceControl {
  private readonly mode: PacingMode;
  private readonly longestMs: number;
  private readonly shortestMs: number;
  /** Current interval in ms; 0 while not pacing. */
  private current: number;
  private hotSamples = 0;
  private smoothedLoad = 0;

  constructor(mode: PacingMode, longestMs: number) {
    this.mode = mode;
    this.longestMs = longestMs;
    this.shortestMs = Math.min(PACE_MIN_MS, longestMs);
    this.current = mode === 'always' ? longestMs : 0;
  }

  /** The interval in force, in ms; 0 while not pacing. */
  get intervalMs(): number {
    return this.current;
  }

  /** Take one load sample (event-loop utilization over the last window, 0–1); returns the interval now in force. */
  sample(load: number): number {
    if (this.mode !== 'auto') return this.current;
    this.smoothedLoad = (1 - LOAD_SMOOTHING) * this.smoothedLoad + LOAD_SMOOTHING * load;
    if (this.current === 0) {
      this.hotSamples = load >= PACE_ON_LOAD ? this.hotSamples + 1 : 0;
      if (this.hotSamples >= PACE_ON_SAMPLES) {
        this.current = this.shortestMs;
        this.smoothedLoad = load;
      }
    } else if (this.smoothedLoad > PACE_GROW_LOAD) {
      this.current = Math.min(this.current * PACE_GROW, this.longestMs);
    } else if (this.smoothedLoad < PACE_SHRINK_LOAD) {
      this.current /= PACE_SHRINK;
      if (this.current < this.shortestMs) {
        this.current = 0;
        this.hotSamples = 0;
      }
    }
    return this.current;
  }
}
