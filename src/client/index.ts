/**
 * moodio-rt-client — a client for the Moodio desktop protocol, for browsers
 * and Node. It connects in the background, reconnects by itself, keeps the
 * room's presence, and queues sends while it is away.
 *
 *   const client = connect({ url: 'wss://moodio.example.com', desktopId: 'd1' });
 *   client.on('presence', ({ joined, left }) => render(client.sessions));
 *   client.onEvent('asset_moved', (e) => moveCard(e.payload, e.userId));
 *   client.send('asset_moved', { id: 'asset-1', x: 10, y: 20 });
 *
 * Two namespaces, so that a peer cannot impersonate the client: `on()` takes
 * only the client's own lifecycle events (`state`, `presence`, `permission`,
 * `revoked`, `error`, `rejected`, `retry`), and `onEvent(type, …)` /
 * `onAnyEvent(…)` only events relayed from other sessions. The relay passes any type it does not reserve, so a
 * peer can send `{"type":"presence"}`; it reaches `onEvent('presence', …)`,
 * never a `presence` lifecycle handler.
 *
 * Authentication: without `token`, a browser's `moodio_access_token` cookie
 * goes with the handshake by itself (same site, through nginx). With
 * `token`, the client offers `moodio.v1` and `moodio.token.<token>` as
 * WebSocket protocols, the one header browsers let a page set: it works
 * across origins and per window, and in Node with the `ws` package too.
 * `tokenVia: 'bearer'` sends `Authorization: Bearer` instead (`ws` only).
 * `token` may be a function, sync or async, asked before every attempt; if
 * it fails, `error` carries a ClientError `ERR_TOKEN` and the backoff goes on.
 *
 * A viewer's mutation (the seven asset types) is refused by `send()` with
 * ERR_VIEWER_MUTATION, where the server would drop it without a word.
 *
 * The server's hand on the session: `permission_changed` sets
 * `client.permission` (a `permission` event); a close with 4003 (permission
 * revoked) is final (a `revoked` event, then `closed`); a close with 4001
 * (logged out, token expired) reconnects at once, with the credential asked
 * for again (once: a repeated 4001 backs off until a session is stable).
 *
 * Reconnects back off exponentially (equal jitter, 500 ms to 4 s), and only
 * a session that stayed joined for `stableAfterMs` (5 s) resets the backoff,
 * so a server that accepts and closes at once is retried at most every 2 s.
 * In Node with `ws`, a refused handshake's `Retry-After` is honoured.
 */
import {
  DEFAULT_TRANSIENT_TYPES,
  DEFAULT_MUTATION_TYPES,
  SERVER_SENDER,
  SUBPROTOCOL,
  TOKEN_SUBPROTOCOL_PREFIX,
  type Permission,
  type SessionInfo,
} from '../protocol/events.ts';
import { afterClose, backoffDelay, retryAfterMs, type BackoffOptions } from './backoff.ts';
import { ClientError } from './errors.ts';
import { isPermission, isSessionInfo, Presence } from './presence.ts';
import { askToken, checkTokenOption } from './token.ts';
import type { ClientEvents, ClientState, ConnectOptions, EventMap, PeerEvent, ReceivedPayload, RelayedEvent, SendArgs, ServerSentEvent, WebSocketConstructor, WebSocketLike } from './types.ts';

export type { Permission, SessionInfo } from '../protocol/events.ts';
export type { PresenceChange } from './presence.ts';
export type {
  AssetPayload,
  ClientEvents,
  ClientState,
  ConnectOptions,
  DesktopEventType,
  EventMap,
  PeerEvent,
  PermissionChange,
  ReceivedPayload,
  RelayedEvent,
  Revocation,
  SendArgs,
  ServerSentEvent,
  WebSocketConstructor,
  WebSocketLike,
} from './types.ts';
export { ClientError, type ClientErrorCode } from './errors.ts';
/** @deprecated An event from a peer: use {@link PeerEvent}, or {@link RelayedEvent} for what `onEvent()` gets (the server's own events have no `firstName`). */
export type StampedEvent<T extends string = string, P = unknown> = PeerEvent<T, P>;
export { afterClose, backoffCeiling, backoffDelay, type AfterClose } from './backoff.ts';

