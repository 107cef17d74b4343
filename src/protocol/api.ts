/**
 * The server API (`/api/v1/…`, issue 13) as it crosses threads, and later
 * nodes: every call the primary accepts becomes one plain, serializable
 * request object with a unique `id`. A command changes live sessions
 * (publish, permission, disconnect, user event, broadcast); a query reads
 * them (presence, a user's sessions). A shard applies either in one
 * function (shard/commands.ts), whether it came from this node's primary or,
 * with federation, from another node over the bus; it applies each `id`
 * once, so a command that reaches a node twice (its own publication echoed
 * back, say) changes nothing the second time.
 *
 * Bus subjects (reserved here; federation publishes each command on one).
 * They lie outside `room.*`, so relays that only federate rooms ignore them:
 *
 * - `api.desktop.<desktopId>`: publish, permission (and presence queries):
 *   nodes with sessions on that desktop apply them;
 * - `api.users`: user events, disconnects, broadcasts (and user-session
 *   queries): every node applies them to its own sessions. User ids are not
 *   put in subjects (any string may be one; subjects may not hold `.`, `*`,
 *   `>` or spaces).
 */
import { DESKTOP_ID_PATTERN, MAX_TYPE_LENGTH, RESERVED_TYPES, SERVER_SENDER, type Permission } from './events.ts';

/**
 * Types the API may not send: the server's own events (`room_joined`,
 * `session_joined`, `session_left`, `session_updated`, `permission_changed`,
 * `error`), and anything else named `session_…`, kept for presence.
 */
export function isReservedApiType(type: string): boolean {
  return RESERVED_TYPES.has(type) || type.startsWith('session_');
}

/** Every endpoint is under this prefix. */
export const API_PREFIX = '/api/v1/';

/** Largest request body (64 KiB); a larger `Content-Length` is answered 413 without reading it. */
export const MAX_API_BODY_BYTES = 64 * 1024;

/** A permission the API may set: a role, or `none` (the user's sessions on the desktop are closed with 4003). */
export type ApiPermission = Permission | 'none';
export const API_PERMISSIONS: ReadonlySet<string> = new Set<ApiPermission>(['editor', 'viewer', 'none']);

/** Longest close reason a disconnect may give (a close frame's reason is at most 123 bytes). */
export const MAX_CLOSE_REASON_BYTES = 123;

/** Close reasons the server gives with 4001 and 4003. */
export const CloseReason = {
  DISCONNECTED: 'disconnected',
  TOKEN_EXPIRED: 'token expired',
  PERMISSION_REVOKED: 'permission revoked',
} as const;

/** An event to every session of a desktop (`exceptUserId`'s excepted). `event` is the frame's finished JSON text. */
export interface PublishCommand {
  kind: 'publish';
  id: string;
  desktopId: string;
  exceptUserId?: string;
  /** For logs: the event's `type`. */
  type: string;
  event: string;
}

/** An event to every session of a user, on every desktop. */
export interface UserEventCommand {
  kind: 'user_event';
  id: string;
  userId: string;
  type: string;
  event: string;
}

/** An event to every session. */
export interface BroadcastCommand {
  kind: 'broadcast';
  id: string;
  type: string;
  event: string;
}

/** Set a user's permission on a desktop: applies to its live sessions there. */
export interface SetPermissionCommand {
  kind: 'set_permission';
  id: string;
  desktopId: string;
  userId: string;
  permission: ApiPermission;
}

/** Close every session of a user with 4001. */
export interface DisconnectCommand {
  kind: 'disconnect';
  id: string;
  userId: string;
  reason: string;
}

export type ApiCommand = PublishCommand | UserEventCommand | BroadcastCommand | SetPermissionCommand | DisconnectCommand;

/** The sessions on a desktop. */
export interface PresenceQuery {
  kind: 'presence';
  id: string;
  desktopId: string;
}

