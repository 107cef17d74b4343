/**
 * The rooms this shard federates, and in each the sessions of other nodes:
 * learnt from their `session_joined` / `session_left` (and from the answers
 * to a `presence_sync_request`); the table dies with the room. A room whose
 * last local session left lingers a while before it unsubscribes, so that a
 * tab that reconnects needs no sync.
 */
import type { Msg } from '@nats-io/transport-node';
import { envelope, roomSubject, sessionLeftJson, topicSubject } from '../../protocol/bus.ts';
import { fnv1a32 } from '../../protocol/hash.ts';
import { Metric } from '../../protocol/metrics.ts';
import { legacyToTopicText, topicEventText, type RoomEvent } from '../../protocol/event-frames.ts';
import { topicOfRoom } from '../../protocol/topics.ts';
import type { Room, RoomIndex } from '../room-index.ts';
import type { NatsLink } from './link.ts';
import type { FederationOptions, FedRoom, Framing, RemoteSession } from './types.ts';

/** A room whose last local session left keeps its subscription and table this long: a quick rejoin needs no sync. */
const ROOM_LINGER_MS = 10_000;
/** Remote sessions one room may hold when --max-room-size is 0 (else 4 × it). */
const MAX_REMOTE_PER_ROOM = 10_000;

export class RemoteRooms {
  readonly byId = new Map<string, FedRoom>();
  /** The shard's rooms and their local members. */
  readonly local: RoomIndex;
  readonly maxRemotePerRoom: number;
  private readonly link: NatsLink;
  private readonly deliver: FederationOptions['deliver'];
  private remoteCount = 0;
  /** Remote sessions learnt so far (each one's {@link RemoteSession.learnt}). */
  private learntCount = 0;

  /** The room's events are not heard any more (recovery.ts). */
  private readonly gap: (roomKey: string) => void;

  constructor(link: NatsLink, local: RoomIndex, deliver: FederationOptions['deliver'], gap: (roomKey: string) => void = () => {}) {
    this.gap = gap;
    this.link = link;
    this.local = local;
    this.deliver = deliver;
    this.maxRemotePerRoom = link.config.maxRoomSize > 0 ? 4 * link.config.maxRoomSize : MAX_REMOTE_PER_ROOM;
  }

  /** How many remote sessions were learnt so far: sessions learnt from here on compare as newer. */
  get learnt(): number {
    return this.learntCount;
  }

  get remoteSessions(): number {
    return this.remoteCount;
  }

  /** The room of `desktopId`, made (not yet subscribed) when new. */
  open(desktopId: string): { room: FedRoom; created: boolean } {
    const known = this.byId.get(desktopId);
    if (known !== undefined) return { room: known, created: false };
    const topic = topicOfRoom(desktopId);
    const desktop = topic !== desktopId;
    const room: FedRoom = {
      desktopId,
      topic,
      subject: desktop ? roomSubject(desktopId) : topicSubject(topic),
      framing: desktop ? 'flat' : 'topic',
      mirror: desktop ? topicSubject(topic) : null,
      upstreamHeard: false,
      sub: null,
      mirrorSub: null,
      remote: new Map(),
      waiters: null,
      joining: 0,
      lastAnswerAt: -Infinity,
      answerTimer: null,
      pendingReplies: [],
      lingerTimer: null,
      resyncPending: false,
    };
    this.byId.set(desktopId, room);
    return { room, created: true };
  }

  /** Listen on the room's subject, and on a desktop's topic subject (the upstream relay's). */
  subscribe(room: FedRoom, onMessage: (room: FedRoom, msg: Msg, framing: Framing, mirror: boolean) => void): void {
    room.sub = this.link.subscribe(room.subject, (msg) => onMessage(room, msg, room.framing, false));
    if (room.mirror !== null) room.mirrorSub = this.link.subscribe(room.mirror, (msg) => onMessage(room, msg, 'topic', true));
  }

  /**
   * Publish a room's event to the other nodes: on the room's subject in its
   * framing, and for a desktop where an upstream relay was heard also on
   * `room.desktop:{id}` in the topic framing, marked as a copy. `event`, when
   * given, frames the topic text (`payload` null when absent); otherwise the
   * legacy text is converted.
   */
  publish(roomKey: string, legacyText: string, event?: RoomEvent): void {
    const link = this.link;
    const topic = topicOfRoom(roomKey);
    if (topic === roomKey) {
      link.send(topicSubject(topic), envelope(link.nodeJson, event === undefined ? legacyToTopicText(topic, legacyText) : topicEventText(topic, event)));
      return;
    }
    link.send(roomSubject(roomKey), envelope(link.nodeJson, legacyText));
    if (this.byId.get(roomKey)?.upstreamHeard !== true) return;
    link.send(
      topicSubject(topic),
      envelope(link.nodeJson, event === undefined ? legacyToTopicText(topic, legacyText) : topicEventText(topic, event)),
      undefined,
      true,
    );
  }

  /** Whether `room` is still the one this shard federates under its id. */
  current(room: FedRoom): boolean {
    return this.byId.get(room.desktopId) === room;
  }

