/**
 * The federation wire format on NATS, shared with the Go relay
 * `moodio-realtime` so that a fleet can mix both:
 *
 *   subject  room.{desktopId}
 *   payload  {"r": <origin node id>, "p": <event>}
 *
 * `<event>` is the event exactly as delivered to local clients
 * (`session_joined`, `session_left`, stamped relayed events), or
 * `{"type":"presence_sync_request"}`, which every other node answers with a
 * `session_joined` per local session of the room.
 *
 * Heartbeats (ours only; the Go relay never subscribes to them) go on
 * {@link HEARTBEAT_SUBJECT}, outside `room.*`.
 *
 * Everything parsed here comes from the bus and is untrusted: the parser
 * checks size before it parses, and shape after, and answers a reason code
 * for each refusal (counted as `moodio_rt_federation_dropped_total{reason}`).
 */
import type { LiveSession } from './api.ts';
import { DESKTOP_ID_PATTERN, PRESENCE_SYNC_REQUEST, ServerEvent } from './events.ts';
import { memberText } from './json-member.ts';
import { legacyEventText, legacyText, sessionUpdated } from './event-frames.ts';

export const ROOM_SUBJECT_PREFIX = 'room.';
/**
 * A moodio-rt node's copy of a desktop room's event on the topic subject
 * (`room.desktop:{id}`), for the upstream relay (sent once one was heard in
 * the room): other moodio-rt nodes take
 * the event from `room.{id}` and ignore the copy. Its value is covered by the
 * signature, so a copy with the header stripped does not check.
 */
export const COPY_HEADER = 'Moodio-Copy';
export const COPY_MARK = '1';
/** Per-shard liveness beacons of moodio-rt nodes. */
export const HEARTBEAT_SUBJECT = 'moodio-rt.heartbeat';
export { PRESENCE_SYNC_REQUEST };

/** Server API calls (protocol/api.ts): `api.desktop.{desktopId}` and `api.users`, payload `{"r": node, "q": request}`. */
export const API_DESKTOP_PREFIX = 'api.desktop.';
export const API_USERS_SUBJECT = 'api.users';

/** Bytes a bus message may have beyond --max-message-size: the stamp and the envelope. */
export const BUS_OVERHEAD_BYTES = 2048;

export function roomSubject(desktopId: string): string {
  return ROOM_SUBJECT_PREFIX + desktopId;
}

/** `room.{topic}`: the subject of a topic in the upstream relay's framing (`room.desktop:abc`, `room.production-table:abc`). */
export function topicSubject(topic: string): string {
  return ROOM_SUBJECT_PREFIX + topic;
}

/** A sync request in the topic framing: `{"op":"event","topic":…,"type":"presence_sync_request"}`. */
export function topicSyncRequestJson(topic: string): string {
  return `{"op":"event","topic":${JSON.stringify(topic)},"type":"${PRESENCE_SYNC_REQUEST}"}`;
}

/** `{"r":…,"p":<eventJson>}`: `eventJson` is spliced in as is (it is already the frame's text). */
export function envelope(nodeJson: string, eventJson: string): string {
  return `{"r":${nodeJson},"p":${eventJson}}`;
}

/** Why a bus message was dropped (the `reason` label). */
export const DropReason = {
  TOO_LARGE: 'too_large',
  MALFORMED: 'malformed',
  INVALID_EVENT: 'invalid_event',
  RESERVED_TYPE: 'reserved_type',
  ROOM_MISMATCH: 'room_mismatch',
  FORGED: 'forged',
  VIEWER: 'viewer',
  ROOM_FULL: 'room_full',
  /** A heartbeat from a node past the number of peers a node keeps track of. */
  TOO_MANY_PEERS: 'too_many_peers',
  /**
   * With --federation-key: a message without the fleet's signature (with `--federation-unsigned-rooms admit`,
   * a room event is taken unsigned, unless its node or the session it names is known to sign).
   */
  UNSIGNED: 'unsigned',
  /** A signed message whose stamp is out of the receiver's window (--federation-replay-window): an old capture, or clocks too far apart. */
  STALE: 'stale',
  /** A signed message heard before (its stamp's id), or a heartbeat whose sequence does not grow: a capture played again. */
  REPLAYED: 'replayed',
  /** A broadcast from the bus over the fleet's rate. */
  RATE_LIMITED: 'rate_limited',
} as const;
export type DropReasonValue = (typeof DropReason)[keyof typeof DropReason];
export const DROP_REASONS: readonly DropReasonValue[] = Object.values(DropReason);

/** A session as presence events describe it (protocol/events.ts SessionInfo). */
export interface BusSessionInfo {
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  permission: 'editor' | 'viewer';
}

