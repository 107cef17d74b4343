/**
 * `--permission-recheck <interval>`: every live session is checked against
 * the permission API again once per interval, so a grant withdrawn in the
 * app ends even if the app never calls the server API.
 *
 * - **Staggered.** Each round lists the shard's sessions and spreads their
 *   checks evenly over the interval (a tick every {@link tickMs}), so that
 *   10,000 sessions and a 60 s interval make about 17 requests every 100 ms,
 *   never one burst of 10,000.
 * - **Bounded.** At most `--permission-concurrency` rechecks are in flight
 *   per shard; a tick that finds them all busy leaves the rest for the next
 *   one. Rechecks skip the permission cache (its answers are what they
 *   re-ask) but share its connections, so handshakes keep their queue.
 * - **Applied as the API would.** A different role goes through
 *   session-control.ts (`permission_changed`, `session_updated`); an
 *   explicit refusal (403 or 404) ends the session with 4003.
 * - **An outage changes nothing.** No answer, a 5xx, nonsense, and a 401
 *   (the forwarded cookie's token has expired: that is no revocation) leave
 *   the session as it is. Each is counted; a round that had any is logged
 *   once (`permission_recheck_failed`), and the next round asks again.
 * - **Never stale.** An answer for a session whose permission changed while
 *   it was asked (the server API was faster) is dropped; the next round asks
 *   again.
 *
 * A session is first rechecked in the round after the one it joined in: its
 * handshake has just asked.
 *
 * The subscriptions of multiplexed connections are rechecked in the same
 * rounds, each one a check: the app's authorize endpoint is asked as the
 * subscribe asked it (a JWT minted for the call, past the authorize cache).
 * A different role is announced as the server API's is (`permission_changed`
 * to the connection, `session_updated` to the room); a `403` or `404` ends
 * the subscription with `forbidden` (the others hear `session_left`); the
 * connection and its other topics go on. Any other failure, a `401`
 * included (the relay's own token refused: a configuration error, no
 * revocation), changes nothing.
 */
import type { GrantUpdates } from '../auth/permission-cache.ts';
import type { PermissionSource } from '../auth/permission-client.ts';
import type { Identity } from '../auth/token.ts';
import { AuthorizeError, PermissionError, PermissionErrorCode } from '../errors.ts';
import type { Permission } from '../protocol/events.ts';
import { Subscription } from './connection.ts';
import type { Logger } from '../log.ts';
import { CloseReason } from '../protocol/api.ts';
import { ApiMetric, type MetricsSlot } from '../protocol/metrics.ts';
import type { Session } from './session.ts';
import type { SessionControl } from './session-control.ts';

export interface PermissionRecheckOptions {
  intervalMs: number;
  /** Rechecks in flight at most (--permission-concurrency). */
  concurrency: number;
  /** The permission API itself, without the cache. */
  source: PermissionSource;
  control: SessionControl;
  /** The handshake's permission cache, told of what a recheck changed (null or absent: none). */
  grants?: GrantUpdates | null;
  metrics: MetricsSlot;
  log: Logger;
  /** The multiplexed connections' subscriptions (multiplexed.ts), rechecked in the same rounds; absent: none. */
  topics?: RecheckTopics;
}

/** What a recheck needs of the multiplexed route. */
export interface RecheckTopics {
  /** The joined subscriptions now. */
  subscriptions(): Subscription[];
  /** Ask the authorize endpoint again, past the cache. @throws {AuthorizeError} */
  reauthorize(sub: Subscription): Promise<Permission>;
  /** Another role: applied and announced; false when it is the one held. */
  recheckedRole(sub: Subscription, permission: Permission): boolean;
  /** Refused: the subscription ends; false when it was not held. */
  recheckedRevoked(sub: Subscription): boolean;
}

/** What a recheck needs to ask again as the handshake did. */
interface Grant {
  identity: Identity;
  /** The handshake's Cookie header, forwarded again. */
  cookie: string | undefined;
}

/** API statuses that withdraw a grant; any other refusal is not an answer. */
const REVOKING_STATUSES: ReadonlySet<number> = new Set([403, 404]);

/** How often a round starts the checks now due: a tenth of the interval, 10 to 100 ms. */
export function tickMs(intervalMs: number): number {
  return Math.max(10, Math.min(100, Math.floor(intervalMs / 10)));
}

export class PermissionRecheck {
  private readonly options: PermissionRecheckOptions;
  private readonly grants = new Map<Session, Grant>();
  private readonly timer: NodeJS.Timeout;
  /** The current round: the sessions listed at its start, and how many were started. */
  private round: (Session | Subscription)[] = [];
  private next = 0;
  private roundStart = Date.now();
  private inFlight = 0;
  private failed = 0;
  private lastFailure = '';