/** A user's sessions, on every desktop. */
export interface UserSessionsQuery {
  kind: 'user_sessions';
  id: string;
  userId: string;
}

export type ApiQuery = PresenceQuery | UserSessionsQuery;
export type ApiRequest = ApiCommand | ApiQuery;

/** Requests whose target is one desktop, hence one shard (the router's hash); the others go to every shard. */
export function desktopOf(request: ApiRequest): string | null {
  return request.kind === 'publish' || request.kind === 'set_permission' || request.kind === 'presence' ? request.desktopId : null;
}

/** The bus subject a request travels on (see the top of this file). */
export function apiSubject(request: ApiRequest): string {
  const desktopId = desktopOf(request);
  return desktopId === null ? 'api.users' : `api.desktop.${desktopId}`;
}

/** A live session as the API reports it. */
export interface LiveSession {
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  desktopId: string;
  permission: Permission;
  /** Milliseconds since the epoch. */
  connectedAt: number;
  /** The node (host name) and shard holding it. */
  node: string;
  shard: number;
}

/** What one shard did with a request. */
export interface ApiOutcome {
  /** The id was applied before: nothing was done. */
  duplicate: boolean;
  /** Sessions a command reached (delivered to, or matched). */
  reached: number;
  /** Sessions whose state a command changed (permission changed, closed). */
  changed: number;
  /** A query's answer: this shard's sessions and, from the shard that asked the bus, other nodes'. */
  sessions?: LiveSession[];
}

/** `code` of an API error body `{"code", "message"}`, with its HTTP status. */
export interface ApiRefusal {
  readonly status: number;
  readonly code: string;
  /** Seconds, for 429 and 503. A refusal may give its own figure. */
  readonly retryAfterS?: number;
}

/** Every error the API answers, in one table; tests assert the `code`. */
export const ApiRefusals = {
  /** The body is not JSON. */
  INVALID_JSON: { status: 400, code: 'invalid_json' },
  /** The body is not an object, or a field has the wrong type or value. */
  INVALID_BODY: { status: 400, code: 'invalid_body' },
  /** `type` missing, not a string, empty or over 64 characters. */
  INVALID_TYPE: { status: 400, code: 'invalid_type' },
  /** `type` is one of the server's own events (`room_joined`, `session_*`, `error`, `permission_changed`). */
  RESERVED_TYPE: { status: 400, code: 'reserved_type' },
  /** `permission` is not `editor`, `viewer` or `none`. */
  INVALID_PERMISSION: { status: 400, code: 'invalid_permission' },
  /** A desktop or user id in the path fails its pattern. */
  INVALID_ID: { status: 400, code: 'invalid_id' },
  /** A GET with a body, or a request head the strict parser refused. */
  BAD_REQUEST: { status: 400, code: 'bad_request' },
  UNAUTHORIZED: { status: 401, code: 'unauthorized' },
  NOT_FOUND: { status: 404, code: 'not_found' },
  METHOD_NOT_ALLOWED: { status: 405, code: 'method_not_allowed' },
  /** The body did not arrive within the request deadline. */
  BODY_TIMEOUT: { status: 408, code: 'body_timeout' },
  /** A body without `Content-Length` (chunked): not accepted. */
  LENGTH_REQUIRED: { status: 411, code: 'length_required' },
  BODY_TOO_LARGE: { status: 413, code: 'body_too_large' },
  /** A request head over `--max-head-size` on a kept-alive connection. */
  HEAD_TOO_LARGE: { status: 431, code: 'head_too_large' },
  /** Broadcasts over `--api-broadcast-rate`. */
  RATE_LIMITED: { status: 429, code: 'rate_limited', retryAfterS: 1 },
  /** Publishes to one desktop over `--api-publish-rate` bytes a second (after `--api-publish-burst`). */
  DESKTOP_RATE_LIMITED: { status: 429, code: 'desktop_rate_limited' },
  /** Too many API requests in flight at once. */
  BUSY: { status: 503, code: 'busy', retryAfterS: 1 },
  /** A shard the request needs is restarting: nothing was applied anywhere. */
  SHARD_UNAVAILABLE: { status: 503, code: 'shard_unavailable', retryAfterS: 1 },
  SHUTTING_DOWN: { status: 503, code: 'shutting_down', retryAfterS: 1 },
  /** With federation, a shard the command needs has lost its NATS connection: nothing was applied anywhere. */
  FEDERATION_UNAVAILABLE: { status: 503, code: 'federation_unavailable', retryAfterS: 1 },
  /** A shard took the request and did not answer in time: it may have been applied in part. */
  SHARD_TIMEOUT: { status: 504, code: 'shard_timeout' },
} as const satisfies Record<string, ApiRefusal>;

