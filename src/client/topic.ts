/**
 * One topic of a multiplexed connection: its shared state (`TopicEntry`,
 * one per topic, however many parts of the page hold it) and the handle
 * each `subscribe()` returns (`Topic`). A handle's listeners are its own, and
 * go with its `unsubscribe()`; the topic is left when the last handle goes.
 */
import type { Permission, SessionInfo } from '../protocol/events.ts';
import { ClientError, viewerMutation } from './errors.ts';
import { addHandler, callHandlers, type Handler } from './handlers.ts';
import { isPermission, Presence } from './presence.ts';
import { Position, type ResumePosition } from './resume.ts';
import type { SendQueue } from './send-queue.ts';
import { TOPIC_EVENTS, type TopicError, type TopicEvent, type TopicEvents, type TopicState } from './topic-types.ts';
import type { EventMap, ReceivedPayload, SendArgs } from './types.ts';

/** The ack's members about the topic's stream, unchecked (Position checks them). */
export interface StreamFields {
  epoch: unknown;
  offset: unknown;
  recovered: unknown;
}

/** What a handle asks of its connection. */
export interface TopicHost {
  /** Publish on the entry's topic, or queue until it is subscribed. */
  publish(entry: TopicEntry, type: string, payload: unknown): void;
  /** One handle fewer; the last one leaves the topic. */
  release(entry: TopicEntry): void;
}

/** A topic as the connection holds it. */
export class TopicEntry {
  readonly topic: string;
  /** Handles not yet unsubscribed. */
  handles = 0;
  state: TopicState = 'subscribing';
  permission: Permission | null = null;
  /** Why the server refused or ended it, while `refused`. */
  refusal: TopicError | null = null;
  readonly presence = new Presence();
  /** Publishes waiting for the ack. */
  readonly queue: SendQueue;
  /** The subscribe op went out on the current socket (so leaving needs an unsubscribe op). */
  sent = false;
  /** Where this topic is in its stream of events: offered as `recover` on each subscribe. */
  readonly position = new Position();
  /** The position the last subscribe op offered (null: none). */
  asked: ResumePosition | null = null;
  /** Acked at least once: a later ack is a resubscribe, whose presence change says `reconnected`. */
  private everSubscribed = false;
  private readonly lifecycle = new Map<keyof TopicEvents, Set<Handler<never>>>();
  private readonly relayed = new Map<string, Set<Handler<TopicEvent>>>();
  private readonly anyRelayed = new Set<Handler<TopicEvent>>();

  constructor(topic: string, queue: SendQueue) {
    this.topic = topic;
    this.queue = queue;
  }

  on<K extends keyof TopicEvents>(name: K, handler: Handler<TopicEvents[K]>): () => void {
    return addHandler(this.lifecycle, name, handler as Handler<never>);
  }

  onEvent(type: string, handler: Handler<TopicEvent>): () => void {
    return addHandler(this.relayed, type, handler);
  }

  onAnyEvent(handler: Handler<TopicEvent>): () => void {
    this.anyRelayed.add(handler);
    return () => this.anyRelayed.delete(handler);
  }

  emit<K extends keyof TopicEvents>(name: K, value: TopicEvents[K]): void {
    callHandlers(this.lifecycle as Map<K, Set<Handler<TopicEvents[K]>>>, name, value);
  }

  emitRelayed(event: TopicEvent): void {
    for (const handler of [...this.anyRelayed]) handler(event);
    callHandlers(this.relayed, event.type, event);
  }

  setState(state: TopicState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  /**
   * The server's ack: the others are `sessions`, the role `permission`
   * (of which `mutations` a viewer may not send).
   * Returns the frames queued meanwhile, to be sent before anything newer
   * (a viewer's mutations among them are dropped, and said).
   */
  acked(permission: Permission, sessions: SessionInfo[], mutations: ReadonlySet<string>, stream: StreamFields): { texts: string[]; after: () => void } {
    const outcome = this.position.joined(stream.epoch, stream.offset, stream.recovered, this.asked);
    const change = this.presence.reset(sessions, this.everSubscribed);
    this.everSubscribed = true;
    const previous = this.permission;
    this.permission = permission;
    this.refusal = null;
    const refused = permission === 'viewer' ? this.queue.dropWhere((queued) => mutations.has(queued.type)) : [];
    const texts = this.queue.take().map((queued) => queued.text);
    // The handlers run once the queued frames are on the wire.
    const after = () => {
      this.setState('subscribed');
      if (change !== null) this.emit('presence', change);
      if (permission !== previous) this.emit('permission', { permission, previous });
      if (refused.length > 0) this.emit('error', viewerMutation([...new Set(refused)].join(', '), refused.length));
      // Last, once the topic takes sends: a `gap` handler may ask the room for its state.
      if (outcome.kind === 'gap') this.emit('gap', outcome.gap);
      else if (outcome.kind === 'recovered') this.emit('recovered', outcome.recovery);
    };
    return { texts, after };
  }

  /** The server refused the subscribe, or ended the subscription (`forbidden`): no presence, nothing queued. */
  refuse(error: TopicError): void {
    this.refusal = error;
    this.queue.clear();
    this.position.lost();
    this.forgetPresence();
    this.setState('refused');
    this.emit('error', error);
  }

  /** The others, as known, are gone: said as a presence change. */
  forgetPresence(): void {
    const change = this.presence.reset([], false);
    if (change !== null) this.emit('presence', change);
  }

  /** A relayed event: dropped if already seen (by offset) or `own` (an earlier session's, replayed); a replay that it ends says `recovered`. */
  deliver(event: TopicEvent, own: boolean): void {
    const accepted = this.position.accept(event.offset, own);
    if (!accepted.deliver) return;
    if (accepted.before !== null) this.emit('recovered', accepted.before);
    this.emitRelayed(event);
    if (accepted.after !== null) this.emit('recovered', accepted.after);
  }

  /** A role change the server announced on this topic. */
  setPermission(permission: unknown): void {
    if (!isPermission(permission) || permission === this.permission) return;
    const previous = this.permission;
    this.permission = permission;
    this.emit('permission', { permission, previous });
  }
}

/**
 * A subscription to one topic, as `connection.subscribe(topic)` returns it.
 * Two handles of one topic share its state, presence and role; each has its
 * own listeners, and its own `unsubscribe()`. `E` is the app's event map, as
 * for `connect<E>()`.
 */
export class Topic<E extends EventMap = Record<never, never>> {
  readonly topic: string;
  private readonly entry: TopicEntry;
  private readonly host: TopicHost;
  private readonly removers: (() => void)[] = [];
  private released = false;

