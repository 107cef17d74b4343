/**
 * The multiplexed client: one socket per tab on `/ws/connection`, holding
 * any number of topics (`desktop:{id}`, `production-table:{id}`).
 *
 *   const conn = connectTopics({ url: 'wss://moodio.example.com', token });
 *   const desk = conn.subscribe('desktop:abc');
 *   desk.on('presence', () => render(desk.sessions));
 *   desk.onEvent('asset_moved', (e) => moveCard(e.payload));
 *   desk.send('asset_moved', { id: 'a1', x: 10, y: 20 });
 *   desk.unsubscribe();
 *
 * The socket is the per-desktop client's (link.ts): the same token options,
 * backoff, Retry-After, 4001 and 4003. On top of it:
 * - subscriptions are counted: two parts of a page subscribing to one topic
 *   share it (one subscribe op, one presence), and the last `unsubscribe()`
 *   leaves it;
 * - every topic held is subscribed again on each new socket, paced by the
 *   server's subscribe budget (a bucket of 20, 2 per second), so that a tab
 *   with many topics is never answered `rate_limited` for coming back;
 * - each topic has its state (`subscribing`, `subscribed`, `refused` with
 *   the server's code), its presence and its role;
 * - subscribe and unsubscribe ops carry a `ref`, so an error is put on the
 *   op and topic that caused it. Publishes carry none (a publish has no ack,
 *   so a ref could never be let go): what the server could refuse in them,
 *   the client refuses first (a bad or server-only type, a viewer's
 *   mutation, a topic not held).
 */
import { DEFAULT_MUTATION_TYPES, DEFAULT_TRANSIENT_TYPES, MAX_TYPE_LENGTH, type SessionInfo } from '../protocol/events.ts';
import {
  CONNECTION_PATH,
  ConnectionLimit,
  Op,
  SERVER_ONLY_TOPIC_TYPES,
  ServerOp,
  TOPIC_PATTERN,
  TopicErrorCode,
  type TopicErrorCodeValue,
} from '../protocol/topics.ts';
import { ClientError, viewerMutation } from './errors.ts';
import { addHandler, callHandlers, type Handler } from './handlers.ts';
import { Link } from './link.ts';
import { isPermission, isSessionInfo } from './presence.ts';
import { SendQueue } from './send-queue.ts';
import { OwnSessions } from './resume.ts';
import { Topic, TopicEntry, type TopicHost } from './topic.ts';
import { CONNECTION_EVENTS, type ConnectionEvents, type TopicConnectOptions, type TopicError, type TopicEvent } from './topic-types.ts';
import type { ClientState, EventMap, WebSocketLike } from './types.ts';

/** An op sent with a ref, until its answer. */
interface PendingOp {
  op: 'subscribe' | 'unsubscribe';
  entry: TopicEntry;
}

const TOPIC_ERROR_CODES: ReadonlySet<string> = new Set(Object.values(TopicErrorCode));

/** A multiplexed connection: see the module's comment. */
export class TopicConnection implements TopicHost {
  /** This connection's sessionId, the same on every topic (changes on every reconnect); null until the first ack. */
  sessionId: string | null = null;

  private readonly link: Link;
  private readonly mutations: ReadonlySet<string>;
  private readonly transient: ReadonlySet<string>;
  private readonly maxQueue: number;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (timer: unknown) => void;
  /** The topics held, by name. */
  private readonly entries = new Map<string, TopicEntry>();
  /** Ops sent with a ref, by ref. */
  private readonly pending = new Map<string, PendingOp>();
  private nextRef = 0;
  /** Topics whose subscribe waits for the budget, oldest first. */
  private waiting: TopicEntry[] = [];
  /** The subscribe budget as the server counts it for this socket: a bucket of 20, refilled at 2/s. */
  private budget: number = ConnectionLimit.SUBSCRIBE_BURST;
  private budgetAt = 0;
  private paceTimer: unknown = null;
  private readonly lifecycle = new Map<keyof ConnectionEvents, Set<Handler<never>>>();
  /** This connection's sessions, to know its own events in a replay. */
  private readonly own = new OwnSessions();

