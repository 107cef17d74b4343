/**
 * `--enforce-token-expiry`: a session lives no longer than its access token.
 * When the token's `exp` passes, the session is ended with 4001 ("token
 * expired") and its room hears `session_left`; the client reconnects at
 * once, and the refreshed cookie the app has set by then lets it back in.
 *
 * One timer per session, armed at open and cleared at close; a token that
 * expired while its handshake waited for the permission API ends at once.
 */
import { CloseReason } from '../protocol/api.ts';
import type { Session } from './session.ts';
import type { SessionControl } from './session-control.ts';

/** Longest delay a Node timer takes (about 24.8 days); a later expiry is re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class TokenExpiry {
  private readonly control: SessionControl;
  private readonly timers = new Map<Session, NodeJS.Timeout>();

  constructor(control: SessionControl) {
    this.control = control;
  }

  /** Watch `session`, whose token expires at `expiresAt` (ms since the epoch). */
  track(session: Session, expiresAt: number): void {
    const delay = expiresAt - Date.now();
    if (delay <= 0) {
      this.expire(session);
      return;
    }
    const timer = setTimeout(
      () => {
        this.timers.delete(session);
        if (delay > MAX_TIMER_MS) this.track(session, expiresAt);
        else this.expire(session);
      },
      Math.min(delay, MAX_TIMER_MS),
    );
    timer.unref();
    this.timers.set(session, timer);
  }

  /** `session` closed. */
  untrack(session: Session): void {
    const timer = this.timers.get(session);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.timers.delete(session);
  }

  stop(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  private expire(session: Session): void {
    this.control.end(session, 'token_expired', CloseReason.TOKEN_EXPIRED);
  }
}