  constructor(entry: TopicEntry, host: TopicHost) {
    this.topic = entry.topic;
    this.entry = entry;
    this.host = host;
  }

  /** `subscribing`, `subscribed`, `refused`, or `unsubscribed` once this handle let go. */
  get state(): TopicState {
    return this.released ? 'unsubscribed' : this.entry.state;
  }

  /** This connection's role on the topic, as the server last named it; null before the ack and while refused. */
  get permission(): Permission | null {
    return this.released ? null : this.entry.permission;
  }

  /** The other sessions on the topic (every framing, every shard), by sessionId. */
  get sessions(): ReadonlyMap<string, SessionInfo> {
    return this.entry.presence.sessions;
  }

  /** Why the server refused or ended the subscription, while `refused`; else null. */
  get refusal(): TopicError | null {
    return this.entry.refusal;
  }

  /** The topic's epoch and the offset of the last event seen, as the next subscribe offers them (`recover`); null before the first ack or against a server that does not number events. */
  get resumePosition(): ResumePosition | null {
    return this.entry.position.current;
  }

  /** Publishes waiting for the ack. */
  get queued(): number {
    return this.entry.queue.length;
  }

  /**
   * Listen to the topic's own events (`state`, `presence`, `permission`,
   * `error`). Returns a function that removes the listener; `unsubscribe()`
   * removes all of this handle's.
   * @throws {ClientError} ERR_UNKNOWN_CLIENT_EVENT for another name: relayed events go to onEvent().
   */
  on<K extends keyof TopicEvents>(name: K, handler: Handler<TopicEvents[K]>): () => void {
    if (!TOPIC_EVENTS.includes(name)) {
      throw new ClientError(
        'ERR_UNKNOWN_CLIENT_EVENT',
        `${JSON.stringify(name)} is not a topic event (${TOPIC_EVENTS.join(', ')}); listen to relayed events with onEvent(type, handler)`,
      );
    }
    return this.keep(this.entry.on(name, handler));
  }

  /** Listen to events of one `type` from the others on the topic. */
  onEvent<K extends string>(type: K, handler: Handler<TopicEvent<K, ReceivedPayload<E, K>>>): () => void {
    return this.keep(this.entry.onEvent(type, handler as Handler<TopicEvent>));
  }

  /** Listen to every event from the others on the topic. */
  onAnyEvent(handler: Handler<TopicEvent>): () => void {
    return this.keep(this.entry.onAnyEvent(handler));
  }

  /**
   * Publish `{type, payload}` to the others on the topic. Before the ack
   * (and while reconnecting) it is queued, in order, and sent once the
   * topic is subscribed again.
   * @throws {ClientError} ERR_CLOSED after close(); ERR_NOT_SUBSCRIBED after unsubscribe() or while refused; ERR_INVALID_TYPE; ERR_VIEWER_MUTATION for a mutation while a viewer; ERR_QUEUE_FULL.
   */
  send<K extends string>(type: K, ...args: SendArgs<E, K>): void {
    if (this.released) throw new ClientError('ERR_NOT_SUBSCRIBED', `${this.topic}: this handle has unsubscribed`);
    this.host.publish(this.entry, type, args[0]);
  }

  /** Let go of the topic: this handle's listeners are removed; the last handle of the topic leaves it. Again does nothing. */
  unsubscribe(): void {
    if (this.released) return;
    this.released = true;
    for (const remove of this.removers.splice(0)) remove();
    this.host.release(this.entry);
  }

  private keep(remove: () => void): () => void {
    if (this.released) throw new ClientError('ERR_NOT_SUBSCRIBED', `${this.topic}: this handle has unsubscribed`);
    this.removers.push(remove);
    return remove;
  }
}
