/**
 * The rooms of one shard: desktopId → members. A room exists while it has a
 * member. Members live in a dense array (fast to iterate on every broadcast)
 * and leave by swap-remove in O(1), each session remembering its index.
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
  readonly members: Session[] = [];
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
    session.slot.index = room.members.length;
    room.members.push(session);
    this.sessions++;
    return room;
  }

  /** Remove `session`; drops the room when it empties. Returns the room, or null if not a member. */
  leave(session: Session): Room | null {
    const room = this.rooms.get(session.desktopId);
    const slot = session.slot;
    if (room === undefined || room.members[slot.index] !== session) return null;
    const last = room.members.pop()!;
    if (last !== session) {
      room.members[slot.index] = last;
      last.slot.index = slot.index;
    }
    slot.index = -1;
    this.sessions--;
    if (room.members.length === 0) this.rooms.delete(room.id);
    return room;
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

  /** Every session of every room (for drain). */
  *allSessions(): IterableIterator<Session> {
    for (const room of this.rooms.values()) yield* room.members;
  }
}
