/**
 * `GET /ws/ping` (issue 20): an unauthenticated WebSocket that echoes text
 * frames, for the app to measure its latency to a region. It runs in a
 * shard, not the primary, which stays off every message path; the primary
 * sends it to the shard `fnv1a32(address key) mod workers`, so all of one
 * client address's ping sockets are counted by one thread.
 *
 * Nobody is authenticated here, so every resource it takes is bounded:
 *
 * - before it gets here, the primary's per-address limits (pending heads,
 *   handshake rate) apply as on every route;
 * - sockets: at most --max-ping-per-address per client address (exact: one
 *   shard holds them all) and --max-ping-sockets per process (the sum of
 *   every shard's gauge in the shared metrics; two shards admitting at the
 *   same instant may pass it by one each, as --max-connections-per-user);
 * - frames: at most {@link PING_MAX_MESSAGE_BYTES} (larger closes with 1009,
 *   by `ws`), {@link PING_FRAME_BURST} at once then
 *   {@link PING_FRAMES_PER_SECOND} (faster closes with 1008);
 * - echoes not yet read by the client: over {@link PING_MAX_BUFFERED_BYTES}
 *   the socket is not read until they drain, so a client that never reads
 *   holds only that much;
 * - idle sockets: pinged every --ping-interval like sessions, and one that
 *   answered nothing since the previous ping is terminated.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { selectProtocol } from '../auth/credentials.ts';
import { LogBudget, REJECTION_LOG_PER_SECOND, type Logger } from '../log.ts';
import { addressKey, normalizeAddress } from '../protocol/address.ts';
import { CloseCode, PING_FRAME_BURST, PING_FRAMES_PER_SECOND, PING_MAX_MESSAGE_BYTES, SHARD_HEADER } from '../protocol/events.ts';
import { parseRequestHead } from '../protocol/http.ts';
import { endWithResponse } from '../linger.ts';
import type { ConnectionMessage } from '../protocol/messages.ts';
import { Metric, PingMetric, sumOverShards, type MetricsSlot } from '../protocol/metrics.ts';
import { PING_PATH } from '../protocol/paths.ts';
import { rejectionResponse, Rejections, type Rejection, type RejectionDetails } from '../protocol/rejections.ts';
import { adoptSocket } from './adopt-socket.ts';

/** Echoes waiting in one ping socket's buffer before it stops being read. */
export const PING_MAX_BUFFERED_BYTES = 16 * 1024;
/** How long a ping socket closed by the server may take to finish the closing handshake. */
const CLOSE_GRACE_MS = 2000;

export interface PingRouteOptions {
  shardId: number;
  workers: number;
  log: Logger;
  metrics: MetricsSlot;
  /** Every thread's metrics: the process-wide bound sums the shards' gauges. */
  allMetrics: SharedArrayBuffer;
  maxSockets: number;
  maxPerAddress: number;
  pingIntervalMs: number;
  /** False once the shard drains: new ping sockets get 503. */
  accepting: () => boolean;
}

// `GET /ws/ping` then a space or a query: the primary routed the head on its path, so the request line tells.
const REQUEST_LINE = Buffer.from(`GET ${PING_PATH}`, 'latin1');
const SPACE = 0x20;
const QUERY = 0x3f;

/** Whether a handed-over head is a `/ws/ping` request (a look at its request line, not a parse). */
export function isPingHead(bytes: Uint8Array): boolean {
  const next = bytes[REQUEST_LINE.length];
  if (next !== SPACE && next !== QUERY) return false;
  for (let i = 0; i < REQUEST_LINE.length; i++) if (bytes[i] !== REQUEST_LINE[i]) return false;
  return true;
}

class PingSocket {
  readonly ws: WebSocket;
  readonly socket: Socket;
  /** Heard from (a frame or a pong) since the last liveness ping. */
  alive = true;
  tokens = PING_FRAME_BURST;
  refilledAt = Date.now();
  /** Not read until its echoes drain. */
  held = false;

  constructor(ws: WebSocket, socket: Socket) {
    this.ws = ws;
    this.socket = socket;
  }

  /** Take a frame's token; false when the socket is over its rate. */
  take(now: number): boolean {
    this.tokens = Math.min(PING_FRAME_BURST, this.tokens + ((now - this.refilledAt) * PING_FRAMES_PER_SECOND) / 1000);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}

function swallow(): void {}

function terminateIfOpen(ping: PingSocket): void {
  if (!ping.socket.destroyed) ping.ws.terminate();
}

export class PingRoute {
  private readonly options: PingRouteOptions;
  private readonly wss: WebSocketServer;
  /** Upgraded ping sockets (for the liveness ping and the drain). */
  private readonly sockets = new Set<PingSocket>();
  /** Ping sockets admitted and not yet closed, upgrading ones included. */
  private admitted = 0;
  private readonly perAddress = new Map<string, number>();
  private readonly pinger: NodeJS.Timeout;
  /** Refusals are caused at will by peers: logged at a bounded rate. */
  private readonly rejections = new LogBudget(REJECTION_LOG_PER_SECOND);

