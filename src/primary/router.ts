/**
 * Where a request head goes: answered by the primary (health, rejections,
 * admin) or handed to a shard. Pure functions of the head, so the routing
 * rules are testable without sockets.
 */
import { timingSafeEqual } from 'node:crypto';
import { fnv1a32 } from '../protocol/hash.ts';
import { API_PREFIX } from '../protocol/api.ts';
import { bearerToken, headerHasToken, type RequestHead } from '../protocol/http.ts';
import { Rejections, type Rejection } from '../protocol/rejections.ts';
import { parseResumeQuery } from '../protocol/resume.ts';
import { CHECK_PATH, HEALTH_PATH, METRICS_PATH, parseWsPath, PING_PATH, STATS_PATH } from '../protocol/paths.ts';
import { extractCredentials } from '../auth/credentials.ts';
import { unverifiedUserId } from '../auth/token.ts';

export type Route =
  | { kind: 'health' }
  | { kind: 'metrics' }
  | { kind: 'stats' }
  | { kind: 'demo' }
  /** `desktopId`: the room key of a legacy route, '' for the multiplexed connection. */
  | { kind: 'shard'; desktopId: string; shard: number }
  /** `/ws/ping`: to a shard chosen by the client's address (the primary knows it, the head alone does not). */
  | { kind: 'ping' }
  /** `/check`: `GET` answers 200 with the region, `OPTIONS` 204; `headers` are its CORS headers. */
  | { kind: 'check'; preflight: boolean; headers: Record<string, string> }
  | { kind: 'terminate-shard'; shard: number }
  /** The server API (/api/v1/, with --api-key): api-server.ts takes the connection. */
  | { kind: 'api' }
  | {
      kind: 'reject';
      rejection: Rejection;
      headers?: Record<string, string>;
      /** The body, when the table's words are not enough (which resume rule was broken). */
      detail?: string;
      /** On the WebSocket path: counted as a refused handshake in /metrics. */
      handshake: boolean;
    };

export { fnv1a32 };

/** The shard that owns `desktopId`: `fnv1a32(desktopId) mod workers`. A production table's room key is `production-table:{id}`. */
export function shardFor(desktopId: string, workers: number): number {
  return fnv1a32(desktopId) % workers;
}

/**
 * The shard of a multiplexed connection: the hash of its user, read from
 * the token without verifying it (the shard verifies it; a forged userId
 * only picks a shard). Every connection of a user then shares one shard:
 * its authorize cache, its rate-limit bucket and its connect limits. No
 * token: shard 0, which answers 401.
 */
export function connectionShardFor(headers: Record<string, string>, workers: number): number {
  const credentials = extractCredentials(headers);
  const userId = credentials === null ? null : unverifiedUserId(credentials.token);
  return userId === null ? 0 : fnv1a32(userId) % workers;
}

const ADMIN_TERMINATE = /^\/admin\/shards\/(\d{1,3})\/terminate$/;

