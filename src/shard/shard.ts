/**
 * One shard: the rooms whose desktop ids hash to it, and every session in
 * them. Runs inside a worker thread and touches no other thread's state, so
 * nothing here needs a lock.
 */
import { WebSocketServer } from 'ws';
import type { ServeConfig } from '../config.ts';
import { selectProtocol } from '../auth/credentials.ts';
import { CachingPermissionSource } from '../auth/permission-cache.ts';
import { ClaimPermissionSource, HttpPermissionSource, type PermissionSource } from '../auth/permission-client.ts';
import type { Logger } from '../log.ts';
import { CloseCode, DEFAULT_TRANSIENT_TYPES, SHARD_HEADER } from '../protocol/events.ts';
import type { ConnectionMessage, FederationStats } from '../protocol/messages.ts';
import type { ApiOutcome, ApiRequest } from '../protocol/api.ts';
import { Rejections, type Rejection } from '../protocol/rejections.ts';
import { Metric, sumOverShards, type MetricsSlot } from '../protocol/metrics.ts';
import type { UserConnections } from '../protocol/user-connections.ts';
import { Handshake, type Admitted } from './handshake.ts';
import { Backpressure } from './backpressure.ts';
import { RateLimiter, type RateLimitOptions } from './rate-limiter.ts';
import { Relay } from './relay.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { RoomIndex } from './room-index.ts';
import { Session } from './session.ts';
import { withDeadline } from '../deadline.ts';
import { MemoryRelease, Peak, releasedFields } from '../memory-release.ts';
import { cancelPause } from './socket-reads.ts';
import { UserAdmission } from './user-admission.ts';
import { ShardApi } from './shard-api.ts';
import { WriteCoalescer } from './write-coalescer.ts';
import { Federation } from './federation/index.ts';
import { isPingHead, PingRoute } from './ping-route.ts';
import type { GrantUpdates } from '../auth/permission-cache.ts';
import type { MessagePort } from 'node:worker_threads';
import { ConnectionLimit } from '../protocol/topics.ts';
import { TopicConnection } from './connection.ts';
import { Multiplexed } from './multiplexed.ts';
import { Recovery } from './recovery.ts';
import { withOffset } from '../protocol/event-frames.ts';
import { closeWithGrace } from './socket-reads.ts';

/**
 * On a drain, how long a session's socket has to hand its close frame (and
 * what it holds before it) to the kernel before it is cut. A healthy reader
 * takes microseconds; one that stopped reading never does.
 */
export const CLOSE_FLUSH_MS = 250;

/** Bytes wait in the session's socket that the kernel has not taken. */
function holdsUnsentBytes(session: Session): boolean {
  return !session.socket.destroyed && session.socket.writableLength > 0;
}

/** Fragments one message may come in (ws's default is 16,384). */
export const MAX_FRAGMENTS = 64;

export interface ShardOptions {
  id: number;
  config: ServeConfig;
  log: Logger;
  /** This shard's slot of the shared metrics. */
  metrics: MetricsSlot;
  /** Sessions per user across shards. */
  users: UserConnections;
  /** Every thread's metrics (the process-wide outbound cap reads them). */
  allMetrics: SharedArrayBuffer;
  /** The process must stop: it cannot run as configured (e.g. its node id is taken). */
  onFatal: (code: string, message: string) => void;
}

export class Shard {
  readonly id: number;
  readonly rooms = new RoomIndex();
  private readonly log: Logger;
  private readonly relay: Relay;
  private readonly handshake: Handshake;
  private readonly permissions: PermissionSource;
  private draining = false;
  private onEmpty: (() => void) | null = null;
  private readonly pinger: NodeJS.Timeout;
  private readonly out: WriteCoalescer<Session>;
  private readonly rateLimit: RateLimitOptions;
  private readonly limiter: RateLimiter;
  private readonly metrics: MetricsSlot;
  private readonly backpressure: Backpressure;
  private readonly users: UserConnections;
  private readonly memory: MemoryRelease;
  /** Tells when a crowd of sessions has left (memory-release.ts). */
  private readonly sessionPeak = new Peak();
  private readonly federation: Federation | null;
  /** The server API and live grants (issue 13). */
  private readonly api: ShardApi;
  /** `/ws/ping` (issue 20). */
  private readonly ping: PingRoute;
  /** The multiplexed route (/ws/connection) on this shard. */
  private readonly multiplexed: Multiplexed;
  /** Offsets, history and resumes (issue 21). */
  private readonly recovery: Recovery;

