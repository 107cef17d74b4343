/**
 * Rooms as multiplexed connections see them. A room has three kinds of
 * members: legacy sockets (`room.members`, the legacy framing), subscribers
 * whose connection is on this shard (`room.subs`, the topic framing), and
 * subscribers on other shards (`room.remote`, reached through the
 * in-process link). Each event of the room is framed at most once per
 * framing, and only if someone gets it; another shard gets it once however
 * many subscribers it has there, and fans it out itself.
 *
 * Owner side: the shard that owns a room (the router's hash of its key)
 * holds its state. A follower's join, leave and publish arrive over the
 * link and are applied here like local ones; room state never crosses
 * threads, only frames' text does.
 *
 * Follower side: this shard's subscribers of rooms other shards own, by
 * topic, and the joins waiting for their owner's answer.
 */
import type { Logger } from '../log.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { fnv1a32 } from '../protocol/hash.ts';
import type { LinkMessage } from '../protocol/messages.ts';
import { legacyEventText, legacyToTopicText, sessionUpdated, topicEventText, type RoomEvent } from '../protocol/event-frames.ts';
import { positionMembers, type ResumePosition } from '../protocol/resume.ts';
import { roomKeyOf } from '../protocol/topics.ts';
import { Delivery, type Backpressure } from './backpressure.ts';
import type { Subscription } from './connection.ts';
import type { Room, RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';
import type { ShardLink } from './shard-link.ts';

export interface TopicRoomsOptions {
  shardId: number;
  workers: number;
  rooms: RoomIndex;
  backpressure: Backpressure;
  log: Logger;
  /** Types only the newest of matters to a slow recipient. */
  transientTypes: ReadonlySet<string>;
  /** Most sessions a room holds, every kind counted (--max-room-size; 0 = no limit). */
  maxRoomSize: number;
  /** Offsets, history and replays (recovery.ts). */
  recovery?: TopicRecovery;
}

/** What the topic rooms need of recovery (recovery.ts): offsets, a joiner's position and replay, the owner's and the follower's sides of a replay over the link. */
export interface TopicRecovery {
  readonly recording: boolean;
  stamp(roomKey: string, text: string, nullPayload: boolean): number;
  /** Whether the room's relayed events come back from the fleet's stream, to every member here (`--history-stream`). */
  streamed(roomKey: string): boolean;
  /** A subscriber joins a room owned here: its ack's position members; its replay started when it recovers. */
  joinSub(sub: Subscription): string;
  /** The owner's answer to a join from another shard. */
  answerJoin(roomKey: string, rec: ResumePosition | undefined): { position: ResumePosition; recovered: boolean | undefined };
  /** The owner: the next batch of a follower's replay. */
  serve(roomKey: string, request: Extract<LinkMessage, { k: 'replay' }>): Extract<LinkMessage, { k: 'batch' }>;
  /** A follower recovered from `from`: its replay reads the owner's history over the link. */
  follow(sub: Subscription, from: ResumePosition, ask: (message: Extract<LinkMessage, { k: 'replay' }>) => boolean): void;
  onBatch(message: Extract<LinkMessage, { k: 'batch' }>): void;
  /** Shard `peer` stopped: the replays reading its history end. */
  peerGone(peer: number): void;
}

/** What the rooms need of the federation (shard/federation/): the room of a new subscriber listens to the other nodes, and every subscriber's event goes to them. */
export interface TopicBus {
  /** The room's sessions on other nodes, as comma-separated SessionInfo JSON (or ''). */
  remoteSessionsJson(roomKey: string): string;
  /**
   * A subscriber wants to join the room: `ready` runs once it may, at once
   * unless the room is new to this node, which then subscribes on the bus,
   * asks who is there, and runs `ready` once the others answered (at most
   * 500 ms), as a legacy socket's join waits, so that the ack lists them.
   */
  admit(roomKey: string, ready: () => void, resume?: ResumePosition): void;
  /** Publish an event of the room (`legacyText` its legacy framing) to the other nodes. */
  publish(roomKey: string, legacyText: string, event: RoomEvent): void;
  /** The room has no session of this node any more. */
  roomEmptied(roomKey: string): void;
}

/** What a join came to: the room's other sessions (now), the owner's answer to wait for, a full room, or no owner to ask (it is restarting). */
export type JoinResult = { sessions: string; position: string } | 'pending' | 'full' | 'unavailable';

export class TopicRooms {
  private readonly options: TopicRoomsOptions;
  private readonly rooms: RoomIndex;
  private link: ShardLink | null = null;
  private bus: TopicBus | null = null;
  /** Topic → this shard's joined subscribers of a room another shard owns. */
  private readonly followers = new Map<string, Set<Subscription>>();
  /** `sessionId\0topic` → a join sent to another shard, not answered yet. */
  private readonly joining = new Map<string, Subscription>();
  /** Owner side: `sessionId\0topic` of the joins from other shards waiting for the room's first sync with the other nodes; a leave meanwhile takes its key out. */
  private readonly admitting = new Set<string>();
  /** The owner answered a join (`sessions`: the others; `position`: the ack's epoch, offset and recovered members). */
  onJoined: (sub: Subscription, sessions: string, position: string) => void = () => {};
  /** The owner of a room `sub` holds or is joining restarted: the subscription is gone. */
  onLost: (sub: Subscription) => void = () => {};
  /** The owner refused a join: the room is full. */
  onFull: (sub: Subscription) => void = () => {};

  constructor(options: TopicRoomsOptions) {
    this.options = options;
    this.rooms = options.rooms;
  }

  /** The link to the other shards (absent with one worker). */
  useLink(link: ShardLink): void {
    this.link = link;
  }

  /** The other nodes (absent without federation). */
  useBus(bus: TopicBus): void {
    this.bus = bus;
  }

  /** The shard that owns `roomKey`'s room: the router's hash, also federation's. */
  ownerOf(roomKey: string): number {
    return fnv1a32(roomKey) % this.options.workers;
  }

  // ---- the connection's side ----

  /** Put `sub` in its room (here, or through its owner); on a fresh ack of a held topic, ask again for the list. */
  join(sub: Subscription): JoinResult {
    if (sub.owner === this.options.shardId) {
      // A topic held already is live: a recover asked again replays nothing.
      if (sub.state === 'joined') return { sessions: this.sessionsJson(this.rooms.ensure(sub.roomKey), sub.conn.id), position: this.heldPosition(sub) };
      if (this.bus === null) return this.enter(sub);
      // The room's first sync with the other nodes may hold the join (onJoined, onFull then answer it).
      let waited = false;
      let result: JoinResult = 'pending';
      // With the fleet's stream, the room follows it first, and a resume is read from it (`sub.recover`).
      this.bus.admit(
        sub.roomKey,
        () => {
          if (!waited) result = this.enter(sub);
          else this.entered(sub);
        },
        sub.recover,
      );
      waited = true;
      return result;
    }
    const message: LinkMessage = { k: 'join', topic: sub.topic, sid: sub.conn.id, info: sub.infoJson, stamp: sub.conn.stamp, at: sub.conn.connectedAt };
    if (sub.recover !== undefined) message.rec = sub.recover;
    if (this.link === null || !this.link.send(sub.owner, message)) return 'unavailable';
    this.joining.set(`${sub.conn.id}\0${sub.topic}`, sub);
    return 'pending';
  }

  /** Put `sub` in its room, owned here, now: its room's other sessions and its position, or 'full'. */
  private enter(sub: Subscription): JoinResult {
    const room = this.rooms.ensure(sub.roomKey);
    const sessions = this.sessionsJson(room, sub.conn.id);
    if (this.full(room)) {
      this.rooms.dropIfEmpty(room);
      return 'full';
    }
    // Before it is in the room: from here, the room's live events skip it while it replays.
    const position = this.options.recovery?.joinSub(sub) ?? '';
    sub.recover = undefined;
    this.rooms.addSub(sub);
    sub.state = 'joined';
    this.broadcast(room, this.presence(sub, 'session_joined'), sub.conn.id, '');
    return { sessions, position };
  }

  /** The room's first sync ended: `sub` joins, unless its connection closed or let the topic go meanwhile (then nobody hears of it). */
  private entered(sub: Subscription): void {
    if (!sub.conn.open || sub.conn.topics.get(sub.topic) !== sub) return;
    const result = this.enter(sub);
    if (result === 'full') this.onFull(sub);
    else if (typeof result === 'object') this.onJoined(sub, result.sessions, result.position);
  }

  /** The position members of a fresh ack for a held topic: `recovered: false` when a recover was asked (nothing is replayed). */
  private heldPosition(sub: Subscription): string {
    const recovery = this.options.recovery;
    if (recovery === undefined) return '';
    const asked = sub.recover !== undefined;
    sub.recover = undefined;
    return positionMembers(recovery.answerJoin(sub.roomKey, undefined).position, asked ? false : undefined);
  }

  /** Take `sub` out of its room (session_left to the others). */
  leave(sub: Subscription): void {
    sub.replay = null;
    const key = `${sub.conn.id}\0${sub.topic}`;
    // A join through the link not answered yet: the owner may still be waiting to let it in, and must not.
    if (sub.state !== 'joined' && this.joining.get(key) === sub) this.link?.send(sub.owner, { k: 'leave', topic: sub.topic, sid: sub.conn.id });
    if (sub.state !== 'joined') return;
    sub.state = 'joining';
    if (sub.owner === this.options.shardId) {
      const room = this.rooms.removeSub(sub);
      if (room !== null) {
        this.broadcast(room, this.presence(sub, 'session_left'), sub.conn.id, '');
        this.emptied(room);
      }
      return;
    }
    const subs = this.followers.get(sub.topic);
    if (subs !== undefined) {
      subs.delete(sub);
      if (subs.size === 0) this.followers.delete(sub.topic);
    }
    this.link?.send(sub.owner, { k: 'leave', topic: sub.topic, sid: sub.conn.id });
  }

  /**
   * `sub`'s role changed (its `permission` and `infoJson` already set):
   * `session_updated` to the rest of its room, in each framing; the owner,
   * when another shard, lists the new role from now on.
   */
  updated(sub: Subscription): void {
    if (sub.state !== 'joined') return;
    if (sub.owner !== this.options.shardId) {
      this.link?.send(sub.owner, { k: 'update', topic: sub.topic, sid: sub.conn.id, info: sub.infoJson, perm: sub.permission });
      return;
    }
    const room = this.rooms.get(sub.roomKey);
    if (room !== undefined) this.broadcast(room, sessionUpdated(sub.conn.stamp, sub.permission, Date.now(), sub.infoJson), sub.conn.id, '');
  }

  /** `sub` publishes `type` (its permission already checked). */
  publish(sub: Subscription, type: string, payload: string | undefined, timestamp: number): void {
    if (sub.owner !== this.options.shardId) {
      this.link?.send(sub.owner, { k: 'pub', topic: sub.topic, sid: sub.conn.id, type, payload, ts: timestamp });
      return;
    }
    const room = this.rooms.get(sub.roomKey);
    // Alone on this node, an event still goes to the other nodes, and to the history for those who resume.
    if (room === undefined || (room.size < 2 && this.bus === null && this.options.recovery?.recording !== true)) return;
    this.relayed(room, { type, stamp: sub.conn.stamp, timestamp, payload }, sub.conn.id, this.transientKey(sub.conn.id, type));
  }

  /** A subscriber's event (here, or from another shard): stamped with its offset, then to everyone but its sender. */
  private relayed(room: Room, event: RoomEvent, exceptId: string, transientKey: string): void {
    const recovery = this.options.recovery;
    if (this.bus !== null && recovery?.streamed(room.id) === true) {
      // The fleet's stream hands it back with its sequence, to every member here too (stream-rooms.ts).
      this.bus.publish(room.id, legacyEventText(event), event);
      return;
    }
    if (recovery !== undefined) event.offset = recovery.stamp(room.id, legacyEventText(event), event.payload === undefined);
    this.broadcast(room, event, exceptId, transientKey);
  }

  // ---- the owner's side ----

  /** Whether `room` holds --max-room-size sessions already, every kind counted, as for a legacy handshake. */
  private full(room: Room): boolean {
    return this.options.maxRoomSize > 0 && room.size >= this.options.maxRoomSize;
  }

  /** Comma-separated SessionInfo JSON of everyone in `room` but `exceptId`, every framing, every shard, every node. */
  sessionsJson(room: Room, exceptId: string): string {
    const parts: string[] = [];
    for (const member of room.members) if (member.id !== exceptId) parts.push(member.infoJson);
    for (const sub of room.subs) if (sub.conn.id !== exceptId) parts.push(sub.infoJson);
    if (room.remote !== null) for (const member of room.remote.values()) if (member.sessionId !== exceptId) parts.push(member.infoJson);
    const nodes = this.bus?.remoteSessionsJson(room.id) ?? '';
    if (nodes !== '') parts.push(nodes);
    return parts.join(',');
  }

  /**
   * `event` to everyone in `room` but `exceptId`: legacy sockets, subscribers
   * here, and once to each other shard. An event with an offset skips the
   * members catching up (their replay has it), and goes to other nodes
   * without it (each stamps its own).
   */
  broadcast(room: Room, event: RoomEvent, exceptId: string, transientKey: string): void {
    const ordered = event.offset !== undefined;
    if (room.members.length > 0) {
      let frame: Buffer | null = null;
      const members = this.rooms.pin(room);
      for (let i = 0; i < members.length; i++) {
        const member = members[i]!;
        if (member.id === exceptId || !member.open || (ordered && member.replay !== null)) continue;
        frame ??= encodeTextFrame(legacyEventText(event));
        this.deliver(member, frame, transientKey);
      }
      this.rooms.unpin(room, members);
      if (frame !== null) this.options.backpressure.settleCuts();
    }
    this.fanOut(room, event, exceptId, transientKey);
    if (this.bus !== null) {
      const bare: RoomEvent = ordered ? { ...event, offset: undefined } : event;
      this.bus.publish(room.id, legacyEventText(bare), bare);
    }
  }

  /** Tell the federation when `room` holds no session of this node any more. */
  private emptied(room: Room): void {
    if (this.bus !== null && this.rooms.get(room.id) !== room) this.bus.roomEmptied(room.id);
  }

  /**
   * An event from another node (`legacyText`, the legacy framing, its offset
   * stamped here when it is a relayed event: `offset`, 0 for presence) for
   * the room's multiplexed subscribers, here and on other shards; the legacy
   * sockets had it from the relay.
   */
  fromOtherNode(roomKey: string, legacyText: string, transientKey: string, offset = 0, exceptId = '', exceptUserId?: string): void {
    const room = this.rooms.get(roomKey);
    if (room === undefined || (room.subs.length === 0 && room.peers === null)) return;
    const text = legacyToTopicText(room.topic, legacyText);
    this.toLocalSubs(room, text, exceptId, exceptUserId, transientKey, offset);
    if (room.peers === null || this.link === null) return;
    const except = exceptUserId === undefined ? {} : { exceptUser: exceptUserId };
    for (const peer of room.peers.keys())
      this.link.send(peer, { k: 'ev', topic: room.topic, except: exceptId, text, transient: transientKey, ...except, ...ordered(offset) });
  }

  /** `event` to the room's multiplexed subscribers only (here and on other shards): the legacy relay delivered to the legacy sockets. */
  fanOut(room: Room, event: RoomEvent, exceptId: string, transientKey: string): void {
    let text: string | null = null;
    const offset = event.offset ?? 0;
    // Encoded only if a subscriber here gets it: a publisher alone in its room costs no string.
    if (room.subs.length > 1 || (room.subs.length === 1 && room.subs[0]!.conn.id !== exceptId)) {
      text = topicEventText(room.topic, event);
      this.toLocalSubs(room, text, exceptId, undefined, transientKey, offset);
    }
    if (room.peers !== null && this.link !== null) {
      for (const [peer, count] of room.peers) {
        // A shard whose only subscriber is the sender gets nothing.
        if (count === 1 && room.remote!.get(exceptId)?.shard === peer) continue;
        text ??= topicEventText(room.topic, event);
        this.link.send(peer, { k: 'ev', topic: room.topic, except: exceptId, text, transient: transientKey, ...ordered(offset) });
      }
    }
  }

  /**
   * An event of the server API (`publish` to a desktop: finished legacy
   * JSON, `sessionId` "server", with its `offset`, 0 when none) for the
   * room's multiplexed subscribers, here and on other shards, but the
   * sessions of `exceptUserId`; the legacy sockets had it from commands.ts.
   */
  serverEvent(roomKey: string, legacyText: string, exceptUserId: string | undefined, offset = 0): void {
    const room = this.rooms.get(roomKey);
    if (room === undefined || (room.subs.length === 0 && room.peers === null)) return;
    const text = legacyToTopicText(room.topic, legacyText);
    this.toLocalSubs(room, text, '', exceptUserId, '', offset);
    if (room.peers === null || this.link === null) return;
    for (const peer of room.peers.keys()) {
      this.link.send(peer, {
        k: 'ev',
        topic: room.topic,
        except: '',
        text,
        transient: '',
        ...(exceptUserId === undefined ? {} : { exceptUser: exceptUserId }),
        ...ordered(offset),
      });
    }
  }

  /**
   * `text` (topic framing) to the room's open subscribers on this shard, but
   * the connection `exceptId` and the connections of `exceptUserId`: framed
   * once, and only if someone gets it. The subscribers are pinned, so a
   * delivery that cuts one makes the loop skip no other (room-index.ts). An
   * event with an offset skips the subscribers catching up (replay.ts).
   */
  private toLocalSubs(room: Room, text: string, exceptId: string, exceptUserId: string | undefined, transientKey: string, offset: number): void {
    let frame: Buffer | null = null;
    const subs = this.rooms.pinSubs(room);
    for (let i = 0; i < subs.length; i++) {
      const sub = subs[i]!;
      const conn = sub.conn;
      if (!conn.open || conn.id === exceptId || conn.userId === exceptUserId || (offset !== 0 && sub.replay !== null)) continue;
      frame ??= encodeTextFrame(text);
      this.deliver(conn, frame, transientKey);
    }
    this.rooms.unpinSubs(room, subs);
    if (frame !== null) this.options.backpressure.settleCuts();
  }

  /**
   * `frame` to one member of a room. One this cuts is passed on to the
   * shard's cut handler, which the caller's loop settles when it ends: a
   * legacy member leaves through the relay, a connection every topic
   * through its ops, and neither is this file's to call.
   */
  private deliver(member: Session, frame: Buffer, transientKey: string): void {
    const backpressure = this.options.backpressure;
    if (backpressure.deliver(member, frame, transientKey === '' ? undefined : transientKey) === Delivery.CUT) backpressure.passOn(member);
  }

  /** The coalescing key of an event, or '' when its type is not transient. */
  transientKey(senderId: string, type: string): string {
    return this.options.transientTypes.has(type) ? `${senderId}\n${type}` : '';
  }

  private presence(sub: Subscription, type: 'session_joined' | 'session_left'): RoomEvent {
    return { type, stamp: sub.conn.stamp, timestamp: Date.now(), payload: sub.infoJson };
  }

  // ---- the link ----

  /** A message from shard `from`. */
  onLinkMessage(from: number, message: LinkMessage): void {
    switch (message.k) {
      case 'join':
        return this.remoteJoin(from, message);
      case 'update': {
        const room = this.rooms.get(roomKeyOf(message.topic));
        const member = room?.remote?.get(message.sid);
        if (room === undefined || member === undefined) return;
        member.infoJson = message.info;
        this.broadcast(room, sessionUpdated(member.stamp, message.perm, Date.now(), message.info), message.sid, '');
        return;
      }
      case 'leave':
        return this.remoteLeave(message.topic, message.sid);
      case 'pub': {
        const room = this.rooms.get(roomKeyOf(message.topic));
        const member = room?.remote?.get(message.sid);
        if (room === undefined || member === undefined) return;
        const event: RoomEvent = { type: message.type, stamp: member.stamp, timestamp: message.ts, payload: message.payload };
        this.relayed(room, event, message.sid, this.transientKey(message.sid, message.type));
        return;
      }
      case 'joined': {
        const key = `${message.sid}\0${message.topic}`;
        const sub = this.joining.get(key);
        this.joining.delete(key);
        if (sub === undefined || !sub.conn.open || sub.conn.topics.get(sub.topic) !== sub) {
          // The connection closed while its owner answered: it leaves at once.
          if (message.full !== true) this.link?.send(from, { k: 'leave', topic: message.topic, sid: message.sid });
          return;
        }
        if (message.full === true) {
          this.onFull(sub);
          return;
        }
        const recover = sub.recover;
        sub.recover = undefined;
        if (sub.state === 'joining') {
          // Before it hears the room's events: from here they skip it while it replays.
          if (message.recovered === true && recover !== undefined && this.options.recovery !== undefined && this.link !== null) {
            const link = this.link;
            this.options.recovery.follow(sub, recover, (request) => link.send(from, request));
          }
          sub.state = 'joined';
          let subs = this.followers.get(sub.topic);
          if (subs === undefined) this.followers.set(sub.topic, (subs = new Set()));
          subs.add(sub);
        }
        // A held topic asked to recover again replays nothing (heldPosition).
        const recovered = recover === undefined ? undefined : sub.replay !== null && message.recovered === true;
        this.onJoined(sub, message.sessions, message.pos === undefined ? '' : positionMembers(message.pos, recovered));
        return;
      }
      case 'replay': {
        const recovery = this.options.recovery;
        if (recovery !== undefined) this.link?.send(from, recovery.serve(roomKeyOf(message.topic), message));
        return;
      }
      case 'batch':
        this.options.recovery?.onBatch(message);
        return;
      case 'ev': {
        const subs = this.followers.get(message.topic);
        if (subs === undefined) return;
        let frame: Buffer | null = null;
        for (const sub of [...subs]) {
          if (sub.conn.id === message.except || sub.conn.userId === message.exceptUser || !sub.conn.open) continue;
          // A subscriber catching up gets it from its replay (recovery.ts).
          if (message.o !== undefined && sub.replay !== null) continue;
          frame ??= encodeTextFrame(message.text);
          this.deliver(sub.conn, frame, message.transient);
        }
        if (frame !== null) this.options.backpressure.settleCuts();
        return;
      }
    }
  }

  private remoteJoin(from: number, join: Extract<LinkMessage, { k: 'join' }>): void {
    const roomKey = roomKeyOf(join.topic);
    if (this.bus === null || this.rooms.get(roomKey)?.remote?.has(join.sid) === true) return this.remoteEnter(from, join);
    // As a local subscriber's: the room's first sync with the other nodes may hold it.
    const key = `${join.sid}\0${join.topic}`;
    this.admitting.add(key);
    this.bus.admit(
      roomKey,
      () => {
        // Its connection closed meanwhile: the follower still gets its answer, and nobody hears of a join.
        if (!this.admitting.delete(key)) this.link?.send(from, { k: 'joined', topic: join.topic, sid: join.sid, sessions: '' });
        else this.remoteEnter(from, join);
      },
      join.rec,
    );
  }

  private remoteEnter(from: number, join: Extract<LinkMessage, { k: 'join' }>): void {
    const { topic, sid, info, stamp, at: connectedAt } = join;
    const room = this.rooms.ensure(roomKeyOf(topic));
    const again = room.remote?.has(sid) === true;
    if (!again && this.full(room)) {
      this.rooms.dropIfEmpty(room);
      this.link?.send(from, { k: 'joined', topic, sid, sessions: '', full: true });
      return;
    }
    const remote = (room.remote ??= new Map());
    const sessions = this.sessionsJson(room, sid);
    if (!again) {
      remote.set(sid, { sessionId: sid, infoJson: info, stamp, shard: from, connectedAt });
      const peers = (room.peers ??= new Map());
      peers.set(from, (peers.get(from) ?? 0) + 1);
    }
    const answer: LinkMessage = { k: 'joined', topic, sid, sessions };
    const recovery = this.options.recovery;
    if (recovery !== undefined) {
      // A subscriber joining again (a fresh ack) is live already: nothing to recover.
      const { position, recovered } = recovery.answerJoin(room.id, again ? undefined : join.rec);
      answer.pos = position;
      if (join.rec !== undefined) answer.recovered = recovered ?? false;
    }
    this.link?.send(from, answer);
    if (!again) this.broadcast(room, { type: 'session_joined', stamp, timestamp: Date.now(), payload: info }, sid, '');
  }

  private remoteLeave(topic: string, sid: string): void {
    if (this.admitting.delete(`${sid}\0${topic}`)) return;
    const room = this.rooms.get(roomKeyOf(topic));
    const member = room?.remote?.get(sid);
    if (room === undefined || member === undefined) return;
    this.dropRemote(room, member.sessionId, member.shard);
    this.broadcast(room, { type: 'session_left', stamp: member.stamp, timestamp: Date.now(), payload: member.infoJson }, sid, '');
    this.rooms.dropIfEmpty(room);
    this.emptied(room);
  }

  private dropRemote(room: Room, sid: string, shard: number): void {
    room.remote!.delete(sid);
    if (room.remote!.size === 0) room.remote = null;
    const count = room.peers!.get(shard)! - 1;
    if (count > 0) room.peers!.set(shard, count);
    else room.peers!.delete(shard);
    if (room.peers!.size === 0) room.peers = null;
  }

  /**
   * Shard `peer` stopped. Its subscribers leave the rooms owned here (the
   * others hear `session_left`); this shard's subscribers of rooms it owned,
   * or joining them, lose the topic (onLost).
   */
  onPeerGone(peer: number): void {
    this.options.recovery?.peerGone(peer);
    for (const room of [...this.rooms.values()]) {
      if (room.remote === null || room.peers?.has(peer) !== true) continue;
      // All out first, so that no session_left is addressed to the shard that is gone.
      const gone = [...room.remote.values()].filter((member) => member.shard === peer);
      for (const member of gone) this.dropRemote(room, member.sessionId, peer);
      const now = Date.now();
      for (const member of gone)
        this.broadcast(room, { type: 'session_left', stamp: member.stamp, timestamp: now, payload: member.infoJson }, member.sessionId, '');
      this.rooms.dropIfEmpty(room);
      this.emptied(room);
    }
    for (const [key, sub] of [...this.joining]) {
      if (sub.owner !== peer) continue;
      this.joining.delete(key);
      this.onLost(sub);
    }
    for (const [topic, subs] of [...this.followers]) {
      const first = subs.values().next().value;
      if (first === undefined || first.owner !== peer) continue;
      this.followers.delete(topic);
      for (const sub of subs) {
        sub.state = 'joining';
        this.onLost(sub);
      }
    }
  }
}

/** The `o` member of an `ev` message: the event's offset, when it has one (a follower's replaying subscribers skip it). */
function ordered(offset: number): { o?: number } {
  return offset === 0 ? {} : { o: offset };
}