/** Constant-time comparison of the request's bearer token with `token`. */
function bearerMatches(authorization: string | undefined, token: string): boolean {
  const presented = bearerToken(authorization);
  if (presented === null) return false;
  const given = Buffer.from(presented);
  const expected = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export interface RouterOptions {
  workers: number;
  /** Empty = admin endpoints disabled (404). */
  adminToken: string;
  /** Origins a browser handshake may come from; empty = any. */
  allowedOrigins: readonly string[];
  /** Empty = /metrics is open. */
  metricsToken: string;
  /** Dev mode: /demo is served. */
  dev?: boolean;
  /** --api-key is set: /api/v1/ is the server API (else 404 like any unknown path). */
  api?: boolean;
}

/**
 * Cross-site WebSocket hijacking guard: browsers always send Origin on a
 * WebSocket handshake, so a listed set refuses pages from elsewhere. A
 * request without Origin is not a browser's and is let through (it still
 * needs a token).
 */
function originAllowed(origin: string | undefined, allowed: readonly string[]): boolean {
  if (allowed.length === 0 || origin === undefined) return true;
  return allowed.includes(origin.toLowerCase());
}

/**
 * An upgrade request must not have a body: the shard reads whatever follows
 * the head as WebSocket frames, so a body is either smuggled frames or bytes
 * a proxy in front of us frames differently (request smuggling).
 */
function hasBody(head: RequestHead): boolean {
  const length = head.headers['content-length'];
  return (length !== undefined && length !== '0') || head.headers['transfer-encoding'] !== undefined;
}

/**
 * The CORS headers of every `/check` answer. The request's Origin is
 * reflected whatever it is: the answer is public (a status and the region
 * label), it never allows credentials, and it reads the same for everyone, so
 * reflecting is `*` for a browser while still naming the page (as the
 * upstream relay does). `Vary: Origin` keeps a cache from serving one page's
 * answer to another. The strict head parser refused control bytes, so the
 * reflected value cannot split the response.
 */
export function checkHeaders(origin: string | undefined): Record<string, string> {
  return {
    ...(origin === undefined ? {} : { 'Access-Control-Allow-Origin': origin }),
    'Access-Control-Allow-Methods': 'GET, OPTIONS',
    'Access-Control-Allow-Headers': 'Content-Type',
    Vary: 'Origin',
  };
}

/** The checks every WebSocket route shares; null = go on. */
function upgradeRefusal(head: RequestHead, options: RouterOptions): Route | null {
  if (head.method !== 'GET') return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET' }, handshake: true };
  if (hasBody(head)) return { kind: 'reject', rejection: Rejections.BODY_NOT_ALLOWED, handshake: true };
  // RFC 6455 §4.1 asks for both. A sender of Upgrade must list it in Connection
  // (RFC 9110 §7.8); without that, the request is no upgrade, only a plain GET, and
  // gets the plain GET's answer.
  if (!headerHasToken(head.headers.upgrade, 'websocket') || !headerHasToken(head.headers.connection, 'upgrade')) {
    return { kind: 'reject', rejection: Rejections.UPGRADE_REQUIRED, handshake: true };
  }
  if (!originAllowed(head.headers.origin, options.allowedOrigins)) return { kind: 'reject', rejection: Rejections.ORIGIN_NOT_ALLOWED, handshake: true };
  return null;
}

/** Decide what to do with a parsed request head. */
export function route(head: RequestHead, options: RouterOptions): Route {
  const path = parseWsPath(head.path);
  if (path.kind === 'room' || path.kind === 'connection') {
    const refused = upgradeRefusal(head, options);
    if (refused !== null) return refused;
    if (path.kind === 'connection') return { kind: 'shard', desktopId: '', shard: connectionShardFor(head.headers, options.workers) };
    // Checked here, before a token or a permission costs anything: a bad resume position is never replayed from.
    const resume = parseResumeQuery(head.url);
    if (resume.kind === 'bad') return { kind: 'reject', rejection: Rejections.INVALID_RESUME, detail: `invalid resume: ${resume.detail}`, handshake: true };
    return { kind: 'shard', desktopId: path.roomKey, shard: shardFor(path.roomKey, options.workers) };
  }
  if (path.kind === 'bad-id') return { kind: 'reject', rejection: Rejections.INVALID_DESKTOP_ID, handshake: true };
  if (head.path === PING_PATH) return upgradeRefusal(head, options) ?? { kind: 'ping' };
  if (head.path === CHECK_PATH) {
    const headers = checkHeaders(head.headers.origin);
    if (head.method === 'GET' || head.method === 'OPTIONS') return { kind: 'check', preflight: head.method === 'OPTIONS', headers };
    return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET, OPTIONS', ...headers }, handshake: false };
  }
  if (head.path === HEALTH_PATH) {
    if (head.method !== 'GET' && head.method !== 'HEAD') {
      return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET, HEAD' }, handshake: false };
    }
    return { kind: 'health' };
  }
  if (options.dev && (head.path === '/demo' || head.path.startsWith('/demo/'))) {
    if (head.method !== 'GET') return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET' }, handshake: false };
    return { kind: 'demo' };
  }
  if (head.path === METRICS_PATH) {
    if (head.method !== 'GET') return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET' }, handshake: false };
    if (options.metricsToken !== '' && !bearerMatches(head.headers.authorization, options.metricsToken)) {
      return { kind: 'reject', rejection: Rejections.METRICS_UNAUTHORIZED, handshake: false };
    }
    return { kind: 'metrics' };
  }
  if (head.path === STATS_PATH && options.adminToken !== '') {
    if (head.method !== 'GET') return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'GET' }, handshake: false };
    if (!bearerMatches(head.headers.authorization, options.adminToken)) {
      return { kind: 'reject', rejection: Rejections.ADMIN_UNAUTHORIZED, handshake: false };
    }
    return { kind: 'stats' };
  }
  if (options.api && head.path.startsWith(API_PREFIX)) return { kind: 'api' };
  const admin = options.adminToken === '' ? null : ADMIN_TERMINATE.exec(head.path);
  if (admin) {
    if (head.method !== 'POST') return { kind: 'reject', rejection: Rejections.METHOD_NOT_ALLOWED, headers: { Allow: 'POST' }, handshake: false };
    if (!bearerMatches(head.headers.authorization, options.adminToken)) {
      return { kind: 'reject', rejection: Rejections.ADMIN_UNAUTHORIZED, handshake: false };
    }
    const shard = Number(admin[1]);
    if (shard >= options.workers) return { kind: 'reject', rejection: Rejections.NO_SUCH_SHARD, handshake: false };
    return { kind: 'terminate-shard', shard };
  }
  return { kind: 'reject', rejection: Rejections.NOT_FOUND, handshake: false };
}
