/**
 * May this user subscribe to this topic, and as what? The multiplexed
 * route asks the app once per (user, topic):
 * `GET {base}/api/realtime/authorize?topic=<escaped>` with
 * `Authorization: Bearer <jwt>`, a JWT minted for the call (HS256 with the
 * access-token secret, claims exactly `{userId, aud:"realtime-internal",
 * iat, exp: iat+60}`).
 *
 * | the app answers        | the subscribe gets |
 * |------------------------|--------------------|
 * | 200 `{"permission":P}` | accepted (P among owner, editor, viewer; owner acts as editor) |
 * | 400                    | `bad_request`      |
 * | 401, 403               | `forbidden`        |
 * | 404                    | `not_found`        |
 * | anything else, a timeout, a bad body, another permission | `internal` |
 *
 * The calls are bounded per worker as the desktop route's lookups are
 * (auth/permission-client.ts): at most `--permission-concurrency` at the app
 * and `--permission-queue` more waiting for one of its connections; past
 * that a call is refused at once (`ERR_AUTHORIZE_BUSY`, which the client
 * gets as `internal`, what a timeout would have given it later) rather than
 * queued without bound in front of an app that is slow or down.
 *
 * Accepted answers are kept for 30 s per (user, topic), shared by every
 * connection of the user (they all live on one shard: the router places a
 * multiplexed connection by the hash of its user). Refusals are never kept.
 * Identical lookups in flight share one call. The server API is the newest
 * word: a permission change or a logout evicts the user's answers, and a
 * lookup in flight when that happens is not kept either.
 */
import type { KeyObject } from 'node:crypto';
import { Pool } from 'undici';
import { AuthorizeError, AuthorizeErrorCode, PermissionError, type AuthorizeErrorCodeValue } from '../errors.ts';
import type { Permission } from '../protocol/events.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { AUTHORIZE_AUDIENCE, AUTHORIZE_CACHE_TTL_MS, AUTHORIZE_PERMISSIONS, AUTHORIZE_TOKEN_TTL_S, roleOf, roomKeyOf } from '../protocol/topics.ts';
import { readLimited, type PermissionSource } from './permission-client.ts';
import { signInternalToken, type Identity } from './token.ts';

/** Largest authorize answer read. */
export const MAX_AUTHORIZE_BODY = 16 * 1024;
/** Most answers kept per worker; when full, the answers of the user who wrote longest ago go first (see remember()). */
export const MAX_AUTHORIZE_ANSWERS = 100_000;

/** Where a topic's permission comes from: the app's authorize endpoint, or (dev mode, --permissions-from-token) the token. */
export interface TopicAuthority {
  /** @throws {AuthorizeError} when the subscription is refused. */
  authorize(identity: Identity, topic: string): Promise<Permission>;
  close(): Promise<void>;
}

export interface HttpTopicAuthorityOptions {
  /** Base URL of the app (--permission-api-base). */
  base: string;
  /** The access-token secret the JWT is signed with. */
  secret: KeyObject;
  /** Each call's bound (--permission-timeout, 5 s by default). */
  timeoutMs: number;
  /** Keep-alive connections to the app (--permission-concurrency). */
  concurrency: number;
  /** Calls that may wait for one of those connections (--permission-queue); past it they fail at once with BUSY. */
  queue: number;
  /** Counts the calls refused for a full queue (`queue_full`, as the desktop route's). */
  metrics: MetricsSlot;
}

const STATUS_CODES: Record<number, AuthorizeErrorCodeValue> = {
  400: AuthorizeErrorCode.BAD_REQUEST,
  401: AuthorizeErrorCode.FORBIDDEN,
  403: AuthorizeErrorCode.FORBIDDEN,
  404: AuthorizeErrorCode.NOT_FOUND,
};

export class HttpTopicAuthority implements TopicAuthority {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly options: HttpTopicAuthorityOptions;
  /** Calls sent or waiting for a connection; undici's own queue has no bound. */
  private pending = 0;
  private readonly maxPending: number;

