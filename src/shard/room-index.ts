/**
 * The rooms of one shard: desktopId → members. A room exists while it has a
 * member. Members live in a dense array (fast to iterate on every broadcast)
 * and leave by swap-remove in O(1), each session remembering its index.
 *
 * A delivery can change the room it is part of: the frame meant for a
 * member over its backlog cap cuts it, and it leaves at once. Walking the
 * live array, a loop would then skip the member swapped into the cut one's
 * slot (the last joined), which silently missed the event. So a loop that
 * delivers pins the array ({@link RoomIndex.pin}): while it is pinned, a
 * join or leave replaces `room.members` with a changed copy and leaves the
 * pinned array as it was, so the loop reaches every member that was there
 * when it began (and skips, by `open`, those cut meanwhile). The common
 * case, a loop during which nobody leaves, copies and allocates nothing;
 * only a leave during a loop pays for one copy.
 */
import type { Session } from './session.ts';

/** What the room index keeps per session (`session.slot`): its position in its room's member array. */
export interface RoomSlot {
  index: number;
}

export function newRoomSlot(): RoomSlot {
  return { index: -1 };
}

export class Room {
  readonly id: string;
  /** The members, in join order but for swap-removes. Only RoomIndex changes it, and never while it is pinned. */
  members: Session[] = [];
  /** Loops running over `members` (this very array): pins taken and not yet released. */
  pins = 0;
  constructor(id: string) {
    this.id = id;
  }
}

export class RoomIndex {
  private readonly rooms = new Map<string, Room>();
  private sessions = 0;

  /** Add `session` to the room of its desktop, creating the room if needed. */
  join(session: Session): Room {
    let room = this.rooms.get(session.desktopId);
    if (room === undefined) {
      room = new Room(session.desktopId);
      this.rooms.set(room.id, room);
    }
    const members = writable(room);
    session.slot.index = members.length;
    members.push(session);
    this.sessions++;
    return room;
  }

  /** Remove `session`; drops the room when it empties. Returns the room, or null if not a member. */
  leave(session: Session): Room | null {
    const room = this.rooms.get(session.desktopId);
    const slot = session.slot;
    if (room === undefined || room.members[slot.index] !== session) return null;
    const members = writable(room);
    const last = members.pop()!;
    if (last !== session) {
      members[slot.index] = last;
      last.slot.index = slot.index;
    }
    slot.index = -1;
    this.sessions--;
    if (room.members.length === 0) this.rooms.delete(room.id);
    return room;
  }

  /**
   * `room`'s members for a loop that delivers to them: until
   * {@link unpin}, this array does not change, whatever the deliveries do
   * to the room. Pins nest (a cut's session_left is a loop inside the
   * loop). A pin never released (a delivery threw) costs one copy at the
   * room's next change, nothing more.
   */
  pin(room: Room): readonly Session[] {
    room.pins++;
    return room.members;
  }

  /** End the loop that {@link pin} gave `members` to. */
  unpin(room: Room, members: readonly Session[]): void {
    // A change during the loop replaced the array, and the count with it.
    if (room.members === members) room.pins--;
  }

  get(desktopId: string): Room | undefined {
    return this.rooms.get(desktopId);
  }

  get roomCount(): number {
    return this.rooms.size;
  }

  get sessionCount(): number {
    return this.sessions;
  }

  /** The `n` largest rooms, largest first. */
  topRooms(n: number): { desktopId: string; sessions: number }[] {
    const top: { desktopId: string; sessions: number }[] = [];
    for (const room of this.rooms.values()) {
      const size = room.members.length;
      if (top.length === n && size <= top[n - 1]!.sessions) continue;
      top.push({ desktopId: room.id, sessions: size });
      top.sort((a, b) => b.sessions - a.sessions);
      if (top.length > n) top.pop();
    }
    return top;
  }

  /**
   * Every session of every room, each room's members pinned while they are
   * walked: a session cut meanwhile does not make another one skipped.
   * Rooms created meanwhile may be visited; emptied ones are not.
   */
  *allSessions(): IterableIterator<Session> {
    for (const room of this.rooms.values()) {
      const members = this.pin(room);
      try {
        yield* members;
      } finally {
        this.unpin(room, members);
      }
    }
  }
}

/** `room.members` to change in place: a fresh copy while loops hold the current array (the pins stay with it). */
function writable(room: Room): Session[] {
  if (room.pins > 0) {
    room.members = room.members.slice();
    room.pins = 0;
  }
  return room.members;
}