  constructor({ id, config, log, metrics, users, allMetrics, onFatal }: ShardOptions) {
    this.id = id;
    this.users = users;
    this.log = log;
    this.metrics = metrics;
    this.memory = new MemoryRelease({ onReleased: (released) => log.info('memory_released', releasedFields(released)) });
    const fromToken = config.dev || config.permissionsFromToken;
    const permissionApi = fromToken
      ? new ClaimPermissionSource(config.dev ? 'editor' : null)
      : new HttpPermissionSource({
          base: config.permissionApiBase,
          timeoutMs: config.permissionTimeoutMs,
          concurrency: config.permissionConcurrency,
          queue: config.permissionQueue,
          metrics,
        });
    // Also with --permissions-from-token: the server API's word on a role (set, revoked) is kept here.
    const cache = config.dev ? null : new CachingPermissionSource(permissionApi, { ttlMs: config.permissionCacheTtlMs, metrics });
    this.permissions = cache ?? permissionApi;
    const server = (maxPayload: number): WebSocketServer => {
      const wss = new WebSocketServer({
        noServer: true,
        clientTracking: false,
        perMessageDeflate: false,
        // Answer moodio.v1 or nothing: never echo an offered moodio.token.<jwt>.
        handleProtocols: selectProtocol,
        maxPayload,
        // A message of more fragments than this closes with 1008: each fragment is a frame to parse, and one token pays for the message.
        maxFragments: MAX_FRAGMENTS,
        // ws ≥ 8.19 option (missing from @types/ws 8.18): how long close() waits for the peer's close frame.
        ...({ closeTimeout: Math.min(config.drainTimeoutMs, 30_000) } as object),
      });
      wss.on('headers', (headers: string[]) => headers.push(`${SHARD_HEADER}: ${id}`));
      return wss;
    };
    const wss = server(config.maxMessageSize);
    // The multiplexed route carries larger messages (a production table's rows), as the upstream relay does.
    const connectionWss = server(ConnectionLimit.MAX_MESSAGE_BYTES);
    this.rateLimit = {
      perSecond: config.rateLimit,
      burst: config.rateLimitBurst,
      closeAfterMs: config.rateLimitCloseAfterMs,
      messageBytes: config.maxMessageSize,
    };
    // The coalescer reports backlogs to the backpressure policy, which writes through the coalescer.
    let backpressure: Backpressure | null = null;
    const out = (this.out = new WriteCoalescer<Session>(metrics, {
      pacing: config.pacing,
      paceIntervalMs: config.paceIntervalMs,
      paceAbove: config.paceAbove,
      onBacklog: (session, kept) => backpressure!.noteBacklog(session, kept),
    }));
    backpressure = this.backpressure = new Backpressure(
      {
        maxBufferedBytes: config.maxBufferedBytes,
        slowConsumerTimeoutMs: config.slowConsumerTimeoutMs,
        maxSessionBacklogBytes: config.maxSessionBacklogBytes,
        maxOutboundBytes: config.maxOutboundBytes,
        processOutbound: () => sumOverShards(allMetrics, config.workers, Metric.OUTBOUND_BUFFERED),
        // A cut session leaves its room at once (session_left), not when its socket finally closes.
        onCut: (session) => {
          if (session instanceof TopicConnection) this.multiplexed.cut(session);
          else this.relay.leave(session);
          this.updateGauges();
        },
        onRelease: () => this.memory.request(),
      },
      out,
      metrics,
      log,
    );
    const recovery = (this.recovery = new Recovery({
      historyAgeMs: config.historyAgeMs,
      historyEvents: config.historyEvents,
      historyRoomBytes: config.historyRoomBytes,
      historyMemoryBytes: config.historyMemoryBytes,
      workers: config.workers,
      inUse: (roomKey) => this.rooms.get(roomKey) !== undefined,
      // A replay is the server's doing, not the member's: it never trips the hard cap (and it writes only to drained sockets).
      deliver: (target, frame) => backpressure.deliver(target as Session, frame, undefined, 'server'),
      legacyLost: (session) => this.recoveryLost(session),
      subLost: (sub) => this.multiplexed.recoveryLost(sub),
    }));
    const transient = new Set([...DEFAULT_TRANSIENT_TYPES, ...config.coalesceTypes]);
    // The mutation table in force, built once: the relay's hot path is one lookup in it.
    const mutations: ReadonlySet<string> = new Set(config.mutationTypes);
    this.limiter = new RateLimiter(this.rateLimit);
    this.federation =
      config.natsUrls.length === 0
        ? null
        : new Federation({
            config,
            shardId: id,
            log,
            metrics,
            rooms: this.rooms,
            // Each member in its framing: the legacy sockets from the relay, the subscribers (here and on other shards) from the topic rooms.
            // A relayed event gets this node's offset on arrival; presence gets none.
            deliver: (room, text, transientKey, relayed) => {
              const offset = relayed === true ? recovery.stamp(room.id, text, false) : 0;
              const framed = offset === 0 ? text : withOffset(text, offset);
              if (room.members.length > 0) this.relay.deliverRemote(room, encodeTextFrame(framed), transientKey, offset);
              this.multiplexed.topics.fromOtherNode(room.id, framed, transientKey ?? '', offset);
            },
            transientTypes: transient,
            mutationTypes: mutations,
            onFatal,
            applyApi: (request) => this.applyLocally(request),
          });
    const federation = this.federation;
    this.multiplexed = new Multiplexed({
      shardId: id,
      config,
      rooms: this.rooms,
      backpressure,
      out,
      limiter: this.limiter,
      metrics,
      log,
      users,
      transientTypes: transient,
      mutationTypes: mutations,
      claims: fromToken ? new ClaimPermissionSource(config.dev ? 'editor' : null) : null,
      remoteSessionsJson: federation === null ? undefined : (roomKey) => federation.remoteSessionsJson(roomKey),
      opened: (conn, identity) => this.api.openedConnection(conn, identity),
      closed: (conn) => this.api.closed(conn),
      changed: () => {
        this.updateGauges();
        if (this.onEmpty !== null && this.openCount === 0) this.onEmpty();
      },
      onBytes: (conn, bytes) => this.relay.onBytes(conn, bytes),
      recovery,
    });
    if (federation !== null) {
      // A subscriber's room listens to the other nodes as a legacy socket's does; it does not wait for the first sync (others arrive as session_joined).
      this.multiplexed.topics.useBus({
        admit: (roomKey) => federation.admit(roomKey, noop),
        publish: (roomKey, text, event) => federation.publish(roomKey, text, event),
        roomEmptied: (roomKey) => federation.roomEmptied(roomKey),
      });
    }
    this.relay = new Relay({
      rooms: this.rooms,
      out,
      log,
      limiter: this.limiter,
      metrics,
      backpressure: this.backpressure,
      transientTypes: transient,
      mutationTypes: mutations,
      bus: federation ?? undefined,
      topics: this.multiplexed.topics,
      recovery,
    });
    // The server API's word on a role or a logout is also the multiplexed route's (its authorize answers and live subscriptions).
    const multiplexed = this.multiplexed;
    const grants: GrantUpdates = {
      setGrant: (userId, desktopId, permission) => {
        cache?.setGrant(userId, desktopId, permission);
        multiplexed.setGrant(userId, desktopId, permission);
      },
      forgetUser: (userId) => {
        cache?.forgetUser(userId);
        multiplexed.forgetUser(userId);
      },
    };
    this.api = new ShardApi({
      shardId: id,
      config,
      rooms: this.rooms,
      relay: this.relay,
      backpressure,
      out,
      permissions: permissionApi,
      grants,
      metrics,
      log,
      topics: multiplexed,
      leaveTopics: (conn) => multiplexed.cut(conn),
      publishing: {
        stamp: (roomKey, text, nullPayload) => recovery.stamp(roomKey, text, nullPayload),
        subscribers: (roomKey, text, exceptUserId, offset) => multiplexed.serverEvent(roomKey, text, exceptUserId, offset),
      },
    });
    this.ping = new PingRoute({
      shardId: id,
      workers: config.workers,
      log,
      metrics,
      allMetrics,
      maxSockets: config.maxPingSockets,
      maxPerAddress: config.maxPingPerAddress,
      pingIntervalMs: config.pingIntervalMs,
      accepting: () => !this.draining,
    });
    this.pinger = setInterval(() => this.checkLiveness(), config.pingIntervalMs);
    this.pinger.unref();
    this.handshake = new Handshake({
      shardId: id,
      jwtSecret: config.jwtSecret,
      permissions: this.permissions,
      wss,
      connectionWss,
      log,
      metrics,
      accepting: () => !this.draining,
      admit: (identity, desktopId) => this.checkLimits(identity.userId, desktopId, config),
      users: new UserAdmission({ connectRate: config.connectRate, connectBurst: config.connectBurst, maxInFlight: config.maxHandshakesPerUser }),
    });
  }

