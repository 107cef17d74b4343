/**
 * One shard's link to the other nodes of a fleet, over NATS. Each shard
 * worker holds its own connection and subscribes to the subjects of the
 * rooms it owns while they have a local session (a legacy socket or a
 * subscriber), so rooms never cross threads and the primary stays off the
 * message path. A desktop room speaks on `room.{desktopId}` in the Go
 * relay's flat framing and, once an upstream relay was heard there, as a
 * marked copy on `room.desktop:{id}` in the upstream relay's topic framing;
 * any other room (a production table) on `room.{topic}` in the topic framing
 * alone (protocol/bus.ts).
 *
 * The parts, built in dependency order:
 *
 * | file | owns |
 * |---|---|
 * | link.ts | the NATS connection, signing and stamps, authentication, drops |
 * | rooms.ts | the federated rooms and their remote sessions, the linger |
 * | presence-sync.ts | sync requests and answers, resyncs, announcements |
 * | room-events.ts | what other nodes publish on a room's subject, taken or dropped |
 * | peers.ts | the peer table: heartbeats, expiry, duplicate node ids |
 * | bus-api.ts | the server API over the bus |
 *
 * While NATS is down, rooms keep relaying locally; nothing is buffered for
 * the bus. After a reconnect each room announces its local sessions again,
 * asks for everyone else's, and forgets the remote sessions nobody
 * confirmed.
 *
 * With --federation-key every message is signed and stamped, and every
 * message taken must be signed, fresh and new (shard/bus-replay.ts);
 * `--federation-unsigned-rooms admit` takes room events unsigned from nodes
 * that never signed, never in the name of a session a signed node holds.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { HEARTBEAT_SUBJECT, roomSubject } from '../../protocol/bus.ts';
import type { RoomEvent } from '../../protocol/event-frames.ts';
import type { ApiRequest, LiveSession, PublishCommand } from '../../protocol/api.ts';
import { Metric } from '../../protocol/metrics.ts';
import type { FederationStats } from '../../protocol/messages.ts';
import { BusApi } from './bus-api.ts';
import { NatsLink } from './link.ts';
import { PeerTable } from './peers.ts';
import { PresenceSync, SYNC_MAX_WAIT_MS } from './presence-sync.ts';
import { RoomEvents } from './room-events.ts';
import { RemoteRooms } from './rooms.ts';
import type { FederationOptions } from './types.ts';
import { StreamRooms } from './stream-rooms.ts';
import type { ResumePosition } from '../../protocol/resume.ts';

export type { FederationOptions } from './types.ts';

export class Federation {
  private readonly link: NatsLink;
  private readonly rooms: RemoteRooms;
  private readonly presence: PresenceSync;
  private readonly roomEvents: RoomEvents;
  private readonly peers: PeerTable;
  private readonly api: BusApi;
  private readonly gap: FederationOptions['gap'];
  /** `--history-stream`: the rooms that follow the fleet's stream; null without it. */
  private readonly streams: StreamRooms | null;

  constructor(options: FederationOptions) {
    const link = new NatsLink(options.config, options.shardId, options.log, options.metrics);
    const rooms = new RemoteRooms(link, options.rooms, options.deliver, (roomKey) => {
      this.streams?.dropped(roomKey);
      options.gap?.(roomKey);
    });
    this.gap = options.gap;
    const peers = new PeerTable(link, rooms, { nodeBack: () => this.presence.resyncAll(), onFatal: options.onFatal });
    const presence = new PresenceSync(link, rooms, (node) => peers.has(node));
    this.link = link;
    this.rooms = rooms;
    this.peers = peers;
    this.presence = presence;
    this.roomEvents = new RoomEvents(link, rooms, presence, options);
    this.api = new BusApi(link, options.applyApi);
    const shared = options.stream;
    this.streams =
      shared === undefined
        ? null
        : new StreamRooms({
            link,
            rooms,
            events: this.roomEvents,
            log: shared.log,
            config: shared.config,
            replayEvents: shared.replayEvents,
            replayBytes: shared.replayBytes,
            deliver: shared.deliver,
            lost: shared.lost,
            transientTypes: options.transientTypes,
          });
    this.api.streamed = this.streams !== null;
    link.start({ connected: (nc) => this.connected(nc), reconnected: () => this.reconnected() });
  }

  private connected(nc: NatsConnection): void {
    const link = this.link;
    this.streams?.connected(nc);
    this.api.subscribe();
    link.subscribe(HEARTBEAT_SUBJECT, (msg) => this.peers.onHeartbeat(msg));
    for (const room of this.rooms.byId.values())
      this.rooms.subscribe(room, (r, msg, framing, mirror) => this.roomEvents.onRoomMessage(r, msg, framing, mirror));
    link.setConnected(true);
    this.peers.firstConnectedAt = Date.now();
    // Peers learn of this shard now rather than an interval from now (and a duplicate node id shows at once).
    this.peers.sendHeartbeat();
    link.log.info('federation_connected', { server: nc.getServer(), nodeId: link.config.nodeId, region: link.config.region });
    this.presence.resyncAll();
  }

  private reconnected(): void {
    // With the fleet's stream, the rooms' consumers go on from where they were (or the stream is a new one: a new epoch).
    if (this.streams !== null) this.streams.reconnected();
    // Events published meanwhile were lost (core NATS keeps nothing): no history of this shard is whole across the outage.
    else this.gap?.(null);
    // Peers could not be heard meanwhile: give each a fresh grace period, then ask everyone again.
    this.peers.touch(Date.now());
    this.presence.resyncAll();
  }

  // ---------------------------------------------------------------- rooms

  /**
   * A local session wants to join `desktopId`. `join` runs at once, unless
   * this is the room's first local session and the bus is up: then the room
   * subscribes and asks the other nodes who is there, and `join` runs once
   * they answered (at most {@link SYNC_MAX_WAIT_MS}), so that `room_joined`
   * lists them.
   */
  admit(desktopId: string, join: () => void, resume?: ResumePosition): void {
    const { room, created } = this.rooms.open(desktopId);
    const streams = this.streams;
    if (streams !== null) {
      // The member joins once the room follows the fleet's stream (and its resume was read from it): its position is the stream's.
      const direct = join;
      const prepared = streams.prepare(room, resume);
      room.joining++;
      join = () =>
        void prepared.then(() => {
          room.joining--;
          direct();
          // It went meanwhile: the room lingers as if its last member had left.
          if (room.joining === 0 && this.rooms.current(room) && this.rooms.localRoom(room) === undefined) this.roomEmptied(desktopId);
        });
    }
    if (created && this.link.nc !== null) {
      this.rooms.subscribe(room, (r, msg, framing, mirror) => this.roomEvents.onRoomMessage(r, msg, framing, mirror));
      if (this.link.connected) {
        room.waiters = [];
        void this.presence.sync(room, false);
      }
    }
    this.rooms.keep(room);
    if (room.waiters !== null) room.waiters.push(join);
    else join();
  }

  /**
   * The last local session of `desktopId` left. The room keeps listening for
   * a while, so that a tab that reconnects (or flaps) does not make every
   * node answer a sync each time; then it unsubscribes and its remote
   * sessions are forgotten.
   */
  roomEmptied(desktopId: string): void {
    const room = this.rooms.byId.get(desktopId);
    if (room === undefined || room.waiters !== null || room.lingerTimer !== null) return;
    if (this.link.closing) this.rooms.drop(room);
    else this.rooms.linger(room);
  }

  /** The remote sessions of `desktopId` as comma-separated SessionInfo JSON (for room_joined), or ''. */
  remoteSessionsJson(desktopId: string): string {
    return this.rooms.remoteSessionsJson(desktopId);
  }

  /**
   * Publish a local event (presence or relayed; `eventJson` its legacy frame
   * text, `event` its parts when known) to the other nodes, on the room's
   * subjects in their framings (rooms.ts).
   */
  publish(roomKey: string, eventJson: string, event?: RoomEvent): void {
    const link = this.link;
    if (link.closing) return;
    if (!link.connected) {
      link.metrics.add(Metric.BUS_UNPUBLISHED);
      return;
    }
    this.rooms.publish(roomKey, eventJson, event);
  }

  // ---------------------------------------------------------------- server API

  /** See {@link BusApi.publish}. */
  publishApi(request: ApiRequest): void {
    this.api.publish(request);
  }

  /**
   * `--history-stream`: a server API publish to a desktop goes to the
   * room's subject (the stream captures it; every node that follows the
   * room delivers it with its sequence, this one too). False when it cannot
   * (the bus is down): the caller delivers it here, without an offset.
   */
  publishToStream(request: PublishCommand): boolean {
    const link = this.link;
    if (this.streams === null || link.closing || !link.connected) return false;
    const except = request.exceptUserId === undefined ? '' : `,"x":${JSON.stringify(request.exceptUserId)}`;
    link.send(roomSubject(request.desktopId), `{"r":${link.nodeJson},"p":${request.event}${except}}`);
    return true;
  }

  /** See {@link BusApi.gather}. */
  gatherApi(request: ApiRequest): Promise<LiveSession[]> {
    return this.api.gather(request);
  }

  // ---------------------------------------------------------------- lifecycle

  stats(): FederationStats {
    const link = this.link;
    return {
      nodeId: link.config.nodeId,
      region: link.config.region,
      connected: link.connected,
      server: link.connected ? link.nc!.getServer() : null,
      remoteSessions: this.rooms.remoteSessions,
      peers: this.peers.stats(Date.now()),
    };
  }

  /**
   * Shutting down: tell the other nodes that every local session left (they
   * need not wait for the heartbeat to lapse), then flush and close.
   */
  async close(timeoutMs: number): Promise<void> {
    const link = this.link;
    if (link.closing) return;
    if (link.connected) for (const room of this.rooms.byId.values()) this.presence.announce(room, 'session_left');
    // From here nothing heard is taken and nothing is announced (onRoomMessage, answerNow): the drain
    // below still hands over what arrives before the server has our unsubscriptions, and a sync answered
    // then would announce the sessions again after their session_left.
    link.closing = true;
    this.peers.stop();
    this.presence.stop();
    this.streams?.close();
    this.rooms.stopTimers();
    await link.close(timeoutMs);
  }
}
