/**
 * The shard worker threads: starting them, handing them sockets, restarting
 * the ones that die, and draining them on shutdown.
 *
 * A shard that dies loses its sockets (their clients reconnect); the others
 * never notice. While a shard is down, connections routed to it are refused
 * with 503 + Retry-After instead of waiting, so clients retry on their own.
 */
import type { Socket } from 'node:net';
import { MessageChannel, Worker } from 'node:worker_threads';
import type { ServeConfig } from '../config.ts';
import { withDeadline } from '../deadline.ts';
import { RelayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ApiOutcome, ApiRequest } from '../protocol/api.ts';
import type {
  ApiRequestMessage,
  ConnectionMessage,
  DrainMessage,
  LinkPortMessage,
  RestartMessage,
  RoomSize,
  StopMessage,
  ShardToPrimary,
  ShardWorkerData,
  StatsReply,
} from '../protocol/messages.ts';
import { createMetricsBuffer, GAUGES, Metric, MetricsSlot } from '../protocol/metrics.ts';
import { createUserConnectionsBuffer, UserConnections } from '../protocol/user-connections.ts';

/** First restart delay after a crash; doubled per consecutive crash. */
export const RESTART_BASE_MS = 100;
/** Longest restart delay. */
export const RESTART_MAX_MS = 10_000;
/** A shard that lived this long resets the backoff. */
export const STABLE_AFTER_MS = 30_000;
/**
 * Longest an admin terminate waits for the shard to close its sessions with
 * 1012 before stopping it: enough for the close handshakes of a healthy
 * shard, short for an operator whose shard is wedged (and never answers).
 */
export const TERMINATE_GRACE_MS = 1000;
/** After a drain, how long a shard may take to flush and close its bus link before it is terminated. */
export const STOP_TIMEOUT_MS = 2000;
/** Beyond a phase's own bound, how long the pool waits for the shards' reports (a turn of each thread, the messages). */
const REPORT_SLACK_MS = 250;
/** A drained shard's last wait, for the close handlers of the sessions it cut at its deadline (shard.ts CLOSE_FLUSH_MS). */
const CUT_HANDLERS_MS = 250;

/**
 * Young-generation cap of a shard isolate (V8 sizes it as 3 semi-spaces).
 * V8 grows the young generation to its 16 MiB-semi-space maximum under a
 * connect burst and keeps it committed; at 12 MB (4 MiB semi-spaces) the
 * RSS cost of 10,000 idle sessions fell from 14.2 to ~8.4 KiB each
 * (bench/connections.ts), and short-lived handshake/broadcast garbage is
 * still collected by cheap scavenges.
 */
export const YOUNG_GENERATION_MB = 12;

type ShardState = 'starting' | 'ready' | 'down' | 'stopping' | 'stopped';

interface Shard {
  id: number;
  worker: Worker | null;
  state: ShardState;
  startedAt: number;
  /** Crashes since the shard was last stable. */
  crashes: number;
  /** Stopped on purpose (admin endpoint): its exit is not a crash. */
  terminating: boolean;
  restarts: number;
  restartAt: number;
  restartTimer: NodeJS.Timeout | null;
  onReady: (() => void) | null;
  onDrained: (() => void) | null;
  statsWaiters: Map<number, (reply: StatsReply) => void>;
  /** Server API requests sent to this worker, by id, waiting for its reply. */
  apiWaiters: Map<string, (reply: ApiOutcome | 'exited') => void>;
}

export interface ShardPoolOptions {
  config: ServeConfig;
  /** The shard worker entry module. */
  workerUrl: URL;
  log: Logger;
  /** A shard reported that the process cannot go on (FatalMessage). */
  onFatal?: (code: string, message: string) => void;
}

export type DispatchResult = 'sent' | 'unavailable';

/**
 * What became of a server API request sent to a shard: its outcome; `exited`
 * when the worker died first (its sessions went with it); `timeout` when it
 * did not answer in time (it may have applied the request).
 */
export type ApiResult = ApiOutcome | 'exited' | 'timeout';

export interface ShardStats {
  shard: number;
  state: string;
  restarts: number;
  connections: number | null;
  rooms: number | null;
  topRooms: RoomSize[];
  /** The shard isolate's memory (heap in use, external, array buffers), null when it did not answer. */
  memory: StatsReply['memory'] | null;
  federation: StatsReply['federation'];
}