/** The names `on()` accepts. */
export const CLIENT_EVENTS: readonly (keyof ClientEvents)[] = ['state', 'presence', 'permission', 'revoked', 'error', 'rejected', 'retry'];

const OPEN = 1;

type Handler<T> = (value: T) => void;

/** A send waiting for the connection; `key` is set for a transient type (type and asset id). */
interface Queued {
  type: string;
  text: string;
  key: string | null;
}

/**
 * A connection to one desktop. `E` is the app's own event map (see
 * {@link EventMap}): `connect<MyEvents>(…)` checks `onEvent` and `send` of
 * those types; without it, any type is allowed and its payload is unknown.
 */
export class MoodioClient<E extends EventMap = Record<never, never>> {
  state: ClientState = 'connecting';
  /** This connection's sessionId (changes on every reconnect). */
  sessionId: string | null = null;
  /**
   * This session's role, as the server last named it. moodio-rt's
   * `room_joined` names the joiner's own role, so it is set from the first
   * `open` (each reconnect is a new session, whose role is named again), and
   * `permission_changed` changes it. Null while not known: before the first
   * join, against a server whose `room_joined` does not name it (the Go
   * relay) until a change is announced, and after `revoked`.
   */
  permission: Permission | null = null;
  /** The other sessions in the room, by sessionId. */
  readonly sessions: Map<string, SessionInfo>;
  /** Delay of the scheduled reconnect, or null when none is scheduled. */
  nextRetryInMs: number | null = null;

  private readonly options: Required<Omit<ConnectOptions, 'token' | 'WebSocket' | 'transientTypes' | 'mutationTypes'>> & Pick<ConnectOptions, 'token'>;
  private readonly transient: ReadonlySet<string>;
  private readonly mutations: ReadonlySet<string>;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly backoff: BackoffOptions;
  private readonly presence = new Presence();
  private socket: WebSocketLike | null = null;
  /** The backoff's step: the next delay's ceiling is minDelayMs·2^attempt. Back to 0 only after a stable session or retryNow(). */
  private attempt = 0;
  /** When the open socket's room_joined came (options.now), or null while not joined. */
  private joinedAt: number | null = null;
  /** A 4001 has had its retry at once; the next one backs off, until a session is stable again. */
  private immediateSpent = false;
  /** Attempts since the last join, for the `retry` event. */
  private retries = 0;
  private failedOpens = 0;
  private everJoined = false;
  private timer: unknown = null;
  private readonly queue: Queued[] = [];
  /** Lifecycle handlers, by {@link ClientEvents} name. */
  private readonly lifecycle = new Map<keyof ClientEvents, Set<Handler<never>>>();
  /** Relayed-event handlers, by the event's type: any string a peer sends. */
  private readonly relayed = new Map<string, Set<Handler<RelayedEvent>>>();
  private readonly anyRelayed = new Set<Handler<RelayedEvent>>();

