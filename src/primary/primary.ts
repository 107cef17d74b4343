/**
 * The primary thread: accepts TCP connections, reads each request head from
 * the descriptor (head-reader.ts), answers what it can itself (health,
 * rejections, admin) and transfers every WebSocket handshake to the shard
 * that owns its desktop (shard-pool.ts). It never parses a WebSocket frame.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { ServeConfig } from '../config.ts';
import { KeyedBuckets } from '../keyed-buckets.ts';
import { LogBudget, REJECTION_LOG_PER_SECOND, type LogFields, type Logger } from '../log.ts';
import { httpResponse, parseRequestHead, type RequestHead } from '../protocol/http.ts';
import { rejectionResponse, Rejections, type Rejection, type RejectionDetails } from '../protocol/rejections.ts';
import { endWithResponse, reportLingeringTo } from '../linger.ts';
import { addressKey, normalizeAddress } from '../protocol/address.ts';
import { fnv1a32 } from '../protocol/hash.ts';
import { Metric } from '../protocol/metrics.ts';
import { readHead, type HeadReadResult, type PendingHead } from './head-reader.ts';
import { CROWD, MemoryRelease, releasedFields } from '../memory-release.ts';
import { type HelpersLowered, lowerV8Helpers, SINGLE_THREADED_GC } from '../process-setup.ts';
import { sampleThreadStats } from '../thread-stats.ts';
import { ApiServer } from './api-server.ts';
import { demoResponse } from './demo.ts';
import { renderMetrics } from './metrics-text.ts';
import { PendingTable } from './pending-table.ts';
import { route } from './router.ts';
import { ShardPool, type ShardStats } from './shard-pool.ts';

export interface PrimaryOptions {
  config: ServeConfig;
  /** Entry module of the shard worker threads. */
  shardWorkerUrl: URL;
  log: Logger;
  /** A shard reported that the process cannot go on as configured. */
  onFatal?: (code: string, message: string) => void;
}

function swallow(): void {}

/**
 * When the pending table is full, pending heads polled (one read each) to
 * confirm they are still the least advanced before one is shed: a head may
 * be waiting in the kernel, unseen between two polls.
 */
const SHED_CANDIDATES = 4;

/**
 * A connection whose head is still being read this long after its accept
 * counts against --max-pending-per-address. A client's head follows its TCP
 * handshake within a round trip, and the primary reads it within one poll
 * (at most 100 ms apart), so a burst of clients behind one address is read
 * long before this; what is still pending here is slow (a head segment
 * lost on a lossy link waits a 1 s retransmission timeout, and is then
 * counted, but admitted unless its address holds the limit's worth).
 */
export const PENDING_SLOW_AFTER_MS = 1000;
/** Connections turning slow are counted in batches at most this often. */
const AGE_BATCH_MS = 10;

/**
 * After a burst of handshakes the primary collects once they have stopped
 * for a few seconds (memory-release.ts), or at the latest this long after
 * the burst passed CROWD, if they never stop.
 */
export const PRIMARY_RELEASE_MAX_WAIT_MS = 5 * 60_000;

/** --handshake-rate-per-address lets an address start this many seconds' worth at once. */
export const HANDSHAKE_BURST_SECONDS = 5;

const normalize = normalizeAddress;

export { addressKey };

/**
 * The client's address: the peer's, unless the peer is a trusted proxy; then
 * the right-most X-Forwarded-For entry that is not itself a trusted proxy
 * (entries left of it could be forged by the client).
 */
export function clientAddress(peer: string, forwardedFor: string | undefined, trusted: readonly string[]): string {
  if (forwardedFor === undefined || trusted.length === 0 || !trusted.includes(normalize(peer))) return peer;
  const hops = forwardedFor
    .split(',')
    .map((h) => normalize(h.trim()))
    .filter(Boolean);
  for (let i = hops.length - 1; i >= 0; i--) if (!trusted.includes(hops[i]!)) return hops[i]!;
  return hops[0] ?? peer;
}