export class ShardPool {
  private readonly shards: Shard[];
  private readonly options: ShardPoolOptions;
  private stopping = false;
  private nextStatsId = 1;
  /** Metrics slots: one per shard, then the primary's. */
  readonly metrics: SharedArrayBuffer;
  /** The primary's own slot. */
  readonly primaryMetrics: MetricsSlot;
  private readonly userConnections: SharedArrayBuffer;
  private readonly users: UserConnections;

  constructor(options: ShardPoolOptions) {
    this.options = options;
    this.metrics = createMetricsBuffer(options.config.workers);
    this.primaryMetrics = new MetricsSlot(this.metrics, options.config.workers);
    this.userConnections = createUserConnectionsBuffer(options.config.workers);
    this.users = new UserConnections(this.userConnections, options.config.workers, -1);
    this.shards = Array.from({ length: options.config.workers }, (_, id) => ({
      id,
      worker: null,
      state: 'stopped' as ShardState,
      startedAt: 0,
      crashes: 0,
      terminating: false,
      restarts: 0,
      restartAt: 0,
      restartTimer: null,
      onReady: null,
      onDrained: null,
      statsWaiters: new Map(),
      apiWaiters: new Map(),
    }));
  }

  get size(): number {
    return this.shards.length;
  }

  /** Start every shard; resolves when all are ready, rejects if one dies first. */
  start(): Promise<void> {
    return Promise.all(
      this.shards.map(
        (shard) =>
          new Promise<void>((resolve, reject) => {
            this.spawn(shard, resolve, (code) => reject(new RelayError('ERR_SHARD_START', `shard ${shard.id} exited with code ${code} before it was ready`)));
          }),
      ),
    ).then(() => undefined);
  }

  private spawn(shard: Shard, onReady?: () => void, onEarlyExit?: (code: number) => void): void {
    const { config, workerUrl, log } = this.options;
    const data: ShardWorkerData = { shardId: shard.id, config, metrics: this.metrics, userConnections: this.userConnections };
    const worker = new Worker(workerUrl, {
      workerData: data,
      name: `moodio-rt shard ${shard.id}`,
      resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
    });
    shard.worker = worker;
    shard.state = 'starting';
    shard.startedAt = Date.now();
    shard.onReady = onReady ?? null;
    this.link(shard, worker);

    worker.on('message', (msg: ShardToPrimary) => {
      if (msg.type === 'ready') {
        shard.state = this.stopping ? 'stopping' : 'ready';
        log.info('shard_ready', { shard: shard.id, threadId: worker.threadId, restarts: shard.restarts });
        const cb = shard.onReady;
        shard.onReady = null;
        cb?.();
      } else if (msg.type === 'stats') {
        const waiter = shard.statsWaiters.get(msg.id);
        shard.statsWaiters.delete(msg.id);
        waiter?.(msg);
      } else if (msg.type === 'fatal') {
        log.error('fatal', { shard: shard.id, code: msg.code, message: msg.message });
        this.options.onFatal?.(msg.code, msg.message);
      } else if (msg.type === 'api') {
        const waiter = shard.apiWaiters.get(msg.id);
        shard.apiWaiters.delete(msg.id);
        waiter?.(msg.outcome);
      } else if (msg.type === 'drained') {
        log.info('shard_drained', { shard: shard.id, closed: msg.closed });
        const cb = shard.onDrained;
        shard.onDrained = null;
        cb?.();
      }
    });
    worker.on('error', (err) => {
      log.error('shard_error', { shard: shard.id, err });
      // It is dying: stop handing it sockets before 'exit' arrives.
      if (shard.worker === worker && shard.state === 'ready') shard.state = 'down';
    });
    worker.on('exit', (code) => {
      if (shard.worker !== worker) return;
      shard.worker = null;
      // Its sessions and rooms are gone; its counters stay (monotonic).
      const slot = new MetricsSlot(this.metrics, shard.id);
      for (const gauge of GAUGES) slot.set(gauge, 0);
      this.users.clearShard(shard.id);
      for (const waiter of shard.apiWaiters.values()) waiter('exited');
      shard.apiWaiters.clear();
      const wasReady = shard.onReady === null;
      const drained = shard.onDrained;
      shard.onDrained = null;
      drained?.();
      if (this.stopping || shard.state === 'stopping') {
        shard.state = 'stopped';
        log.info('shard_exit', { shard: shard.id, code });
        return;
      }
      if (!wasReady && onEarlyExit) {
        shard.state = 'stopped';
        onEarlyExit(code);
        return;
      }
      this.scheduleRestart(shard, code);
    });
  }