  constructor(options: PermissionRecheckOptions) {
    this.options = options;
    this.timer = setInterval(() => this.tick(), tickMs(options.intervalMs));
    this.timer.unref();
  }

  /** Watch `session`, admitted with `identity` and its handshake's `cookie`. */
  track(session: Session, identity: Identity, cookie: string | undefined): void {
    // The header is a slice of the whole request head's text, which V8 would keep alive with it: keep a copy of its own.
    this.grants.set(session, { identity, cookie: cookie === undefined ? undefined : Buffer.from(cookie, 'latin1').toString('latin1') });
  }

  untrack(session: Session): void {
    this.grants.delete(session);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private tick(): void {
    const now = Date.now();
    const { intervalMs, concurrency } = this.options;
    if (this.next >= this.round.length && now - this.roundStart >= intervalMs) {
      this.endRound();
      this.round = [...this.grants.keys(), ...(this.options.topics?.subscriptions() ?? [])];
      this.next = 0;
      this.roundStart = now;
    }
    const due = Math.min(this.round.length, Math.ceil((this.round.length * (now - this.roundStart)) / intervalMs));
    while (this.next < due && this.inFlight < concurrency) {
      const session = this.round[this.next++]!;
      if (session instanceof Subscription) {
        if (session.conn.open) void this.checkTopic(session, this.options.topics!);
        continue;
      }
      const grant = this.grants.get(session);
      if (grant !== undefined && session.open) void this.check(session, grant);
    }
  }

  private endRound(): void {
    if (this.failed === 0) return;
    this.options.log.warn('permission_recheck_failed', { failed: this.failed, sessions: this.round.length, lastError: this.lastFailure });
    this.failed = 0;
    this.lastFailure = '';
  }

  private async check(session: Session, grant: Grant): Promise<void> {
    const { source, control, metrics } = this.options;
    const asked = session.permission;
    this.inFlight++;
    try {
      const permission = await source.check(session.desktopId, grant.identity, grant.cookie);
      if (!this.current(session, asked)) return;
      if (control.setPermission(session, permission, 'recheck')) {
        metrics.add(ApiMetric.RECHECK_CHANGED);
        // The app's newest word: a reconnect must not find the old role in the handshake's cache.
        this.options.grants?.setGrant(session.userId, session.desktopId, permission);
      } else metrics.add(ApiMetric.RECHECK_UNCHANGED);
    } catch (err) {
      const revoked = err instanceof PermissionError && err.code === PermissionErrorCode.DENIED && REVOKING_STATUSES.has(err.status ?? 0);
      if (revoked) {
        if (this.current(session, asked) && control.end(session, 'revoked', CloseReason.PERMISSION_REVOKED)) {
          metrics.add(ApiMetric.RECHECK_REVOKED);
          this.options.grants?.setGrant(session.userId, session.desktopId, 'none');
        }
        return;
      }
      metrics.add(ApiMetric.RECHECK_FAILED);
      this.failed++;
      this.lastFailure = err instanceof PermissionError ? `${err.code}: ${err.message}` : String(err);
    } finally {
      this.inFlight--;
    }
  }

  private async checkTopic(sub: Subscription, topics: RecheckTopics): Promise<void> {
    const { metrics } = this.options;
    const asked = sub.permission;
    this.inFlight++;
    try {
      const permission = await topics.reauthorize(sub);
      if (!subscriptionCurrent(sub, asked)) return;
      metrics.add(topics.recheckedRole(sub, permission) ? ApiMetric.RECHECK_CHANGED : ApiMetric.RECHECK_UNCHANGED);
    } catch (err) {
      if (err instanceof AuthorizeError && REVOKING_STATUSES.has(err.status ?? 0)) {
        if (subscriptionCurrent(sub, asked) && topics.recheckedRevoked(sub)) metrics.add(ApiMetric.RECHECK_REVOKED);
        return;
      }
      metrics.add(ApiMetric.RECHECK_FAILED);
      this.failed++;
      this.lastFailure = err instanceof AuthorizeError ? `${err.code}: ${err.message}` : String(err);
    } finally {
      this.inFlight--;
    }
  }

  /** Still open, still watched, and no one changed its permission while it was asked. */
  private current(session: Session, asked: string): boolean {
    return session.open && this.grants.has(session) && session.permission === asked;
  }
}

/** Still held and joined, and no one changed its role while it was asked. */
function subscriptionCurrent(sub: Subscription, asked: Permission): boolean {
  return sub.conn.open && sub.state === 'joined' && sub.conn.topics.get(sub.topic) === sub && sub.permission === asked;
}
