/**
 * The room as the client knows it: the other sessions by sessionId, kept
 * current from the server's presence frames (`room_joined`,
 * `session_joined`, `session_left`, `session_updated`), and the change each
 * frame makes, for the client's `presence` event. The server's frames are
 * checked for shape here before use: one that does not fit is dropped
 * rather than let an app's handler crash on it.
 */
import { PERMISSIONS, type Permission, type SessionInfo } from '../protocol/events.ts';

export interface PresenceChange {
  /** Sessions that arrived (or, after a reconnect, that came while this client was away). */
  joined: SessionInfo[];
  /** Sessions that left (or left while this client was away). */
  left: SessionInfo[];
  /** Sessions whose info changed, as they are now: a new permission (`session_updated`, or after a reconnect, a role changed while away). */
  updated: SessionInfo[];
  /** True for the change computed from a reconnect's `room_joined`. */
  reconnected: boolean;
}

/** `editor` or `viewer`. */
export function isPermission(value: unknown): value is Permission {
  return typeof value === 'string' && PERMISSIONS.has(value);
}

/** A session's info as the server sends it (presence frames, room_joined). */
export function isSessionInfo(value: unknown): value is SessionInfo {
  if (value === null || typeof value !== 'object') return false;
  const info = value as Record<string, unknown>;
  return (
    typeof info.sessionId === 'string' &&
    typeof info.userId === 'string' &&
    typeof info.firstName === 'string' &&
    typeof info.email === 'string' &&
    isPermission(info.permission)
  );
}

function sameInfo(a: SessionInfo, b: SessionInfo): boolean {
  return a.userId === b.userId && a.firstName === b.firstName && a.email === b.email && a.permission === b.permission;
}

const change = (joined: SessionInfo[], left: SessionInfo[], updated: SessionInfo[], reconnected = false): PresenceChange => ({
  joined,
  left,
  updated,
  reconnected,
});

export class Presence {
  /** The other sessions in the room, by sessionId. */
  readonly sessions = new Map<string, SessionInfo>();

  /**
   * A `room_joined`: the room is `list` now. Returns the change against what
   * was known, or null when nothing changed on a first join.
   */
  reset(list: readonly SessionInfo[], reconnected: boolean): PresenceChange | null {
    const before = new Map(this.sessions);
    this.sessions.clear();
    for (const info of list) this.sessions.set(info.sessionId, info);
    const joined: SessionInfo[] = [];
    const updated: SessionInfo[] = [];
    for (const info of list) {
      const was = before.get(info.sessionId);
      if (was === undefined) joined.push(info);
      else if (!sameInfo(was, info)) updated.push(info);
    }
    const left = [...before.values()].filter((s) => !this.sessions.has(s.sessionId));
    return joined.length > 0 || left.length > 0 || updated.length > 0 || reconnected ? change(joined, left, updated, reconnected) : null;
  }

  /** A `session_joined`. */
  join(info: SessionInfo): PresenceChange {
    this.sessions.set(info.sessionId, info);
    return change([info], [], []);
  }

  /** A `session_left`. */
  leave(info: SessionInfo): PresenceChange {
    this.sessions.delete(info.sessionId);
    return change([], [info], []);
  }

  /**
   * A `session_updated`: the session's new info. Null when it changes
   * nothing, or names a session this client does not know (its
   * `session_joined` comes first, so it has left): adding it would bring
   * back a session that is gone.
   */
  update(info: SessionInfo): PresenceChange | null {
    const was = this.sessions.get(info.sessionId);
    if (was === undefined || sameInfo(was, info)) return null;
    this.sessions.set(info.sessionId, info);
    return change([], [], [info]);
  }
}