  constructor(options: ConnectOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) throw new ClientError('ERR_NO_WEBSOCKET', 'no WebSocket implementation: pass options.WebSocket');
    this.WebSocketImpl = WebSocketImpl;
    this.sessions = this.presence.sessions;
    const tokenVia = options.tokenVia ?? 'protocol';
    if (tokenVia !== 'protocol' && tokenVia !== 'bearer') throw new ClientError('ERR_INVALID_OPTION', `options.tokenVia must be 'protocol' or 'bearer', not ${JSON.stringify(tokenVia)}`);
    checkTokenOption(options.token, tokenVia);
    this.options = {
      url: options.url.replace(/\/+$/, ''),
      desktopId: options.desktopId,
      token: options.token,
      tokenVia,
      minDelayMs: options.minDelayMs ?? 500,
      maxDelayMs: options.maxDelayMs ?? 4_000,
      failingAfter: options.failingAfter ?? 5,
      maxQueue: options.maxQueue ?? 256,
      stableAfterMs: options.stableAfterMs ?? 5_000,
      random: options.random ?? Math.random,
      now: options.now ?? Date.now,
      setTimeout: options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: options.clearTimeout ?? ((t) => clearTimeout(t as ReturnType<typeof setTimeout>)),
    };
    this.transient = new Set(options.transientTypes ?? DEFAULT_TRANSIENT_TYPES);
    this.mutations = new Set(options.mutationTypes ?? DEFAULT_MUTATION_TYPES);
    this.backoff = { minDelayMs: this.options.minDelayMs, maxDelayMs: this.options.maxDelayMs, random: this.options.random };
    this.open();
  }

  /**
   * Listen to a lifecycle event of this client ({@link CLIENT_EVENTS}).
   * Returns an unsubscribe function.
   * @throws {ClientError} ERR_UNKNOWN_CLIENT_EVENT for any other name: relayed events go to {@link onEvent}.
   */
  on<K extends keyof ClientEvents>(name: K, handler: Handler<ClientEvents[K]>): () => void {
    if (!CLIENT_EVENTS.includes(name)) {
      throw new ClientError('ERR_UNKNOWN_CLIENT_EVENT', `${JSON.stringify(name)} is not a client event (${CLIENT_EVENTS.join(', ')}); listen to relayed events with onEvent(type, handler)`);
    }
    return subscribe(this.lifecycle, name, handler as Handler<never>);
  }

  /** Listen to events of one `type` relayed from other sessions, stamped with the sender. Returns an unsubscribe function. */
  onEvent<K extends string>(type: K, handler: Handler<RelayedEvent<K, ReceivedPayload<E, K>>>): () => void {
    return subscribe(this.relayed, type, handler as Handler<RelayedEvent>);
  }

  /** Listen to every event relayed from other sessions, whatever its type. Returns an unsubscribe function. */
  onAnyEvent(handler: Handler<RelayedEvent>): () => void {
    this.anyRelayed.add(handler);
    return () => this.anyRelayed.delete(handler);
  }

  /**
   * Send `{type, payload}` to the room. While not open, the message is queued
   * and sent on (re)connection, in order; of a transient type (`transientTypes`)
   * only the newest per type and `payload.id` is kept, so it never fills the queue.
   * One of the seven mutation types is refused while `permission` is
   * `viewer`; while the role is not known it is sent (or queued), and what is
   * queued is checked again when the join names the role.
   * @throws {ClientError} ERR_CLOSED after close() or a refusal; ERR_VIEWER_MUTATION for a mutation while a viewer; ERR_QUEUE_FULL when `maxQueue` other messages wait.
   */
  send<K extends string>(type: K, ...args: SendArgs<E, K>): void {
    const payload: unknown = args[0];
    if (this.state === 'closed') throw new ClientError('ERR_CLOSED', 'client is closed');
    // The server drops a viewer's mutation without a word (as the Go relay
    // does): refused here instead, where the app can hear it.
    if (this.permission === 'viewer' && this.mutations.has(type)) throw viewerMutation(type);
    const text = JSON.stringify(payload === undefined ? { type } : { type, payload });
    if (this.state === 'open' && this.socket?.readyState === OPEN) {
      this.socket.send(text);
      return;
    }
    const key = this.transient.has(type) ? transientKey(type, payload) : null;
    if (key !== null) {
      // The queued one is stale: drop it, and queue the newest behind whatever was sent since.
      const stale = this.queue.findIndex((queued) => queued.key === key);
      if (stale !== -1) this.queue.splice(stale, 1);
    }
    if (this.queue.length >= this.options.maxQueue) throw new ClientError('ERR_QUEUE_FULL', `more than ${this.options.maxQueue} messages queued while disconnected`);
    this.queue.push({ type, text, key });
  }

  /** Messages waiting for the connection. */
  get queued(): number {
    return this.queue.length;
  }

  /**
   * Reconnect at once instead of waiting for the scheduled attempt (a
   * "retry now" button, the browser's `online` event); the backoff starts
   * again from its floor. Does nothing while open or while an attempt is in
   * flight.
   * @throws {ClientError} ERR_CLOSED after close() or a refusal.
   */
  retryNow(): void {
    if (this.state === 'closed') throw new ClientError('ERR_CLOSED', 'client is closed');
    if (this.timer === null) return;
    this.stopTimer();
    this.attempt = 0;
    this.emit('retry', { inMs: 0, attempt: this.retries });
    this.open();
  }

  /** Close for good: no reconnect; queued messages are dropped. */
  close(): void {
    this.stopTimer();
    this.queue.length = 0;
    const socket = this.socket;
    this.socket = null;
    this.setState('closed');
    if (socket) {
      // Nothing from this socket may reach the client any more: a room_joined
      // already in flight would otherwise reopen it. onerror stays a no-op, as
      // `ws` throws on an 'error' nobody listens to.
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = () => {};
      socket.close(1000, 'client closed');
    }
  }

  private emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    const set = this.lifecycle.get(name);
    if (set) for (const handler of [...set]) (handler as Handler<ClientEvents[K]>)(value);
  }

  private emitRelayed(event: RelayedEvent): void {
    for (const handler of [...this.anyRelayed]) handler(event);
    const set = this.relayed.get(event.type);
    if (set) for (const handler of [...set]) handler(event);
  }

  private setState(state: ClientState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  private stopTimer(): void {
    if (this.timer !== null) this.options.clearTimeout(this.timer);
    this.timer = null;
    this.nextRetryInMs = null;
  }

  /**
   * One attempt: ask for the token (a function is asked every time, and may
   * answer with a Promise), then dial. A token that cannot be had is an
   * `error` event with `ERR_TOKEN`, and the attempt counts as one that failed
   * to open. While the answer is pending no timer is set, so retryNow() waits
   * for it; after close() it is dropped.
   */
  private open(): void {
    this.timer = null;
    this.nextRetryInMs = null;
    askToken(
      this.options.token,
      this.options.tokenVia,
      (token) => {
        if (this.state !== 'closed') this.dial(token);
      },
      (error) => {
        if (this.state !== 'closed') this.tokenFailed(error);
      },
    );
  }

  /** No token for this attempt: said, then the backoff as for a connection that never opened. */
  private tokenFailed(error: ClientError): void {
    this.emit('error', error);
    if (this.state === 'closed') return; // an error handler closed the client
    this.scheduleReconnect(false, 'backoff', null);
  }

  private dial(token: string | null | undefined): void {
    const url = `${this.options.url}/ws/desktop/${encodeURIComponent(this.options.desktopId)}`;
    const { tokenVia } = this.options;
    const socket = !token
      ? new this.WebSocketImpl(url)
      : tokenVia === 'bearer'
        ? new this.WebSocketImpl(url, { headers: { Authorization: `Bearer ${token}` } })
        : new this.WebSocketImpl(url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]);
    this.socket = socket;
    let opened = false;
    let done = false;
    const finish = (code: number, reason: string, refusedWith: number, retryAfter: number | null) => {
      if (done || this.socket !== socket) return;
      done = true;
      this.socket = null;
      if (refusedWith !== 0) this.emit('rejected', { status: refusedWith });
      if (refusedWith === 401 || refusedWith === 403) return this.end();
      const next = afterClose(code, opened);
      if (next === 'final') {
        this.permission = null;
        this.emit('revoked', { code, reason });
        return this.end();
      }
      this.scheduleReconnect(opened, next, retryAfter);
    };
    // ws leaves aborting a refused handshake to whoever listens here. Only
    // here (Node with ws) can the client see the status and Retry-After: a
    // browser's WebSocket shows a refusal as a close 1006 and nothing more.
    socket.on?.('unexpected-response', (req, res) => {
      req.destroy();
      finish(1006, '', res.statusCode ?? 0, retryAfterMs(res.headers?.['retry-after'], Date.now()));
    });
    socket.onopen = () => {
      opened = true;
    };
    socket.onerror = () => {};
    socket.onmessage = (event) => {
      if (this.socket === socket) this.onFrame(event.data);
    };
    socket.onclose = (event) => finish(event.code, event.reason, 0, null);
  }

  /** No more attempts (a refusal, a revocation): what was queued is dropped. */
  private end(): void {
    this.queue.length = 0;
    this.setState('closed');
  }

  /**
   * Schedule the next attempt. The backoff is reset by a session that stayed
   * joined for `stableAfterMs`, never by a socket merely opening: a server
   * that accepts and closes at once (with 4001, 1012, 4008…) would otherwise
   * bring the client back at the floor's pace forever.
   */
  private scheduleReconnect(opened: boolean, next: 'now' | 'soon' | 'backoff', retryAfter: number | null): void {
    if (opened) this.failedOpens = 0;
    else this.failedOpens++;
    const { minDelayMs, random } = this.options;
    if (this.joinedAt !== null && this.options.now() - this.joinedAt >= this.options.stableAfterMs) {
      this.attempt = 0;
      this.immediateSpent = false;
    }
    this.joinedAt = null;
    let delay: number;
    if (next === 'now' && !this.immediateSpent) {
      // Logged out, token expired: at once, with the credential asked for
      // again. Not a step of the backoff, but spent until a stable session.
      delay = 0;
      this.immediateSpent = true;
    } else if (next === 'soon' && this.attempt === 0) {
      // Shutdown, restart after a stable session: a short wait, jittered
      // over the whole floor so that a node's clients come back spread out.
      delay = Math.floor(random() * minDelayMs);
      this.attempt++;
    } else {
      delay = backoffDelay(this.attempt++, this.backoff);
    }
    // A refusal that said when to come back (429/503, seen in Node only):
    // not before, and jittered so that the refused do not return together.
    if (retryAfter !== null) delay = Math.max(delay, retryAfter + Math.floor(random() * minDelayMs));
    this.retries++;
    this.setState(this.failedOpens >= this.options.failingAfter ? 'failing' : this.everJoined ? 'reconnecting' : 'connecting');
    this.nextRetryInMs = delay;
    this.timer = this.options.setTimeout(() => this.open(), delay);
    this.emit('retry', { inMs: delay, attempt: this.retries });
  }

  private onFrame(data: unknown): void {
    if (typeof data !== 'string') return;
    let frame: { type?: unknown } & Record<string, unknown>;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    // The server's own frames are checked for shape before use: a frame that
    // does not fit is dropped rather than let an app's handler crash on it.
    switch (frame.type) {
      case 'room_joined':
        if (typeof frame.sessionId !== 'string' || !Array.isArray(frame.sessions) || !frame.sessions.every(isSessionInfo)) return;
        return this.onJoined(frame.sessionId, frame.sessions, frame.permission);
      case 'session_joined':
        if (isSessionInfo(frame.payload)) this.emit('presence', this.presence.join(frame.payload));
        return;
      case 'session_left':
        if (isSessionInfo(frame.payload)) this.emit('presence', this.presence.leave(frame.payload));
        return;
      case 'session_updated': {
        if (!isSessionInfo(frame.payload)) return;
        const change = this.presence.update(frame.payload);
        if (change !== null) this.emit('presence', change);
        return;
      }
      case 'permission_changed':
        if (isPermission(frame.permission)) this.setPermission(frame.permission);
        return;
      case 'error':
        if (typeof frame.code !== 'string' || typeof frame.message !== 'string') return;
        this.emit('error', frame as unknown as ClientEvents['error']);
        return;
      default:
        // Whatever its type, a relayed event goes to the relayed namespace only.
        if (typeof frame.type !== 'string') return;
        this.emitRelayed(frame as unknown as RelayedEvent);
    }
  }

  /** `permission` is the joiner's own role if the server names it (a `room_joined` may not). */
  private onJoined(sessionId: string, sessions: SessionInfo[], permission: unknown): void {
    const reconnected = this.everJoined;
    const change = this.presence.reset(sessions, reconnected);
    const previous = this.permission;
    // A new session: its role is the one the server names now, or not known.
    this.permission = isPermission(permission) ? permission : null;
    this.sessionId = sessionId;
    this.everJoined = true;
    // The backoff is not reset here, only once this session proves stable (scheduleReconnect).
    this.joinedAt = this.options.now();
    this.retries = 0;
    this.failedOpens = 0;
    // Mutations queued while the role was not known are dropped if it is viewer.
    const refused = this.permission === 'viewer' ? this.dropQueued((queued) => this.mutations.has(queued.type)) : [];
    // What was queued while away goes first, in order, before any handler
    // below can send something newer.
    const socket = this.socket;
    if (socket?.readyState === OPEN) for (const { text } of this.queue.splice(0)) socket.send(text);
    this.setState('open');
    if (change !== null) this.emit('presence', change);
    if (this.permission !== null && this.permission !== previous) this.emit('permission', { permission: this.permission, previous });
    if (refused.length > 0) this.emit('error', viewerMutation([...new Set(refused)].join(', '), refused.length));
  }

  /** Remove the queued sends `drop` picks; returns their types. */
  private dropQueued(drop: (queued: Queued) => boolean): string[] {
    const types: string[] = [];
    let kept = 0;
    for (const queued of this.queue) {
      if (drop(queued)) types.push(queued.type);
      else this.queue[kept++] = queued;
    }
    this.queue.length = kept;
    return types;
  }

  /** `permission_changed`: the role applies from this session's next frame. */
  private setPermission(permission: Permission): void {
    const previous = this.permission;
    if (previous === permission) return;
    this.permission = permission;
    this.emit('permission', { permission, previous });
  }
}

