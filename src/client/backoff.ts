/**
 * When to reconnect: what a close code asks of the client, and the delays
 * between attempts: exponential backoff with full jitter (a random delay
 * between 0 and min(max, min × 2^attempt)), so a server restart does not
 * bring every tab back in the same millisecond.
 */
import { CloseCode } from '../protocol/events.ts';

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

/** What a closed connection asks of the client. */
export type AfterClose =
  /** Stop for good: the user's permission on the desktop was revoked (4003). */
  | 'final'
  /**
   * Reconnect at once, the backoff from its floor: the server ended the
   * session for the user's sake (4001: logged out, token expired), and the
   * fresh credential (the cookie, or the `token` function asked again)
   * decides whether the user gets back in.
   */
  | 'now'
  /** The server is going away or restarting (1001, 1012): a short jittered wait, the backoff from its floor. */
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
