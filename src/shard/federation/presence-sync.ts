/**
 * Presence sync: who is in a room on the other nodes. A room asks when it
 * first subscribes, and every room asks again after a reconnect or when a
 * peer comes back; a room answers the others' requests. Core NATS is
 * at-most-once, so this is what makes presence heal.
 */
import type { Msg } from '@nats-io/transport-node';
import { DropReason, envelope, PRESENCE_SYNC_REQUEST, topicSyncRequestJson } from '../../protocol/bus.ts';
import { Metric } from '../../protocol/metrics.ts';
import { legacyEventText, topicEventText } from '../../protocol/event-frames.ts';
import type { Authenticity, NatsLink } from './link.ts';
import { forEachLocal, type RemoteRooms } from './rooms.ts';
import type { FedRoom } from './types.ts';

/** The NATS header of a sync request listing the requesting node's sessions of the room. */
export const ROSTER_HEADER = 'Moodio-Sessions';
/** A sync waits this long after the last answer for more, */
export const SYNC_STALL_MS = 50;
/** and never longer than this in all (a Go relay answers but never says it is done). */
export const SYNC_MAX_WAIT_MS = 500;
/** A room answers sync requests at most once per this interval; requests within it share the next answer. */
const SYNC_ANSWER_INTERVAL_MS = 100;
/** Resyncs of every room (a peer back, a reconnect) at most this often; one more runs at the end of the wait. */
const RESYNC_MIN_GAP_MS = 5_000;

export class PresenceSync {
  private readonly link: NatsLink;
  private readonly rooms: RemoteRooms;
  /** Whether heartbeats of `node` are followed (a roster from it is believed without a key). */
  private readonly followsPeer: (node: string) => boolean;
  private resyncTimer: NodeJS.Timeout | null = null;
  private lastResyncAt = -Infinity;

  constructor(link: NatsLink, rooms: RemoteRooms, followsPeer: (node: string) => boolean) {
    this.link = link;
    this.rooms = rooms;
    this.followsPeer = followsPeer;
  }

  /**
   * Ask the other nodes who is in `room`, and wait for their answers.
   *
   * The request is the Go relay's `presence_sync_request`, plus two things a
   * Go relay ignores: a NATS reply subject, and a `Moodio-Sessions` header
   * listing this node's sessions of the room. A moodio-rt node that has the
   * room publishes its `session_joined` events, then answers the reply
   * subject with its own list (so the events arrive first). Each side then
   * removes the other's sessions that the list does not name: sessions that
   * left while the bus was down, whose `session_left` never went out. With
   * no other subscriber, NATS says so at once. With `announce`, local
   * sessions are published again first (after a reconnect, for nodes that
   * forgot them).
   *
   * A desktop room also asks on its topic subject, in the topic framing, for
   * the upstream relay (which answers with a `session_joined` per session
   * there, and no list); other moodio-rt nodes ignore that copy.
   */
  async sync(room: FedRoom, announce: boolean): Promise<void> {
    const link = this.link;
    try {
      if (announce) this.announce(room, 'session_joined');
      const request = envelope(link.nodeJson, room.framing === 'flat' ? `{"type":"${PRESENCE_SYNC_REQUEST}"}` : topicSyncRequestJson(room.topic));
      if (room.mirror !== null) link.send(room.mirror, envelope(link.nodeJson, topicSyncRequestJson(room.topic)), undefined, true);
      const roster = link.signed(room.subject, request, this.rooms.localIds(room), ROSTER_HEADER)!;
      // An answer's list speaks only for sessions learnt before it was asked for (see onSyncAnswer).
      const askedAt = this.rooms.learnt;
      link.metrics.add(Metric.BUS_PUBLISHED);
      link.metrics.add(Metric.BUS_BYTES_OUT, request.length);
      const answers = await link.nc!.requestMany(room.subject, request, {
        strategy: 'stall',
        stall: SYNC_STALL_MS,
        maxWait: SYNC_MAX_WAIT_MS,
        headers: roster,
      });
      for await (const answer of answers) this.onSyncAnswer(room, answer, askedAt);
    } catch {
      // No responders (no other node has the room), or the bus went down: what was heard is what there is.
    }
    const waiters = room.waiters;
    room.waiters = null;
    if (waiters !== null) for (const join of waiters) join();
    if (!this.rooms.current(room)) return;
    // Every waiter left before the answers came: nothing local holds the room.
    if (this.rooms.localRoom(room) === undefined && room.joining === 0) {
      this.rooms.drop(room);
      return;
    }
    if (room.resyncPending) {
      room.resyncPending = false;
      // Down again meanwhile: the next reconnect resyncs every room.
      if (link.connected && !link.closing) void this.sync(room, true);
    }
  }