  /** A connection handed over by the primary. */
  accept(message: ConnectionMessage): void {
    if (isPingHead(message.bytes)) {
      try {
        this.ping.accept(message);
      } catch (err) {
        // accept() answers every expected failure itself; this is a bug path.
        this.log.error('ping_failed', { err });
      }
      return;
    }
    this.handshake
      .admit(message, (admitted) => this.open(admitted))
      .catch((err: unknown) => {
        // admit() answers every expected failure itself; this is a bug path.
        this.log.error('handshake_failed', { err });
      });
  }

  /**
   * Apply a server API request to this shard's sessions (commands.ts); an
   * event published to a desktop also reaches the room's multiplexed
   * subscribers, in their framing (`publishing`).
   */
  private applyLocally(request: ApiRequest): ApiOutcome {
    return this.api.apply(request);
  }

  /** A resumed session's replay fell behind the history: out of its room, and closed with 4009 so that it resumes again (recovered: false). */
  private recoveryLost(session: Session): void {
    if (!session.open) return;
    this.out.flushNow(session.out);
    this.relay.leave(session);
    closeWithGrace(session, CloseCode.RECOVERY_LOST, 'recovery lost');
    this.log.info('recovery_lost', { sessionId: session.id, desktopId: session.desktopId });
  }

  /**
   * Apply a server API request from this node's primary. With federation,
   * a command is also published for the other nodes, and a query's answer
   * gathers their sessions too.
   */
  async applyApi(request: ApiRequest): Promise<ApiOutcome> {
    const outcome = this.applyLocally(request);
    if (this.federation === null || outcome.duplicate) return outcome;
    if (outcome.sessions === undefined) {
      this.federation.publishApi(request);
      return outcome;
    }
    const remote = await this.federation.gatherApi(request);
    return remote.length === 0 ? outcome : { ...outcome, reached: outcome.reached + remote.length, sessions: [...outcome.sessions, ...remote] };
  }

