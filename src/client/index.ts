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
 * `revoked`, `error`, `rejected`, `retry`, `recovered`, `gap`), and `onEvent(type, …)` /
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
 *
 * Several nodes: `url` may list every node's URL. Each attempt dials the
 * next, from a random first; a drain (1012) sends the client to the next
 * node after the short jitter. `retry` names the URL and the close code.
 *
 * Resume: the client keeps the desktop's epoch and the offset of the last
 * event it saw, and reconnects with `?epoch=E&offset=N`. If the server
 * replays what was missed, `recovered` follows the replay; if it cannot,
 * `gap` says the app must load the state again. An event already seen (its
 * offset not past the last one) is dropped.
 */
import { DEFAULT_TRANSIENT_TYPES, DEFAULT_MUTATION_TYPES, SERVER_SENDER, type Permission, type SessionInfo } from '../protocol/events.ts';
import { ClientError, viewerMutation } from './errors.ts';
import { addHandler, callHandlers, type Handler } from './handlers.ts';
import { Link } from './link.ts';
import { isPermission, isSessionInfo, Presence } from './presence.ts';
import { OwnSessions, Position, resumeQuery, type JoinOutcome, type ResumePosition } from './resume.ts';
import { SendQueue } from './send-queue.ts';
import type { ClientEvents, ClientState, ConnectOptions, EventMap, PeerEvent, ReceivedPayload, RelayedEvent, SendArgs, ServerSentEvent } from './types.ts';

export type { Permission, SessionInfo } from '../protocol/events.ts';
export type { PresenceChange } from './presence.ts';
export type { Gap, Recovery, ResumePosition } from './resume.ts';
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
  Retry,
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
export { connectTopics, TopicConnection } from './topics.ts';
export { Topic } from './topic.ts';
export {
  CONNECTION_EVENTS,
  TOPIC_EVENTS,
  type ConnectionEvents,
  type TopicConnectOptions,
  type TopicError,
  type TopicEvent,
  type TopicEvents,
  type TopicState,
} from './topic-types.ts';

/** The names `on()` accepts. */
export const CLIENT_EVENTS: readonly (keyof ClientEvents)[] = ['state', 'presence', 'permission', 'revoked', 'error', 'rejected', 'retry', 'recovered', 'gap'];

/**
 * A connection to one desktop. `E` is the app's own event map (see
 * {@link EventMap}): `connect<MyEvents>(…)` checks `onEvent` and `send` of
 * those types; without it, any type is allowed and its payload is unknown.
 */
export class MoodioClient<E extends EventMap = Record<never, never>> {
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

  private readonly mutations: ReadonlySet<string>;
  private readonly presence = new Presence();
  /** Where this client is in the desktop's stream of events. */
  private readonly position = new Position();
  /** The position offered by the current attempt (null: none). */
  private asked: ResumePosition | null = null;
  /** This client's sessions, to know its own events in a replay. */
  private readonly own = new OwnSessions();
  private readonly link: Link;
  private readonly queue: SendQueue;
  /** Lifecycle handlers, by {@link ClientEvents} name. */
  private readonly lifecycle = new Map<keyof ClientEvents, Set<Handler<never>>>();
  /** Relayed-event handlers, by the event's type: any string a peer sends. */
  private readonly relayed = new Map<string, Set<Handler<RelayedEvent>>>();
  private readonly anyRelayed = new Set<Handler<RelayedEvent>>();

  constructor(options: ConnectOptions) {
    this.sessions = this.presence.sessions;
    this.mutations = new Set(options.mutationTypes ?? DEFAULT_MUTATION_TYPES);
    this.queue = new SendQueue(new Set(options.transientTypes ?? DEFAULT_TRANSIENT_TYPES), options.maxQueue ?? 256);
    const path = `/ws/desktop/${encodeURIComponent(options.desktopId)}`;
    const attemptPath = () => {
      this.asked = this.position.current;
      return path + resumeQuery(this.asked);
    };
    this.link = new Link(options.url, attemptPath, options, {
      state: (state) => this.emit('state', state),
      retry: (value) => this.emit('retry', value),
      rejected: (value) => this.emit('rejected', value),
      tokenError: (error) => this.emit('error', error),
      opened: () => {},
      frame: (data) => this.onFrame(data),
      lost: () => this.position.lost(),
      revoked: (value) => {
        this.permission = null;
        this.emit('revoked', value);
      },
      ended: () => this.queue.clear(),
    });
    this.link.start();
  }

  get state(): ClientState {
    return this.link.state;
  }

