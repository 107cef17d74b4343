/**
 * The server API on the primary (issue 13): authenticates each call with
 * `--api-key`, turns it into one request object (api-request.ts), sends that
 * to the shard that owns the desktop (the router's hash) or to every shard
 * for a user-wide call, and answers with what the shards did.
 *
 * Nothing is half-applied: every shard a call needs must be running before
 * it is sent to any (else `503` with `Retry-After`), and a call refused for
 * its input, its rate or its size reaches no shard. A shard that dies after
 * taking a call took its sessions with it; one that does not answer within
 * {@link API_SHARD_TIMEOUT_MS} gets the call a `504` (it may have applied it).
 *
 * What a caller can make the primary hold is bounded: at most
 * {@link MAX_API_CONNECTIONS} API connections (an idle kept-alive one is
 * closed to make room for a newcomer; with none idle, `503`), one request
 * each at a time, bodies of at most 64 KiB (api-connection.ts), so at most
 * that many requests waiting for shards.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import type { ServeConfig } from '../config.ts';
import { KeyedBuckets } from '../keyed-buckets.ts';
import type { Logger } from '../log.ts';
import { ApiRefusals, desktopOf, type ApiOutcome, type ApiRequest, type LiveSession } from '../protocol/api.ts';
import { bearerToken, httpResponse, type RequestHead } from '../protocol/http.ts';
import { endWithResponse } from '../linger.ts';
import { ApiMetric, type MetricsSlot } from '../protocol/metrics.ts';
import { ApiConnection, refusalAnswer, type ApiAnswer, type ApiHandler } from './api-connection.ts';
import { matchEndpoint, parseRequest, takesBody } from './api-request.ts';
import { shardFor } from './router.ts';
import type { ApiResult, ShardPool } from './shard-pool.ts';

/** Most API connections open at once. */
export const MAX_API_CONNECTIONS = 256;
/** Longest wait for a shard to report what it did with a request. */
export const API_SHARD_TIMEOUT_MS = 5000;

const ANSWERED: Record<ApiRequest['kind'], number> = {
  publish: ApiMetric.PUBLISH,
  user_event: ApiMetric.USER_EVENT,
  broadcast: ApiMetric.BROADCAST,
  set_permission: ApiMetric.SET_PERMISSION,
  disconnect: ApiMetric.DISCONNECT,
  presence: ApiMetric.PRESENCE,
  user_sessions: ApiMetric.USER_SESSIONS,
};

const REFUSED: Record<number, number> = {
  400: ApiMetric.REFUSED_400,
  401: ApiMetric.REFUSED_401,
  404: ApiMetric.REFUSED_404,
  405: ApiMetric.REFUSED_405,
  413: ApiMetric.REFUSED_413,
  429: ApiMetric.REFUSED_429,
  503: ApiMetric.REFUSED_503,
  504: ApiMetric.REFUSED_504,
};

/** Calls that change who may do what are logged at info; events and queries at debug. */
const NOTABLE: ReadonlySet<string> = new Set(['set_permission', 'disconnect', 'broadcast']);

const UTF8 = new TextDecoder('utf-8', { fatal: true });

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest();

export interface ApiServerOptions {
  config: ServeConfig;
  pool: ShardPool;
  log: Logger;
  /** Answer a request outside /api/v1/ that came on an API connection, as the primary answers any other (and close). */
  elsewhere: (socket: Socket, head: RequestHead) => void;
}

export class ApiServer implements ApiHandler {
  private readonly config: ServeConfig;
  /** Calls travel to other nodes (--nats-url with --federation-key). */
  private readonly federates: boolean;
  private readonly pool: ShardPool;
  private readonly log: Logger;
  private readonly metrics: MetricsSlot;
  private readonly other: (socket: Socket, head: RequestHead) => void;
  /** The key's digest: comparing digests takes the same time whatever the length of what was presented. */
  private readonly keyDigest: Buffer;
  /** Open connections, oldest first. */
  private readonly connections = new Set<ApiConnection>();
  private readonly broadcasts: KeyedBuckets;
  /** Bytes of publishes by desktop: why here, see {@link publishWait}. */
  private readonly publishes: KeyedBuckets;
  /** The name this node gives itself in the sessions it reports. */
  private closing = false;

  constructor(options: ApiServerOptions) {
    this.config = options.config;
    this.federates = this.config.natsUrls.length > 0 && this.config.federationKey !== '';
    this.pool = options.pool;
    this.log = options.log;
    this.metrics = options.pool.primaryMetrics;
    this.other = options.elsewhere;
    this.keyDigest = sha256(options.config.apiKey);
    this.broadcasts = new KeyedBuckets(options.config.apiBroadcastRate, 1);
    this.publishes = new KeyedBuckets(options.config.apiPublishRate, options.config.apiPublishBurst);
  }