  /**
   * A node's answer to our sync: `{"r": node, "s": [its session ids in the room]}`.
   * The answers are read from an iterator, after the room's messages that came
   * in the same read from the socket: a session that joined there after its
   * node answered may be learnt already, and is not in the list. The list
   * removes only sessions learnt before `askedAt` (one that left after being
   * learnt, before the answer, said so on the room's subject, in order).
   */
  private onSyncAnswer(room: FedRoom, answer: Msg, askedAt: number): void {
    const link = this.link;
    if (link.closing || !this.rooms.current(room) || answer.data.byteLength > 64 * 1024) return;
    const auth = link.authenticate(answer);
    if (auth === DropReason.STALE || auth === DropReason.REPLAYED) {
      link.drop(auth, answer.subject);
      return;
    }
    const parsed = link.json(answer);
    if (parsed === undefined) return;
    const { r, s } = (parsed ?? {}) as { r?: unknown; s?: unknown };
    if (typeof r !== 'string' || !Array.isArray(s) || !s.every((id) => typeof id === 'string')) {
      link.drop(DropReason.MALFORMED, answer.subject);
      return;
    }
    if (r !== link.config.nodeId && this.trustsRoster(auth, r)) this.rooms.applyRoster(room, r, new Set(s as string[]), askedAt);
  }

  /**
   * Whether `node`'s list of its sessions may remove what we hold for it:
   * signed with the fleet's key, or, without a key, from a node whose
   * heartbeats we follow. A list claiming to be from anyone else could
   * otherwise make us forget live sessions for good.
   */
  trustsRoster(auth: Authenticity, node: string): boolean {
    return this.link.signer !== null ? auth === 'signed' : this.followsPeer(node);
  }

  /**
   * Announce and sync every room. At most once per {@link RESYNC_MIN_GAP_MS}:
   * a request within the gap runs once at its end (peers coming and going, or
   * forged heartbeats, cannot make a node republish every room in a loop).
   */
  resyncAll(): void {
    const now = Date.now();
    if (this.link.closing || this.resyncTimer !== null) return;
    const wait = this.lastResyncAt + RESYNC_MIN_GAP_MS - now;
    if (wait > 0) {
      this.resyncTimer = setTimeout(() => {
        this.resyncTimer = null;
        this.resyncAll();
      }, wait);
      this.resyncTimer.unref();
      return;
    }
    this.lastResyncAt = now;
    if (!this.link.connected) return;
    for (const room of this.rooms.byId.values()) {
      if (room.waiters === null) void this.sync(room, true);
      else room.resyncPending = true;
    }
  }

  /** Publish `type` (session_joined or session_left) for every local session of `room`, every framing. */
  announce(room: FedRoom, type: 'session_joined' | 'session_left'): void {
    const local = this.rooms.localRoom(room);
    if (local === undefined) return;
    const timestamp = Date.now();
    forEachLocal(local, (_id, stamp, infoJson) => {
      const event = { type, stamp, timestamp, payload: infoJson };
      this.rooms.publish(room.desktopId, legacyEventText(event), event);
    });
  }

  /** An upstream relay was first heard in a desktop room: it learns the room's local sessions (its own sync request, if that is what was heard, is answered as any). */
  announceToUpstream(room: FedRoom): void {
    const local = this.rooms.localRoom(room);
    if (local === undefined || room.mirror === null || !this.link.connected) return;
    const timestamp = Date.now();
    forEachLocal(local, (_id, stamp, infoJson) => {
      this.link.send(
        room.mirror!,
        envelope(this.link.nodeJson, topicEventText(room.topic, { type: 'session_joined', stamp, timestamp, payload: infoJson })),
        undefined,
        true,
      );
    });
  }

  /** Answer a sync request, at most once per {@link SYNC_ANSWER_INTERVAL_MS} per room; later requests share the next answer. */
  answerSync(room: FedRoom, reply: string | undefined): void {
    if (this.link.closing) return;
    if (reply !== undefined && room.pendingReplies.length < 64) room.pendingReplies.push(reply);
    if (room.answerTimer !== null) return;
    const wait = room.lastAnswerAt + SYNC_ANSWER_INTERVAL_MS - Date.now();
    if (wait <= 0) {
      this.answerNow(room);
      return;
    }
    room.answerTimer = setTimeout(() => {
      room.answerTimer = null;
      if (this.rooms.current(room)) this.answerNow(room);
    }, wait);
  }

  private answerNow(room: FedRoom): void {
    room.lastAnswerAt = Date.now();
    // Closing: the sessions were announced as gone; announcing them again would bring them back on every peer.
    if (!this.link.connected || this.link.closing) return;
    this.announce(room, 'session_joined');
    const ids = this.rooms.localIds(room);
    const done = `{"r":${this.link.nodeJson},"s":${JSON.stringify(ids === '' ? [] : ids.split(','))}}`;
    for (const reply of room.pendingReplies) this.link.send(reply, done);
    room.pendingReplies = [];
  }

  /** Closing: the deferred resync never runs. */
  stop(): void {
    if (this.resyncTimer !== null) clearTimeout(this.resyncTimer);
    this.resyncTimer = null;
  }
}