  /** Delay of the scheduled reconnect, or null when none is scheduled. */
  get nextRetryInMs(): number | null {
    return this.link.nextRetryInMs;
  }

  /**
   * Listen to a lifecycle event of this client ({@link CLIENT_EVENTS}).
   * Returns an unsubscribe function.
   * @throws {ClientError} ERR_UNKNOWN_CLIENT_EVENT for any other name: relayed events go to {@link onEvent}.
   */
  on<K extends keyof ClientEvents>(name: K, handler: Handler<ClientEvents[K]>): () => void {
    if (!CLIENT_EVENTS.includes(name)) {
      throw new ClientError(
        'ERR_UNKNOWN_CLIENT_EVENT',
        `${JSON.stringify(name)} is not a client event (${CLIENT_EVENTS.join(', ')}); listen to relayed events with onEvent(type, handler)`,
      );
    }
    return addHandler(this.lifecycle, name, handler as Handler<never>);
  }

  /** Listen to events of one `type` relayed from other sessions, stamped with the sender. Returns an unsubscribe function. */
  onEvent<K extends string>(type: K, handler: Handler<RelayedEvent<K, ReceivedPayload<E, K>>>): () => void {
    return addHandler(this.relayed, type, handler as Handler<RelayedEvent>);
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
   * A type of the mutation table is refused while `permission` is
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
    const socket = this.state === 'open' ? this.link.openSocket : null;
    if (socket) return socket.send(text);
    this.queue.push(type, payload, text);
  }

  /**
   * The desktop's epoch and the offset of the last event seen, as the next
   * reconnect offers them; null before the first join or against a server
   * that does not number events.
   */
  get resumePosition(): ResumePosition | null {
    return this.position.current;
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
    this.link.retryNow();
  }

  /** Close for good: no reconnect; queued messages are dropped. */
  close(): void {
    this.queue.clear();
    this.link.close();
  }

  private emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    callHandlers(this.lifecycle as Map<K, Set<Handler<ClientEvents[K]>>>, name, value);
  }

  private emitRelayed(event: RelayedEvent): void {
    for (const handler of [...this.anyRelayed]) handler(event);
    callHandlers(this.relayed, event.type, event);
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
        return this.onJoined(frame.sessionId, frame.sessions, frame.permission, this.position.joined(frame.epoch, frame.offset, frame.recovered, this.asked));
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
      default: {
        // Whatever its type, a relayed event goes to the relayed namespace only.
        if (typeof frame.type !== 'string') return;
        const accepted = this.position.accept(frame.offset, this.own.has(frame.sessionId));
        if (!accepted.deliver) return;
        if (accepted.before !== null) this.emit('recovered', accepted.before);
        this.emitRelayed(frame as unknown as RelayedEvent);
        if (accepted.after !== null) this.emit('recovered', accepted.after);
      }
    }
  }

  /** `permission` is the joiner's own role if the server names it (a `room_joined` may not). */
  private onJoined(sessionId: string, sessions: SessionInfo[], permission: unknown, outcome: JoinOutcome): void {
    const change = this.presence.reset(sessions, this.link.everJoined);
    const previous = this.permission;
    // A new session: its role is the one the server names now, or not known.
    this.permission = isPermission(permission) ? permission : null;
    this.sessionId = sessionId;
    this.own.add(sessionId);
    // The backoff is not reset here, only once this session proves stable (the link).
    this.link.joined();
    // Mutations queued while the role was not known are dropped if it is viewer.
    const refused = this.permission === 'viewer' ? this.queue.dropWhere((queued) => this.mutations.has(queued.type)) : [];
    // What was queued while away goes first, in order, before any handler
    // below can send something newer.
    const socket = this.link.openSocket;
    if (socket) for (const { text } of this.queue.take()) socket.send(text);
    this.link.setState('open');
    if (change !== null) this.emit('presence', change);
    if (this.permission !== null && this.permission !== previous) this.emit('permission', { permission: this.permission, previous });
    if (refused.length > 0) this.emit('error', viewerMutation([...new Set(refused)].join(', '), refused.length));
    // Last, once the app can send: a `gap` handler may ask the room for its state.
    if (outcome.kind === 'gap') this.emit('gap', outcome.gap);
    else if (outcome.kind === 'recovered') this.emit('recovered', outcome.recovery);
  }

  /** `permission_changed`: the role applies from this session's next frame. */
  private setPermission(permission: Permission): void {
    const previous = this.permission;
    if (previous === permission) return;
    this.permission = permission;
    this.emit('permission', { permission, previous });
  }
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
