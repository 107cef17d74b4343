/**
 * Server API requests on a shard: one function, {@link Commands.apply}, for
 * a request object from this node's primary today and from the bus with
 * federation (the same object, protocol/api.ts). Each request id is applied
 * once. Everything here is synchronous: a request is applied between two
 * frames of any session, and the primary answers the API call only once the
 * shard reported it applied, so a frame the shard reads after that call was
 * answered is judged by the new permission.
 *
 * Events the server sends itself are encoded once per request and the same
 * bytes queued to each recipient, like a relayed event.
 *
 * A permission change or a logout is also the newest word for the shard's
 * permission cache (auth/permission-cache.ts), so that a reconnect right
 * after it cannot get the old role back. A desktop call is applied by the
 * shard that owns the desktop, the one whose cache holds that desktop's
 * answers (its handshakes all come to it); a user-wide one by every shard.
 * Applying it here makes it hold for calls from the bus too.
 */
import type { GrantUpdates } from '../auth/permission-cache.ts';
import type { Logger } from '../log.ts';
import { CloseReason, type ApiOutcome, type ApiRequest, type PublishCommand } from '../protocol/api.ts';
import { DESKTOP_ID_PATTERN } from '../protocol/events.ts';
import { legacyToTopicText, withOffset } from '../protocol/event-frames.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { parseTopic, TopicNamespace } from '../protocol/topics.ts';
import { ApiMetric, type MetricsSlot } from '../protocol/metrics.ts';
import { RecentIds } from './recent-ids.ts';
import type { RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';
import type { SessionControl } from './session-control.ts';

export interface CommandsOptions {
  rooms: RoomIndex;
  control: SessionControl;
  metrics: MetricsSlot;
  log: Logger;
  /** The handshake's permission cache, told of role changes and logouts (null when there is none: dev mode). */
  grants: GrantUpdates | null;
  /** Where a publish to a desktop gets its offset, and reaches the room's multiplexed subscribers. */
  publishing?: Publishing;
}

/** What a publish to a desktop needs besides the room's legacy sockets (shard.ts wires recovery.ts and topic-rooms.ts). */
export interface Publishing {
  /** The event's offset in its room (`text`: the finished legacy JSON, no offset). */
  stamp(roomKey: string, text: string, nullPayload: boolean): number;
  /** The stamped event to the room's multiplexed subscribers, here and on other shards, but `exceptUserId`'s. */
  subscribers(roomKey: string, text: string, exceptUserId: string | undefined, offset: number): void;
  /** `--history-stream`: give the publish to the fleet's stream, which delivers it here too, with its offset; false when it cannot. */
  toStream?(request: PublishCommand): boolean;
}

const DUPLICATE: ApiOutcome = { duplicate: true, reached: 0, changed: 0 };

export class Commands {
  private readonly rooms: RoomIndex;
  private readonly control: SessionControl;
  private readonly metrics: MetricsSlot;
  private readonly log: Logger;
  private readonly grants: GrantUpdates | null;
  private readonly publishing: Publishing | undefined;
  private readonly applied = new RecentIds();

  constructor(options: CommandsOptions) {
    this.rooms = options.rooms;
    this.control = options.control;
    this.metrics = options.metrics;
    this.log = options.log;
    this.grants = options.grants;
    this.publishing = options.publishing;
  }

  /** Apply `request` to this shard's sessions, once per id; what it did. */
  apply(request: ApiRequest): ApiOutcome {
    if (!this.applied.add(request.id)) {
      // With federation every call a node publishes comes back to it: routine, so not logged above debug.
      if (this.log.enabled('debug')) this.log.debug('api_duplicate', { id: request.id, kind: request.kind });
      return DUPLICATE;
    }
    switch (request.kind) {
      case 'publish': {
        if (this.publishing?.toStream?.(request) === true) {
          // The stream hands it back to every member here (as to every node's).
          const room = this.rooms.get(request.desktopId);
          const reached = room === undefined ? 0 : room.members.filter((s) => s.userId !== request.exceptUserId && s.open).length;
          return { duplicate: false, reached, changed: 0 };
        }
        // Stamped even when nobody is in the room: a client that resumes gets it.
        const offset = this.publishing?.stamp(request.desktopId, request.event, false) ?? 0;
        const text = offset === 0 ? request.event : withOffset(request.event, offset);
        const room = this.rooms.get(request.desktopId);
        const except = request.exceptUserId;
        const to = room === undefined ? [] : room.members.filter((s) => s.userId !== except);
        this.publishing?.subscribers(request.desktopId, text, except, offset);
        return this.send(to, text, offset !== 0);
      }
      case 'user_event': {
        // A multiplexed connection gets it in its framing, with no topic: it is about the user, not a room.
        const legacy = this.send(this.control.legacySessionsOf(request.userId), request.event);
        const topics = this.send(this.control.connectionsOf(request.userId), legacyToTopicText(undefined, request.event));
        return { duplicate: false, reached: legacy.reached + topics.reached, changed: 0 };
      }
      case 'broadcast': {
        const legacy = this.send(this.rooms.allSessions(), request.event);
        const topics = this.send(this.control.connections(), legacyToTopicText(undefined, request.event));
        return { duplicate: false, reached: legacy.reached + topics.reached, changed: 0 };
      }
      case 'set_permission': {
        // Before the sessions: a reconnect of one closed here must find the new word.
        this.grants?.setGrant(request.userId, request.desktopId, request.permission);
        const room = this.rooms.get(request.desktopId);
        const targets = room === undefined ? [] : room.members.filter((s) => s.userId === request.userId && s.open);
        let changed = 0;
        for (const session of targets) {
          const done =
            request.permission === 'none'
              ? this.control.end(session, 'revoked', CloseReason.PERMISSION_REVOKED)
              : this.control.setPermission(session, request.permission, 'api');
          if (done) changed++;
        }
        return { duplicate: false, reached: targets.length, changed };
      }
      case 'disconnect': {
        // A logged-out user's next connect asks the app again.
        this.grants?.forgetUser(request.userId);
        const targets = this.control.sessionsOf(request.userId).filter((s) => s.open);
        let changed = 0;
        for (const session of targets) if (this.control.end(session, 'disconnected', request.reason)) changed++;
        return { duplicate: false, reached: targets.length, changed };
      }
      case 'presence': {
        // Every member of the room: legacy sockets, subscribers of `desktop:{id}` here and on the other shards.
        const room = this.rooms.get(request.desktopId);
        if (room === undefined) return { duplicate: false, reached: 0, changed: 0, sessions: [] };
        const sessions = room.members.filter((s) => s.open).map((s) => this.control.view(s));
        for (const sub of room.subs) if (sub.conn.open) sessions.push(this.control.viewAs(sub.conn, request.desktopId, sub.permission));
        if (room.remote !== null) for (const member of room.remote.values()) sessions.push(this.control.viewRemote(member, request.desktopId));
        return { duplicate: false, reached: sessions.length, changed: 0, sessions };
      }
      case 'user_sessions': {
        // Desktop sessions, and subscriptions of desktop topics: what LiveSession describes (and what other nodes accept in an answer).
        const sessions = this.control
          .legacySessionsOf(request.userId)
          .filter((s) => s.open && DESKTOP_ID_PATTERN.test(s.desktopId))
          .map((s) => this.control.view(s));
        for (const conn of this.control.connectionsOf(request.userId)) {
          if (!conn.open) continue;
          for (const sub of conn.topics.values()) {
            const topic = parseTopic(sub.topic);
            if (sub.state === 'joined' && topic?.namespace === TopicNamespace.DESKTOP) sessions.push(this.control.viewAs(conn, topic.id, sub.permission));
          }
        }
        return { duplicate: false, reached: sessions.length, changed: 0, sessions };
      }
    }
  }

  /**
   * Queue the server event `event` (finished JSON) to every open session of
   * `to`; the frame is built once, if anyone gets it. An event with an
   * offset (`ordered`) reaches a session catching up through its replay
   * instead (replay.ts), and counts as reached.
   */
  private send(to: Iterable<Session>, event: string, ordered = false): ApiOutcome {
    let frame: Buffer | null = null;
    let reached = 0;
    for (const session of to) {
      if (!session.open) continue;
      reached++;
      if (ordered && session.replay !== null) continue;
      frame ??= encodeTextFrame(event);
      this.control.deliver(session, frame);
    }
    this.control.settleCuts();
    this.metrics.add(ApiMetric.DELIVERIES, reached);
    return { duplicate: false, reached, changed: 0 };
  }
}
