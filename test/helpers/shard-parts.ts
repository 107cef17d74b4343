/**
 * The parts of a shard, in process, for unit tests of the relay and the
 * backpressure policy: a real RoomIndex, WriteCoalescer, Backpressure,
 * RateLimiter and Relay, wired as src/shard/shard.ts wires them, and real
 * Sessions over real WebSocket connections on loopback (a `ws` server with
 * no shard behind it, and a `ws` client that keeps every frame as the text
 * it arrived as). The test drives the relay by calling it, as the shard's
 * socket handlers would; only the logger is a stand-in, recording every
 * call, debug included, so that tests can tell what was logged and what
 * was merely built.
 */
import { createServer, type IncomingMessage } from 'node:http';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TestContext } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import type { LogLevel } from '../../src/config.ts';
import type { LogFields, Logger } from '../../src/log.ts';
import { DEFAULT_MUTATION_TYPES, type Permission } from '../../src/protocol/events.ts';
import { createMetricsBuffer, Metric, MetricsSlot, sumOverShards } from '../../src/protocol/metrics.ts';
import { Backpressure, Delivery, type BackpressureOptions, type FrameSource } from '../../src/shard/backpressure.ts';
import { RateLimiter, type RateLimitOptions } from '../../src/shard/rate-limiter.ts';
import { Relay, type RelayBus } from '../../src/shard/relay.ts';
import { RoomIndex } from '../../src/shard/room-index.ts';
import { Session } from '../../src/shard/session.ts';
import { WriteCoalescer } from '../../src/shard/write-coalescer.ts';

export interface LogEntry {
  level: Exclude<LogLevel, 'silent'>;
  event: string;
  fields: LogFields | undefined;
}

/** A Logger that records every call; `enabled('debug')` answers `debug`. */
export function recordingLogger(debug: boolean): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const record = (level: LogEntry['level']) => (event: string, fields?: LogFields) => void entries.push({ level, event, fields });
  return {
    entries,
    debug: record('debug'),
    info: record('info'),
    warn: record('warn'),
    error: record('error'),
    enabled: (level) => level !== 'silent' && (level !== 'debug' || debug),
  };
}

