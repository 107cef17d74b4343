/**
 * Every refusal the server answers with an HTTP status, in one table: its
 * status, the `reason` its log line carries, its `Retry-After` and its body.
 * The primary and the shards both answer through {@link rejectionResponse},
 * so a refusal reads the same wherever it is made, and `Retry-After` values
 * live here only.
 *
 * A refusal caused by a typed error (an expired token, a permission the API
 * denied) logs that error's `code` (`ERR_AUTH_EXPIRED`, …) beside the reason.
 */
import { httpResponse } from './http.ts';

export interface Rejection {
  readonly status: number;
  /** snake_case, stable: the `reason` of the `handshake_rejected` log line. */
  readonly reason: string;
  /** Seconds, when the client should come back (429, 503). A refusal may give its own figure instead. */
  readonly retryAfterS?: number;
  /** Body text; default: the detail given with the refusal, else the reason in words. */
  readonly body?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

const BEARER_CHALLENGE = { 'WWW-Authenticate': 'Bearer' };

export const Rejections = {
  /** A head the strict parser refused; the parser's reason is the body. */
  MALFORMED_HEAD: { status: 400, reason: 'bad_request' },
  HEAD_TOO_LARGE: { status: 431, reason: 'head_too_large' },
  HTTP_VERSION: { status: 505, reason: 'http_version_not_supported' },
  BODY_NOT_ALLOWED: { status: 400, reason: 'body_not_allowed' },
  /** An upgrade after another request on the same connection (a kept-alive API connection): only a connection's first request can be handed to a shard. */
  UPGRADE_ON_USED_CONNECTION: { status: 400, reason: 'upgrade_on_used_connection' },
  INVALID_DESKTOP_ID: { status: 400, reason: 'invalid_desktop_id' },
  /** `?epoch=…&offset=…` on a legacy route that is not a resume position (protocol/resume.ts); the detail says which rule it broke. */
  INVALID_RESUME: { status: 400, reason: 'invalid_resume' },
  UNAUTHORIZED: { status: 401, reason: 'unauthorized', body: 'unauthorized' },
  METRICS_UNAUTHORIZED: { status: 401, reason: 'metrics_unauthorized', headers: BEARER_CHALLENGE },
  ADMIN_UNAUTHORIZED: { status: 401, reason: 'admin_unauthorized', headers: BEARER_CHALLENGE },
  FORBIDDEN: { status: 403, reason: 'forbidden', body: 'forbidden' },
  ORIGIN_NOT_ALLOWED: { status: 403, reason: 'origin_not_allowed' },
  NOT_FOUND: { status: 404, reason: 'not_found' },
  NO_SUCH_SHARD: { status: 404, reason: 'no_such_shard' },
  /** Give `Allow` with the refusal. */
  METHOD_NOT_ALLOWED: { status: 405, reason: 'method_not_allowed' },
  UPGRADE_REQUIRED: { status: 426, reason: 'upgrade_required', headers: { Upgrade: 'websocket' } },
  TOO_MANY_CONNECTIONS_FOR_USER: { status: 429, reason: 'too_many_connections_for_user' },
  /** Give the seconds until the user's next connect with the refusal. */
  TOO_MANY_CONNECTS_FOR_USER: { status: 429, reason: 'too_many_connects_for_user', retryAfterS: 1 },
  TOO_MANY_HANDSHAKES_FOR_USER: { status: 429, reason: 'too_many_handshakes_for_user', retryAfterS: 1 },
  /** Give the seconds until the address's next handshake with the refusal. */
  TOO_MANY_HANDSHAKES_FROM_ADDRESS: { status: 429, reason: 'too_many_handshakes_from_address', retryAfterS: 1 },
  /** The client address already holds --max-ping-per-address /ws/ping sockets. */
  TOO_MANY_PINGS_FROM_ADDRESS: { status: 429, reason: 'too_many_pings_from_address', retryAfterS: 5 },
  INTERNAL_ERROR: { status: 500, reason: 'internal_error' },
  TOO_MANY_PENDING_FROM_ADDRESS: { status: 503, reason: 'too_many_pending_from_address', retryAfterS: 1 },
  SHUTTING_DOWN: { status: 503, reason: 'shutting_down', retryAfterS: 1 },
  /** Give the seconds until the shard's restart with the refusal. */
  SHARD_UNAVAILABLE: { status: 503, reason: 'shard_unavailable', retryAfterS: 1 },
  WORKER_FULL: { status: 503, reason: 'worker_full', retryAfterS: 5 },
  ROOM_FULL: { status: 503, reason: 'room_full', retryAfterS: 5 },
  /** The process already holds --max-ping-sockets /ws/ping sockets. */
  PING_FULL: { status: 503, reason: 'ping_full', retryAfterS: 5 },
  /** The permission API cannot answer: an outage, so clients retry rather than conclude they lost access. */
  PERMISSION_UNAVAILABLE: { status: 503, reason: 'permission_unavailable', retryAfterS: 2, body: 'permission service unavailable' },
  PERMISSION_BUSY: { status: 503, reason: 'permission_busy', retryAfterS: 1, body: 'permission service busy' },
} as const satisfies Record<string, Rejection>;

export interface RejectionDetails {
  /** Replaces the body (and is logged). */
  detail?: string;
  /** Replaces the table's Retry-After. */
  retryAfterS?: number;
  headers?: Record<string, string>;
}

/**
 * The header that names a refusal's `reason` (as in the log line), so that a
 * client or a load generator can tell a full room from a permission API
 * outage without parsing the body's words.
 */
export const REASON_HEADER = 'Moodio-Reason';

/** The complete HTTP response for a refusal. */
export function rejectionResponse(rejection: Rejection, details: RejectionDetails = {}): string {
  const retryAfterS = details.retryAfterS ?? rejection.retryAfterS;
  const headers: Record<string, string> = { ...rejection.headers, ...details.headers, [REASON_HEADER]: rejection.reason };
  if (retryAfterS !== undefined) headers['Retry-After'] = String(retryAfterS);
  const body = rejection.body ?? details.detail ?? rejection.reason.replaceAll('_', ' ');
  return httpResponse(rejection.status, `${body}\n`, headers);
}
