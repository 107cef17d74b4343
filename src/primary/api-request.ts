/**
 * What an API request asks for: its endpoint (method and path) and its body,
 * validated into one {@link ApiRequest}. Pure functions, so that every bad
 * input and its answer is testable without sockets; the server around them
 * is api-server.ts.
 *
 * | Method | Path | Body |
 * |---|---|---|
 * | POST | /api/v1/desktops/{desktopId}/events | {type, payload?, exceptUserId?} |
 * | PUT | /api/v1/desktops/{desktopId}/permissions/{userId} | {permission} |
 * | GET | /api/v1/desktops/{desktopId}/presence | — |
 * | POST | /api/v1/users/{userId}/events | {type, payload?} |
 * | POST | /api/v1/users/{userId}/disconnect | {reason?} or none |
 * | GET | /api/v1/users/{userId}/sessions | — |
 * | POST | /api/v1/broadcast | {type, payload?} |
 */
import { MAX_CLAIM_LENGTH, MAX_ENCODED_CLAIM_LENGTH } from '../auth/token.ts';
import {
  API_PERMISSIONS,
  API_PREFIX,
  ApiRefusals,
  CloseReason,
  MAX_CLOSE_REASON_BYTES,
  type ApiPermission,
  type ApiRefusal,
  type ApiRequest,
} from '../protocol/api.ts';
import { isReservedApiType } from '../protocol/api.ts';
import { DESKTOP_ID_PATTERN, MAX_TYPE_LENGTH } from '../protocol/events.ts';
import { legacyText, SERVER_STAMP } from '../protocol/event-frames.ts';
import { memberText } from '../protocol/json-member.ts';

export type Endpoint =
  | { name: 'publish'; desktopId: string }
  | { name: 'set_permission'; desktopId: string; userId: string }
  | { name: 'presence'; desktopId: string }
  | { name: 'user_event'; userId: string }
  | { name: 'disconnect'; userId: string }
  | { name: 'user_sessions'; userId: string }
  | { name: 'broadcast' };

export type EndpointName = Endpoint['name'];

/** Why a request is refused: its table entry, the message of its body, extra headers (Allow). */
export interface ApiFailure {
  refusal: ApiRefusal;
  message: string;
  headers?: Record<string, string>;
}

export type Matched<T> = { ok: true; value: T } | { ok: false; failure: ApiFailure };

const fail = (refusal: ApiRefusal, message: string, headers?: Record<string, string>): { ok: false; failure: ApiFailure } => ({
  ok: false,
  failure: headers === undefined ? { refusal, message } : { refusal, message, headers },
});

/** Endpoints that read a body. */
export function takesBody(endpoint: Endpoint): boolean {
  return endpoint.name !== 'presence' && endpoint.name !== 'user_sessions';
}

/**
 * A user id as tokens carry it: non-empty, at most 256 characters, at most
 * 384 once JSON-encoded, well-formed Unicode (the rules of auth/token.ts).
 * An id outside them belongs to no session.
 */
export function isUserId(value: string): boolean {
  return value.length > 0 && value.length <= MAX_CLAIM_LENGTH && value.isWellFormed() && JSON.stringify(value).length - 2 <= MAX_ENCODED_CLAIM_LENGTH;
}

/** A path segment holding a user id: percent-decoded, then checked. */
function userSegment(segment: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(segment);
  } catch {
    return null;
  }
  return isUserId(decoded) ? decoded : null;
}

type Route = { method: string; make: (ids: string[]) => Endpoint; ids: ('desktop' | 'user')[] };

/** Path shapes, `*` standing for an id. */
const ROUTES: Record<string, Route> = {
  broadcast: { method: 'POST', ids: [], make: () => ({ name: 'broadcast' }) },
  'desktops/*/events': { method: 'POST', ids: ['desktop'], make: ([d]) => ({ name: 'publish', desktopId: d! }) },
  'desktops/*/presence': { method: 'GET', ids: ['desktop'], make: ([d]) => ({ name: 'presence', desktopId: d! }) },
  'desktops/*/permissions/*': {
    method: 'PUT',
    ids: ['desktop', 'user'],
    make: ([d, u]) => ({ name: 'set_permission', desktopId: d!, userId: u! }),
  },
  'users/*/events': { method: 'POST', ids: ['user'], make: ([u]) => ({ name: 'user_event', userId: u! }) },
  'users/*/disconnect': { method: 'POST', ids: ['user'], make: ([u]) => ({ name: 'disconnect', userId: u! }) },
  'users/*/sessions': { method: 'GET', ids: ['user'], make: ([u]) => ({ name: 'user_sessions', userId: u! }) },
};