export type BusEvent =
  | { kind: 'sync_request' }
  | { kind: 'joined' | 'left' | 'updated'; info: BusSessionInfo; text: string }
  | { kind: 'relayed'; type: string; sessionId: string; text: string };

export type Parsed<T> = { ok: true; node: string; value: T } | { ok: false; reason: DropReasonValue };

/** Types a remote node may not relay as a client event (the server's own). */
const NOT_RELAYABLE: ReadonlySet<string> = new Set<string>([ServerEvent.ROOM_JOINED, ServerEvent.ERROR, 'permission_changed']);

const MAX_ID = 256;
const MAX_NAME = 1024;

function isShortString(value: unknown, max: number): value is string {
  return typeof value === 'string' && value.length <= max;
}

function sessionInfo(value: unknown, ownerAsEditor = false): BusSessionInfo | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const v = value as Record<string, unknown>;
  if (!isShortString(v.sessionId, MAX_ID) || v.sessionId.length === 0) return null;
  if (!isShortString(v.userId, MAX_ID) || v.userId.length === 0) return null;
  if (!isShortString(v.firstName, MAX_NAME) || !isShortString(v.email, MAX_NAME)) return null;
  // The upstream relay describes a session with the permission its authorize call answered: `owner` acts as `editor`.
  const permission = ownerAsEditor && v.permission === 'owner' ? 'editor' : v.permission;
  if (permission !== 'editor' && permission !== 'viewer') return null;
  return { sessionId: v.sessionId, userId: v.userId, firstName: v.firstName, email: v.email, permission };
}

/** The JSON a presence list carries for `info`, in the server's own member order. */
export function sessionInfoJson(info: BusSessionInfo): string {
  return `{"sessionId":${JSON.stringify(info.sessionId)},"userId":${JSON.stringify(info.userId)},"firstName":${JSON.stringify(info.firstName)},"email":${JSON.stringify(info.email)},"permission":"${info.permission}"}`;
}

/** `session_left` for a remote session the server removes itself (its node went silent, or a resync did not confirm it). */
export function sessionLeftJson(info: BusSessionInfo, now: number): string {
  return legacyText(ServerEvent.SESSION_LEFT, stampOf(info), now, sessionInfoJson(info));
}

function decode(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
}

/**
 * The envelope `{"r": node, "p": event}` of a room subject's message, as
 * both framings have it: `maxBytes` checked before any parsing, `r` a short
 * non-empty string, `p` an object; with the message's text, from which the
 * callers take `p` as sent.
 */
function parseEnvelope(data: Uint8Array, maxBytes: number): Parsed<{ event: Record<string, unknown>; text: string }> {
  if (data.byteLength > maxBytes) return { ok: false, reason: DropReason.TOO_LARGE };
  const text = decode(data);
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch {
    return { ok: false, reason: DropReason.MALFORMED };
  }
  if (typeof message !== 'object' || message === null || Array.isArray(message)) return { ok: false, reason: DropReason.MALFORMED };
  const { r, p } = message as Record<string, unknown>;
  if (!isShortString(r, MAX_ID) || r.length === 0) return { ok: false, reason: DropReason.MALFORMED };
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return { ok: false, reason: DropReason.INVALID_EVENT };
  return { ok: true, node: r, value: { event: p as Record<string, unknown>, text } };
}

/**
 * Parse a message from `room.{desktopId}`. `maxBytes` is checked before any
 * parsing. Presence events must carry a whole session description whose id
 * matches the stamp; relayed events a string `type` and `sessionId`, and no
 * type of the server's own. An event naming a `desktopId` other than the
 * subject's is refused.
 */