  /** A connection whose first head (`head`, followed by `rest`) the router sent to the API. */
  accept(socket: Socket, head: RequestHead, rest: Buffer): void {
    if (this.connections.size >= MAX_API_CONNECTIONS && !this.closeOldestIdle()) {
      const answer = this.authorized(head) ? refusalAnswer(ApiRefusals.BUSY, `${MAX_API_CONNECTIONS} API connections are busy`) : this.unauthorized();
      this.answered(answer.status);
      endWithResponse(socket, httpResponse(answer.status, answer.body + '\n', answer.headers, 'application/json'));
      return;
    }
    const connection = new ApiConnection(socket, this, { maxHeadBytes: this.config.maxHeadBytes, requestTimeoutMs: this.config.handshakeTimeoutMs });
    this.connections.add(connection);
    this.metrics.set(ApiMetric.CONNECTIONS, this.connections.size);
    connection.start(head, rest);
  }

  /** Stop keeping connections alive: idle ones close now, busy ones after their answer. */
  shutdown(): void {
    this.closing = true;
    for (const connection of [...this.connections]) connection.closeIfIdle();
  }

  private closeOldestIdle(): boolean {
    for (const connection of this.connections) if (connection.closeIfIdle()) return true;
    return false;
  }

  private authorized(head: RequestHead): boolean {
    const presented = bearerToken(head.headers.authorization);
    return presented !== null && timingSafeEqual(sha256(presented), this.keyDigest);
  }

  private unauthorized(): ApiAnswer {
    return refusalAnswer(ApiRefusals.UNAUTHORIZED, 'a valid API key is required: Authorization: Bearer <key>', { 'WWW-Authenticate': 'Bearer' });
  }

  screen(head: RequestHead): ApiAnswer | null {
    if (!this.authorized(head)) return this.unauthorized();
    if (this.closing) return refusalAnswer(ApiRefusals.SHUTTING_DOWN, 'the server is shutting down');
    const endpoint = matchEndpoint(head.method, head.path);
    if (!endpoint.ok) return refusalAnswer(endpoint.failure.refusal, endpoint.failure.message, endpoint.failure.headers);
    const length = head.headers['content-length'];
    if (!takesBody(endpoint.value) && ((length !== undefined && length !== '0') || head.headers['transfer-encoding'] !== undefined)) {
      return refusalAnswer(ApiRefusals.BAD_REQUEST, `${head.method} takes no body`);
    }
    return null;
  }

  async respond(head: RequestHead, body: Buffer): Promise<ApiAnswer> {
    const started = performance.now();
    const endpoint = matchEndpoint(head.method, head.path);
    if (!endpoint.ok) return refusalAnswer(endpoint.failure.refusal, endpoint.failure.message, endpoint.failure.headers);
    let text: string;
    try {
      text = UTF8.decode(body);
    } catch {
      return refusalAnswer(ApiRefusals.INVALID_JSON, 'the body is not UTF-8');
    }
    const parsed = parseRequest(endpoint.value, text, randomUUID(), Date.now());
    if (!parsed.ok) return refusalAnswer(parsed.failure.refusal, parsed.failure.message);
    const request = parsed.value;

    const desktopId = desktopOf(request);
    const shards = desktopId === null ? [...Array(this.pool.size).keys()] : [shardFor(desktopId, this.pool.size)];
    // A role change also reaches the user's multiplexed connections and authorize answers, on the user's shard (router.ts connectionShardFor).
    if (request.kind === 'set_permission') {
      const userShard = shardFor(request.userId, this.pool.size);
      if (!shards.includes(userShard)) shards.push(userShard);
    }
    const down = shards.filter((s) => !this.pool.isReady(s));
    if (down.length > 0) {
      const retryAfterS = Math.max(...down.map((s) => this.pool.retryAfterSeconds(s)));
      return refusalAnswer(ApiRefusals.SHARD_UNAVAILABLE, `shard ${down.join(', ')} is restarting; nothing was applied`, {}, retryAfterS);
    }
    // A command for the whole fleet while this node's bus is down would reach only its own sessions: refused, not half-applied.
    if (this.federates && request.kind !== 'presence' && request.kind !== 'user_sessions') {
      const cut = shards.filter((s) => !this.pool.federationConnected(s));
      if (cut.length > 0) {
        return refusalAnswer(ApiRefusals.FEDERATION_UNAVAILABLE, 'this node has lost the bus to the other nodes; nothing was applied', {}, 1);
      }
    }
    if (request.kind === 'broadcast') {
      const waitMs = this.broadcasts.take('', Date.now());
      if (waitMs > 0) {
        return refusalAnswer(
          ApiRefusals.RATE_LIMITED,
          `at most ${this.config.apiBroadcastRate} broadcast(s) a second`,
          {},
          Math.max(1, Math.ceil(waitMs / 1000)),
        );
      }
    }
    if (request.kind === 'publish') {
      const refused = this.publishWait(request.desktopId, request.event);
      if (refused !== null) return refused;
    }

    const results = await Promise.all(shards.map((s) => this.pool.api(s, request, API_SHARD_TIMEOUT_MS)));
    const late = shards.filter((_, i) => results[i] === 'timeout');
    const outcomes = results.filter((r): r is ApiOutcome => typeof r === 'object');
    const reached = outcomes.reduce((n, o) => n + o.reached, 0);
    const changed = outcomes.reduce((n, o) => n + o.changed, 0);
    const fields = {
      id: request.id,
      kind: request.kind,
      ...(desktopId === null ? {} : { desktopId }),
      ...('userId' in request ? { userId: request.userId } : {}),
      reached,
      changed,
      ms: Math.round((performance.now() - started) * 10) / 10,
    };
    if (late.length > 0) {
      this.log.warn('api_shard_timeout', { ...fields, shards: late });
      return refusalAnswer(
        ApiRefusals.SHARD_TIMEOUT,
        `shard ${late.join(', ')} did not answer within ${API_SHARD_TIMEOUT_MS} ms; the call may have been applied in part`,
      );
    }
    this.note(results);
    if (NOTABLE.has(request.kind)) this.log.info('api_request', fields);
    else if (this.log.enabled('debug')) this.log.debug('api_request', fields);
    this.metrics.add(ANSWERED[request.kind]);
    return this.success(request, outcomes, reached, changed);
  }