/** Longest id, user id or reason a request from the bus may carry. */
const MAX_BUS_FIELD = 1024;
const isText = (value: unknown, max = MAX_BUS_FIELD): value is string => typeof value === 'string' && value.length > 0 && value.length <= max;

/**
 * A server event's finished text from the bus: a JSON object whose `type`
 * is not one of the server's own and whose sender is the server, as the
 * primary builds it (api-request.ts). A forged event cannot speak for a user.
 */
function isServerEvent(event: unknown): event is string {
  if (typeof event !== 'string' || event.length > 2 * MAX_API_BODY_BYTES) return false;
  let value: unknown;
  try {
    value = JSON.parse(event);
  } catch {
    return false;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const { type, sessionId, userId } = value as Record<string, unknown>;
  return isText(type, MAX_TYPE_LENGTH) && !isReservedApiType(type) && sessionId === SERVER_SENDER && userId === SERVER_SENDER;
}

/**
 * A request another node published (federation): the same object its
 * primary made, checked field by field since the bus is untrusted. Null
 * when anything is off.
 */
export function parseBusRequest(value: unknown): ApiRequest | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const r = value as Record<string, unknown>;
  if (!isText(r.id, 64)) return null;
  const id = r.id;
  const desktop = (): string | null => (typeof r.desktopId === 'string' && DESKTOP_ID_PATTERN.test(r.desktopId) ? r.desktopId : null);
  switch (r.kind) {
    case 'publish': {
      const desktopId = desktop();
      if (desktopId === null || !isServerEvent(r.event) || (r.exceptUserId !== undefined && !isText(r.exceptUserId))) return null;
      const event = r.event;
      const type = (JSON.parse(event) as { type: string }).type;
      return { kind: 'publish', id, desktopId, type, event, ...(r.exceptUserId === undefined ? {} : { exceptUserId: r.exceptUserId as string }) };
    }
    case 'user_event':
      if (!isText(r.userId) || !isServerEvent(r.event)) return null;
      return { kind: 'user_event', id, userId: r.userId, type: (JSON.parse(r.event) as { type: string }).type, event: r.event };
    case 'broadcast':
      if (!isServerEvent(r.event)) return null;
      return { kind: 'broadcast', id, type: (JSON.parse(r.event) as { type: string }).type, event: r.event };
    case 'set_permission': {
      const desktopId = desktop();
      if (desktopId === null || !isText(r.userId) || typeof r.permission !== 'string' || !API_PERMISSIONS.has(r.permission)) return null;
      return { kind: 'set_permission', id, desktopId, userId: r.userId, permission: r.permission as ApiPermission };
    }
    case 'disconnect':
      if (!isText(r.userId) || typeof r.reason !== 'string' || Buffer.byteLength(r.reason) > MAX_CLOSE_REASON_BYTES) return null;
      return { kind: 'disconnect', id, userId: r.userId, reason: r.reason };
    case 'presence': {
      const desktopId = desktop();
      return desktopId === null ? null : { kind: 'presence', id, desktopId };
    }
    case 'user_sessions':
      return isText(r.userId) ? { kind: 'user_sessions', id, userId: r.userId } : null;
    default:
      return null;
  }
}