export class Primary {
  private readonly config: ServeConfig;
  private readonly log: Logger;
  private readonly pool: ShardPool;
  private readonly server: Server;
  /** Heads being read: shed when full, slow ones counted per address, cancelled and closed on shutdown. */
  private readonly pending: PendingTable<Socket, PendingHead>;
  /** Counts the pending connections that turn slow (PENDING_SLOW_AFTER_MS); null when none waits. */
  private agingTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private stopSampling: () => void = () => {};
  /** V8 helper threads set to `--v8-helper-nice` at start (process-setup.ts). */
  private helpers: HelpersLowered = { lowered: 0, failure: null };
  /** Refusals are caused at will by peers: logged at a bounded rate. */
  private readonly rejections = new LogBudget(REJECTION_LOG_PER_SECOND);
  /** WebSocket handshakes by client address (--handshake-rate-per-address). */
  private readonly handshakes: KeyedBuckets;
  /** The server API, when --api-key is set. */
  private readonly api: ApiServer | null;
  /** A burst of connects grows this thread's heap, which V8 gives back late (memory-release.ts). */
  private readonly memory: MemoryRelease;
  /** Handshakes handed to shards since the last collection (counted up to CROWD; past it, each asks for one). */
  private handshakesSinceRelease = 0;

  constructor(options: PrimaryOptions) {
    this.config = options.config;
    this.log = options.log;
    this.pool = new ShardPool({ config: options.config, workerUrl: options.shardWorkerUrl, log: options.log, onFatal: options.onFatal });
    this.memory = new MemoryRelease({
      // Once handshakes stop: a pause here delays every handshake of a storm.
      maxWaitMs: PRIMARY_RELEASE_MAX_WAIT_MS,
      onReleased: (released) => {
        this.handshakesSinceRelease = 0;
        this.log.info('memory_released', releasedFields(released));
      },
    });
    this.pending = new PendingTable({ slowAfterMs: PENDING_SLOW_AFTER_MS, maxSlowPerAddress: this.config.maxPendingPerAddress });
    this.handshakes = new KeyedBuckets(this.config.handshakeRatePerAddress, this.config.handshakeRatePerAddress * HANDSHAKE_BURST_SECONDS);
    reportLingeringTo(this.pool.primaryMetrics);
    this.api =
      this.config.apiKey === ''
        ? null
        : new ApiServer({ config: this.config, pool: this.pool, log: this.log, elsewhere: (socket, head) => this.serve(socket, head, null, 0) });
    // pauseOnConnect: libuv must never read these sockets, or they could not
    // be transferred to a shard afterwards.
    this.server = createServer({ pauseOnConnect: true, noDelay: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => this.log.error('listen_error', { err }));
  }

  /** Start the shards, then listen. Resolves with the bound address. */
  async start(): Promise<AddressInfo> {
    await this.pool.start();
    this.helpers = lowerV8Helpers(this.config.v8HelperNice);
    this.stopSampling = sampleThreadStats(this.pool.primaryMetrics);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.config.host, port: this.config.port, backlog: 4096 }, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const address = this.server.address() as AddressInfo;
    this.log.info('listening', {
      host: address.address,
      port: address.port,
      workers: this.pool.size,
      gcThreads: process.execArgv.includes(SINGLE_THREADED_GC) ? 'single' : 'parallel',
      v8HelperNice: this.config.v8HelperNice,
      v8HelpersLowered: this.helpers.lowered,
    });
    // The server runs as well without it: said once, with why, for an operator who counted on it.
    if (this.helpers.failure !== null) this.log.warn('v8_helpers_not_lowered', { v8HelperNice: this.config.v8HelperNice, reason: this.helpers.failure });
    return address;
  }

  /**
   * Stop accepting, drop handshakes still being read, ask every shard to close
   * its sessions with 1012 spread over `drainSpreadMs`, and wait for them (at
   * most `drainTimeoutMs` after the last close frame), then for the shards to
   * close their bus links (shard-pool.ts).
   */
  async shutdown(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.log.info('shutdown', { drainSpreadMs: this.config.drainSpreadMs, drainTimeoutMs: this.config.drainTimeoutMs });
    this.server.close();
    this.stopSampling();
    this.memory.stop();
    if (this.agingTimer !== null) clearTimeout(this.agingTimer);
    this.agingTimer = null;
    for (const [socket, read] of this.pending.entries()) {
      read.cancel();
      socket.destroy();
    }
    this.pending.clear();
    this.api?.shutdown();
    this.pool.primaryMetrics.set(Metric.PENDING_HANDSHAKES, 0);
    await this.pool.drain(this.config.drainTimeoutMs, this.config.drainSpreadMs);
    this.log.info('stopped');
  }