  constructor(options: HttpTopicAuthorityOptions) {
    this.options = options;
    this.maxPending = options.concurrency + options.queue;
    const url = new URL(options.base);
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.pool = new Pool(url.origin, {
      connections: options.concurrency,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connectTimeout: options.timeoutMs,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
  }

  async authorize(identity: Identity, topic: string): Promise<Permission> {
    if (this.pending >= this.maxPending) {
      this.options.metrics.add(Metric.PERMISSION_QUEUE_FULL);
      throw new AuthorizeError(AuthorizeErrorCode.BUSY, `authorize busy: ${this.pending} calls already wait for the app; subscribe again later`);
    }
    this.pending++;
    try {
      return await this.ask(identity, topic);
    } finally {
      this.pending--;
    }
  }

  private async ask(identity: Identity, topic: string): Promise<Permission> {
    const bearer = signInternalToken(identity.userId, AUTHORIZE_AUDIENCE, AUTHORIZE_TOKEN_TTL_S, this.options.secret);
    const path = `${this.basePath}/api/realtime/authorize?topic=${encodeURIComponent(topic)}`;
    let text: string;
    try {
      const res = await this.pool.request({
        method: 'GET',
        path,
        headers: { accept: 'application/json', authorization: `Bearer ${bearer}` },
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw new AuthorizeError(STATUS_CODES[res.statusCode] ?? AuthorizeErrorCode.INTERNAL, `authorize answered ${res.statusCode}`, {
          status: res.statusCode,
        });
      }
      text = await readLimited(
        res.body,
        MAX_AUTHORIZE_BODY,
        () => new AuthorizeError(AuthorizeErrorCode.INTERNAL, `authorize answer larger than ${MAX_AUTHORIZE_BODY} bytes`),
      );
    } catch (err) {
      if (err instanceof AuthorizeError) throw err;
      throw new AuthorizeError(AuthorizeErrorCode.INTERNAL, `authorize failed: ${(err as Error).message}`, { cause: err });
    }
    let permission: unknown;
    try {
      permission = (JSON.parse(text) as { permission?: unknown } | null)?.permission;
    } catch {
      throw new AuthorizeError(AuthorizeErrorCode.INTERNAL, 'authorize answered invalid JSON');
    }
    if (typeof permission !== 'string' || !AUTHORIZE_PERMISSIONS.has(permission)) {
      throw new AuthorizeError(AuthorizeErrorCode.INTERNAL, 'authorize answered an unknown permission');
    }
    return roleOf(permission);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Dev mode and --permissions-from-token: the token's claims decide, as on the legacy routes (by room key). */
export class ClaimTopicAuthority implements TopicAuthority {
  private readonly claims: PermissionSource;

  constructor(claims: PermissionSource) {
    this.claims = claims;
  }

  async authorize(identity: Identity, topic: string): Promise<Permission> {
    try {
      return await this.claims.check(roomKeyOf(topic), identity, undefined);
    } catch (err) {
      if (err instanceof PermissionError) throw new AuthorizeError(AuthorizeErrorCode.FORBIDDEN, err.message);
      throw err;
    }
  }

  close(): Promise<void> {
    return this.claims.close();
  }
}

interface Entry {
  permission: Permission;
  expiresAt: number;
}

interface Lookup {
  promise: Promise<Permission>;
  /** The user's eviction epoch when it asked: a different one at the answer means the answer is stale. */
  epoch: number;
}

/** Accepted answers per (user, topic), single-flight, evicted by the server API (see the module comment). */
export class TopicAuthorizer {
  private readonly authority: TopicAuthority;
  private readonly ttlMs: number;
  private readonly now: () => number;
  /** userId → topic → answer. */
  private readonly answers = new Map<string, Map<string, Entry>>();
  private count = 0;
  private readonly inFlight = new Map<string, Lookup>();
  /** Evictions per user, for lookups in flight; a user is dropped from it once nothing of theirs is in flight. */
  private readonly epochs = new Map<string, number>();
  /** Calls made to the authority (for /metrics and tests). */
  calls = 0;

  constructor(authority: TopicAuthority, options: { ttlMs?: number; now?: () => number } = {}) {
    this.authority = authority;
    this.ttlMs = options.ttlMs ?? AUTHORIZE_CACHE_TTL_MS;
    this.now = options.now ?? Date.now;
  }

  /** The user's role on `topic`. @throws {AuthorizeError} */
  authorize(identity: Identity, topic: string): Promise<Permission> {
    const userId = identity.userId;
    const entry = this.answers.get(userId)?.get(topic);
    if (entry !== undefined) {
      if (entry.expiresAt > this.now()) return Promise.resolve(entry.permission);
      this.forget(userId, topic);
    }
    const key = `${userId}\0${topic}`;
    const pending = this.inFlight.get(key);
    if (pending !== undefined) return pending.promise;
    const epoch = this.epochs.get(userId) ?? 0;
    this.calls++;
    const promise = this.authority.authorize(identity, topic).then((permission) => {
      if ((this.epochs.get(userId) ?? 0) === epoch) this.remember(userId, topic, permission);
      return permission;
    });
    this.inFlight.set(key, { promise, epoch });
    const done = (): void => {
      this.inFlight.delete(key);
      if (this.epochs.has(userId) && !this.waiting(userId)) this.epochs.delete(userId);
    };
    promise.then(done, done);
    return promise;
  }

  /** The server API changed `userId`'s permission on `topic`: its answer is asked again. */
  evict(userId: string, topic: string): void {
    this.forget(userId, topic);
    this.bump(userId);
  }

  /** The server API logged `userId` out: every answer of theirs is asked again. */
  evictUser(userId: string): void {
    const topics = this.answers.get(userId);
    if (topics !== undefined) {
      this.count -= topics.size;
      this.answers.delete(userId);
    }
    this.bump(userId);
  }

  private bump(userId: string): void {
    // Only lookups in flight read the epoch: it is kept while one of the user's is.
    if (this.waiting(userId)) this.epochs.set(userId, (this.epochs.get(userId) ?? 0) + 1);
  }

  /** Whether a lookup of `userId` is in flight (they are few: a scan is cheaper than an index). */
  private waiting(userId: string): boolean {
    const prefix = `${userId}\0`;
    for (const key of this.inFlight.keys()) if (key.startsWith(prefix)) return true;
    return false;
  }

  /**
   * Keep an accepted answer. Users are kept in the order they last wrote
   * one, and each user's answers in the order written: every answer expires
   * a fixed time after it is written, so the first in that order are the
   * first to be useless, and they go first when the cache is full.
   */
  private remember(userId: string, topic: string, permission: Permission): void {
    if (this.ttlMs <= 0) return;
    let topics = this.answers.get(userId);
    if (topics !== undefined) {
      if (topics.delete(topic)) this.count--;
      // Set again below, as the newest writer.
      this.answers.delete(userId);
    }
    topics ??= new Map();
    if (this.count >= MAX_AUTHORIZE_ANSWERS) this.evictOldest(topics);
    this.answers.set(userId, topics);
    topics.set(topic, { permission, expiresAt: this.now() + this.ttlMs });
    this.count++;
  }

  private forget(userId: string, topic: string): void {
    const topics = this.answers.get(userId);
    if (topics === undefined || !topics.delete(topic)) return;
    this.count--;
    if (topics.size === 0) this.answers.delete(userId);
  }

  /** Make room: every answer of the user who wrote longest ago; when the writer (`own`, its answers) is alone in the cache, its own oldest answer. */
  private evictOldest(own: Map<string, Entry>): void {
    const oldest = this.answers.entries().next().value;
    if (oldest !== undefined) {
      this.count -= oldest[1].size;
      this.answers.delete(oldest[0]);
      return;
    }
    own.delete(own.keys().next().value!);
    this.count--;
  }

  /** Answers held (for tests). */
  get size(): number {
    return this.count;
  }

  /** Whether an unexpired answer of `userId` on `topic` is held (for tests; it moves nothing). */
  holds(userId: string, topic: string): boolean {
    const entry = this.answers.get(userId)?.get(topic);
    return entry !== undefined && entry.expiresAt > this.now();
  }

  close(): Promise<void> {
    this.answers.clear();
    this.count = 0;
    return this.authority.close();
  }
}