  /**
   * The bound on what the API sends one desktop (`--api-publish-rate` bytes a
   * second after `--api-publish-burst`): null when `event` fits, else the
   * 429 to answer, and then nothing is sent anywhere.
   *
   * It lives here, in the primary, because the primary knows each call's
   * size before routing it: a call over the bound is refused before it
   * crosses to a shard (no shard work, nothing half-applied), every call of
   * this node passes this one place, and the caller learns at once how long
   * to wait. Each shard's own defence is the process cap; this keeps what
   * reaches the members of a desktop at a pace they can drain, so that the
   * server's own publishes do not make readers slow consumers. With several
   * nodes each applies its own bound to the calls it takes; a publish from
   * the bus was bounded by the node that took it.
   */
  private publishWait(desktopId: string, event: string): ApiAnswer | null {
    const bytes = Buffer.byteLength(event);
    const waitMs = this.publishes.take(desktopId, Date.now(), bytes);
    if (waitMs === 0) return null;
    const { apiPublishRate: rate, apiPublishBurst: burst } = this.config;
    return refusalAnswer(
      ApiRefusals.DESKTOP_RATE_LIMITED,
      `desktop ${desktopId} may be sent ${rate} bytes a second by the API (${burst} at once); this event is ${bytes} bytes`,
      {},
      Math.max(1, Math.ceil(waitMs / 1000)),
    );
  }

  /** A shard that died after taking a request is logged: its sessions are gone, and the others applied the request. */
  private note(results: ApiResult[]): void {
    const exited = results.filter((r) => r === 'exited').length;
    if (exited > 0) this.log.warn('api_shard_exited', { shards: exited });
  }

  private success(request: ApiRequest, outcomes: ApiOutcome[], reached: number, changed: number): ApiAnswer {
    const sessions = (): LiveSession[] => outcomes.flatMap((o) => o.sessions ?? []);
    switch (request.kind) {
      case 'publish':
      case 'user_event':
      case 'broadcast':
        return { status: 202, body: JSON.stringify({ id: request.id, delivered: reached }) };
      case 'set_permission':
        return { status: 202, body: JSON.stringify({ id: request.id, sessions: reached, changed }) };
      case 'disconnect':
        return { status: 202, body: JSON.stringify({ id: request.id, disconnected: changed }) };
      case 'presence':
        return { status: 200, body: JSON.stringify({ desktopId: request.desktopId, sessions: sessions() }) };
      case 'user_sessions':
        return { status: 200, body: JSON.stringify({ userId: request.userId, sessions: sessions() }) };
    }
  }

  elsewhere(socket: Socket, head: RequestHead): void {
    this.other(socket, head);
  }

  keepAlive(): boolean {
    return !this.closing;
  }

  answered(status: number): void {
    if (status >= 400) this.metrics.add(REFUSED[status] ?? ApiMetric.REFUSED_OTHER);
  }

  closed(connection: ApiConnection): void {
    this.connections.delete(connection);
    this.metrics.set(ApiMetric.CONNECTIONS, this.connections.size);
  }
}