  /**
   * The in-process link (shard/shard-link.ts): a MessageChannel between the
   * new worker and every other running one, each end transferred to its
   * shard. A restarted shard thus gets fresh ports, and its peers, handed a
   * new port for it, drop the old one and what they learnt through it.
   * Messages posted to a worker that is still starting wait for it.
   */
  private link(shard: Shard, worker: Worker): void {
    for (const peer of this.shards) {
      if (peer === shard || peer.worker === null) continue;
      const { port1, port2 } = new MessageChannel();
      const toPeer: LinkPortMessage = { type: 'link', peer: shard.id, port: port1 };
      const toShard: LinkPortMessage = { type: 'link', peer: peer.id, port: port2 };
      peer.worker.postMessage(toPeer, [port1]);
      worker.postMessage(toShard, [port2]);
    }
  }

  private scheduleRestart(shard: Shard, code: number): void {
    const lived = Date.now() - shard.startedAt;
    const requested = shard.terminating;
    shard.terminating = false;
    if (lived >= STABLE_AFTER_MS) shard.crashes = 0;
    // An admin terminate is no sign of a crash loop: base delay, and the crash count stays.
    const delay = requested ? RESTART_BASE_MS : Math.min(RESTART_BASE_MS * 2 ** shard.crashes, RESTART_MAX_MS);
    if (!requested) shard.crashes++;
    shard.state = 'down';
    shard.restartAt = Date.now() + delay;
    const fields = { shard: shard.id, code, livedMs: lived, restartInMs: delay, reason: requested ? 'terminated' : 'crashed' };
    if (requested) this.options.log.warn('shard_exit', fields);
    else this.options.log.error('shard_exit', fields);
    shard.restartTimer = setTimeout(() => {
      shard.restartTimer = null;
      if (this.stopping) return;
      shard.restarts++;
      this.primaryMetrics.add(Metric.SHARD_RESTARTS);
      this.spawn(shard);
    }, delay);
  }

  /**
   * Hand a socket whose head was read to its shard. The socket is detached
   * from this thread on success; on `unavailable` it is still ours to answer.
   */
  dispatch(shardId: number, socket: Socket, bytes: Buffer, headLength: number, remoteAddress: string): DispatchResult {
    const shard = this.shards[shardId]!;
    if (shard.state !== 'ready' || shard.worker === null) return 'unavailable';
    const message: ConnectionMessage = {
      type: 'connection',
      socket,
      bytes,
      headLength,
      remoteAddress,
    };
    try {
      // The socket object itself is the transferable (Node ≥ 26.10).
      shard.worker.postMessage(message, [socket as unknown as import('node:worker_threads').Transferable]);
    } catch (err) {
      this.options.log.error('dispatch_failed', { shard: shardId, err });
      return 'unavailable';
    }
    return 'sent';
  }

  /** Ask every running shard for its sessions and largest rooms; a shard that does not answer within `timeoutMs` is reported without them. */
  async stats(timeoutMs = 1000): Promise<ShardStats[]> {
    return Promise.all(
      this.shards.map(async (shard) => {
        const base: ShardStats = {
          shard: shard.id,
          state: shard.state,
          restarts: shard.restarts,
          connections: null,
          rooms: null,
          topRooms: [],
          memory: null,
          federation: null,
        };
        const worker = shard.worker;
        if (shard.state !== 'ready' || worker === null) return base;
        const id = this.nextStatsId++;
        const reply = await new Promise<StatsReply | null>((resolve) => {
          const timer = setTimeout(() => {
            shard.statsWaiters.delete(id);
            resolve(null);
          }, timeoutMs);
          shard.statsWaiters.set(id, (r) => {
            clearTimeout(timer);
            resolve(r);
          });
          worker.postMessage({ type: 'stats', id });
        });
        return reply === null
          ? base
          : { ...base, connections: reply.connections, rooms: reply.rooms, topRooms: reply.topRooms, memory: reply.memory, federation: reply.federation };
      }),
    );
  }

  /** True while the shard takes connections and API requests. */
  isReady(shardId: number): boolean {
    const shard = this.shards[shardId]!;
    return shard.state === 'ready' && shard.worker !== null;
  }