  private onConnection(socket: Socket): void {
    socket.on('error', swallow);
    if (this.closing) {
      socket.destroy();
      return;
    }
    const peer = normalize(socket.remoteAddress ?? '');
    // nginx buffers request heads itself, so a trusted proxy's connections are not limited.
    const limited = this.config.maxPendingPerAddress > 0 && !this.config.trustProxy.includes(peer);
    const address = addressKey(peer);
    // Only slow connections count: an address already holding its limit's worth gets no more.
    if (limited && this.pending.addressFull(address)) {
      this.pool.primaryMetrics.add(Metric.PENDING_REFUSED_ADDRESS);
      this.reject(socket, Rejections.TOO_MANY_PENDING_FROM_ADDRESS, {}, false);
      return;
    }
    // Make room before polling: a half-open flood must not grow the poll work.
    if (this.pending.size >= this.config.maxPendingHandshakes) this.shedLeastProgress();
    const acceptedAt = Date.now();
    const options = { maxBytes: this.config.maxHeadBytes, timeoutMs: this.config.handshakeTimeoutMs };
    let finished = false;
    let read: PendingHead;
    try {
      read = readHead(socket, options, (result) => {
        finished = true;
        if (this.pending.delete(socket) !== undefined) this.pool.primaryMetrics.set(Metric.PENDING_HANDSHAKES, this.pending.size);
        this.onHead(socket, result, acceptedAt);
      });
    } catch (err) {
      this.log.error('head_reader_failed', { err });
      socket.destroy();
      return;
    }
    // The first read attempt is synchronous and may already have finished.
    if (finished) return;
    this.pending.add(socket, read, limited ? address : null, acceptedAt);
    this.pool.primaryMetrics.set(Metric.PENDING_HANDSHAKES, this.pending.size);
    if (limited) this.armAging();
  }

  private armAging(): void {
    if (this.agingTimer !== null) return;
    const due = this.pending.nextSlowAt();
    if (due === undefined) return;
    this.agingTimer = setTimeout(this.agePending, Math.max(AGE_BATCH_MS, due - Date.now()));
    this.agingTimer.unref();
  }

  /**
   * Count the connections that turned slow against their addresses; those
   * past their address's limit are refused as a newcomer from it would be.
   */
  private readonly agePending = (): void => {
    this.agingTimer = null;
    const over = this.pending.age(Date.now());
    for (const [socket, read] of over) {
      read.cancel();
      this.pool.primaryMetrics.add(Metric.PENDING_REFUSED_ADDRESS);
      this.reject(socket, Rejections.TOO_MANY_PENDING_FROM_ADDRESS, {}, false);
    }
    if (over.length > 0) this.pool.primaryMetrics.set(Metric.PENDING_HANDSHAKES, this.pending.size);
    this.armAging();
  };

  /**
   * Close the pending connection that has sent the fewest bytes for longest,
   * so that a newcomer can be read. A candidate is polled first: if its head
   * was waiting in the kernel it completes (making room) or shows progress,
   * and the next candidate is considered.
   */
  private shedLeastProgress(): void {
    for (let tries = 0; this.pending.size >= this.config.maxPendingHandshakes; tries++) {
      const victim = this.pending.leastProgress();
      if (victim === undefined) return;
      const read = this.pending.get(victim)!;
      if (tries < SHED_CANDIDATES) {
        const before = read.received;
        // A head that completes here removes itself from the table (readHead's callback).
        read.pollNow();
        if (!this.pending.has(victim) || read.received !== before) continue;
      }
      this.pending.delete(victim);
      read.cancel();
      victim.destroy();
      this.pool.primaryMetrics.add(Metric.PENDING_SHED);
      this.logRejection('info', { reason: 'shed_least_progress', remote: victim.remoteAddress, received: read.received });
    }
    this.pool.primaryMetrics.set(Metric.PENDING_HANDSHAKES, this.pending.size);
  }

