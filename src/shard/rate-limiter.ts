/**
 * Per-session inbound rate limit: a token bucket (`--rate-limit` tokens per
 * second, `--rate-limit-burst` deep). A frame without a token is dropped.
 *
 * The sender is told once per window, never once per dropped frame: an
 * `error` with code `rate_limited` when dropping starts, then at most one per
 * {@link NOTICE_WINDOW_MS}. Sustained abuse — drops no more than a window
 * apart for `--rate-limit-close-after` — closes the session with 1008.
 */

/** At most one `rate_limited` notice per this many ms while dropping. */
export const NOTICE_WINDOW_MS = 1000;

/** Bucket state, kept on each session. */
export interface RateState {
  tokens: number;
  refilledAt: number;
  /** Start of the current streak of drops (0 = not over the limit). */
  overSince: number;
  lastDropAt: number;
  lastNoticeAt: number;
}

export type RateVerdict =
  | { kind: 'pass' }
  | { kind: 'drop' }
  /** Drop, and tell the sender when a token will be there. */
  | { kind: 'notify'; retryAfterMs: number }
  /** Over the limit for too long: close the session. */
  | { kind: 'close' };

const PASS: RateVerdict = { kind: 'pass' };
const DROP: RateVerdict = { kind: 'drop' };
const CLOSE: RateVerdict = { kind: 'close' };

export interface RateLimitOptions {
  /** Tokens per second; 0 disables the limit. */
  perSecond: number;
  burst: number;
  closeAfterMs: number;
}

export function newRateState(options: RateLimitOptions, now: number): RateState {
  return { tokens: options.burst, refilledAt: now, overSince: 0, lastDropAt: 0, lastNoticeAt: 0 };
}

export class RateLimiter {
  private readonly perMs: number;
  private readonly options: RateLimitOptions;

  constructor(options: RateLimitOptions) {
    this.options = options;
    this.perMs = options.perSecond / 1000;
  }

  get enabled(): boolean {
    return this.options.perSecond > 0;
  }

  /** Take a token for one frame at `now` (ms). */
  take(state: RateState, now: number): RateVerdict {
    const elapsed = now - state.refilledAt;
    if (elapsed > 0) {
      state.tokens = Math.min(this.options.burst, state.tokens + elapsed * this.perMs);
      state.refilledAt = now;
    }
    if (state.tokens >= 1) {
      state.tokens -= 1;
      // A quiet spell longer than a window ends the streak.
      if (state.overSince !== 0 && now - state.lastDropAt > NOTICE_WINDOW_MS) state.overSince = 0;
      return PASS;
    }
    if (state.overSince === 0 || now - state.lastDropAt > NOTICE_WINDOW_MS) state.overSince = now;
    state.lastDropAt = now;
    if (now - state.overSince >= this.options.closeAfterMs) return CLOSE;
    if (now - state.lastNoticeAt >= NOTICE_WINDOW_MS) {
      state.lastNoticeAt = now;
      return { kind: 'notify', retryAfterMs: Math.max(1, Math.ceil((1 - state.tokens) / this.perMs)) };
    }
    return DROP;
  }
}
