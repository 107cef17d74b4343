/**
 * The public shapes of the multiplexed client (`connectTopics()`): its
 * options, a topic's states and events, and the names `on()` accepts.
 */
import type { TopicErrorCodeValue } from '../protocol/topics.ts';
import type { ClientError } from './errors.ts';
import type { PresenceChange } from './presence.ts';
import type { Gap, Recovery } from './resume.ts';
import type { ClientEvents, ConnectOptions, RelayedEvent } from './types.ts';

/** The options of `connectTopics()`: those of `connect()`, without a desktop (a connection holds any number of topics). */
export type TopicConnectOptions = Omit<ConnectOptions, 'desktopId'>;

/** The connection's own events: those of `connect()` but `presence` and `permission`, which belong to each topic. */
export interface ConnectionEvents extends Omit<ClientEvents, 'presence' | 'permission' | 'error'> {
  /** A server error that names no topic (`rate_limited` over the message rate, `bad_request`), or ERR_TOKEN. */
  error: TopicError | ClientError;
}

export type TopicState =
  /** The subscribe is on its way (or waits for the connection, or for the subscribe budget). Sends are queued. */
  | 'subscribing'
  /** The server acked it: `sessions` and `permission` are current. */
  | 'subscribed'
  /** The server refused it, or ended it (`refusal` has its code). A reconnect subscribes again. */
  | 'refused'
  /** Every handle called `unsubscribe()`: the topic is left. Final for these handles. */
  | 'unsubscribed';

/** An `{op:"error"}` frame of the server, on a topic. */
export interface TopicError {
  code: TopicErrorCodeValue;
  message?: string;
  /** The op that caused it, when the server echoed its `ref`: `subscribe`, `unsubscribe`, or undefined (a publish, or the server's own doing). */
  op?: 'subscribe' | 'unsubscribe';
}

/** An event on a topic: as `connect()` hands it, with its topic. `payload` is `null` when the sender sent none. */
export type TopicEvent<T extends string = string, P = unknown> = RelayedEvent<T, P> & { topic: string };

/** A topic's events, for `topic.on()`. */
export interface TopicEvents {
  state: TopicState;
  /** The others on the topic changed; after a resubscribe, the change against what was known (`reconnected`). */
  presence: PresenceChange;
  /** The server named this connection's role on the topic (the ack), or changed it. */
  permission: { permission: 'editor' | 'viewer'; previous: 'editor' | 'viewer' | null };
  /** The server's error on this topic (a refusal too: then `state` becomes `refused`), or ERR_VIEWER_MUTATION for queued sends dropped when the ack named a viewer. */
  error: TopicError | ClientError;
  /** A resubscribe recovered what was missed: the server replayed it, and every replayed event has reached `onEvent()`. */
  recovered: Recovery;
  /** A resubscribe after which events may be missing (a new epoch, a position older than the history, a server that keeps none): load the topic's state again. Never on the first subscribe. */
  gap: Gap;
}

/** The names `topic.on()` accepts. */
export const TOPIC_EVENTS: readonly (keyof TopicEvents)[] = ['state', 'presence', 'permission', 'error', 'recovered', 'gap'];
/** The names `connection.on()` accepts. */
export const CONNECTION_EVENTS: readonly (keyof ConnectionEvents)[] = ['state', 'revoked', 'error', 'rejected', 'retry'];
