/**
 * When to reconnect: what a close code asks of the client, and the delays
 * between attempts: exponential backoff with equal jitter (a random delay
 * between half of min(max, min × 2^attempt) and all of it), so a server
 * restart does not bring every tab back in the same millisecond, and yet no
 * delay of the backoff is shorter than half its ceiling: at the cap (4 s by
 * default) a client that is turned away every time tries at most every 2 s.
 * Full jitter (0 to the ceiling) spreads a crowd a little better, but a
 * client whose draws came out small retried in a tight loop.
 */
import { CloseCode } from '../protocol/events.ts';

export interface BackoffOptions {
  /** First delay ceiling, ms. Default 500. */
  minDelayMs: number;
  /** Largest delay ceiling, ms. Default 4,000. */
  maxDelayMs: number;
  /** [0, 1) source; injectable for tests. Default Math.random. */
  random: () => number;
}

/** Ceiling of the delay before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(attempt: number, options: BackoffOptions): number {
  return Math.min(options.maxDelayMs, options.minDelayMs * 2 ** Math.min(attempt, 30));
}

/** Equal-jitter delay before attempt `attempt`: in [ceiling / 2, ceiling). */
export function backoffDelay(attempt: number, options: BackoffOptions): number {
  const ceiling = backoffCeiling(attempt, options);
  const half = Math.floor(ceiling / 2);
  return half + Math.floor(options.random() * (ceiling - half));
}

/** What a closed connection asks of the client. */
export type AfterClose =
  /** Stop for good: the user's permission on the desktop was revoked (4003). */
  | 'final'
  /**
   * Reconnect at once: the server ended the session for the user's sake
   * (4001: logged out, token expired), and the fresh credential (the cookie,
   * or the `token` function asked again) decides whether the user gets back
   * in. Once only until a session is stable again: a repeated 4001 backs off.
   */
  | 'now'
  /**
   * The server is going away or restarting (1001, 1012): a short jittered
   * wait (≤ the floor) when the backoff is at its floor, else its next delay.
   */
  | 'soon'
  /** Anything else, and a connection that never opened: the backoff's next delay. */
  | 'backoff';

/** What to do after a close with `code`; `opened` is false when the socket never opened. */
export function afterClose(code: number, opened: boolean): AfterClose {
  if (code === CloseCode.PERMISSION_REVOKED) return 'final';
  if (!opened) return 'backoff';
  if (code === CloseCode.DISCONNECTED) return 'now';
  if (code === CloseCode.GOING_AWAY || code === CloseCode.SERVICE_RESTART) return 'soon';
  return 'backoff';
}

/** The longest `Retry-After` the client honours, ms: past it, the server's word is taken as a minute. */
export const MAX_RETRY_AFTER_MS = 60_000;

/**
 * A `Retry-After` header's wait, ms: delay-seconds (`5`) or an HTTP date,
 * capped at {@link MAX_RETRY_AFTER_MS}; null when absent or not one of those.
 * `nowMs` is the wall clock (`Date.now()`), which an HTTP date is read against.
 */
export function retryAfterMs(header: string | string[] | undefined, nowMs: number): number | null {
  if (typeof header !== 'string') return null;
  const value = header.trim();
  let ms: number;
  if (/^\d+$/.test(value)) ms = Number(value) * 1000;
  else {
    const at = /[a-z]/i.test(value) ? Date.parse(value) : Number.NaN;
    if (Number.isNaN(at)) return null;
    ms = Math.max(0, at - nowMs);
  }
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}