  private onHead(socket: Socket, result: HeadReadResult, acceptedAt: number): void {
    const remote = socket.remoteAddress;
    switch (result.kind) {
      case 'closed':
        socket.destroy();
        return;
      case 'error':
        this.logRejection('warn', { reason: 'read_error', remote, err: result.error });
        socket.destroy();
        return;
      case 'timeout':
        this.logRejection('info', { reason: 'handshake_timeout', remote, received: result.received });
        socket.destroy();
        return;
      case 'too-slow':
        this.logRejection('info', { reason: 'head_too_slow', remote, received: result.received });
        socket.destroy();
        return;
      case 'too-large':
        this.reject(socket, Rejections.HEAD_TOO_LARGE);
        return;
      case 'head':
        break;
    }

    if (this.log.enabled('debug')) this.log.debug('head_read', { ms: Date.now() - acceptedAt, polls: result.polls, remote });
    const parsed = parseRequestHead(result.bytes, result.headLength);
    if (!parsed.ok) {
      const rejection = parsed.status === 431 ? Rejections.HEAD_TOO_LARGE : parsed.status === 505 ? Rejections.HTTP_VERSION : Rejections.MALFORMED_HEAD;
      this.reject(socket, rejection, { detail: parsed.reason });
      return;
    }
    this.serve(socket, parsed.head, result.bytes, result.headLength);
  }

  /**
   * Answer or dispatch a parsed request. `bytes` is everything read from the
   * socket (the head and what followed); null when the socket has been read
   * the ordinary way (a later request of a kept-alive API connection), so it
   * can no longer be handed to a shard.
   */
  private serve(socket: Socket, head: RequestHead, bytes: Buffer | null, headLength: number): void {
    const remote = socket.remoteAddress;
    const decision = route(head, {
      workers: this.pool.size,
      adminToken: this.config.adminToken,
      allowedOrigins: this.config.allowedOrigins,
      metricsToken: this.config.metricsToken,
      dev: this.config.dev,
      api: this.api !== null,
    });
    switch (decision.kind) {
      case 'health':
        endWithResponse(socket, httpResponse(200, head.method === 'HEAD' ? '' : 'ok'));
        return;
      case 'metrics':
        endWithResponse(
          socket,
          httpResponse(
            200,
            renderMetrics(this.pool.metrics, this.pool.size, process.memoryUsage.rss(), this.config),
            {},
            'text/plain; version=0.0.4; charset=utf-8',
          ),
        );
        return;
      case 'stats':
        void this.answerStats(socket);
        return;
      case 'api':
        if (bytes === null) this.reject(socket, Rejections.NOT_FOUND, {}, false);
        else this.api!.accept(socket, head, bytes.subarray(headLength));
        return;
      case 'demo':
        endWithResponse(socket, demoResponse(head, this.config.jwtSecret));
        return;
      case 'reject':
        this.reject(socket, decision.rejection, { headers: decision.headers, detail: decision.detail }, decision.handshake);
        return;
      case 'terminate-shard': {
        const ok = this.pool.terminate(decision.shard);
        this.log.warn('shard_terminate_requested', { shard: decision.shard, remote, ok });
        endWithResponse(socket, httpResponse(ok ? 202 : 503, ok ? 'terminating' : 'shard is not running'));
        return;
      }
      case 'check':
        endWithResponse(
          socket,
          decision.preflight
            ? httpResponse(204, '', decision.headers)
            : httpResponse(200, JSON.stringify({ status: 'ok', region: this.config.region }), decision.headers, 'application/json'),
        );
        return;
      case 'shard':
        this.handOver(socket, head, bytes, headLength, () => decision.shard);
        return;
      case 'ping':
        // By the client's address: its probes meet the same shard each time, and that
        // shard alone counts the address's ping sockets (shard/ping-route.ts).
        this.handOver(socket, head, bytes, headLength, (client) => fnv1a32(addressKey(normalize(client))) % this.pool.size);
        return;
    }
  }

