/**
 * What stands between a reconnect storm and the permission API: answers
 * are shared by identical lookups in flight (single-flight) and reused for
 * a while (`--permission-cache-ttl`).
 *
 * The key is (userId, desktopId, cookie): the app answers from the cookie
 * too, so a different cookie is a different question. The cookie enters the
 * key as a SHA-256 digest, so an entry costs ~150 bytes however large the
 * cookie is: one object in a list per user, the user's list one entry of a
 * Map (nested Maps per user and desktop cost ~950 bytes for a user's first
 * answer, bench/idle-memory.ts --heap). Each worker has its own cache, and
 * only the shard that owns a desktop (the router's hash) ever looks up
 * permissions on it.
 *
 * Staleness is the price: a grant withdrawn in the app still admits new
 * sessions of that user on that desktop until the entry expires (30 s by
 * default), unless the app says so through the server API (below); a
 * denial is remembered for at most {@link NEGATIVE_TTL_MS} (so a user just
 * invited waits that long at most). Outages (503) and nonsense answers are
 * never cached.
 *
 * The server API is the newest word (commands.ts calls {@link GrantUpdates}
 * on the desktop's shard, whether the call came from this node's primary or
 * from another node over the bus):
 *
 * - a role set for (user, desktop) replaces the cached answer of every
 *   cookie of that user on that desktop, for the TTL from the change; `none`
 *   replaces them with a denial, kept like one (5 s at most). A cookie the
 *   cache holds nothing for is still a question for the app;
 * - a user logged out (disconnect) has every cached answer dropped, on
 *   every desktop, so that the next connect asks the app again;
 * - a lookup already in flight when either happens asked an older question:
 *   its answer must not undo the change. After a role change it answers
 *   (and is cached) as the new role, whatever the app answers, an outage
 *   included; after a logout the app is asked again, at most
 *   {@link MAX_ASKS} times in all (then 503, as for an outage). The newest
 *   of the two wins when both happen during one lookup.
 */
import { createHash } from 'node:crypto';
import { PermissionError, PermissionErrorCode } from '../errors.ts';
import type { ApiPermission } from '../protocol/api.ts';
import type { Permission } from '../protocol/events.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import type { PermissionSource } from './permission-client.ts';
import type { Identity } from './token.ts';

/** Longest time a denial is reused. */
export const NEGATIVE_TTL_MS = 5000;
/** Most answers kept per worker; the oldest go first. */
export const MAX_CACHED_ANSWERS = 100_000;
/** Expired answers are swept out at most this often (on a lookup). */
export const SWEEP_EVERY_MS = 10_000;
/** Times one lookup asks the app when the user keeps being logged out while it waits. */
export const MAX_ASKS = 3;

/** The denial a revocation through the server API is cached as (its message is logged with the 403). */
export const REVOKED_BY_API = 'permission revoked through the server API';

/** What the server API tells the cache of the shard that applies it (shard/commands.ts). */
export interface GrantUpdates {
  /** The app set `permission` for `userId` on `desktopId`. */
  setGrant(userId: string, desktopId: string, permission: ApiPermission): void;
  /** The app logged `userId` out. */
  forgetUser(userId: string): void;
}

/** One answer, in its user's list (oldest first). */
interface Entry {
  readonly desktopId: string;
  readonly digest: string;
  /** The permission, or the message of a denial to throw again (kept as a string: an Error holds a stack). */
  permission: Permission | null;
  denial: string;
  expiresAt: number;
  next: Entry | null;
}

/** A lookup waiting for the app. */
interface Lookup {
  readonly userId: string;
  readonly desktopId: string;
  /** What the server API said since it asked: a role, `null` (revoked), `ASK_AGAIN` (logged out), or undefined (nothing). */
  newer: Permission | null | typeof ASK_AGAIN | undefined;
}

const ASK_AGAIN = 'ask-again';