/** The client end of a session: every text frame as received, in order, and the close. */
export class RawClient {
  readonly ws: WebSocket;
  private readonly inbox: string[] = [];
  private waiter: ((text: string) => void) | null = null;
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const text = isBinary ? '<binary>' : data.toString('utf8');
      if (this.waiter !== null) {
        const w = this.waiter;
        this.waiter = null;
        w(text);
      } else {
        this.inbox.push(text);
      }
    });
    this.closed = new Promise((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
  }

  /** The next frame's text; rejects if the connection closes or nothing comes within `timeoutMs`. */
  next(timeoutMs = 2000): Promise<string> {
    const queued = this.inbox.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      void this.closed.then(({ code }) => {
        if (this.waiter === null) return;
        this.waiter = null;
        clearTimeout(timer);
        reject(new Error(`closed with ${code} before the next frame`));
      });
      this.waiter = (text) => {
        clearTimeout(timer);
        resolve(text);
      };
    });
  }

  /** The close, once it comes; rejects if it has not within `timeoutMs` (a server close waits out a 2 s grace at most). */
  waitClosed(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`not closed within ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([this.closed, late]).finally(() => clearTimeout(timer));
  }

  /** The next frame, parsed. */
  async json(): Promise<Record<string, unknown>> {
    return JSON.parse(await this.next()) as Record<string, unknown>;
  }

  /** Frames received and not read yet. */
  get pending(): number {
    return this.inbox.length;
  }

  /** Stop reading the socket (the server's writes pile up in its buffers), or read again. */
  reading(on: boolean): void {
    const socket = (this.ws as unknown as { _socket: Socket })._socket;
    if (on) socket.resume();
    else socket.pause();
  }
}

export interface Member {
  session: Session;
  client: RawClient;
}

export interface OpenOptions {
  desktopId?: string;
  permission?: Permission;
  userId?: string;
  email?: string;
}

export interface PartsOptions {
  /** Defaults: no limit (perSecond 0), burst 10, closeAfterMs 10 s, messageBytes 4096. */
  rateLimit?: Partial<RateLimitOptions>;
  /** Defaults: the server's (1 MiB soft budget, 10 s timeout, 4 MiB hard cap, 256 MiB process cap), the process being this shard and {@link Parts.otherShard}. */
  backpressure?: Partial<Omit<BackpressureOptions, 'onRelease'>>;
  transientTypes?: string[];
  /** The mutation table (default: the protocol's default list, as the server's). */
  mutationTypes?: readonly string[];
  /** Whether the logger has debug on (default false). */
  debug?: boolean;
  /** The relay's link to other nodes (default none, as without --nats-url). */
  bus?: RelayBus;
}

export interface Parts {
  rooms: RoomIndex;
  out: WriteCoalescer<Session>;
  backpressure: Backpressure;
  limiter: RateLimiter;
  relay: Relay;
  metrics: MetricsSlot;
  /** The metrics slot of another shard of the same process (its OUTBOUND_BUFFERED counts against the process cap). */
  otherShard: MetricsSlot;
  log: Logger & { entries: LogEntry[] };
  /** Sessions the backpressure policy cut, in order (from its slow_consumer_close lines), however their rooms heard. */
  readonly cuts: Session[];
  /** Sessions the shard's cut handler took out of their rooms (the sweep's cuts, and those a delivery cut aside), in order. */
  handled: Session[];
  /**
   * Deliver `frame` to `session` as the relay does: a session this cuts
   * leaves its room, then the sessions cut aside meanwhile leave theirs.
   */
  deliver(session: Session, frame: Buffer, transientKey?: string, source?: FrameSource): Delivery;
  /** Calls of onRelease. */
  releases: { count: number };
  /** Open a WebSocket connection and make its Session (not joined to its room). */
  open(firstName: string, options?: OpenOptions): Promise<Member>;
  /** {@link open}, {@link Relay.join}, and read the joiner's room_joined. */
  join(firstName: string, options?: OpenOptions): Promise<Member & { joined: Record<string, unknown> }>;
}

let users = 0;

export async function shardParts(t: TestContext, options: PartsOptions = {}): Promise<Parts> {
  const allMetrics = createMetricsBuffer(2);
  const metrics = new MetricsSlot(allMetrics, 0);
  const otherShard = new MetricsSlot(allMetrics, 1);
  const log = recordingLogger(options.debug ?? false);
  const handled: Session[] = [];
  const releases = { count: 0 };
  const rooms = new RoomIndex();
  const out = new WriteCoalescer<Session>(metrics, { pacing: 'off', paceIntervalMs: 32, paceAbove: 200 });
  const backpressure = new Backpressure(
    {
      maxBufferedBytes: 1024 * 1024,
      slowConsumerTimeoutMs: 10_000,
      maxSessionBacklogBytes: 4 * 1024 * 1024,
      maxOutboundBytes: 256 * 1024 * 1024,
      processOutbound: () => sumOverShards(allMetrics, 2, Metric.OUTBOUND_BUFFERED),
      ...options.backpressure,
      onRelease: () => void releases.count++,
    },
    out,
    metrics,
    log,
  );
  const limiter = new RateLimiter({ perSecond: 0, burst: 10, closeAfterMs: 10_000, messageBytes: 4096, ...options.rateLimit });
  const relay = new Relay({
    rooms,
    out,
    log,
    limiter,
    metrics,
    backpressure,
    transientTypes: new Set(options.transientTypes ?? ['asset_dragging']),
    mutationTypes: new Set(options.mutationTypes ?? DEFAULT_MUTATION_TYPES),
  });
  if (options.bus !== undefined) relay.useBus(options.bus);
  // As the shard registers its handler once every part exists (no multiplexed connections here).
  backpressure.attach((session) => {
    handled.push(session);
    relay.leave(session);
  });

  const wss = new WebSocketServer({ noServer: true, clientTracking: false, perMessageDeflate: false });
  const accepted: ((pair: [WebSocket, Socket]) => void)[] = [];
  const server = createServer();
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    wss.handleUpgrade(req, socket, head, (ws) => accepted.shift()!([ws, socket as Socket]));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const members: Member[] = [];
  const byId = new Map<string, Session>();
  t.after(() => {
    backpressure.stop();
    out.stop();
    for (const { session, client } of members) {
      if (session.reads.resumeTimer !== null) clearTimeout(session.reads.resumeTimer);
      session.ws.terminate();
      client.ws.terminate();
    }
    server.close();
  });

  async function open(firstName: string, opts: OpenOptions = {}): Promise<Member> {
    const pair = new Promise<[WebSocket, Socket]>((resolve) => accepted.push(resolve));
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    const client = new RawClient(ws);
    await once(ws, 'open');
    const [serverWs, socket] = await pair;
    const userId = opts.userId ?? `user-${firstName.toLowerCase()}-${++users}`;
    const session = new Session({
      desktopId: opts.desktopId ?? 'desk-1',
      identity: { userId, firstName, email: opts.email ?? `${firstName.toLowerCase()}@example.com` },
      permission: opts.permission ?? 'editor',
      ws: serverWs,
      socket,
      rate: limiter.acquire(userId, Date.now()),
      outbound: (self) => out.newOutbound(self),
      budget: backpressure.newBudget(),
    });
    const member = { session, client };
    members.push(member);
    byId.set(session.id, session);
    return member;
  }

  async function join(firstName: string, opts: OpenOptions = {}): Promise<Member & { joined: Record<string, unknown> }> {
    const member = await open(firstName, opts);
    relay.join(member.session);
    return { ...member, joined: await member.client.json() };
  }

  function deliver(session: Session, frame: Buffer, transientKey?: string, source?: FrameSource): Delivery {
    const verdict = backpressure.deliver(session, frame, transientKey, source);
    if (verdict === Delivery.CUT) relay.leave(session);
    backpressure.settleCuts();
    return verdict;
  }

  return {
    rooms,
    out,
    backpressure,
    limiter,
    relay,
    metrics,
    otherShard,
    log,
    get cuts() {
      return log.entries.filter((e) => e.event === 'slow_consumer_close').map((e) => byId.get(e.fields!.sessionId as string)!);
    },
    handled,
    releases,
    deliver,
    open,
    join,
  };
}