  /**
   * Hand a WebSocket handshake to the shard `shardOf` picks for the client's
   * address, unless the address is over --handshake-rate-per-address.
   */
  private handOver(socket: Socket, head: RequestHead, bytes: Buffer | null, headLength: number, shardOf: (client: string) => number): void {
    if (this.closing) {
      this.reject(socket, Rejections.SHUTTING_DOWN);
      return;
    }
    if (bytes === null) {
      this.reject(socket, Rejections.UPGRADE_ON_USED_CONNECTION);
      return;
    }
    const client = clientAddress(socket.remoteAddress ?? '', head.headers['x-forwarded-for'], this.config.trustProxy);
    // Refused here, before a shard spends a token verification and an answer on it.
    const waitMs = this.handshakes.take(addressKey(normalize(client)), Date.now());
    if (waitMs > 0) {
      this.pool.primaryMetrics.add(Metric.REFUSED_ADDRESS_RATE);
      this.reject(socket, Rejections.TOO_MANY_HANDSHAKES_FROM_ADDRESS, { retryAfterS: Math.ceil(waitMs / 1000) });
      return;
    }
    const shard = shardOf(client);
    const sent = this.pool.dispatch(shard, socket, bytes, headLength, client);
    if (this.handshakesSinceRelease < CROWD) this.handshakesSinceRelease++;
    else this.memory.request('heap');
    if (sent === 'unavailable') {
      this.reject(socket, Rejections.SHARD_UNAVAILABLE, {
        detail: `shard ${shard} is restarting`,
        retryAfterS: this.pool.retryAfterSeconds(shard),
      });
    }
  }

  private async answerStats(socket: Socket): Promise<void> {
    const shards = await this.pool.stats();
    const topRooms = shards
      .flatMap((s) => s.topRooms.map((r) => ({ ...r, shard: s.shard })))
      .sort((a, b) => b.sessions - a.sessions)
      .slice(0, 10);
    const body = {
      uptimeSeconds: Math.round(process.uptime()),
      connections: shards.reduce((n, s) => n + (s.connections ?? 0), 0),
      rooms: shards.reduce((n, s) => n + (s.rooms ?? 0), 0),
      shards,
      topRooms,
      memory: process.memoryUsage(),
      federation: federationSummary(this.config, shards),
    };
    endWithResponse(socket, httpResponse(200, JSON.stringify(body, null, 2) + '\n', {}, 'application/json'));
  }

  private logRejection(level: 'info' | 'warn', fields: LogFields): void {
    const allowed = this.rejections.take(fields);
    if (allowed !== null) this.log[level]('handshake_rejected', allowed);
  }

  /** Answer a refusal from the table; `handshake` = count it among refused handshakes (/metrics). */
  private reject(socket: Socket, rejection: Rejection, details: RejectionDetails = {}, handshake = true): void {
    if (handshake) this.pool.primaryMetrics.handshake(rejection.status);
    const { status, reason } = rejection;
    this.logRejection('info', { status, reason, ...(details.detail ? { detail: details.detail } : {}), remote: socket.remoteAddress });
    endWithResponse(socket, rejectionResponse(rejection, details));
  }
}

/**
 * /stats' federation block: this node, and every peer node any shard hears,
 * with the freshest heartbeat over shards (null without --nats-url).
 */
function federationSummary(config: ServeConfig, shards: ShardStats[]): object | null {
  if (config.natsUrls.length === 0) return null;
  const peers = new Map<string, { nodeId: string; region: string; lastHeartbeatMsAgo: number }>();
  let connectedShards = 0;
  let remoteSessions = 0;
  for (const shard of shards) {
    const fed = shard.federation;
    if (fed === null) continue;
    if (fed.connected) connectedShards++;
    remoteSessions += fed.remoteSessions;
    for (const peer of fed.peers) {
      const known = peers.get(peer.nodeId);
      if (known === undefined || peer.lastHeartbeatMsAgo < known.lastHeartbeatMsAgo) {
        peers.set(peer.nodeId, { nodeId: peer.nodeId, region: peer.region, lastHeartbeatMsAgo: peer.lastHeartbeatMsAgo });
      }
    }
  }
  return { nodeId: config.nodeId, region: config.region, connectedShards, remoteSessions, peers: [...peers.values()] };
}
