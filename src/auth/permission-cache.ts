/**
 * What stands between a reconnect storm and the permission API: answers
 * are shared by identical lookups in flight (single-flight) and reused for
 * a while (`--permission-cache-ttl`).
 *
 * The key is (userId, desktopId, cookie): the app answers from the cookie
 * too, so a different cookie is a different question. The cookie enters the
 * key as a SHA-256 digest, so an entry costs ~150 bytes however large the
 * cookie is.
 *
 * Staleness is the price: a grant withdrawn in the app still admits new
 * sessions of that user on that desktop until the entry expires (30 s by
 * default), and a denial is remembered for at most {@link NEGATIVE_TTL_MS}
 * (so a user just invited waits that long at most). Sessions already open
 * are unaffected either way. Outages (503) and nonsense answers are never
 * cached.
 */
import { createHash } from 'node:crypto';
import { PermissionError, PermissionErrorCode } from '../errors.ts';
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

interface Entry {
  /** The permission, or the message of a denial to throw again (kept as a string: an Error holds a stack). */
  permission: Permission | null;
  denial: string;
  expiresAt: number;
}

export interface PermissionCacheOptions {
  /** How long a grant is reused, in ms; 0 = no cache (single-flight still applies). */
  ttlMs: number;
  metrics: MetricsSlot;
  /** Clock, for tests. */
  now?: () => number;
}

export class CachingPermissionSource implements PermissionSource {
  private readonly inner: PermissionSource;
  private readonly ttlMs: number;
  private readonly negativeTtlMs: number;
  private readonly metrics: MetricsSlot;
  private readonly now: () => number;
  private readonly answers = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Promise<Permission>>();
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
    const key = `${identity.userId}\0${desktopId}\0${digest}`;
    const now = this.now();
    if (now - this.sweptAt >= SWEEP_EVERY_MS) this.sweep(now);
    const cached = this.answers.get(key);
    if (cached !== undefined) {
      if (cached.expiresAt > now) {
        this.metrics.add(Metric.PERMISSION_CACHE_HITS);
        return cached.permission !== null ? Promise.resolve(cached.permission) : Promise.reject(new PermissionError(PermissionErrorCode.DENIED, cached.denial));
      }
      this.answers.delete(key);
    }
    const pending = this.inFlight.get(key);
    if (pending !== undefined) {
      this.metrics.add(Metric.PERMISSION_SHARED);
      return pending;
    }
    const lookup = this.inner.check(desktopId, identity, cookieHeader).then(
      (permission) => {
        this.remember(key, permission, '', this.ttlMs);
        return permission;
      },
      (err: unknown) => {
        if (err instanceof PermissionError && err.code === PermissionErrorCode.DENIED) this.remember(key, null, err.message, this.negativeTtlMs);
        throw err;
      },
    );
    this.inFlight.set(key, lookup);
    const forget = () => this.inFlight.delete(key);
    lookup.then(forget, forget);
    return lookup;
  }

  private remember(key: string, permission: Permission | null, denial: string, ttlMs: number): void {
    if (ttlMs <= 0) return;
    if (this.answers.size >= MAX_CACHED_ANSWERS) this.answers.delete(this.answers.keys().next().value!);
    this.answers.set(key, { permission, denial, expiresAt: this.now() + ttlMs });
  }

  /** Drop expired answers, so that a burst of distinct lookups does not stay in memory for good. */
  private sweep(now: number): void {
    this.sweptAt = now;
    for (const [key, entry] of this.answers) if (entry.expiresAt <= now) this.answers.delete(key);
  }

  /** Answers held (for tests). */
  get size(): number {
    return this.answers.size;
  }

  close(): Promise<void> {
    this.answers.clear();
    return this.inner.close();
  }
}
