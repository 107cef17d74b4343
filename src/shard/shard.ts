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
import { MemoryRelease, Peak, releasedFields, Rise } from '../memory-release.ts';
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
import { closeSpread } from './drain-spread.ts';
import { Recovery } from './recovery.ts';
import { withOffset } from '../protocol/event-frames.ts';
import { closeWithGrace } from './socket-reads.ts';
import { listen, SessionWebSocket, sessionListeners, type SessionListeners } from './session-socket.ts';
import { BUS_OVERHEAD_BYTES } from '../protocol/bus.ts';

/**
 * On a drain, how long a session's socket has to hand its close frame (and
 * what it holds before it) to the kernel before it is cut. A healthy reader
 * takes microseconds; one that stopped reading never does.
 */
export const CLOSE_FLUSH_MS = 250;

/** How a shard drains (SIGTERM: spread, 1012; an admin restart: at once, 1012). */
export interface DrainPlan {
  /** How long to wait for closing handshakes after the last close frame before cutting the sockets. */
  timeoutMs: number;
  /** The window over which the close frames go out, evenly, in a random order (0 = at once). */
  spreadMs: number;
  code: number;
  reason: string;
}

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
  /** While draining: the close every session gets (one whose join was waiting gets it at once). */
  private drainClose: { code: number; reason: string } | null = null;
  /** Sessions cut on this drain because their sockets could not take the close frame, and the bytes they held. */
  private readonly drainCut = { sessions: 0, bytes: 0 };
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
  /** Tells when a crowd of sessions has come (memory-release.ts). */
  private readonly sessionRise = new Rise();
  private readonly federation: Federation | null;
  /** The server API and live grants (issue 13). */
  private readonly api: ShardApi;
  /** `/ws/ping` (issue 20). */
  private readonly ping: PingRoute;
  /** The multiplexed route (/ws/connection) on this shard. */
  private readonly multiplexed: Multiplexed;
  /** Offsets, history and resumes (issue 21). */
  private readonly recovery: Recovery;
  /** The listeners every legacy session's sockets share (session-socket.ts). */
  private readonly listeners: SessionListeners;

  constructor({ id, config, log, metrics, users, allMetrics, onFatal }: ShardOptions) {
    this.id = id;
    this.users = users;
    this.log = log;
    this.metrics = metrics;
    this.memory = new MemoryRelease({
      onReleased: (released) => {
        if (released.kind === 'heap') this.sessionRise.reset(this.openCount);
        log.info('memory_released', releasedFields(released));
      },
    });
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
        // Its sockets carry their session, for listeners shared by all (session-socket.ts).
        WebSocket: SessionWebSocket,
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
    // Every part is built after the parts it uses. Where two need each other, the one built first takes the other
    // once it exists, through one named call (attach, useBus), as the comments below say.
    // The coalescer needs nothing of the policy; the policy, which writes through it, registers as its backlog listener.
    const out = (this.out = new WriteCoalescer<Session>(metrics, {
      pacing: config.pacing,
      paceIntervalMs: config.paceIntervalMs,
      paceAbove: config.paceAbove,
      // Its outboxes never hold more at once than the shard may queue: the pool may keep that much between turns.
      maxSpareBytes: Math.floor(config.maxOutboundBytes / config.workers),
    }));
    const backpressure = (this.backpressure = new Backpressure(
      {
        maxBufferedBytes: config.maxBufferedBytes,
        slowConsumerTimeoutMs: config.slowConsumerTimeoutMs,
        maxSessionBacklogBytes: config.maxSessionBacklogBytes,
        maxOutboundBytes: config.maxOutboundBytes,
        processOutbound: () => sumOverShards(allMetrics, config.workers, Metric.OUTBOUND_BUFFERED),
        onRelease: () => this.memory.request(),
      },
      out,
      metrics,
      log,
    ));
    // Recovery before the routes that stamp and replay through it; it hears of the sessions it must close (a replay
    // the history overtook) through attach() below, once the relay and the multiplexed route exist.
    const recovery = (this.recovery = new Recovery({
      historyAgeMs: config.historyAgeMs,
      historyEvents: config.historyEvents,
      historyRoomBytes: config.historyRoomBytes,
      historyMemoryBytes: config.historyMemoryBytes,
      workers: config.workers,
      inUse: (roomKey) => this.rooms.get(roomKey) !== undefined,
      // A replay is the server's doing, not the member's: it never trips the hard cap (and it writes only to drained sockets).
      deliver: (target, frame) => void backpressure.deliver(target as Session, frame, undefined, 'server'),
      shared: config.historyStream !== '' && config.natsUrls.length > 0,
    }));
    const transient = new Set([...DEFAULT_TRANSIENT_TYPES, ...config.coalesceTypes]);
    // The mutation table in force, built once: the relay's hot path is one lookup in it.
    const mutations: ReadonlySet<string> = new Set(config.mutationTypes);
    const limiter = (this.limiter = new RateLimiter(this.rateLimit));
    // The multiplexed route before the relay and the server API, which use its rooms and connections; it hears
    // of them through attach() below.
    const multiplexed = (this.multiplexed = new Multiplexed({
      shardId: id,
      config,
      rooms: this.rooms,
      backpressure,
      out,
      limiter,
      metrics,
      log,
      users,
      transientTypes: transient,
      mutationTypes: mutations,
      claims: fromToken ? new ClaimPermissionSource(config.dev ? 'editor' : null) : null,
      recovery,
    }));
    const relay = (this.relay = new Relay({
      rooms: this.rooms,
      out,
      log,
      limiter,
      metrics,
      backpressure,
      transientTypes: transient,
      mutationTypes: mutations,
      topics: multiplexed.topics,
      recovery,
    }));
    // The server API's word on a role or a logout is also the multiplexed route's (its authorize answers and live subscriptions).
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
    const api = (this.api = new ShardApi({
      shardId: id,
      config,
      rooms: this.rooms,
      relay,
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
        // With the fleet's stream, a publish to a desktop goes there (the federation exists by the time a request is applied).
        ...(recovery.stream === null ? {} : { toStream: (request) => this.federation?.publishToStream(request) === true }),
      },
    }));
    multiplexed.attach({
      opened: (conn, identity) => api.openedConnection(conn, identity),
      closed: (conn) => api.closed(conn),
      changed: () => this.connectionsChanged(),
      onBytes: (conn, bytes) => relay.onBytes(conn, bytes),
    });
    // The federation last: it delivers other nodes' events to the relay and the topic rooms, which publish through
    // it, so they take it once it exists (useBus). It only hears the bus after this constructor has returned.
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
              if (room.members.length > 0) relay.deliverRemote(room, encodeTextFrame(framed), transientKey, offset);
              multiplexed.topics.fromOtherNode(room.id, framed, transientKey ?? '', offset);
            },
            transientTypes: transient,
            mutationTypes: mutations,
            onFatal,
            applyApi: (request) => this.applyLocally(request),
            heard: (roomKey, text) => void recovery.stamp(roomKey, text, false),
            gap: (roomKey) => recovery.gap(roomKey),
            ...(recovery.stream === null
              ? {}
              : {
                  stream: {
                    config: {
                      name: config.historyStream,
                      storage: config.historyStreamStorage,
                      maxAgeMs: config.historyStreamMaxAgeMs,
                      maxBytes: config.historyStreamMaxBytes,
                      maxMsgs: config.historyStreamMaxMsgs,
                      maxMsgSize: config.maxMessageSize + BUS_OVERHEAD_BYTES,
                    },
                    log: recovery.stream,
                    replayEvents: config.historyEvents,
                    replayBytes: config.historyRoomBytes,
                    // The stream's sequence is the offset on every node; the sender, when here, is left out.
                    deliver: (room, text, transientKey, offset, exceptId, exceptUserId) => {
                      const framed = withOffset(text, offset);
                      if (room.members.length > 0) relay.deliverRemote(room, encodeTextFrame(framed), transientKey, offset, exceptId, exceptUserId);
                      multiplexed.topics.fromOtherNode(room.id, framed, transientKey ?? '', offset, exceptId, exceptUserId);
                    },
                    lost: (roomKey) => this.roomLost(roomKey),
                  },
                }),
          });
    const federation = this.federation;
    if (federation !== null) {
      relay.useBus(federation);
      // A subscriber's room listens to the other nodes as a legacy socket's does, and its join waits for the room's first sync as well.
      multiplexed.topics.useBus({
        remoteSessionsJson: (roomKey) => federation.remoteSessionsJson(roomKey),
        admit: (roomKey, ready, resume) => federation.admit(roomKey, ready, resume),
        publish: (roomKey, text, event) => federation.publish(roomKey, text, event),
        roomEmptied: (roomKey) => federation.roomEmptied(roomKey),
      });
    }
    // Every part that takes a session out of its room exists: the sessions the policy cuts on its own (the sweep),
    // or aside of a delivery (the process cap), come here. The one a delivery is for is its caller's (Delivery.CUT).
    recovery.attach({
      legacyLost: (session) => this.recoveryLost(session),
      subLost: (sub) => multiplexed.recoveryLost(sub),
    });
    backpressure.attach((session) => {
      if (session instanceof TopicConnection) multiplexed.cut(session);
      else relay.leave(session);
      this.updateGauges();
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
    this.listeners = sessionListeners<Session>(
      {
        message: (session, data, isBinary) => relay.onMessage(session, data, isBinary),
        control: (session) => relay.onControlFrame(session),
        bytes: (session, bytes) => relay.onBytes(session, bytes),
        closed: (session, code, reason) => this.closed(session, code, reason),
      },
      log,
    );
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

  /** The positions of `roomKey`'s members here are void (the fleet's stream is a new one): each is closed to resume (4009, or `recovery_lost`). */
  private roomLost(roomKey: string): void {
    const room = this.rooms.get(roomKey);
    if (room === undefined) return;
    for (const session of [...room.members]) this.recoveryLost(session);
    for (const sub of [...room.subs]) this.multiplexed.recoveryLost(sub);
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
    const { ws, socket, desktopId, identity, permission } = admitted;
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
    if (this.federation === null) this.join(session, admitted);
    else {
      // Nothing it sends is read before it is in its room.
      ws.pause();
      this.federation.admit(desktopId, () => this.join(session, admitted), admitted.resume);
    }
    listen(session, this.listeners);
  }

  /** `session` joins its room (once the other nodes said who is there, with federation). */
  private join(session: Session, { identity, cookie, resume, remoteAddress }: Admitted): void {
    // It may have gone while its room asked the other nodes who is there.
    if (!session.open) return;
    const ws = session.ws;
    if (ws.isPaused) ws.resume();
    // The shard began draining meanwhile: it never joins, and is told to go as the others were.
    if (this.drainClose !== null) {
      ws.close(this.drainClose.code, this.drainClose.reason);
      return;
    }
    this.relay.join(session, resume);
    this.api.opened(session, identity, cookie);
    this.updateGauges();
    this.log.info('session_open', {
      sessionId: session.id,
      desktopId: session.desktopId,
      userId: session.userId,
      permission: session.permission,
      remote: remoteAddress,
      roomSize: this.rooms.get(session.desktopId)?.members.length ?? 0,
    });
  }

  /** A legacy session's socket closed. */
  private closed(session: Session, code: number, reason: Buffer): void {
    this.users.add(session.userId, -1);
    this.limiter.release(session.userId, Date.now());
    cancelPause(session);
    this.api.closed(session);
    this.relay.leave(session);
    this.updateGauges();
    this.log.info('session_close', {
      sessionId: session.id,
      desktopId: session.desktopId,
      code,
      reason: reason.toString(),
      durationMs: Date.now() - session.connectedAt,
    });
    if (this.onEmpty !== null && this.openCount === 0) this.onEmpty();
  }

  /** A multiplexed connection opened or closed. */
  private connectionsChanged(): void {
    this.updateGauges();
    if (this.onEmpty !== null && this.openCount === 0) this.onEmpty();
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
    // A crowd that left, or the handshakes of one that came, left heap that V8 gives back late (memory-release.ts).
    const gone = this.sessionPeak.update(this.rooms.sessionCount);
    if (this.sessionRise.update(this.openCount) || gone) this.memory.request('heap');
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
   * Refuse new connections and close every session with the plan's code and
   * reason: the close frames go out spread evenly over `spreadMs`, in a
   * random order (drain-spread.ts). Resolves once all are closed, or
   * `timeoutMs` after the last close frame (the rest are cut), with the
   * number of sessions that were open.
   *
   * Everything else keeps running until {@link stop}: the relay, liveness,
   * the budgets, the bus link (each session's `session_left` reaches the
   * other nodes as it closes, and their events reach the sessions still
   * here), and the link to the other shards (their connections may be in
   * rooms this shard owns, and drain on their own schedule).
   */
  async drain({ timeoutMs, spreadMs, code, reason }: DrainPlan): Promise<number> {
    this.draining = true;
    this.drainClose = { code, reason };
    // Probes hold nothing to hand over: they go at once.
    this.ping.close(code, reason);
    const sessions = [...this.rooms.allSessions(), ...this.multiplexed.connections];
    const open = sessions.length;
    if (open > 0) {
      const empty = new Promise<void>((resolve) => {
        this.onEmpty = resolve;
      });
      this.log.info('drain_started', { sessions: open, spreadMs });
      await closeSpread(sessions, spreadMs, this.closeDraining);
      await withDeadline(empty, timeoutMs);
      const rest = [...this.rooms.allSessions(), ...this.multiplexed.connections];
      for (const session of rest) session.ws.terminate();
      // Their close handlers run on the next turns: each leaves its room (session_left) while the bus link is up.
      if (rest.length > 0) await withDeadline(empty, CLOSE_FLUSH_MS);
    }
    if (this.drainCut.sessions > 0) this.log.info('drain_cut', this.drainCut);
    return open;
  }

  /** A draining session's turn: what it was sent goes out ahead of its close frame. */
  private readonly closeDraining = (session: Session): void => {
    // Gone meanwhile (left by itself, cut as a slow consumer).
    if (!session.open) return;
    const { code, reason } = this.drainClose!;
    this.out.flushNow(session.out);
    session.handingOver = true;
    session.ws.close(code, reason);
    // A socket that cannot take its close frame (it waits behind a backlog
    // the peer does not read) would hold the drain to its deadline, and the
    // process's exit with it: cut it once it had a moment.
    if (holdsUnsentBytes(session)) setTimeout(this.cutUnflushed, CLOSE_FLUSH_MS, session).unref();
  };

  /** Cut a draining session whose socket still holds bytes the kernel would not take, its close frame among them. */
  private readonly cutUnflushed = (session: Session): void => {
    if (!holdsUnsentBytes(session)) return;
    this.drainCut.sessions++;
    this.drainCut.bytes += session.socket.writableLength;
    session.ws.terminate();
  };

  /**
   * After the drain (every shard's, on shutdown): stop the timers, tell the
   * other nodes that any session still here left, close the bus link (at
   * most `busTimeoutMs`) and the links to the other shards.
   */
  async stop(busTimeoutMs: number): Promise<void> {
    this.draining = true;
    clearInterval(this.pinger);
    this.backpressure.stop();
    this.memory.stop();
    this.api.stop();
    this.recovery.stop();
    this.out.flushAll();
    this.out.stop();
    await this.federation?.close(busTimeoutMs);
    this.multiplexed.closeLink();
    await this.permissions.close();
    await this.multiplexed.close();
  }

  /** Peer nodes and the bus connection, for /stats (null without federation). */
  federationStats(): FederationStats | null {
    return this.federation?.stats() ?? null;
  }
}
