/**
 * What the timing benches of one sitting share: the flags their servers run
 * with, the machine's load beside each run, and the median of a measure's
 * runs.
 */
import { readFileSync } from 'node:fs';

/**
 * `serve` flags for a server under a load generator: every client comes
 * from 127.0.0.1, so the per-address and per-session limits meant for the
 * internet are off (docs/operations.md, Load testing).
 */
export const BENCH_SERVE_FLAGS: readonly string[] = ['--dev', '--rate-limit', '0', '--max-pending-per-address', '0', '--handshake-rate-per-address', '0'];

/** The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them. */
export function loadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

/** The median of `values` (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