  /** The room's local members, if any. */
  localRoom(room: FedRoom): Room | undefined {
    return this.local.get(room.desktopId);
  }

  /** Back within the linger: the table was kept current meanwhile. */
  keep(room: FedRoom): void {
    if (room.lingerTimer === null) return;
    clearTimeout(room.lingerTimer);
    room.lingerTimer = null;
  }

  /** The last local session left: keep listening for {@link ROOM_LINGER_MS}, then drop the room unless one came back. */
  linger(room: FedRoom): void {
    room.lingerTimer = setTimeout(() => {
      room.lingerTimer = null;
      if (this.current(room) && this.local.get(room.desktopId) === undefined) this.drop(room);
    }, ROOM_LINGER_MS);
    room.lingerTimer.unref();
  }

  drop(room: FedRoom): void {
    if (room.lingerTimer !== null) clearTimeout(room.lingerTimer);
    room.lingerTimer = null;
    this.byId.delete(room.desktopId);
    this.gap(room.desktopId);
    try {
      room.sub?.unsubscribe();
      room.mirrorSub?.unsubscribe();
    } catch {
      // The connection is closing: the subscription goes with it.
    }
    if (room.answerTimer !== null) clearTimeout(room.answerTimer);
    this.remoteCount -= room.remote.size;
    this.link.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
  }

  /** The remote sessions of `desktopId` as comma-separated SessionInfo JSON (for room_joined), or ''. */
  remoteSessionsJson(desktopId: string): string {
    const room = this.byId.get(desktopId);
    if (room === undefined || room.remote.size === 0) return '';
    let out = '';
    for (const remote of room.remote.values()) out += (out === '' ? '' : ',') + remote.infoJson;
    return out;
  }

  /** This node's session ids in `room`, comma-separated ('' when none). */
  localIds(room: FedRoom): string {
    const local = this.local.get(room.desktopId);
    if (local === undefined) return '';
    let ids = '';
    forEachLocal(local, (id) => {
      ids += (ids === '' ? '' : ',') + id;
    });
    return ids;
  }

  /** Learn a session `node` holds in `room`. */
  add(room: FedRoom, id: string, session: Omit<RemoteSession, 'learnt'>): void {
    room.remote.set(id, { ...session, learnt: this.learntCount++ });
    this.remoteCount++;
    this.link.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
  }

  /** Forget a session its node said left (the node's own event tells local members). */
  forget(room: FedRoom, id: string): void {
    room.remote.delete(id);
    this.remoteCount--;
    this.link.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
  }

  /** Forget a session and tell local members it left. */
  remove(room: FedRoom, id: string, remote: RemoteSession, now: number): void {
    this.forget(room, id);
    const local = this.local.get(room.desktopId);
    if (local !== undefined) this.deliver(local, sessionLeftJson(remote.info, now));
  }

  /** Whether `sessionId` is, as far as `room` knows, a session of a node heard signing: only that node's signature speaks for it. */
  heldBySigner(room: FedRoom, sessionId: string): boolean {
    const known = room.remote.get(sessionId);
    return known !== undefined && this.link.signs(known.node);
  }

  /** `node` says these are all its sessions in `room`: forget the others we hold for it (learnt before `learntBefore`, when given). */
  applyRoster(room: FedRoom, node: string, ids: ReadonlySet<string>, learntBefore = Infinity): void {
    const now = Date.now();
    for (const [id, remote] of room.remote) {
      if (remote.node === node && !ids.has(id) && remote.learnt < learntBefore) this.remove(room, id, remote, now);
    }
  }

  /**
   * Remove the sessions `node` had in the rooms its shard `shardId` (of `workers`) owns, telling local
   * members; those learnt at `keepFrom` or later (from the node's new process) stay.
   */
  expireShard(node: string, shardId: number, workers: number, now: number, keepFrom = Infinity): void {
    for (const room of this.byId.values()) {
      if (room.remote.size === 0 || fnv1a32(room.desktopId) % workers !== shardId) continue;
      for (const [id, remote] of room.remote) if (remote.node === node && remote.learnt < keepFrom) this.remove(room, id, remote, now);
    }
  }

  /** Closing: no timer of a room stays behind, and no sync is answered. */
  stopTimers(): void {
    for (const room of this.byId.values()) {
      if (room.lingerTimer !== null) clearTimeout(room.lingerTimer);
      if (room.answerTimer !== null) clearTimeout(room.answerTimer);
      room.lingerTimer = null;
      room.answerTimer = null;
      room.pendingReplies = [];
    }
  }
}

/**
 * Every session of this node in `room`: legacy sockets, subscribers whose
 * connection is on this shard, and subscribers on other shards (the owner
 * holds their identity). `stamp` is the identity members of an event.
 */
export function forEachLocal(room: Room, fn: (id: string, stamp: string, infoJson: string) => void): void {
  for (const member of room.members) fn(member.id, member.stamp, member.infoJson);
  for (const sub of room.subs) fn(sub.conn.id, sub.conn.stamp, sub.infoJson);
  if (room.remote !== null) for (const member of room.remote.values()) fn(member.sessionId, member.stamp, member.infoJson);
}
