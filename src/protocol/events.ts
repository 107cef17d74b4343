/**
 * The Moodio desktop protocol as it appears on the wire: event names, which of
 * them mutate a desktop, error codes and close codes. Server and tests both
 * import these constants so a renamed event cannot drift between them.
 */

/** Server → client events. Clients may not send these types. */
export const ServerEvent = {
  ROOM_JOINED: 'room_joined',
  SESSION_JOINED: 'session_joined',
  SESSION_LEFT: 'session_left',
  ERROR: 'error',
  /** To a session whose permission the server API (or a recheck) changed: `{"type":"permission_changed","permission":…}`. */
  PERMISSION_CHANGED: 'permission_changed',
  /** To the rest of the room when a session's info changed (its permission): shaped like `session_joined`, plus `permission`. */
  SESSION_UPDATED: 'session_updated',
} as const;

/** Client → server → room events named by the seed's event table. */
export const ClientEvent = {
  ASSET_MOVED: 'asset_moved',
  ASSET_RESIZED: 'asset_resized',
  ASSET_ADDED: 'asset_added',
  ASSET_REMOVED: 'asset_removed',
  ASSET_DRAGGING: 'asset_dragging',
  ASSET_SELECTED: 'asset_selected',
  ASSET_DESELECTED: 'asset_deselected',
} as const;

/**
 * The default mutation table: types a viewer may not send, dropped
 * server-side on every route. The upstream relay's list (issue 20): the
 * seed's seven asset types are a subset, then the rest of the desktop's
 * assets and cells, and the production tables' `pt_*` events.
 * `--mutation-types` replaces it; the table in force is the shard's
 * (`config.mutationTypes`), this module keeps no state.
 */
export const DEFAULT_MUTATION_TYPES: readonly string[] = [
  ...Object.values(ClientEvent),
  'asset_resizing',
  'asset_z_changed',
  'cell_selected',
  'cell_deselected',
  'cell_updated',
  'table_generating',
  'pt_cell_selected',
  'pt_cell_deselected',
  'pt_cell_updated',
  'pt_cell_comment_updated',
  'pt_media_asset_added',
  'pt_media_asset_removed',
  'pt_column_added',
  'pt_column_removed',
  'pt_column_renamed',
  'pt_column_resized',
  'pt_columns_reordered',
  'pt_row_added',
  'pt_row_removed',
  'pt_row_resized',
  'pt_rows_reordered',
];

/** Events that only the newest matters of: coalesced for a recipient over its outbound budget. */
export const DEFAULT_TRANSIENT_TYPES: readonly string[] = [ClientEvent.ASSET_DRAGGING];

/** Mutations the reference server logs (the "Logged" column of the seed's event table). */
export const LOGGED_TYPES: ReadonlySet<string> = new Set([
  ClientEvent.ASSET_MOVED,
  ClientEvent.ASSET_RESIZED,
  ClientEvent.ASSET_ADDED,
  ClientEvent.ASSET_REMOVED,
]);

/**
 * Node → node on the federation bus (protocol/bus.ts): "who is in this
 * room?". A client may not send it: relayed to other nodes, it would make
 * each of them publish its whole room.
 */
export const PRESENCE_SYNC_REQUEST = 'presence_sync_request';

/** Types reserved for the server; a client frame carrying one is answered with an error. */
export const RESERVED_TYPES: ReadonlySet<string> = new Set([...Object.values(ServerEvent), PRESENCE_SYNC_REQUEST]);

/** Longest accepted `type` string, in UTF-16 code units. */
export const MAX_TYPE_LENGTH = 64;

/** `code` values of `{"type":"error"}` frames sent to a client. */
export const ErrorCode = {
  /** Not JSON, not an object, or `type` not a non-empty string of at most 64 characters. */
  INVALID_MESSAGE: 'invalid_message',
  /** A client sent a server-only type (`room_joined`, `session_joined`, `session_left`, `session_updated`, `permission_changed`, `error`). */
  RESERVED_TYPE: 'reserved_type',
  /** A binary frame; the protocol is JSON text only. */
  UNSUPPORTED_BINARY: 'unsupported_binary',
  /** The server failed while handling this one message; the room is unaffected. */
  INTERNAL_ERROR: 'internal_error',
  /** Over the per-session rate limit; carries `retryAfterMs`. Sent once per window, not per dropped frame. */
  RATE_LIMITED: 'rate_limited',
} as const;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The reason of every close with {@link CloseCode.SERVICE_RESTART}. */
export const SERVICE_RESTART_REASON = 'service restart';