export function parseRoomMessage(data: Uint8Array, desktopId: string, maxBytes: number): Parsed<BusEvent> {
  const envelope = parseEnvelope(data, maxBytes);
  if (!envelope.ok) return envelope;
  const {
    node: r,
    value: { event, text },
  } = envelope;
  const type = event.type;
  if (typeof type !== 'string' || type.length === 0 || type.length > 64) return { ok: false, reason: DropReason.INVALID_EVENT };
  if (Object.hasOwn(event, 'desktopId') && event.desktopId !== desktopId) return { ok: false, reason: DropReason.ROOM_MISMATCH };
  if (type === PRESENCE_SYNC_REQUEST) return { ok: true, node: r, value: { kind: 'sync_request' } };
  if (type === ServerEvent.SESSION_JOINED || type === ServerEvent.SESSION_LEFT) {
    const info = sessionInfo(event.payload);
    if (info === null || event.sessionId !== info.sessionId || event.userId !== info.userId) return { ok: false, reason: DropReason.INVALID_EVENT };
    // The frame local members get is rebuilt from the checked fields: nothing else a peer put in it reaches them.
    const now = typeof event.timestamp === 'number' && Number.isFinite(event.timestamp) ? event.timestamp : Date.now();
    const text =
      type === ServerEvent.SESSION_LEFT ? sessionLeftJson(info, now) : legacyText(ServerEvent.SESSION_JOINED, stampOf(info), now, sessionInfoJson(info));
    return { ok: true, node: r, value: { kind: type === ServerEvent.SESSION_LEFT ? 'left' : 'joined', info, text } };
  }
  if (type === 'session_updated') {
    // A role changed through the server API on the origin node.
    const info = sessionInfo(event.payload);
    if (info === null || event.sessionId !== info.sessionId || event.userId !== info.userId || event.permission !== info.permission) {
      return { ok: false, reason: DropReason.INVALID_EVENT };
    }
    const now = typeof event.timestamp === 'number' && Number.isFinite(event.timestamp) ? event.timestamp : Date.now();
    const text = legacyEventText(sessionUpdated(stampOf(info), info.permission, now, sessionInfoJson(info)));
    return { ok: true, node: r, value: { kind: 'updated', info, text } };
  }
  if (NOT_RELAYABLE.has(type)) return { ok: false, reason: DropReason.RESERVED_TYPE };
  if (!isShortString(event.sessionId, MAX_ID) || !isShortString(event.userId, MAX_ID)) return { ok: false, reason: DropReason.INVALID_EVENT };
  if (typeof event.timestamp !== 'number') return { ok: false, reason: DropReason.INVALID_EVENT };
  if (Object.hasOwn(event, 'firstName') && !isShortString(event.firstName, MAX_NAME)) return { ok: false, reason: DropReason.INVALID_EVENT };
  if (Object.hasOwn(event, 'email') && !isShortString(event.email, MAX_NAME)) return { ok: false, reason: DropReason.INVALID_EVENT };
  // Delivered as the text the origin built, which JSON.parse just accepted and the size check bounds.
  const eventText = memberText(text, 'p');
  if (eventText === undefined) return { ok: false, reason: DropReason.MALFORMED };
  return { ok: true, node: r, value: { kind: 'relayed', type, sessionId: event.sessionId, text: eventText } };
}

/**
 * Parse a message from a topic's subject (`room.{topic}`), in the upstream
 * relay's framing: `p` is `{"op":"event","topic":…,"type":…,"sessionId":…,
 * "userId":…,"firstName":…,"email":…,"timestamp":…,"payload":…}`, or a sync
 * request `{"op":"event","topic":…,"type":"presence_sync_request"}`. The
 * same rules as {@link parseRoomMessage}; an event naming another topic is
 * refused. The texts returned are in the legacy framing (the server's own
 * form of a room event; local subscribers get it in theirs), with `payload`
 * `null` when the event had none.
 */
export function parseTopicMessage(data: Uint8Array, topic: string, maxBytes: number): Parsed<BusEvent> {
  const envelope = parseEnvelope(data, maxBytes);
  if (!envelope.ok) return envelope;
  const {
    node: r,
    value: { event, text },
  } = envelope;
  const type = event.type;
  if (event.op !== 'event' || typeof type !== 'string' || type.length === 0 || type.length > 64) return { ok: false, reason: DropReason.INVALID_EVENT };
  if (event.topic !== topic) return { ok: false, reason: DropReason.ROOM_MISMATCH };
  if (type === PRESENCE_SYNC_REQUEST) return { ok: true, node: r, value: { kind: 'sync_request' } };
  const now = typeof event.timestamp === 'number' && Number.isFinite(event.timestamp) ? event.timestamp : Date.now();
  if (type === ServerEvent.SESSION_JOINED || type === ServerEvent.SESSION_LEFT || type === 'session_updated') {
    const info = sessionInfo(event.payload, true);
    if (info === null || event.sessionId !== info.sessionId || event.userId !== info.userId) return { ok: false, reason: DropReason.INVALID_EVENT };
    if (type === ServerEvent.SESSION_LEFT) return { ok: true, node: r, value: { kind: 'left', info, text: sessionLeftJson(info, now) } };
    if (type === ServerEvent.SESSION_JOINED) {
      return {
        ok: true,
        node: r,
        value: { kind: 'joined', info, text: `{"type":"session_joined"${stampOf(info)},"timestamp":${now},"payload":${sessionInfoJson(info)}}` },
      };
    }
    const text = `{"type":"session_updated"${stampOf(info)},"permission":"${info.permission}","timestamp":${now},"payload":${sessionInfoJson(info)}}`;
    return { ok: true, node: r, value: { kind: 'updated', info, text } };
  }
  if (NOT_RELAYABLE.has(type)) return { ok: false, reason: DropReason.RESERVED_TYPE };
  if (!isShortString(event.sessionId, MAX_ID) || !isShortString(event.userId, MAX_ID)) return { ok: false, reason: DropReason.INVALID_EVENT };
  if (typeof event.timestamp !== 'number') return { ok: false, reason: DropReason.INVALID_EVENT };
  const firstName = event.firstName ?? '';
  const email = event.email ?? '';
  if (!isShortString(firstName, MAX_NAME) || !isShortString(email, MAX_NAME)) return { ok: false, reason: DropReason.INVALID_EVENT };
  // The payload as the origin sent it, which JSON.parse just accepted and the size check bounds.
  const eventText = memberText(text, 'p');
  const payload = eventText === undefined ? undefined : memberText(eventText, 'payload');
  const stamp = `,"sessionId":${JSON.stringify(event.sessionId)},"userId":${JSON.stringify(event.userId)},"firstName":${JSON.stringify(firstName)},"email":${JSON.stringify(email)}`;
  const legacy = `{"type":${JSON.stringify(type)}${stamp},"timestamp":${event.timestamp},"payload":${payload ?? 'null'}}`;
  return { ok: true, node: r, value: { kind: 'relayed', type, sessionId: event.sessionId, text: legacy } };
}