export interface PermissionCacheOptions {
  /** How long a grant is reused, in ms; 0 = no cache (single-flight still applies). */
  ttlMs: number;
  metrics: MetricsSlot;
  /** Clock, for tests. */
  now?: () => number;
}

export class CachingPermissionSource implements PermissionSource, GrantUpdates {
  private readonly inner: PermissionSource;
  private readonly ttlMs: number;
  private readonly negativeTtlMs: number;
  private readonly metrics: MetricsSlot;
  private readonly now: () => number;
  /**
   * userId → the user's answers, a list oldest first: a user's answers are
   * found at once for a logout, and the few of one desktop by walking them
   * (a user's answers are those of the desktops it opened within the TTL).
   */
  private readonly answers = new Map<string, Entry>();
  private count = 0;
  private readonly inFlight = new Map<string, { lookup: Lookup; promise: Promise<Permission> }>();
  private sweptAt = 0;

  constructor(inner: PermissionSource, options: PermissionCacheOptions) {
    this.inner = inner;
    this.ttlMs = options.ttlMs;
    this.negativeTtlMs = Math.min(NEGATIVE_TTL_MS, options.ttlMs);
    this.metrics = options.metrics;
    this.now = options.now ?? Date.now;
  }

  check(desktopId: string, identity: Identity, cookieHeader: string | undefined): Promise<Permission> {
    const digest = cookieHeader === undefined ? '' : createHash('sha256').update(cookieHeader).digest('base64');
    const userId = identity.userId;
    const now = this.now();
    if (now - this.sweptAt >= SWEEP_EVERY_MS) this.sweep(now);
    const cached = this.find(userId, desktopId, digest);
    if (cached !== undefined) {
      if (cached.expiresAt > now) {
        this.metrics.add(Metric.PERMISSION_CACHE_HITS);
        return answer(cached.permission, cached.denial);
      }
      this.forget(userId, desktopId, digest);
    }
    const key = `${userId}\0${desktopId}\0${digest}`;
    const pending = this.inFlight.get(key);
    if (pending !== undefined) {
      this.metrics.add(Metric.PERMISSION_SHARED);
      return pending.promise;
    }
    const lookup: Lookup = { userId, desktopId, newer: undefined };
    const promise = this.ask(lookup, digest, identity, cookieHeader);
    this.inFlight.set(key, { lookup, promise });
    const done = () => this.inFlight.delete(key);
    promise.then(done, done);
    return promise;
  }

  /** Ask the app, and keep its answer unless the server API spoke while it was asked (see the module comment). */
  private async ask(lookup: Lookup, digest: string, identity: Identity, cookieHeader: string | undefined): Promise<Permission> {
    const { userId, desktopId } = lookup;
    for (let asks = 1; ; asks++) {
      lookup.newer = undefined;
      let permission: Permission | null = null;
      let failure: unknown = null;
      try {
        permission = await this.inner.check(desktopId, identity, cookieHeader);
      } catch (err) {
        failure = err;
      }
      const newer = lookup.newer as Lookup['newer'];
      if (newer === ASK_AGAIN) {
        if (asks < MAX_ASKS) continue;
        throw new PermissionError(PermissionErrorCode.UNAVAILABLE, `the user was logged out while each of ${MAX_ASKS} permission lookups waited`);
      }
      if (newer !== undefined) {
        // The change was applied to the entries that existed; this one did not yet.
        if (newer === null) this.remember(userId, desktopId, digest, null, REVOKED_BY_API, this.negativeTtlMs);
        else this.remember(userId, desktopId, digest, newer, '', this.ttlMs);
        return answer(newer, REVOKED_BY_API);
      }
      if (failure === null) {
        this.remember(userId, desktopId, digest, permission, '', this.ttlMs);
        return permission!;
      }
      if (failure instanceof PermissionError && failure.code === PermissionErrorCode.DENIED) {
        this.remember(userId, desktopId, digest, null, failure.message, this.negativeTtlMs);
      }
      throw failure;
    }
  }