  /**
   * Send a server API request to a shard that {@link isReady} and wait for
   * what it did, at most `timeoutMs`.
   */
  api(shardId: number, request: ApiRequest, timeoutMs: number): Promise<ApiResult> {
    const shard = this.shards[shardId]!;
    const worker = shard.worker;
    if (shard.state !== 'ready' || worker === null) return Promise.resolve('exited');
    return new Promise<ApiResult>((resolve) => {
      const timer = setTimeout(() => {
        shard.apiWaiters.delete(request.id);
        resolve('timeout');
      }, timeoutMs);
      shard.apiWaiters.set(request.id, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      const message: ApiRequestMessage = { type: 'api', request };
      worker.postMessage(message);
    });
  }

  /** Whether `shardId`'s NATS connection is up (its FEDERATION_CONNECTED gauge in the shared metrics). */
  federationConnected(shardId: number): boolean {
    return new MetricsSlot(this.metrics, shardId).values[Metric.FEDERATION_CONNECTED] === 1;
  }

  /** Seconds a client should wait before retrying a shard that is down. */
  retryAfterSeconds(shardId: number): number {
    const shard = this.shards[shardId]!;
    const wait = shard.state === 'down' ? shard.restartAt - Date.now() : 0;
    return Math.max(1, Math.ceil(wait / 1000) + 1);
  }

  /**
   * Stop a shard (admin endpoint) and restart it after the base delay. Its
   * sessions are first closed with 1012 (service restart), so clients
   * reconnect at once instead of seeing an abnormal 1006; the worker is
   * terminated when the shard reports, or after {@link TERMINATE_GRACE_MS}
   * if it does not (a wedged shard is why an operator terminates one).
   */
  terminate(shardId: number): boolean {
    const shard = this.shards[shardId];
    const worker = shard?.worker;
    if (!shard || !worker) return false;
    if (shard.terminating) return true;
    shard.terminating = true;
    // No more sockets for it: one posted between now and 'exit' would be lost.
    shard.state = 'down';
    shard.restartAt = Date.now() + TERMINATE_GRACE_MS + RESTART_BASE_MS;
    const stop = (): void => {
      clearTimeout(timer);
      if (shard.onDrained === stop) shard.onDrained = null;
      if (shard.worker === worker) void worker.terminate();
    };
    const timer = setTimeout(stop, TERMINATE_GRACE_MS);
    shard.onDrained = stop;
    const message: RestartMessage = { type: 'restart', timeoutMs: TERMINATE_GRACE_MS };
    worker.postMessage(message);
    return true;
  }

  /**
   * Shutdown, in two phases. First every shard closes its sessions with 1012,
   * spread over `spreadMs`, and reports `drained` once all are closed (at
   * most `timeoutMs` after its last close frame). Meanwhile every shard keeps
   * its bus link and its links to the other shards: a session still open on
   * one shard may be in a room another owns. Once all reported (or their
   * deadline passed), each shard is told to stop: it closes its links and
   * ends its thread (exit code 0). The ones still running after
   * {@link STOP_TIMEOUT_MS} are terminated (their exit is logged with code 1:
   * they did not drain).
   *
   * It waits for 'exit', not for 'drained', before terminating: terminating
   * a worker that is already on its way out could replace its exit code 0
   * with 1.
   */
  async drain(timeoutMs: number, spreadMs: number): Promise<void> {
    this.stopping = true;
    const drained: Promise<unknown>[] = [];
    const exits: Promise<unknown>[] = [];
    const draining: { shard: Shard; worker: Worker }[] = [];
    for (const shard of this.shards) {
      if (shard.restartTimer) clearTimeout(shard.restartTimer);
      shard.restartTimer = null;
      const worker = shard.worker;
      if (!worker) {
        shard.state = 'stopped';
        continue;
      }
      shard.state = 'stopping';
      // Not events.once: it would reject on the 'error' that precedes a crashed worker's exit.
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      exits.push(exited);
      // Being terminated: it is closing its sessions already, and exits when stopped.
      if (shard.terminating) continue;
      drained.push(
        Promise.race([
          exited,
          new Promise<void>((resolve) => {
            shard.onDrained = resolve;
          }),
        ]),
      );
      draining.push({ shard, worker });
      const message: DrainMessage = { type: 'drain', timeoutMs, spreadMs };
      worker.postMessage(message);
    }
    await withDeadline(Promise.all(drained), spreadMs + timeoutMs + CUT_HANDLERS_MS + REPORT_SLACK_MS);
    const stop: StopMessage = { type: 'stop', timeoutMs: STOP_TIMEOUT_MS };
    for (const { shard, worker } of draining) if (shard.worker === worker) worker.postMessage(stop);
    await withDeadline(Promise.all(exits), STOP_TIMEOUT_MS + REPORT_SLACK_MS);
    await Promise.all(this.shards.map((s) => s.worker?.terminate()));
  }
}
