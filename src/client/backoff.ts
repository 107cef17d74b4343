/**
 * Reconnect delays: exponential backoff with full jitter (a random delay
 * between 0 and min(max, min × 2^attempt)), so a server restart does not
 * bring every tab back in the same millisecond.
 */

export interface BackoffOptions {
  /** First delay ceiling, ms. Default 500. */
  minDelayMs: number;
  /** Largest delay ceiling, ms. Default 30,000. */
  maxDelayMs: number;
  /** [0, 1) source; injectable for tests. Default Math.random. */
  random: () => number;
}

/** Ceiling of the delay before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(attempt: number, options: BackoffOptions): number {
  return Math.min(options.maxDelayMs, options.minDelayMs * 2 ** Math.min(attempt, 30));
}

/** Full-jitter delay before attempt `attempt`. */
export function backoffDelay(attempt: number, options: BackoffOptions): number {
  return Math.floor(options.random() * backoffCeiling(attempt, options));
}
