/**
 * The client SDK's public shapes: its options, states and lifecycle events,
 * the socket it drives and the payload of the asset events. Types only:
 * nothing here exists at run time (index.ts re-exports them).
 */
import type { ClientEvent, ErrorEvent as ServerErrorEvent, Permission } from '../protocol/events.ts';
import type { ClientError } from './errors.ts';
import type { PresenceChange } from './presence.ts';
import type { Gap, Recovery } from './resume.ts';
import type { TokenOption } from './token.ts';

/** The seed's client event types: asset_moved, asset_resized, asset_added, asset_removed, asset_dragging, asset_selected, asset_deselected. */
export type DesktopEventType = (typeof ClientEvent)[keyof typeof ClientEvent];

/** Payload of the demo's and the product's asset events (the seed's example: `{ id, x, y }`); other fields pass through. */
export interface AssetPayload {
  id: string;
  x?: number;
  y?: number;
  [field: string]: unknown;
}

/**
 * An event relayed from another session, stamped by the server with its
 * sender's identity (never taken from the frame).
 */
export interface PeerEvent<T extends string = string, P = unknown> {
  type: T;
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  /** Milliseconds since the epoch, set by the server. */
  timestamp: number;
  /** The event's place in the desktop's stream (a server that keeps history numbers every event); absent from a server that does not. */
  offset?: number;
  /** As the sender sent it: the server does not check it. */
  payload: P;
}

/**
 * An event the server sent itself: what the app publishes through the server
 * API (to a desktop, a user, everyone). `sessionId` and `userId` are
 * `"server"`, and it has no `firstName` or `email`.
 */
export interface ServerSentEvent<T extends string = string, P = unknown> {
  type: T;
  sessionId: 'server';
  userId: 'server';
  /** Milliseconds since the epoch, when the API call was accepted. */
  timestamp: number;
  /** As on a {@link PeerEvent}. */
  offset?: number;
  payload: P;
}

/**
 * What `onEvent()` and `onAnyEvent()` get: from a peer or from the server.
 * `e.sessionId !== 'server'` narrows it to a {@link PeerEvent} (no session has
 * that id), whose `firstName` and `email` are then there.
 */
export type RelayedEvent<T extends string = string, P = unknown> = PeerEvent<T, P> | ServerSentEvent<T, P>;

/**
 * An app's own event types and their payloads, for `connect<MyEvents>()`:
 * `interface MyEvents { cursor: { x: number; y: number } }`. The seven
 * built-in types keep {@link AssetPayload} whatever the map says.
 */
export type EventMap = object;

/** The payload `onEvent(type)` gets: a built-in type's may be absent (a peer may omit it); a mapped type's is as declared; any other is unknown. */
export type ReceivedPayload<E extends EventMap, K extends string> = K extends DesktopEventType ? AssetPayload | undefined : K extends keyof E ? E[K] : unknown;

/** The arguments `send(type, …)` takes after the type: a built-in type's `AssetPayload`, a mapped type's payload, anything for another type. */
export type SendArgs<E extends EventMap, K extends string> = K extends DesktopEventType
  ? [payload: AssetPayload]
  : K extends keyof E
    ? [payload: E[K]]
    : [payload?: unknown];

/** The part of a WebSocket this client uses: browsers' and the `ws` package's both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  /** `ws` only: lets Node see the HTTP status of a refused handshake. */
  on?: (
    event: 'unexpected-response',
    listener: (req: { destroy(): void }, res: { statusCode?: number; headers?: Record<string, string | string[] | undefined> }) => void,
  ) => unknown;
}
export type WebSocketConstructor = new (url: string, options?: unknown) => WebSocketLike;

export type ClientState =
  /** First connection in progress. */
  | 'connecting'
  /** Joined: `sessions` is current. */
  | 'open'
  /** Lost the connection; retrying with backoff. */
  | 'reconnecting'
  /** `failingAfter` attempts in a row failed to open; still retrying at the capped delay. */
  | 'failing'
  /** Closed by `close()`, refused with 401/403 (Node), or the permission was revoked (4003). No more attempts. */
  | 'closed';

/** The `permission` event: the server gave this session a role. */
export interface PermissionChange {
  permission: Permission;
  /** The role before, or null when it was not known. */
  previous: Permission | null;
}

/** The `revoked` event: the user's permission on the desktop was taken away. */
export interface Revocation {
  /** 4003. */
  code: number;
  /** The close frame's reason (the server's is `permission revoked`). */
  reason: string;
}