  setGrant(userId: string, desktopId: string, permission: ApiPermission): void {
    const role = permission === 'none' ? null : permission;
    const ttlMs = role === null ? this.negativeTtlMs : this.ttlMs;
    const expiresAt = this.now() + ttlMs;
    for (let entry: Entry | null = this.answers.get(userId) ?? null; entry !== null; entry = entry.next) {
      if (entry.desktopId !== desktopId) continue;
      entry.permission = role;
      entry.denial = role === null ? REVOKED_BY_API : '';
      entry.expiresAt = expiresAt;
    }
    // Lookups in flight are few (at most --permission-concurrency + --permission-queue): a scan is cheaper than an index.
    for (const { lookup } of this.inFlight.values()) if (lookup.userId === userId && lookup.desktopId === desktopId) lookup.newer = role;
  }

  forgetUser(userId: string): void {
    for (let entry: Entry | null = this.answers.get(userId) ?? null; entry !== null; entry = entry.next) this.count--;
    this.answers.delete(userId);
    for (const { lookup } of this.inFlight.values()) if (lookup.userId === userId) lookup.newer = ASK_AGAIN;
  }

  private remember(userId: string, desktopId: string, digest: string, permission: Permission | null, denial: string, ttlMs: number): void {
    if (ttlMs <= 0) return;
    const expiresAt = this.now() + ttlMs;
    const known = this.find(userId, desktopId, digest);
    if (known !== undefined) {
      known.permission = permission;
      known.denial = denial;
      known.expiresAt = expiresAt;
      return;
    }
    // Before the list is looked up: evicting may empty and drop the very one this answer goes in.
    if (this.count >= MAX_CACHED_ANSWERS) this.evictOldest();
    const entry: Entry = { desktopId, digest, permission, denial, expiresAt, next: null };
    let last = this.answers.get(userId);
    if (last === undefined) this.answers.set(userId, entry);
    else {
      while (last.next !== null) last = last.next;
      last.next = entry;
    }
    this.count++;
  }

  private find(userId: string, desktopId: string, digest: string): Entry | undefined {
    for (let entry: Entry | null = this.answers.get(userId) ?? null; entry !== null; entry = entry.next) {
      if (entry.desktopId === desktopId && entry.digest === digest) return entry;
    }
    return undefined;
  }

  private forget(userId: string, desktopId: string, digest: string): void {
    let previous: Entry | null = null;
    for (let entry: Entry | null = this.answers.get(userId) ?? null; entry !== null; previous = entry, entry = entry.next) {
      if (entry.desktopId !== desktopId || entry.digest !== digest) continue;
      if (previous !== null) previous.next = entry.next;
      else if (entry.next !== null) this.answers.set(userId, entry.next);
      else this.answers.delete(userId);
      this.count--;
      return;
    }
  }

  /** Drop the answer first stored of the user whose answers were first stored (Maps keep insertion order). */
  private evictOldest(): void {
    const [userId, oldest] = this.answers.entries().next().value!;
    this.forget(userId, oldest.desktopId, oldest.digest);
  }

  /** Drop expired answers, so that a burst of distinct lookups does not stay in memory for good. */
  private sweep(now: number): void {
    this.sweptAt = now;
    for (const [userId, first] of this.answers) {
      for (let entry: Entry | null = first; entry !== null; entry = entry.next) {
        if (entry.expiresAt <= now) this.forget(userId, entry.desktopId, entry.digest);
      }
    }
  }

  /** Answers held (for tests). */
  get size(): number {
    return this.count;
  }

  close(): Promise<void> {
    this.answers.clear();
    this.count = 0;
    return this.inner.close();
  }
}

function answer(permission: Permission | null, denial: string): Promise<Permission> {
  return permission !== null ? Promise.resolve(permission) : Promise.reject(new PermissionError(PermissionErrorCode.DENIED, denial));
}
