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
import type { Subscription } from './connection.ts';
import { topicOfRoom } from '../protocol/topics.ts';

/** A subscriber of the room whose connection lives on another shard of this process (shard/shard-link.ts). */
export interface RemoteMember {
  sessionId: string;
  /** Its SessionInfo JSON, its permission on this topic included. */
  infoJson: string;
  /** Its identity as spliced into events (session.ts `stamp`). */
  stamp: string;
  shard: number;
  /** When its connection opened (ms since the epoch), for the server API's presence. */
  connectedAt: number;
}

/** What the room index keeps per session (`session.slot`): its position in its room's member array. */
export interface RoomSlot {
  index: number;
}

export function newRoomSlot(): RoomSlot {
  return { index: -1 };
}

export class Room {
  /** The room key: a desktop id, or `production-table:{id}`. */
  readonly id: string;
  /** Its topic on the multiplexed route (`desktop:{id}`, `production-table:{id}`). */
  readonly topic: string;
  /** The legacy sockets, in join order but for swap-removes. Only RoomIndex changes it, and never while it is pinned. */
  members: Session[] = [];
  /** Loops running over `members` (this very array): pins taken and not yet released. */
  pins = 0;
  /** Multiplexed subscribers whose connection is on this shard (each knows its index); pinned like `members`. */
  subs: Subscription[] = [];
  subPins = 0;
  /** Multiplexed subscribers on other shards, by sessionId (null while there are none). */
  remote: Map<string, RemoteMember> | null = null;
  /** The other shards with subscribers here, and how many each has: each gets every event once. */
  peers: Map<number, number> | null = null;
  constructor(id: string) {
    this.id = id;
    this.topic = topicOfRoom(id);
  }

  /** Nobody left: no legacy socket, no subscriber here or on another shard. */
  get empty(): boolean {
    return this.members.length === 0 && this.subs.length === 0 && (this.remote === null || this.remote.size === 0);
  }

  /** Sessions in the room on this process, every framing. */
  get size(): number {
    return this.members.length + this.subs.length + (this.remote?.size ?? 0);
  }
}

export class RoomIndex {
  private readonly rooms = new Map<string, Room>();
  private sessions = 0;

  /** Add `session` to the room of its desktop, creating the room if needed. */
  join(session: Session): Room {
    const room = this.ensure(session.desktopId);
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
    if (room.empty) this.rooms.delete(room.id);
    return room;
  }

  /** The room of `roomKey`, created if needed. */
  ensure(roomKey: string): Room {
    let room = this.rooms.get(roomKey);
    if (room === undefined) {
      room = new Room(roomKey);
      this.rooms.set(roomKey, room);
    }
    return room;
  }

  /** Add a local multiplexed subscriber to its room. */
  addSub(sub: Subscription): Room {
    const room = this.ensure(sub.roomKey);
    const subs = writableSubs(room);
    sub.index = subs.length;
    subs.push(sub);
    return room;
  }

  /** Remove a local multiplexed subscriber; the room, or null if it was not in it. */
  removeSub(sub: Subscription): Room | null {
    const room = this.rooms.get(sub.roomKey);
    if (room === undefined || room.subs[sub.index] !== sub) return null;
    const subs = writableSubs(room);
    const last = subs.pop()!;
    if (last !== sub) {
      subs[sub.index] = last;
      last.index = sub.index;
    }
    sub.index = -1;
    this.dropIfEmpty(room);
    return room;
  }

  /** Forget `room` once nobody is in it (after a change to its remote members). */
  dropIfEmpty(room: Room): void {
    if (room.empty && this.rooms.get(room.id) === room) this.rooms.delete(room.id);
  }

  /** `room`'s local subscribers for a delivering loop (see {@link pin}). */
  pinSubs(room: Room): readonly Subscription[] {
    room.subPins++;
    return room.subs;
  }

  unpinSubs(room: Room, subs: readonly Subscription[]): void {
    if (room.subs === subs) room.subPins--;
  }

  /** Every room (for a peer shard's restart). */
  values(): IterableIterator<Room> {
    return this.rooms.values();
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

  /** The `n` largest rooms, largest first, every kind of member counted (legacy sockets, subscribers here and on other shards). */
  topRooms(n: number): { desktopId: string; sessions: number }[] {
    const top: { desktopId: string; sessions: number }[] = [];
    for (const room of this.rooms.values()) {
      const size = room.size;
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

/** `room.subs` to change in place: a fresh copy while loops hold the current array. */
function writableSubs(room: Room): Subscription[] {
  if (room.subPins > 0) {
    room.subs = room.subs.slice();
    room.subPins = 0;
  }
  return room.subs;
}

/** `room.members` to change in place: a fresh copy while loops hold the current array (the pins stay with it). */
function writable(room: Room): Session[] {
  if (room.pins > 0) {
    room.members = room.members.slice();
    room.pins = 0;
  }
  return room.members;
}