/** The `retry` event: when the next attempt goes, where, and why. */
export interface Retry {
  /** The wait before the attempt, ms (0 after `retryNow()` and a first 4001). */
  inMs: number;
  /** Attempts since the last join, from 1. */
  attempt: number;
  /** The base URL the attempt dials: `options.url`, or the next of its list. */
  url: string;
  /** The close code of the socket whose loss scheduled it (`1006` when it never opened), or null when no socket closed (a token error, `retryNow()`). */
  code: number | null;
}

/** The client's lifecycle events, for `on()`. Relayed events never reach these handlers. */
export interface ClientEvents {
  state: ClientState;
  presence: PresenceChange;
  /** The server changed this session's role (`permission_changed`); `client.permission` is already the new one. */
  permission: PermissionChange;
  /** The server closed with 4003: permission revoked. Final: comes just before `state` `closed`; no retry. */
  revoked: Revocation;
  /**
   * `{"type":"error"}` frames from the server (`code`: invalid_message,
   * rate_limited, …), or a {@link ClientError} for what failed in the
   * background (`ERR_TOKEN`: the token function threw or rejected; the
   * attempt is retried with backoff). `e instanceof ClientError` tells them apart.
   */
  error: ServerErrorEvent | ClientError;
  /** Node with `ws` only: the handshake was refused with this status; 401/403 end the client. */
  rejected: { status: number };
  /** A reconnect attempt is scheduled in `inMs` (0 after `retryNow()` and a first 4001); `attempt` counts from 1 since the last join. */
  retry: Retry;
  /**
   * A rejoin recovered what was missed while away: the server replayed it,
   * in order, and every replayed event has reached `onEvent()` (emitted once
   * the last one has). The app's state is whole: no reload needed.
   */
  recovered: Recovery;
  /**
   * A rejoin after which events may be missing (the server could not
   * replay them: a new epoch, a position older than its history, or a
   * server that keeps none). Emitted right after the state `open`: load the
   * state again. Never on the first join.
   */
  gap: Gap;
}

export interface ConnectOptions {
  /**
   * Server base URL, e.g. `wss://moodio.example.com` (the path is added), or
   * every node's, e.g. `['wss://rt1.example.com', 'wss://rt2.example.com']`:
   * each attempt dials the next, the first a random one, and a close
   * 1001/1012 (a node draining) goes to the next after the short wait.
   * `ws:` or `wss:`, no query or fragment; else `connect()` throws ERR_INVALID_OPTION.
   */
  url: string | readonly string[];
  desktopId: string;
  /**
   * Access token. Offered as the WebSocket protocols `moodio.v1` and
   * `moodio.token.<token>` (browsers and `ws`), so each window can be its own
   * user whatever cookie the site holds. Without it, a browser's cookie
   * authenticates. A function is called before every attempt (a 4001 asks
   * again), so that a reconnect carries the app's freshest token; it may
   * return a Promise (a refresh call). If it throws or rejects, the client
   * emits `error` with a {@link ClientError} `ERR_TOKEN` and retries with
   * backoff. Null, undefined or '' means no token for that attempt.
   */
  token?: TokenOption;
  /** How `token` travels: `protocol` (default) or `bearer` (`Authorization: Bearer`, the `ws` package only). */
  tokenVia?: 'protocol' | 'bearer';
  /** Default: `globalThis.WebSocket`. Node older than 22 has none: pass the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Backoff floor, ms. Default 500. */
  minDelayMs?: number;
  /** Backoff cap, ms: a returning server is found within about this long. Default 4,000. */
  maxDelayMs?: number;
  /**
   * How long a session must stay joined before its close resets the backoff
   * to its floor (and a 4001 may again retry at once), ms. A session that
   * closes sooner counts as a failed attempt: the next delay grows. Default 5,000.
   */
  stableAfterMs?: number;
  /** Consecutive failed opens before the state becomes `failing`. Default 5. */
  failingAfter?: number;
  /** Sends kept while not open, transient ones included; one more throws ERR_QUEUE_FULL. Default 256. */
  maxQueue?: number;
  /**
   * Types of which only the newest per type and `payload.id` is kept while
   * not open: a later one replaces the queued one (and goes to the back of
   * the queue), so a drag while offline queues one event per card, not a
   * backlog. Default `['asset_dragging']`.
   */
  transientTypes?: readonly string[];
  /**
   * The types a viewer may not send, as the server is configured
   * (`--mutation-types`): `send()` of one as a viewer throws
   * ERR_VIEWER_MUTATION. Default: the server's default table.
   */
  mutationTypes?: readonly string[];
  /** Injectable for tests. */
  random?: () => number;
  /** Clock for `stableAfterMs`, ms; injectable for tests. Default Date.now. */
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (timer: unknown) => void;
}