/** The endpoint of `method` `path` (no query string): 404, 405 with `Allow`, or 400 for an id that fails its pattern. */
export function matchEndpoint(method: string, path: string): Matched<Endpoint> {
  if (!path.startsWith(API_PREFIX)) return fail(ApiRefusals.NOT_FOUND, 'no such endpoint');
  const segments = path.slice(API_PREFIX.length).split('/');
  // Collections (`desktops`, `users`) at even positions, ids at odd ones.
  const shape = segments.map((s, i) => (i % 2 === 1 ? '*' : s)).join('/');
  const route = ROUTES[shape];
  if (route === undefined) return fail(ApiRefusals.NOT_FOUND, 'no such endpoint');
  if (method !== route.method) return fail(ApiRefusals.METHOD_NOT_ALLOWED, `${method} is not allowed here`, { Allow: route.method });
  const ids: string[] = [];
  for (let i = 0; i < route.ids.length; i++) {
    const raw = segments[2 * i + 1]!;
    if (route.ids[i] === 'desktop') {
      if (!DESKTOP_ID_PATTERN.test(raw)) return fail(ApiRefusals.INVALID_ID, 'a desktop id must match ^[A-Za-z0-9_-]{1,128}$');
      ids.push(raw);
    } else {
      const userId = userSegment(raw);
      if (userId === null) {
        return fail(ApiRefusals.INVALID_ID, `a user id must be 1 to ${MAX_CLAIM_LENGTH} characters of well-formed, percent-encoded Unicode`);
      }
      ids.push(userId);
    }
  }
  return { ok: true, value: route.make(ids) };
}

export { isReservedApiType };

function parseObject(text: string): Matched<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return fail(ApiRefusals.INVALID_JSON, 'the body is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail(ApiRefusals.INVALID_BODY, 'the body must be a JSON object');
  return { ok: true, value: value as Record<string, unknown> };
}

const field = (body: Record<string, unknown>, name: string): unknown => (Object.hasOwn(body, name) ? body[name] : undefined);

/**
 * The finished JSON text of a server event: `type`, the server's stamp
 * (`sessionId` and `userId` `"server"`, `timestamp`; no `firstName` or
 * `email`), and `payload` as the caller sent it, not re-serialized.
 */
function serverEvent(body: Record<string, unknown>, text: string, now: number): Matched<{ type: string; event: string }> {
  const type = field(body, 'type');
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_TYPE_LENGTH) {
    return fail(ApiRefusals.INVALID_TYPE, `"type" must be a non-empty string of at most ${MAX_TYPE_LENGTH} characters`);
  }
  if (isReservedApiType(type)) return fail(ApiRefusals.RESERVED_TYPE, `"${type}" is one of the server's own event types`);
  return { ok: true, value: { type, event: legacyText(type, SERVER_STAMP, now, memberText(text, 'payload')) } };
}

/**
 * Validate the body of a request to `endpoint` into the request shards
 * apply. `text` is the body (`''` when there is none); `id` the request's
 * unique id; `now` the server's timestamp for the events it sends.
 */
export function parseRequest(endpoint: Endpoint, text: string, id: string, now: number): Matched<ApiRequest> {
  switch (endpoint.name) {
    case 'presence':
      return { ok: true, value: { kind: 'presence', id, desktopId: endpoint.desktopId } };
    case 'user_sessions':
      return { ok: true, value: { kind: 'user_sessions', id, userId: endpoint.userId } };
    case 'disconnect': {
      if (text.trim() === '') return { ok: true, value: { kind: 'disconnect', id, userId: endpoint.userId, reason: CloseReason.DISCONNECTED } };
      const body = parseObject(text);
      if (!body.ok) return body;
      const reason = field(body.value, 'reason');
      if (reason !== undefined && (typeof reason !== 'string' || Buffer.byteLength(reason) > MAX_CLOSE_REASON_BYTES)) {
        return fail(ApiRefusals.INVALID_BODY, `"reason" must be a string of at most ${MAX_CLOSE_REASON_BYTES} bytes`);
      }
      return { ok: true, value: { kind: 'disconnect', id, userId: endpoint.userId, reason: reason ?? CloseReason.DISCONNECTED } };
    }
    case 'set_permission': {
      const body = parseObject(text);
      if (!body.ok) return body;
      const permission = field(body.value, 'permission');
      if (typeof permission !== 'string') return fail(ApiRefusals.INVALID_BODY, '"permission" must be a string: editor, viewer or none');
      if (!API_PERMISSIONS.has(permission)) return fail(ApiRefusals.INVALID_PERMISSION, `"${permission.slice(0, 64)}" is not editor, viewer or none`);
      const { desktopId, userId } = endpoint;
      return { ok: true, value: { kind: 'set_permission', id, desktopId, userId, permission: permission as ApiPermission } };
    }
    case 'publish':
    case 'user_event':
    case 'broadcast': {
      const body = parseObject(text);
      if (!body.ok) return body;
      const built = serverEvent(body.value, text, now);
      if (!built.ok) return built;
      const { type, event } = built.value;
      if (endpoint.name === 'broadcast') return { ok: true, value: { kind: 'broadcast', id, type, event } };
      if (endpoint.name === 'user_event') return { ok: true, value: { kind: 'user_event', id, userId: endpoint.userId, type, event } };
      const except = field(body.value, 'exceptUserId');
      if (except !== undefined && (typeof except !== 'string' || !isUserId(except))) {
        return fail(ApiRefusals.INVALID_BODY, '"exceptUserId" must be a user id');
      }
      return {
        ok: true,
        value: { kind: 'publish', id, desktopId: endpoint.desktopId, type, event, ...(except === undefined ? {} : { exceptUserId: except }) },
      };
    }
  }
}