function stampOf(info: BusSessionInfo): string {
  return `,"sessionId":${JSON.stringify(info.sessionId)},"userId":${JSON.stringify(info.userId)},"firstName":${JSON.stringify(info.firstName)},"email":${JSON.stringify(info.email)}`;
}

/** A heartbeat: one per shard of a moodio-rt node, every --federation-heartbeat. */
export interface Heartbeat {
  /** Node id. */
  r: string;
  /** Process instance: random per process; two processes claiming one node id differ here. */
  i: string;
  /** The process's start time (ms since the epoch): of two duplicates, the later one stops. */
  t: number;
  /** Shard index and worker count: a peer maps a room to the shard that owns it (fnv1a32 mod w). */
  s: number;
  w: number;
  /** Shard incarnation: random per worker start; a new one means the shard restarted and forgot its sessions. */
  k: string;
  /** Heartbeat interval in ms. */
  h: number;
  /** Region label. */
  g: string;
  /** Sequence: grows by one per heartbeat of the shard incarnation, so a receiver refuses one it heard before. */
  q: number;
}

export function encodeHeartbeat(beat: Heartbeat): string {
  return JSON.stringify(beat);
}

export function parseHeartbeat(data: Uint8Array): Parsed<Heartbeat> {
  if (data.byteLength > 1024) return { ok: false, reason: DropReason.TOO_LARGE };
  let v: unknown;
  try {
    v = JSON.parse(decode(data));
  } catch {
    return { ok: false, reason: DropReason.MALFORMED };
  }
  if (typeof v !== 'object' || v === null) return { ok: false, reason: DropReason.MALFORMED };
  const b = v as Record<string, unknown>;
  if (!isShortString(b.r, MAX_ID) || b.r.length === 0 || !isShortString(b.i, MAX_ID) || !isShortString(b.k, MAX_ID) || !isShortString(b.g, MAX_ID)) {
    return { ok: false, reason: DropReason.MALFORMED };
  }
  const ints = [b.t, b.s, b.w, b.h, b.q];
  if (!ints.every((n) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0)) return { ok: false, reason: DropReason.MALFORMED };
  if ((b.w as number) < 1 || (b.w as number) > 256 || (b.s as number) >= (b.w as number) || (b.h as number) < 10 || (b.h as number) > 60_000) {
    return { ok: false, reason: DropReason.MALFORMED };
  }
  return { ok: true, node: b.r, value: b as unknown as Heartbeat };
}

/**
 * Another node's answer to a server API query: `{"r": node, "s": [sessions]}`
 * (protocol/api.ts LiveSession), checked field by field. Null when off.
 */
export function parseQueryAnswer(data: Uint8Array): { node: string; sessions: LiveSession[] } | null {
  if (data.byteLength > 1024 * 1024) return null;
  let value: unknown;
  try {
    value = JSON.parse(decode(data));
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const { r, s } = value as { r?: unknown; s?: unknown };
  if (!isShortString(r, MAX_ID) || r.length === 0 || !Array.isArray(s) || s.length > 10_000) return null;
  const sessions: LiveSession[] = [];
  for (const item of s) {
    if (typeof item !== 'object' || item === null) return null;
    const v = item as Record<string, unknown>;
    const info = sessionInfo(v);
    if (info === null || typeof v.desktopId !== 'string' || !DESKTOP_ID_PATTERN.test(v.desktopId)) return null;
    if (typeof v.connectedAt !== 'number' || !Number.isFinite(v.connectedAt) || !Number.isSafeInteger(v.shard) || (v.shard as number) < 0) return null;
    // The node is the one that answered: a node speaks for its own sessions only.
    sessions.push({ ...info, desktopId: v.desktopId, connectedAt: v.connectedAt, node: r, shard: v.shard as number });
  }
  return { node: r, sessions };
}
