/**
 * Latency histograms (HdrHistogram, microseconds, 3 significant digits).
 * Generator threads record into their own; the runner merges the encoded
 * histograms, which is exact: HdrHistogram buckets add.
 */
import * as hdr from 'hdr-histogram-js';

export type Histogram = hdr.Histogram;

/** Highest latency tracked: 10 minutes in µs (values above are clamped). */
export const MAX_TRACKABLE_US = 600_000_000;

export function createHistogram(): Histogram {
  return hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: MAX_TRACKABLE_US,
    numberOfSignificantValueDigits: 3,
    bitBucketSize: 32,
    autoResize: false,
    useWebAssembly: false,
  });
}

/** Record a latency in µs, clamped to the trackable range. */
export function recordUs(histogram: Histogram, us: number): void {
  histogram.recordValue(us < 1 ? 1 : us > MAX_TRACKABLE_US ? MAX_TRACKABLE_US : Math.round(us));
}

export function encodeHistogram(histogram: Histogram): string {
  return hdr.encodeIntoCompressedBase64(histogram);
}

/** Merge encoded histograms into one. */
export function mergeHistograms(encoded: readonly string[]): Histogram {
  const merged = createHistogram();
  for (const text of encoded) merged.add(hdr.decodeFromCompressedBase64(text, 32, false));
  return merged;
}

export interface LatencySummary {
  count: number;
  /** All latencies in milliseconds. */
  p50: number;
  p90: number;
  p95: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

const ms = (us: number): number => Math.round(us) / 1000;

export function summarize(histogram: Histogram): LatencySummary {
  const count = histogram.totalCount;
  if (count === 0) return { count: 0, p50: 0, p90: 0, p95: 0, p99: 0, p999: 0, max: 0, mean: 0 };
  return {
    count,
    p50: ms(histogram.getValueAtPercentile(50)),
    p90: ms(histogram.getValueAtPercentile(90)),
    p95: ms(histogram.getValueAtPercentile(95)),
    p99: ms(histogram.getValueAtPercentile(99)),
    p999: ms(histogram.getValueAtPercentile(99.9)),
    max: ms(histogram.maxValue),
    mean: ms(histogram.mean),
  };
}

/** HdrHistogram's percentile-distribution text in milliseconds (the .hgrm format plotters read). */
export function percentileDistribution(histogram: Histogram): string {
  return histogram.outputPercentileDistribution(5, 1000);
}