/** WebSocket close codes the server uses. */
export const CloseCode = {
  /** Going away: the server no longer sends it (a drain closes with 1012), but a proxy or an older relay may; the SDK treats it as 1012. */
  GOING_AWAY: 1001,
  /** A binary frame on `/ws/ping`, which echoes text only. */
  UNSUPPORTED_DATA: 1003,
  /** Over the rate limit for `--rate-limit-close-after`; on `/ws/ping`, over its frame rate. */
  POLICY_VIOLATION: 1008,
  /** Frame larger than `--max-message-size`, or than 512 bytes on `/ws/ping` (sent by `ws` itself). */
  MESSAGE_TOO_BIG: 1009,
  /**
   * Reconnect, to another node if there is one: the node drains (SIGTERM,
   * SIGINT; spread over `--drain-spread`) or the shard is being restarted
   * (admin terminate). Its reason is {@link SERVICE_RESTART_REASON}.
   */
  SERVICE_RESTART: 1012,
  /**
   * Over `--max-buffered-bytes` for `--slow-consumer-timeout`, over
   * `--max-session-backlog` at once, or among the largest backlogs while the
   * process is over `--max-outbound-memory`: reconnect and resync.
   */
  SLOW_CONSUMER: 4008,
  /**
   * Ended by the server for the user's sake: the server API disconnected the
   * user (logout, password change), or the token's `exp` passed
   * (`--enforce-token-expiry`). Reconnect now: the browser's refreshed cookie
   * decides whether the user gets back in.
   */
  DISCONNECTED: 4001,
  /** The user's permission on the desktop was revoked (server API `none`, or a recheck): final, do not reconnect. */
  PERMISSION_REVOKED: 4003,
  /**
   * A resumed session's replay fell behind the history it was reading:
   * the history let go of events it had not sent yet, so it cannot be made
   * whole. Reconnect with the last offset received: the answer is
   * `recovered: false`, and the client reloads (docs/protocol.md, Recovery).
   */
  RECOVERY_LOST: 4009,
} as const;

export type Permission = 'editor' | 'viewer';
export const PERMISSIONS: ReadonlySet<string> = new Set<Permission>(['editor', 'viewer']);

/**
 * `sessionId` and `userId` of events the server sends itself (the server
 * API's publish, user events and broadcasts). No session has this id (they
 * are `session_<uuid>`), so a client can tell them from relayed events by
 * `sessionId === "server"`; a relayed event's identity comes from its
 * sender's session, never from the frame.
 */
export const SERVER_SENDER = 'server';

/** What every other session learns about a session (the seed's session info). */
export interface SessionInfo {
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  permission: Permission;
}

/** `room_joined`, sent once to the joining session. */
export interface RoomJoinedEvent {
  type: 'room_joined';
  sessionId: string;
  /** The joiner's own role (moodio-rt adds it; the reference server does not send it). */
  permission?: Permission;
  sessions: SessionInfo[];
}

/** Any event relayed to the room, stamped with the sender's identity. */
export interface StampedEvent<T extends string = string, P = unknown> {
  type: T;
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  /** Milliseconds since the epoch, set by the server. */
  timestamp: number;
  payload?: P;
}

export type SessionJoinedEvent = StampedEvent<'session_joined', SessionInfo>;
export type SessionLeftEvent = StampedEvent<'session_left', SessionInfo>;

/** `session_updated`: a session's info changed (its permission); `permission` is repeated at the top level. */
export type SessionUpdatedEvent = StampedEvent<'session_updated', SessionInfo> & { permission: Permission };

/** `permission_changed`, to the session whose permission changed; it applies from the session's next frame. */
export interface PermissionChangedEvent {
  type: 'permission_changed';
  permission: Permission;
}

/** An event from the server itself (server API): no `firstName` or `email`. */
export interface ServerStampedEvent<T extends string = string, P = unknown> {
  type: T;
  sessionId: typeof SERVER_SENDER;
  userId: typeof SERVER_SENDER;
  /** Milliseconds since the epoch, when the API call was accepted. */
  timestamp: number;
  payload?: P;
}

export interface ErrorEvent {
  type: 'error';
  code: ErrorCodeValue;
  message: string;
  /** With `rate_limited`: when the next message will be accepted. */
  retryAfterMs?: number;
}

/** URL path prefix of the WebSocket endpoint. */
export const WS_PATH_PREFIX = '/ws/desktop/';
/** Accepted desktop ids. */
export const DESKTOP_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;
/** Largest text frame `/ws/ping` echoes; a larger one closes with 1009. */
export const PING_MAX_MESSAGE_BYTES = 512;
/** Frames (text or ping) one `/ws/ping` socket may send at once; then {@link PING_FRAMES_PER_SECOND}. */
export const PING_FRAME_BURST = 20;
/** Frames per second one `/ws/ping` socket may send after its burst; faster closes with 1008. */
export const PING_FRAMES_PER_SECOND = 10;
/** Cookie carrying the access token, as set by the Next.js app. */
export const ACCESS_TOKEN_COOKIE = 'moodio_access_token';
/**
 * The one `Sec-WebSocket-Protocol` the server answers with, when a client
 * offers it. A client that carries its token in the header offers it beside
 * `moodio.token.<jwt>`, so the answer never has to echo the token.
 */
export const SUBPROTOCOL = 'moodio.v1';
/** An offered protocol `moodio.token.<jwt>` carries the access token (a JWT is an HTTP token: base64url and dots). */
export const TOKEN_SUBPROTOCOL_PREFIX = 'moodio.token.';
/** Response header on every handshake answer from a shard: the shard's index. */
export const SHARD_HEADER = 'x-moodio-shard';
