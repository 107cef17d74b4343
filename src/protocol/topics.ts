/**
 * The multiplexed route, `GET /ws/connection`, as it appears on the wire:
 * one socket per browser tab, subscribed to many topics (`desktop:{id}`,
 * `production-table:{id}`), each authorized on its own. Ops, error codes,
 * limits and the encoders of the route's answers live here (its events are
 * event-frames.ts's), so that server and tests share them.
 *
 * A topic's room is the same room a legacy socket joins: `desktop:x` is the
 * room of `/ws/desktop/x`, whose key stays the bare desktop id (federation
 * subjects and the server API name desktops by it); `production-table:x` is
 * the room of `/ws/production-table/x`, keyed by the topic itself. Ids never
 * hold a `:`, so the two namespaces never meet.
 */
import { RESERVED_TYPES, type Permission } from './events.ts';

/** Path of the multiplexed route. */
export const CONNECTION_PATH = '/ws/connection';
/** URL path prefix of the legacy production-table route. */
export const PRODUCTION_TABLE_PATH_PREFIX = '/ws/production-table/';

export const TopicNamespace = {
  DESKTOP: 'desktop',
  PRODUCTION_TABLE: 'production-table',
} as const;
export type TopicNamespaceValue = (typeof TopicNamespace)[keyof typeof TopicNamespace];

/** `desktop:{id}` or `production-table:{id}`, the id as a desktop id. Nothing around it: a topic with spaces is refused, not trimmed. */
export const TOPIC_PATTERN = /^(desktop|production-table):([A-Za-z0-9_-]{1,128})$/;

/** Client → server ops. */
export const Op = {
  SUBSCRIBE: 'subscribe',
  UNSUBSCRIBE: 'unsubscribe',
  PUBLISH: 'publish',
} as const;
export type OpValue = (typeof Op)[keyof typeof Op];

/** Server → client ops. */
export const ServerOp = {
  SUBSCRIBED: 'subscribed',
  UNSUBSCRIBED: 'unsubscribed',
  EVENT: 'event',
  ERROR: 'error',
} as const;

/** `code` of `{op:"error"}` frames. */
export const TopicErrorCode = {
  /** Not JSON, not an object, an unknown op, a bad topic, a bad type, a server-only type, or the app answered 400. */
  BAD_REQUEST: 'bad_request',
  /** The app answered 401 or 403 to the authorize call. */
  FORBIDDEN: 'forbidden',
  /** The app answered 404. */
  NOT_FOUND: 'not_found',
  /** The app failed, timed out, answered nonsense or an unknown permission; or the topic's shard restarted. */
  INTERNAL: 'internal',
  /** Over 50 topics, over the subscribe budget, or over 64 queued ops. */
  RATE_LIMITED: 'rate_limited',
  /** Unsubscribe or publish (with a `ref`) on a topic the connection does not hold. */
  NOT_SUBSCRIBED: 'not_subscribed',
  /** A subscribe's `recover` is not `{epoch, offset}` as the resume parameters of the legacy route must be. */
  BAD_RECOVER: 'bad_recover',
  /** The replay of a recovering subscription fell behind the history (it let go of events not sent yet): the subscription is gone; subscribe again. */
  RECOVERY_LOST: 'recovery_lost',
} as const;
export type TopicErrorCodeValue = (typeof TopicErrorCode)[keyof typeof TopicErrorCode];

/** Types only the server sends on a topic (session_joined, session_left, presence_sync_request and the legacy route's server events): a client publishing one gets `bad_request` (the upstream relays them, so presence could be forged). */
export const SERVER_ONLY_TOPIC_TYPES: ReadonlySet<string> = RESERVED_TYPES;

/** Limits of one multiplexed connection. */
export const ConnectionLimit = {
  /** Topics one connection may hold. */
  MAX_TOPICS: 50,
  /** The subscribe budget: a bucket of this many… */
  SUBSCRIBE_BURST: 20,
  /** …refilled at this many per second. */
  SUBSCRIBES_PER_SECOND: 2,
  /** Ops waiting behind a topic's unfinished op (an authorize), over all topics. */
  MAX_QUEUED_OPS: 64,
  /** Largest message on this route (larger closes with 1009). */
  MAX_MESSAGE_BYTES: 65_536,
} as const;

/** Audience of the JWT the relay mints for each authorize call. */
export const AUTHORIZE_AUDIENCE = 'realtime-internal';
/** Lifetime of that JWT, in seconds. */
export const AUTHORIZE_TOKEN_TTL_S = 60;
/** How long an accepted authorize answer is reused for the same (user, topic). */
export const AUTHORIZE_CACHE_TTL_MS = 30_000;
/** Permissions the authorize endpoint may answer; `owner` acts as `editor`. */
export const AUTHORIZE_PERMISSIONS: ReadonlySet<string> = new Set(['owner', 'editor', 'viewer']);

/** A topic's namespace and id, or null when it is not a valid topic. */
export function parseTopic(topic: unknown): { namespace: TopicNamespaceValue; id: string } | null {
  if (typeof topic !== 'string') return null;
  const match = TOPIC_PATTERN.exec(topic);
  return match === null ? null : { namespace: match[1] as TopicNamespaceValue, id: match[2]! };
}

/** The room key of a valid topic: the bare id for a desktop (as the legacy route names it), the topic itself otherwise. */
export function roomKeyOf(topic: string): string {
  return topic.startsWith('desktop:') ? topic.slice('desktop:'.length) : topic;
}

/** The topic of a room key (inverse of {@link roomKeyOf}). */
export function topicOfRoom(roomKey: string): string {
  return roomKey.includes(':') ? roomKey : `desktop:${roomKey}`;
}

/** `owner` behaves as `editor`: the role a member holds in its room. */
export function roleOf(permission: string): Permission {
  return permission === 'viewer' ? 'viewer' : 'editor';
}

const refMember = (ref: string | undefined): string => (ref === undefined ? '' : `,"ref":${JSON.stringify(ref)}`);

/** `{op:"error",topic?,code,message?,ref?}`. */
export function errorText(code: TopicErrorCodeValue, message: string | undefined, topic: string | undefined, ref: string | undefined): string {
  return (
    `{"op":"error"${topic === undefined ? '' : `,"topic":${JSON.stringify(topic)}`},"code":"${code}"` +
    `${message === undefined ? '' : `,"message":${JSON.stringify(message)}`}${refMember(ref)}}`
  );
}

/**
 * `{op:"subscribed",topic,permission,sessionId,sessions:[…],epoch,offset,recovered?,ref?}`;
 * `sessions` is comma-separated SessionInfo JSON, `position` the room's
 * `,"epoch":…,"offset":…[,"recovered":…]` (protocol/resume.ts positionMembers).
 */
export function subscribedText(topic: string, permission: Permission, sessionId: string, sessions: string, ref: string | undefined, position = ''): string {
  return `{"op":"subscribed","topic":${JSON.stringify(topic)},"permission":"${permission}","sessionId":${JSON.stringify(sessionId)},"sessions":[${sessions}]${position}${refMember(ref)}}`;
}

/** `{op:"unsubscribed",topic,ref?}`. */
export function unsubscribedText(topic: string, ref: string | undefined): string {
  return `{"op":"unsubscribed","topic":${JSON.stringify(topic)}${refMember(ref)}}`;
}
