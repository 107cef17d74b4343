/**
 * The text of every event frame the server sends, in each framing, built
 * from its parts. One module, pure functions, so that a frame has one
 * shape wherever it is made: the relay, the server API (commands.ts,
 * session-control.ts), the topic rooms, and federation's local delivery.
 *
 * The parts:
 * - `type`, the event's type;
 * - `stamp`, the sender's identity as JSON members ready to splice
 *   (`,"sessionId":…,"userId":…,"firstName":…,"email":…`, session.ts), or
 *   the server's ({@link SERVER_STAMP});
 * - `extra`, further members spliced after the stamp (`,"permission":"viewer"`
 *   in `session_updated`), '' when none;
 * - `timestamp`, milliseconds since the epoch;
 * - `payload`, the payload's JSON text as sent (validated, never
 *   re-serialized: `1e20` stays 5 bytes), undefined when absent.
 *
 * Two framings:
 * - **legacy** (`/ws/desktop/{id}`, `/ws/production-table/{id}`, the
 *   federation of desktop rooms): `{"type":…,<stamp><extra>,"timestamp":…,"payload":…}`,
 *   `payload` left out when absent;
 * - **topic** (`/ws/connection`): `{"op":"event","topic":…,"type":…,<stamp><extra>,"timestamp":…,"payload":…}`,
 *   `payload` `null` when absent. An event about the user rather than a
 *   topic (the server API's user events) has no `topic` member.
 *
 * Each function makes one string: a broadcast builds each framing once, and
 * only when someone gets that framing (topic-rooms.ts).
 */
import { SERVER_SENDER, type Permission } from './events.ts';

/** An event of a room, before it is framed (see the module comment for the parts). */
export interface RoomEvent {
  type: string;
  stamp: string;
  timestamp: number;
  payload: string | undefined;
  /** Members after the stamp, e.g. `,"permission":"viewer"`; absent or '' when none. */
  extra?: string;
  /** Its place in its room's sequence (room-log.ts), the frame's last member; absent for presence and before it is stamped. */
  offset?: number;
}

/** The stamp of the server's own events: `sessionId` and `userId` "server", no name, no email. */
export const SERVER_STAMP = `,"sessionId":"${SERVER_SENDER}","userId":"${SERVER_SENDER}"`;

/** The legacy framing from its parts. */
export function legacyText(type: string, stamp: string, timestamp: number, payload: string | undefined, extra = ''): string {
  return `{"type":${JSON.stringify(type)}${stamp}${extra},"timestamp":${timestamp}${payload === undefined ? '' : `,"payload":${payload}`}}`;
}

/** The topic framing from its parts; `topic` undefined for an event with no topic (a user event). */
export function topicText(topic: string | undefined, type: string, stamp: string, timestamp: number, payload: string | undefined, extra = ''): string {
  const head = topic === undefined ? '{"op":"event"' : `{"op":"event","topic":${JSON.stringify(topic)}`;
  return `${head},"type":${JSON.stringify(type)}${stamp}${extra},"timestamp":${timestamp},"payload":${payload ?? 'null'}}`;
}

/** {@link RoomEvent} in the legacy framing, its offset last when it has one. */
export function legacyEventText(event: RoomEvent): string {
  const text = legacyText(event.type, event.stamp, event.timestamp, event.payload, event.extra);
  return event.offset === undefined ? text : withOffset(text, event.offset);
}

/** {@link RoomEvent} in the topic framing, its offset last when it has one. */
export function topicEventText(topic: string | undefined, event: RoomEvent): string {
  const text = topicText(topic, event.type, event.stamp, event.timestamp, event.payload, event.extra);
  return event.offset === undefined ? text : withOffset(text, event.offset);
}

/**
 * A finished frame's text (either framing) with `"offset":N` as its last
 * member. The text a room's history keeps, and what goes to other nodes,
 * has none: each node stamps its own offsets (room-log.ts).
 */
export function withOffset(text: string, offset: number): string {
  return `${text.slice(0, -1)},"offset":${offset}}`;
}

/**
 * A legacy frame's text (no offset) in the topic framing, as the topic
 * rooms frame it live: `nullPayload` when the event had no payload and its
 * topic frame says `"payload":null` (a subscriber's or a legacy socket's
 * event; the server's and other nodes' events are converted as they are).
 */
export function topicOfLegacy(topic: string, legacy: string, nullPayload: boolean): string {
  if (!nullPayload) return legacyToTopicText(topic, legacy);
  return `{"op":"event","topic":${JSON.stringify(topic)},${legacy.slice(1, -1)},"payload":null}`;
}

/**
 * A finished legacy frame's text in the topic framing (`topic` undefined:
 * none). For the server API's events, whose legacy text the primary made
 * once for every shard and node: the members after `type` are kept as they
 * are, so both framings carry the same bytes of payload.
 */
export function legacyToTopicText(topic: string | undefined, legacy: string): string {
  return topic === undefined ? `{"op":"event",${legacy.slice(1)}` : `{"op":"event","topic":${JSON.stringify(topic)},${legacy.slice(1)}`;
}

/** The `extra` of `session_updated`: the session's new role. */
export function permissionMember(permission: Permission): string {
  return `,"permission":"${permission}"`;
}

/** `session_updated` (a member's role changed) as a room event; `info` is its SessionInfo JSON with the new role. */
export function sessionUpdated(stamp: string, permission: Permission, timestamp: number, info: string): RoomEvent {
  return { type: 'session_updated', stamp, timestamp, payload: info, extra: permissionMember(permission) };
}

/** To a legacy session whose role changed: `{"type":"permission_changed","permission":…}` (no stamp: the server's word on itself). */
export function permissionChangedText(permission: Permission): string {
  return `{"type":"permission_changed","permission":"${permission}"}`;
}

/** To a subscription whose role changed: `{"op":"event","topic":…,"type":"permission_changed","permission":…}`. */
export function topicPermissionChangedText(topic: string, permission: Permission): string {
  return `{"op":"event","topic":${JSON.stringify(topic)},"type":"permission_changed","permission":"${permission}"}`;
}

/**
 * `room_joined` to a legacy session that joined: its id, its role and the
 * others' SessionInfo JSON (comma-separated); `position` is the room's
 * `,"epoch":…,"offset":…[,"recovered":…]` (protocol/resume.ts positionMembers).
 */
export function roomJoinedText(sessionId: string, permission: Permission, sessions: string, position = ''): string {
  return `{"type":"room_joined","sessionId":${JSON.stringify(sessionId)},"permission":"${permission}","sessions":[${sessions}]${position}}`;
}

/** A legacy error frame; `extra` is further members (e.g. `,"retryAfterMs":40`). */
export function legacyErrorText(code: string, message: string, extra = ''): string {
  return `{"type":"error","code":"${code}","message":${JSON.stringify(message)}${extra}}`;
}