/** A viewer's mutation, refused: `send()` throws it, or an `error` event reports `count` dropped from the queue. */
function viewerMutation(types: string, count = 0): ClientError {
  const what = count === 0 ? types : `${count} queued message(s) (${types})`;
  return new ClientError('ERR_VIEWER_MUTATION', `${what} not sent: this session is a viewer, and the server drops a viewer's changes to the desktop`);
}

/** The queue key of a transient event: its type and asset id (`payload.id`), or its type alone. */
function transientKey(type: string, payload: unknown): string {
  const id = payload !== null && typeof payload === 'object' ? (payload as { id?: unknown }).id : undefined;
  return typeof id === 'string' || typeof id === 'number' ? `${type}\u0000${id}` : type;
}

function subscribe<K, V>(map: Map<K, Set<Handler<V>>>, key: K, handler: Handler<V>): () => void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(handler);
  return () => set.delete(handler);
}

/**
 * Whether a relayed event was sent by the server itself (the server API's
 * publish: `sessionId` `"server"`, no `firstName` or `email`). Its `false`
 * branch narrows to a {@link PeerEvent}, stamped with the sender's identity.
 */
export function isServerEvent<T extends string, P>(event: RelayedEvent<T, P>): event is ServerSentEvent<T, P> {
  return event.sessionId === SERVER_SENDER;
}

/** Start a client; it connects in the background. */
export function connect<E extends EventMap = Record<never, never>>(options: ConnectOptions): MoodioClient<E> {
  return new MoodioClient<E>(options);
}