  /** A port to shard `peer` (the primary's LinkPortMessage). */
  linkPort(peer: number, port: MessagePort): void {
    this.multiplexed.linkPort(peer, port, this.draining);
  }

  private open(admitted: Admitted): void {
    if (admitted.multiplexed) {
      this.multiplexed.open(admitted);
      return;
    }
    const { ws, socket, desktopId, identity, permission, remoteAddress, cookie } = admitted;
    const session = new Session({
      desktopId,
      identity,
      permission,
      ws,
      socket,
      rate: this.limiter.acquire(identity.userId, Date.now()),
      outbound: (self) => this.out.newOutbound(self),
      budget: this.backpressure.newBudget(),
    });
    this.users.add(session.userId, 1);
    this.metrics.handshake(101);
    const join = () => {
      // It may have gone while its room asked the other nodes who is there.
      if (!session.open) return;
      if (ws.isPaused) ws.resume();
      this.relay.join(session, admitted.resume);
      this.api.opened(session, identity, cookie);
      this.updateGauges();
      this.log.info('session_open', {
        sessionId: session.id,
        desktopId,
        userId: session.userId,
        permission,
        remote: remoteAddress,
        roomSize: this.rooms.get(desktopId)?.members.length ?? 0,
      });
    };
    if (this.federation === null) join();
    else {
      // Nothing it sends is read before it is in its room.
      ws.pause();
      this.federation.admit(desktopId, join);
    }
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      session.alive = true;
      this.relay.onMessage(session, data, isBinary);
    });
    ws.on('pong', () => {
      session.alive = true;
      this.relay.onControlFrame(session);
    });
    ws.on('ping', () => this.relay.onControlFrame(session));
    // Every byte read counts against the user's byte budget (control frames and fragments too).
    socket.on('data', (chunk: Buffer) => this.relay.onBytes(session, chunk.length));
    ws.on('error', (err: Error & { code?: string }) => {
      this.log.info('session_protocol_error', { sessionId: session.id, code: err.code, message: err.message });
    });
    ws.once('close', (code: number, reason: Buffer) => {
      this.users.add(session.userId, -1);
      this.limiter.release(session.userId, Date.now());
      cancelPause(session);
      this.api.closed(session);
      this.relay.leave(session);
      this.updateGauges();
      this.log.info('session_close', {
        sessionId: session.id,
        desktopId,
        code,
        reason: reason.toString(),
        durationMs: Date.now() - session.connectedAt,
      });
      if (this.onEmpty !== null && this.openCount === 0) this.onEmpty();
    });
  }

  /** Legacy sessions and multiplexed connections open on this shard. */
  private get openCount(): number {
    return this.rooms.sessionCount + this.multiplexed.connections.size;
  }

  /** Connection limits at admission: null = admit, else the refusal. */
  private checkLimits(userId: string, desktopId: string, config: ServeConfig): Rejection | null {
    if (config.maxConnectionsPerWorker > 0 && this.openCount >= config.maxConnectionsPerWorker) {
      return Rejections.WORKER_FULL;
    }
    if (desktopId !== '' && config.maxRoomSize > 0 && (this.rooms.get(desktopId)?.size ?? 0) >= config.maxRoomSize) {
      return Rejections.ROOM_FULL;
    }
    if (config.maxConnectionsPerUser > 0 && this.users.count(userId) >= config.maxConnectionsPerUser) {
      return Rejections.TOO_MANY_CONNECTIONS_FOR_USER;
    }
    return null;
  }

  private updateGauges(): void {
    this.metrics.set(Metric.CONNECTIONS, this.openCount);
    this.metrics.set(Metric.ROOMS, this.rooms.roomCount);
    // The crowd's sessions took heap that V8 gives back late (memory-release.ts).
    if (this.sessionPeak.update(this.rooms.sessionCount)) this.memory.request('heap');
  }

  /**
   * Liveness: every session is pinged each interval; one that answered
   * nothing (no pong, no message) since the previous ping is terminated, and
   * its room hears `session_left`. Healthy idle sessions (and nginx, which
   * forwards pings) stay open indefinitely.
   */
  private checkLiveness(): void {
    for (const session of [...this.rooms.allSessions(), ...this.multiplexed.connections]) {
      if (!session.open) continue;
      if (!session.alive) {
        this.log.info('session_timeout', { sessionId: session.id, desktopId: session.desktopId });
        this.metrics.add(Metric.CLOSED_LIVENESS);
        session.ws.terminate();
        continue;
      }
      session.alive = false;
      session.ws.ping();
    }
  }

  /**
   * Refuse new connections, close every session with `code` and `reason`
   * (1001 on shutdown, 1012 before an admin restart), and resolve once all
   * are closed or `timeoutMs` passed (the rest are cut). Resolves with the
   * number of sessions that were open.
   */
  async drain(timeoutMs: number, code: number = CloseCode.GOING_AWAY, reason = 'server shutting down'): Promise<number> {
    this.draining = true;
    // Other nodes hear that every session here left before the sessions are even closed.
    const bus = this.federation?.close(Math.min(timeoutMs, 2000));
    clearInterval(this.pinger);
    this.ping.close(code, reason);
    this.backpressure.stop();
    this.memory.stop();
    this.api.stop();
    this.recovery.stop();
    // Frames already queued go out ahead of the close frames.
    this.out.flushAll();
    this.out.stop();
    this.multiplexed.closeLink();
    const open = this.openCount;
    if (open > 0) {
      const empty = new Promise<void>((resolve) => {
        this.onEmpty = resolve;
      });
      const sessions = [...this.rooms.allSessions(), ...this.multiplexed.connections];
      for (const session of sessions) session.ws.close(code, reason);
      const started = Date.now();
      // A socket that cannot take its close frame (it waits behind a backlog
      // the peer does not read) would hold the drain to its deadline, and
      // the process's exit with it: cut it once the others had a moment.
      const backlogged = sessions.filter(holdsUnsentBytes);
      if (backlogged.length > 0 && !(await withDeadline(empty, Math.min(CLOSE_FLUSH_MS, timeoutMs)))) this.cutUnflushed(backlogged);
      await withDeadline(empty, Math.max(0, timeoutMs - (Date.now() - started)));
      for (const session of [...this.rooms.allSessions(), ...this.multiplexed.connections]) session.ws.terminate();
    }
    await bus;
    await this.permissions.close();
    await this.multiplexed.close();
    return open;
  }

  /** Cut the draining sessions whose sockets still hold bytes the kernel would not take, their close frame among them. */
  private cutUnflushed(sessions: Session[]): void {
    let cut = 0;
    let bytes = 0;
    for (const session of sessions) {
      if (!holdsUnsentBytes(session)) continue;
      cut++;
      bytes += session.socket.writableLength;
      session.ws.terminate();
    }
    if (cut > 0) this.log.info('drain_cut', { sessions: cut, bytes });
  }

  /** Peer nodes and the bus connection, for /stats (null without federation). */
  federationStats(): FederationStats | null {
    return this.federation?.stats() ?? null;
  }
}

function noop(): void {}
