/**
 * Real WebSocket clients (the `ws` package) with an ordered inbox, so tests
 * can assert the exact sequence of frames a session receives.
 */
import { connect as netConnect } from 'node:net';
import type { Scope } from './scope.ts';
import WebSocket from 'ws';
import { ACCESS_TOKEN_COOKIE, SHARD_HEADER, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } from '../../src/protocol/events.ts';

export interface Frame {
  type: string;
  [key: string]: any;
}

export interface ConnectOptions {
  token?: string;
  /** How the token travels (default cookie, as browsers do); `protocol` offers `moodio.token.<jwt>` first, then `moodio.v1`. */
  via?: 'cookie' | 'bearer' | 'protocol';
  /** Sec-WebSocket-Protocol values to offer (added after a `via: 'protocol'` token). */
  protocols?: string[];
  headers?: Record<string, string>;
  /** Extra `ws` client options (e.g. `autoPong: false`). */
  wsOptions?: WebSocket.ClientOptions;
}

/** A handshake the server refused with an HTTP status. */
export class HandshakeRejected extends Error {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  constructor(status: number, headers: Record<string, string | string[] | undefined>, body: string) {
    super(`handshake rejected with ${status}: ${body.trim()}`);
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
}

export class TestClient {
  readonly ws: WebSocket;
  readonly shard: number;
  private readonly inbox: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(ws: WebSocket, shard: number) {
    this.ws = ws;
    this.shard = shard;
    ws.on('message', (data, isBinary) => {
      const frame = isBinary ? { type: '<binary>' } : (JSON.parse(data.toString()) as Frame);
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve(frame);
      } else {
        this.inbox.push(frame);
      }
    });
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  /** The next frame received, in order. */
  next(timeoutMs = 5000): Promise<Frame> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject,
      };
    });
  }

  /** The next frame, which must have `type`. */
  async expect(type: string, timeoutMs = 5000): Promise<Frame> {
    const frame = await this.next(timeoutMs);
    if (frame.type !== type) throw new Error(`expected a ${type} frame, got ${JSON.stringify(frame)}`);
    return frame;
  }

  send(value: unknown): void {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }

  /** Frames received and not yet read. */
  get pending(): number {
    return this.inbox.length;
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close();
    return this.closed;
  }
}

/** Open a session; resolves after the upgrade, rejects with {@link HandshakeRejected}. */
export function connect(t: Scope, url: string, options: ConnectOptions = {}): Promise<TestClient> {
  const headers: Record<string, string> = { ...options.headers };
  const protocols = [...(options.protocols ?? [])];
  if (options.token !== undefined) {
    if (options.via === 'bearer') headers.authorization = `Bearer ${options.token}`;
    else if (options.via === 'protocol') protocols.unshift(TOKEN_SUBPROTOCOL_PREFIX + options.token, SUBPROTOCOL);
    else headers.cookie = `${ACCESS_TOKEN_COOKIE}=${options.token}`;
  }
  const ws = new WebSocket(url, protocols, { headers, perMessageDeflate: false, ...options.wsOptions });
  return new Promise((resolve, reject) => {
    let shard = -1;
    ws.once('upgrade', (res) => {
      shard = Number(res.headers[SHARD_HEADER]);
    });
    ws.once('open', () => {
      const client = new TestClient(ws, shard);
      t.after(() => {
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
      });
      resolve(client);
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => reject(new HandshakeRejected(res.statusCode ?? 0, res.headers, body)));
      res.on('error', () => reject(new HandshakeRejected(res.statusCode ?? 0, res.headers, body)));
    });
    ws.once('error', reject);
  });
}

/** Open a session and read its `room_joined`. */
export async function join(t: Scope, url: string, options: ConnectOptions): Promise<{ client: TestClient; joined: Frame }> {
  const client = await connect(t, url, options);
  const joined = await client.expect('room_joined');
  return { client, joined };
}

export interface RawResponse {
  status: number;
  head: string;
  headers: Record<string, string>;
  body: string;
  /** Every byte received, as latin1. */
  raw: string;
}

export interface RawOptions {
  /** Pause between writes (to model slow or fragmented clients). */
  gapMs?: number;
  /** Stop reading once this holds for what was received (default: read until the server closes). */
  until?: (raw: string) => boolean;
  /** Half-close after the last write (the client hangs up mid-request). */
  end?: boolean;
  /** Local address to connect from (any of 127.0.0.0/8 on loopback), to be another client address. */
  localAddress?: string;
}

/** Until-condition for an upgrade: the 101 head and the first frame, `room_joined`, arrived. */
export const untilJoined = (raw: string): boolean => raw.includes('"type":"room_joined"');

/** Send raw bytes in order and read the answer until the server closes (or `until`). */
export function rawRequest(port: number, writes: (string | Buffer)[], options: RawOptions = {}): Promise<RawResponse> {
  const { gapMs = 0, until, end = false, localAddress } = options;
  return new Promise((resolve, reject) => {
    const socket = netConnect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (until?.(Buffer.concat(chunks).toString('latin1'))) socket.destroy();
    });
    socket.on('error', (err) => {
      if (chunks.length === 0) reject(err);
    });
    socket.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const end = raw.indexOf('\r\n\r\n');
      const head = end === -1 ? raw : raw.slice(0, end);
      const [statusLine, ...lines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      const status = /^HTTP\/1\.1 (\d{3})/.exec(statusLine ?? '')?.[1];
      resolve({ status: status ? Number(status) : 0, head, headers, body: end === -1 ? '' : raw.slice(end + 4), raw });
    });
    socket.once('connect', async () => {
      for (let i = 0; i < writes.length; i++) {
        if (i > 0 && gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
        if (socket.destroyed) return;
        socket.write(writes[i]!);
      }
      if (end && !socket.destroyed) socket.end();
    });
  });
}

/** A valid WebSocket upgrade request head for `path`. */
export function upgradeHead(path: string, extra: Record<string, string> = {}): string {
  const headers: Record<string, string> = {
    Host: '127.0.0.1',
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version': '13',
    ...extra,
  };
  return `GET ${path} HTTP/1.1\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;
}