  constructor(options: TopicConnectOptions) {
    this.mutations = new Set(options.mutationTypes ?? DEFAULT_MUTATION_TYPES);
    this.transient = new Set(options.transientTypes ?? DEFAULT_TRANSIENT_TYPES);
    this.maxQueue = options.maxQueue ?? 256;
    this.now = options.now ?? Date.now;
    this.setTimer = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout ?? ((t) => clearTimeout(t as ReturnType<typeof setTimeout>));
    this.link = new Link(options.url, CONNECTION_PATH, options, {
      state: (state) => this.emit('state', state),
      retry: (value) => this.emit('retry', value),
      rejected: (value) => this.emit('rejected', value),
      tokenError: (error) => this.emit('error', error),
      opened: (socket) => this.onOpen(socket),
      frame: (data) => this.onFrame(data),
      lost: () => this.onLost(),
      revoked: (value) => this.emit('revoked', value),
      ended: () => this.stopAll(),
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

  /** The topics held (subscribed, on their way, or refused). */
  get topics(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * Listen to the connection's own events (`state`, `revoked`, `error`,
   * `rejected`, `retry`). `error` has the server's errors that name no topic
   * (`rate_limited` over the message rate, `bad_request`) and ERR_TOKEN.
   * @throws {ClientError} ERR_UNKNOWN_CLIENT_EVENT for another name.
   */
  on<K extends keyof ConnectionEvents>(name: K, handler: Handler<ConnectionEvents[K]>): () => void {
    if (!CONNECTION_EVENTS.includes(name)) {
      throw new ClientError(
        'ERR_UNKNOWN_CLIENT_EVENT',
        `${JSON.stringify(name)} is not a connection event (${CONNECTION_EVENTS.join(', ')}); a topic's events are on its handle`,
      );
    }
    return addHandler(this.lifecycle, name, handler as Handler<never>);
  }

  /**
   * Hold `topic`: a handle with its state, presence, role, events and
   * `send()`. A topic already held is shared (no second subscribe op); one
   * the server refused is asked again.
   * @throws {ClientError} ERR_CLOSED after close(); ERR_INVALID_TOPIC; ERR_TOO_MANY_TOPICS past 50 topics.
   */
  subscribe<E extends EventMap = Record<never, never>>(topic: string): Topic<E> {
    if (this.state === 'closed') throw new ClientError('ERR_CLOSED', 'client is closed');
    if (typeof topic !== 'string' || !TOPIC_PATTERN.test(topic)) {
      throw new ClientError(
        'ERR_INVALID_TOPIC',
        `${JSON.stringify(topic)} is not a topic: desktop:{id} or production-table:{id}, the id of 1 to 128 letters, digits, _ or -`,
      );
    }
    let entry = this.entries.get(topic);
    if (entry === undefined) {
      if (this.entries.size >= ConnectionLimit.MAX_TOPICS)
        throw new ClientError('ERR_TOO_MANY_TOPICS', `${topic}: a connection holds at most ${ConnectionLimit.MAX_TOPICS} topics`);
      entry = new TopicEntry(topic, new SendQueue(this.transient, this.maxQueue));
      this.entries.set(topic, entry);
      this.want(entry);
    } else if (entry.state === 'refused') {
      entry.setState('subscribing');
      this.want(entry);
    }
    entry.handles++;
    return new Topic<E>(entry, this);
  }

  /**
   * Reconnect at once instead of waiting for the scheduled attempt.
   * @throws {ClientError} ERR_CLOSED after close() or a refusal.
   */
  retryNow(): void {
    this.link.retryNow();
  }

  /** Close for good: no reconnect; queued sends are dropped. */
  close(): void {
    this.stopAll();
    this.link.close();
  }

  /** @internal A handle's send. */
  publish(entry: TopicEntry, type: string, payload: unknown): void {
    if (this.state === 'closed') throw new ClientError('ERR_CLOSED', 'client is closed');
    if (typeof type !== 'string' || type.length === 0 || type.length > MAX_TYPE_LENGTH || SERVER_ONLY_TOPIC_TYPES.has(type)) {
      throw new ClientError('ERR_INVALID_TYPE', `${JSON.stringify(type)}: a type is 1 to ${MAX_TYPE_LENGTH} characters, and not one only the server sends`);
    }
    if (entry.state === 'refused') throw new ClientError('ERR_NOT_SUBSCRIBED', `${entry.topic}: the server refused it (${entry.refusal?.code})`);
    // The server drops a viewer's mutation without a word: refused here, where the app hears it.
    if (entry.permission === 'viewer' && this.mutations.has(type)) throw viewerMutation(type);
    const text = JSON.stringify(payload === undefined ? { op: Op.PUBLISH, topic: entry.topic, type } : { op: Op.PUBLISH, topic: entry.topic, type, payload });
    const socket = entry.state === 'subscribed' ? this.link.openSocket : null;
    if (socket) return socket.send(text);
    let queued = 0;
    for (const other of this.entries.values()) queued += other.queue.length;
    entry.queue.push(type, payload, text, this.maxQueue - queued);
  }

  /** @internal A handle's unsubscribe: the last one leaves the topic. */
  release(entry: TopicEntry): void {
    entry.handles--;
    if (entry.handles > 0 || this.entries.get(entry.topic) !== entry) return;
    this.entries.delete(entry.topic);
    entry.queue.clear();
    const socket = this.link.openSocket;
    if (entry.sent && socket) this.sendOp(socket, Op.UNSUBSCRIBE, entry);
    entry.sent = false;
    entry.setState('unsubscribed');
  }

  private emit<K extends keyof ConnectionEvents>(name: K, value: ConnectionEvents[K]): void {
    callHandlers(this.lifecycle as Map<K, Set<Handler<ConnectionEvents[K]>>>, name, value);
  }

  /** A new socket: the budget is whole again, and every topic held is asked for. */
  private onOpen(socket: WebSocketLike): void {
    this.link.joined();
    this.budget = ConnectionLimit.SUBSCRIBE_BURST;
    this.budgetAt = this.now();
    this.link.setState('open');
    if (this.link.socket !== socket) return; // a state handler closed it
    this.waiting = [];
    for (const entry of this.entries.values()) {
      entry.setState('subscribing');
      this.waiting.push(entry);
    }
    this.pump();
  }

  /** The socket is gone: its subscriptions with it. Presence is kept until the next ack says what changed. */
  private onLost(): void {
    this.stopPacing();
    this.pending.clear();
    for (const entry of this.entries.values()) {
      entry.sent = false;
      entry.position.lost();
      entry.setState('subscribing');
    }
  }

  private stopAll(): void {
    this.stopPacing();
    this.pending.clear();
    for (const entry of this.entries.values()) entry.queue.clear();
  }

  private stopPacing(): void {
    this.waiting = [];
    if (this.paceTimer !== null) this.clearTimer(this.paceTimer);
    this.paceTimer = null;
  }

  /** Ask for `entry` as soon as the socket and the budget allow. */
  private want(entry: TopicEntry): void {
    this.waiting.push(entry);
    this.pump();
  }

  /** Send the waiting subscribes the budget allows; wake up when the next one may go. */
  private pump(): void {
    const socket = this.link.openSocket;
    if (socket === null || this.paceTimer !== null) return;
    const now = this.now();
    this.budget = Math.min(ConnectionLimit.SUBSCRIBE_BURST, this.budget + ((now - this.budgetAt) / 1000) * ConnectionLimit.SUBSCRIBES_PER_SECOND);
    this.budgetAt = now;
    while (this.waiting.length > 0) {
      const entry = this.waiting[0]!;
      if (this.entries.get(entry.topic) !== entry || entry.sent || entry.state !== 'subscribing') {
        this.waiting.shift();
        continue;
      }
      if (this.budget < 1) break;
      this.waiting.shift();
      this.budget--;
      entry.sent = true;
      this.sendOp(socket, Op.SUBSCRIBE, entry);
    }
    if (this.waiting.length === 0) return;
    const waitMs = Math.ceil(((1 - this.budget) / ConnectionLimit.SUBSCRIBES_PER_SECOND) * 1000);
    this.paceTimer = this.setTimer(() => {
      this.paceTimer = null;
      this.pump();
    }, waitMs);
  }

  private sendOp(socket: WebSocketLike, op: PendingOp['op'], entry: TopicEntry): void {
    const ref = String(++this.nextRef);
    this.pending.set(ref, { op, entry });
    if (op !== Op.SUBSCRIBE) return socket.send(JSON.stringify({ op, topic: entry.topic, ref }));
    // Where the topic was left, so that the server replays what was missed.
    entry.asked = entry.position.current;
    socket.send(JSON.stringify(entry.asked === null ? { op, topic: entry.topic, ref } : { op, topic: entry.topic, ref, recover: entry.asked }));
  }

  /** The op a ref names, let go: its answer has come. */
  private answered(ref: unknown): PendingOp | undefined {
    if (typeof ref !== 'string') return undefined;
    const op = this.pending.get(ref);
    this.pending.delete(ref);
    return op;
  }

  private onFrame(data: unknown): void {
    if (typeof data !== 'string') return;
    let frame: Record<string, unknown>;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    // The server's frames are checked for shape before use: one that does
    // not fit is dropped rather than let an app's handler crash on it.
    switch (frame.op) {
      case ServerOp.EVENT:
        return this.onEvent(frame);
      case ServerOp.SUBSCRIBED:
        return this.onSubscribed(frame);
      case ServerOp.UNSUBSCRIBED:
        this.answered(frame.ref);
        return;
      case ServerOp.ERROR:
        return this.onError(frame);
    }
  }

  private onSubscribed(frame: Record<string, unknown>): void {
    const { topic, permission, sessionId, sessions } = frame;
    const op = this.answered(frame.ref);
    if (typeof topic !== 'string' || !isPermission(permission) || typeof sessionId !== 'string' || !Array.isArray(sessions) || !sessions.every(isSessionInfo))
      return;
    const entry = this.entries.get(topic);
    // An ack of a topic let go since (or of an earlier hold of it) is not this hold's.
    if (entry === undefined || (op !== undefined && op.entry !== entry) || entry.state !== 'subscribing') return;
    this.sessionId = sessionId;
    this.own.add(sessionId);
    const { texts, after } = entry.acked(permission, sessions as SessionInfo[], this.mutations, {
      epoch: frame.epoch,
      offset: frame.offset,
      recovered: frame.recovered,
    });
    const socket = this.link.openSocket;
    if (socket) for (const text of texts) socket.send(text);
    after();
  }

  private onEvent(frame: Record<string, unknown>): void {
    const { topic, type } = frame;
    if (typeof topic !== 'string' || typeof type !== 'string') return;
    const entry = this.entries.get(topic);
    if (entry === undefined || entry.state !== 'subscribed') return;
    switch (type) {
      case 'session_joined':
        if (isSessionInfo(frame.payload)) entry.emit('presence', entry.presence.join(frame.payload));
        return;
      case 'session_left':
        if (isSessionInfo(frame.payload)) entry.emit('presence', entry.presence.leave(frame.payload));
        return;
      case 'session_updated': {
        if (!isSessionInfo(frame.payload)) return;
        const change = entry.presence.update(frame.payload);
        if (change !== null) entry.emit('presence', change);
        return;
      }
      case 'permission_changed':
        // The role at the top level, as the legacy route frames it (or in the payload).
        return entry.setPermission(frame.permission ?? (frame.payload as { permission?: unknown } | null)?.permission);
      default:
        entry.deliver(frame as unknown as TopicEvent, this.own.has(frame.sessionId));
    }
  }

  private onError(frame: Record<string, unknown>): void {
    const { code, message, topic } = frame;
    if (typeof code !== 'string' || !TOPIC_ERROR_CODES.has(code)) return;
    const error: TopicError = { code: code as TopicErrorCodeValue };
    if (typeof message === 'string') error.message = message;
    const op = this.answered(frame.ref);
    if (op !== undefined) {
      // The op that caused it: a refused subscribe refuses the topic.
      if (this.entries.get(op.entry.topic) !== op.entry) return;
      error.op = op.op;
      if (op.op === Op.SUBSCRIBE && op.entry.state === 'subscribing') {
        op.entry.sent = false;
        return op.entry.refuse(error);
      }
      return op.entry.emit('error', error);
    }
    const entry = typeof topic === 'string' ? this.entries.get(topic) : undefined;
    if (entry === undefined) return this.emit('error', error);
    if (entry.state === 'subscribed' && code === TopicErrorCode.FORBIDDEN) {
      // The app took the user's permission away: the server ended the subscription.
      entry.sent = false;
      return entry.refuse(error);
    }
    if (entry.state === 'subscribed' && (code === TopicErrorCode.INTERNAL || code === TopicErrorCode.RECOVERY_LOST)) {
      // The shard that owns the topic's room restarted, or the replay fell
      // behind the history: the subscription is gone; ask again (from the
      // last event seen: the ack says whether it could be recovered).
      entry.sent = false;
      entry.position.lost();
      entry.forgetPresence();
      entry.setState('subscribing');
      entry.emit('error', error);
      return this.want(entry);
    }
    entry.emit('error', error);
  }
}

/** Open a multiplexed connection; it connects in the background, and holds no topic until `subscribe()`. */
export function connectTopics(options: TopicConnectOptions): TopicConnection {
  return new TopicConnection(options);
}