  constructor(options: PingRouteOptions) {
    this.options = options;
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      // moodio.v1 or nothing, as on the other routes: an offered token is never echoed.
      handleProtocols: selectProtocol,
      maxPayload: PING_MAX_MESSAGE_BYTES,
      // A message of more fragments than the burst would cost more parses than it pays for.
      maxFragments: PING_FRAME_BURST,
    });
    this.wss.on('headers', (headers: string[]) => headers.push(`${SHARD_HEADER}: ${options.shardId}`));
    this.pinger = setInterval(() => this.checkLiveness(), options.pingIntervalMs);
    this.pinger.unref();
  }

  /** Ping sockets of this shard, upgrading ones included. */
  get size(): number {
    return this.admitted;
  }

  /** A `/ws/ping` connection handed over by the primary: refuse it or upgrade it, synchronously. */
  accept(message: ConnectionMessage): void {
    const socket = adoptSocket(message.socket);
    socket.on('error', swallow);
    const bytes = Buffer.from(message.bytes.buffer, message.bytes.byteOffset, message.bytes.byteLength);
    const parsed = parseRequestHead(bytes, message.headLength);
    // The primary validated this head already; reaching here is a bug.
    if (!parsed.ok) return this.reject(socket, Rejections.MALFORMED_HEAD, message.remoteAddress);
    if (!this.options.accepting()) return this.reject(socket, Rejections.SHUTTING_DOWN, message.remoteAddress);
    const address = addressKey(normalizeAddress(message.remoteAddress));
    const fromAddress = this.perAddress.get(address) ?? 0;
    if (fromAddress >= this.options.maxPerAddress) {
      this.options.metrics.add(PingMetric.REFUSED_ADDRESS);
      return this.reject(socket, Rejections.TOO_MANY_PINGS_FROM_ADDRESS, message.remoteAddress);
    }
    if (sumOverShards(this.options.allMetrics, this.options.workers, PingMetric.SOCKETS) >= this.options.maxSockets) {
      this.options.metrics.add(PingMetric.REFUSED_PROCESS);
      return this.reject(socket, Rejections.PING_FULL, message.remoteAddress);
    }
    const { head } = parsed;
    // Counted before the 101 is written: a client that opens its next ping
    // the moment this one opens must find it counted, on any shard. The
    // socket's close (an aborted upgrade too) gives the place back.
    this.count(address, 1);
    socket.once('close', () => this.count(address, -1));
    // `ws` reads method, url and headers; nothing else of an IncomingMessage.
    const req = { method: head.method, url: head.url, headers: head.headers, socket } as unknown as IncomingMessage;
    this.wss.handleUpgrade(req, socket as Duplex, bytes.subarray(message.headLength), (ws) => {
      socket.off('error', swallow);
      this.open(new PingSocket(ws, socket));
    });
  }

  /** Ping sockets of `address` and of this shard (the gauge the process-wide bound sums). */
  private count(address: string, delta: 1 | -1): void {
    const left = (this.perAddress.get(address) ?? 0) + delta;
    if (left === 0) this.perAddress.delete(address);
    else this.perAddress.set(address, left);
    this.admitted += delta;
    this.options.metrics.set(PingMetric.SOCKETS, this.admitted);
  }

  private open(ping: PingSocket): void {
    const { ws } = ping;
    this.sockets.add(ping);
    this.options.metrics.handshake(101);
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(ping, data, isBinary));
    ws.on('ping', () => this.onFrame(ping));
    ws.on('pong', () => {
      ping.alive = true;
    });
    // ws reports a frame over 512 bytes (it closes with 1009 itself) and protocol errors here.
    ws.on('error', swallow);
    ping.socket.on('drain', () => {
      if (!ping.held) return;
      ping.held = false;
      ws.resume();
    });
    ws.once('close', () => this.sockets.delete(ping));
  }

  /** A frame from the client: true when it may be answered. */
  private onFrame(ping: PingSocket): boolean {
    ping.alive = true;
    if (ping.ws.readyState !== 1) return false;
    if (ping.take(Date.now())) return true;
    ping.ws.close(CloseCode.POLICY_VIOLATION, 'rate limit exceeded');
    ping.ws.pause();
    setTimeout(terminateIfOpen, CLOSE_GRACE_MS, ping).unref();
    return false;
  }

  private onMessage(ping: PingSocket, data: Buffer, isBinary: boolean): void {
    if (!this.onFrame(ping)) return;
    if (isBinary) {
      ping.ws.close(CloseCode.UNSUPPORTED_DATA, 'text frames only');
      setTimeout(terminateIfOpen, CLOSE_GRACE_MS, ping).unref();
      return;
    }
    // ws has checked the text is UTF-8: it goes back as the same bytes.
    ping.ws.send(data, { binary: false });
    this.options.metrics.add(PingMetric.ECHOED);
    if (!ping.held && ping.socket.writableLength > PING_MAX_BUFFERED_BYTES) {
      ping.held = true;
      ping.ws.pause();
    }
  }

  /** As for sessions: a ping socket that answered nothing since the previous ping is terminated. */
  private checkLiveness(): void {
    for (const ping of this.sockets) {
      if (ping.ws.readyState !== 1) continue;
      if (!ping.alive) {
        this.options.metrics.add(Metric.CLOSED_LIVENESS);
        ping.ws.terminate();
        continue;
      }
      ping.alive = false;
      ping.ws.ping();
    }
  }

  /** The shard drains: close every ping socket with `code`, and cut those still open {@link CLOSE_GRACE_MS} later. */
  close(code: number, reason: string): void {
    clearInterval(this.pinger);
    for (const ping of this.sockets) {
      ping.ws.close(code, reason);
      setTimeout(terminateIfOpen, CLOSE_GRACE_MS, ping).unref();
    }
  }

  private reject(socket: Socket, rejection: Rejection, remote: string, details: RejectionDetails = {}): void {
    this.options.metrics.handshake(rejection.status);
    const fields = this.rejections.take({ status: rejection.status, reason: rejection.reason, remote, path: PING_PATH });
    if (fields !== null) this.options.log.info('handshake_rejected', fields);
    endWithResponse(socket, rejectionResponse(rejection, { ...details, headers: { [SHARD_HEADER]: String(this.options.shardId), ...details.headers } }));
  }
}
