/**
 * The multiplexed route on one shard, behind the few calls the shard makes:
 * a connection opened, a port to a peer shard, the server API's word on a
 * user, the counts and sockets liveness and drain need. It wires the parts:
 * the connections ({@link TopicConnection}), their ops (topic-ops.ts), the
 * rooms as subscribers see them (topic-rooms.ts, which the relay also uses
 * for its legacy members' events), the link to the other shards
 * (shard-link.ts) and the authorize call with its cache
 * (auth/topic-authorizer.ts).
 */
import type { MessagePort } from 'node:worker_threads';
import type { PermissionSource } from '../auth/permission-client.ts';
import { secretKey, type Identity } from '../auth/token.ts';
import { ClaimTopicAuthority, HttpTopicAuthority, TopicAuthorizer, type TopicAuthority } from '../auth/topic-authorizer.ts';
import type { ServeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { ApiPermission } from '../protocol/api.ts';
import type { Permission } from '../protocol/events.ts';
import type { MetricsSlot } from '../protocol/metrics.ts';
import type { UserConnections } from '../protocol/user-connections.ts';
import type { Backpressure } from './backpressure.ts';
import { TopicConnection, type Subscription } from './connection.ts';
import type { RecheckTopics } from './permission-recheck.ts';
import type { Admitted } from './handshake.ts';
import type { RateLimiter } from './rate-limiter.ts';
import type { RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';
import { ShardLink } from './shard-link.ts';
import { cancelPause } from './socket-reads.ts';
import { listen, sessionListeners, type SessionListeners } from './session-socket.ts';
import { TopicOps } from './topic-ops.ts';
import { TopicRooms, type TopicRecovery } from './topic-rooms.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

export interface MultiplexedOptions {
  shardId: number;
  config: ServeConfig;
  rooms: RoomIndex;
  backpressure: Backpressure;
  out: WriteCoalescer<Session>;
  limiter: RateLimiter;
  metrics: MetricsSlot;
  log: Logger;
  users: UserConnections;
  transientTypes: ReadonlySet<string>;
  /** The types a viewer may not send (--mutation-types). */
  mutationTypes: ReadonlySet<string>;
  /** The permission claims of the token (dev mode, --permissions-from-token), or null: ask the app's authorize endpoint. */
  claims: PermissionSource | null;
  /** Offsets, history and replays (recovery.ts). */
  recovery?: TopicRecovery;
}

/**
 * What the shard hears of the route's connections, set once with
 * {@link Multiplexed.attach}: the parts that listen (the relay, the server
 * API) use this route's rooms or connections themselves, so they are built
 * after it.
 */
export interface ConnectionEvents {
  /** A connection opened or closed: the server API reaches it by user, token expiry applies (shard-api.ts). */
  opened(conn: TopicConnection, identity: Identity): void;
  closed(conn: TopicConnection): void;
  /** The number of open sockets changed (gauges, and a drain waiting for none). */
  changed(): void;
  /** Bytes read from a connection's socket: the relay's byte budget, shared with the user's legacy sessions. */
  onBytes(conn: TopicConnection, bytes: number): void;
}

export class Multiplexed implements RecheckTopics {
  private readonly options: MultiplexedOptions;
  /** Open connections. */
  readonly connections = new Set<TopicConnection>();
  /** The rooms as subscribers see them; the relay fans its legacy members' events out through it. */
  readonly topics: TopicRooms;
  private readonly ops: TopicOps;
  private readonly authorizer: TopicAuthorizer;
  /** The authorize call itself, without the cache: what a permission recheck asks. */
  private readonly authority: TopicAuthority;
  /** The other shards of this process (null with one worker). */
  private readonly link: ShardLink | null;
  /** Set by {@link attach}, before the shard admits its first connection. */
  private events: ConnectionEvents | null = null;
  /** Its connections' listeners (session-socket.ts), made by {@link attach}. */
  private listeners: SessionListeners | null = null;

  constructor(options: MultiplexedOptions) {
    this.options = options;
    const { shardId, config, rooms, backpressure, limiter, metrics, log } = options;
    this.topics = new TopicRooms({
      shardId,
      workers: config.workers,
      rooms,
      backpressure,
      log,
      transientTypes: options.transientTypes,
      maxRoomSize: config.maxRoomSize,
      recovery: options.recovery,
    });
    this.link =
      config.workers === 1
        ? null
        : new ShardLink({
            shardId,
            log,
            onMessage: (from, message) => this.topics.onLinkMessage(from, message),
            onPeerGone: (peer) => this.topics.onPeerGone(peer),
          });
    if (this.link !== null) this.topics.useLink(this.link);
    this.authority =
      options.claims !== null
        ? new ClaimTopicAuthority(options.claims)
        : new HttpTopicAuthority({
            base: config.permissionApiBase,
            secret: secretKey(config.jwtSecret),
            timeoutMs: config.permissionTimeoutMs,
            concurrency: config.permissionConcurrency,
            queue: config.permissionQueue,
            metrics,
          });
    this.authorizer = new TopicAuthorizer(this.authority);
    this.ops = new TopicOps({
      rooms: this.topics,
      authorizer: this.authorizer,
      backpressure,
      limiter,
      mutationTypes: this.options.mutationTypes,
      metrics,
      log,
    });
  }

  /** Who hears of the connections (the shard, once the relay and the server API exist). */
  attach(events: ConnectionEvents): void {
    this.events = events;
    this.listeners = this.makeListeners(events);
  }

  /** A port to shard `peer` (the primary's LinkPortMessage); closed at once when there is no link or the shard drains. */
  linkPort(peer: number, port: MessagePort, draining: boolean): void {
    if (this.link === null || draining) port.close();
    else this.link.attach(peer, port);
  }

  /** A connection the handshake admitted: no room until its first subscribe, and nothing sent before its first op. */
  open({ ws, socket, identity, remoteAddress }: Admitted): void {
    const { limiter, out, backpressure, users, metrics, log } = this.options;
    const events = this.events;
    if (events === null) throw new Error('Multiplexed.attach() must be called before a connection opens');
    const conn = new TopicConnection({
      identity,
      ws,
      socket,
      rate: limiter.acquire(identity.userId, Date.now()),
      outbound: (self) => out.newOutbound(self),
      budget: backpressure.newBudget(),
    });
    this.connections.add(conn);
    users.add(conn.userId, 1);
    metrics.handshake(101);
    events.opened(conn, identity);
    events.changed();
    log.info('connection_open', { sessionId: conn.id, userId: conn.userId, remote: remoteAddress });
    listen(conn, this.listeners!);
  }

  /** The listeners every connection's sockets share (session-socket.ts). */
  private makeListeners(events: ConnectionEvents): SessionListeners {
    const { users, limiter, log } = this.options;
    return sessionListeners<TopicConnection>(
      {
        message: (conn, data, isBinary) => this.ops.onMessage(conn, data, isBinary),
        control: (conn) => this.ops.onControlFrame(conn),
        // Every byte read counts against the user's byte budget, as on the legacy route.
        bytes: (conn, bytes) => events.onBytes(conn, bytes),
        closed: (conn, code, reason) => {
          this.connections.delete(conn);
          users.add(conn.userId, -1);
          limiter.release(conn.userId, Date.now());
          cancelPause(conn);
          events.closed(conn);
          const topics = conn.topics.size;
          this.ops.closed(conn);
          log.info('connection_close', {
            sessionId: conn.id,
            userId: conn.userId,
            code,
            reason: reason.toString(),
            topics,
            durationMs: Date.now() - conn.connectedAt,
          });
          events.changed();
        },
      },
      log,
    );
  }

  /** A connection cut by the backpressure policy: it leaves every topic at once. */
  cut(conn: TopicConnection): void {
    this.ops.closed(conn);
  }

  /**
   * The server API set `userId`'s role on `desktopId`: the answer is asked
   * again, and the user's live subscriptions of `desktop:{id}` on this shard
   * take the new role (`none` ends them with `forbidden`).
   */
  setGrant(userId: string, desktopId: string, permission: ApiPermission): void {
    const topic = `desktop:${desktopId}`;
    this.authorizer.evict(userId, topic);
    this.ops.permissionChanged(this.connections, userId, topic, permission);
  }

  /** The joined subscriptions of this shard's connections (a permission recheck's round). */
  subscriptions(): Subscription[] {
    const subs: Subscription[] = [];
    for (const conn of this.connections) for (const sub of conn.topics.values()) if (sub.state === 'joined') subs.push(sub);
    return subs;
  }

  /** Ask the app for `sub`'s role again, as its subscribe did but past the cache. @throws {AuthorizeError} */
  reauthorize(sub: Subscription): Promise<Permission> {
    return this.authority.authorize(sub.conn.identity, sub.topic);
  }

  /** A recheck found another role: `sub` takes it (announced), and the cached answer is asked again next time. False when nothing changed. */
  recheckedRole(sub: Subscription, permission: Permission): boolean {
    if (!this.ops.setRole(sub, permission)) return false;
    this.authorizer.evict(sub.conn.userId, sub.topic);
    return true;
  }

  /** A recheck was refused (403, 404): `sub` ends with `forbidden`. False when it was not held. */
  recheckedRevoked(sub: Subscription): boolean {
    if (!this.ops.revoke(sub, 'permission revoked')) return false;
    this.authorizer.evict(sub.conn.userId, sub.topic);
    return true;
  }

  /** The server API logged `userId` out: every answer of theirs is asked again (the logout itself closes their connections). */
  forgetUser(userId: string): void {
    this.authorizer.evictUser(userId);
  }

  /** An event of the server API published to a desktop (with its `offset`, 0 when none), for the room's subscribers (commands.ts gave it to the legacy sockets). */
  serverEvent(desktopId: string, legacyText: string, exceptUserId: string | undefined, offset = 0): void {
    this.topics.serverEvent(desktopId, legacyText, exceptUserId, offset);
  }

  /** A subscription's replay fell behind the history: it ends with `recovery_lost` (topic-ops.ts). */
  recoveryLost(sub: Subscription): void {
    this.ops.recoveryLost(sub);
  }

  /** Drain: the link closes first (the peers drop what they learnt through it), then the sockets close. */
  closeLink(): void {
    this.link?.close();
  }

  close(): Promise<void> {
    return this.authorizer.close();
  }
}
