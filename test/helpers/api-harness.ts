/**
 * The server API on the primary in process, for tests: a listener that reads
 * each connection's first head as the primary does and hands the socket to
 * an ApiServer, a stand-in for the shard pool whose readiness, bus state and
 * answers the test sets, and a raw HTTP/1.1 client that reads whole
 * responses byte-exact. The harness of test/api-server.unit.test.ts, taken
 * out so that other in-process API tests can use it (that file keeps its own
 * copy: changing it would make its mutation scope re-run every mutant).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { resolveServeConfig, type ServeConfig } from '../../src/config.ts';
import { endWithResponse } from '../../src/linger.ts';
import type { ApiConnection } from '../../src/primary/api-connection.ts';
import { ApiServer } from '../../src/primary/api-server.ts';
import { shardFor } from '../../src/primary/router.ts';
import type { ApiResult, ShardPool } from '../../src/primary/shard-pool.ts';
import type { ApiOutcome, ApiRequest, LiveSession } from '../../src/protocol/api.ts';
import { findHeadEnd, httpResponse, parseRequestHead, type RequestHead } from '../../src/protocol/http.ts';
import { createMetricsBuffer, MetricsSlot } from '../../src/protocol/metrics.ts';
import { recordingLogger } from './shard-parts.ts';

export const KEY = 'api-key-for-unit-tests-0123456789';
export const FEDERATION_KEY = 'f'.repeat(32);

/** The first of `prefix-0`, `prefix-1`, … whose home is `shard` of 2 (the router's hash). */
export function idOn(shard: number, prefix: string): string {
  for (let i = 0; ; i++) if (shardFor(`${prefix}-${i}`, 2) === shard) return `${prefix}-${i}`;
}
/** Desktops whose rooms are on shard 0 and shard 1 of 2. */
export const D0 = idOn(0, 'desk');
export const D1 = idOn(1, 'desk');

export interface Call {
  shard: number;
  request: ApiRequest;
  timeoutMs: number;
}

/** Wait for `condition`, at most 5 s of real time (the test's own timers and Date may be mocked: this polls on setImmediate and performance.now). */
export async function waitFor(condition: () => boolean, what = 'condition'): Promise<void> {
  const deadline = performance.now() + 5000;
  while (!condition()) {
    assert.ok(performance.now() < deadline, `${what}: not met within 5 s`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export const session = (shard: number): LiveSession => ({
  sessionId: `session_${shard}`,
  userId: 'u',
  firstName: 'Ann',
  email: 'ann@example.com',
  desktopId: D0,
  permission: 'editor',
  connectedAt: 1,
  node: 'n',
  shard,
});

/** The shard pool as the API server sees it: two shards, whose state and answers the test sets. */
export class FakePool {
  readonly size = 2;
  readonly primaryMetrics = new MetricsSlot(createMetricsBuffer(0), 0);
  ready = [true, true];
  connected = [true, true];
  retryAfter = [1, 1];
  readonly calls: Call[] = [];
  /** What shard `shard` does with `request` (by default: reached shard + 1, changed shard, and one session for a query). */
  answer: (shard: number, request: ApiRequest) => ApiResult | Promise<ApiResult> = (shard, request) => {
    const outcome: ApiOutcome = { duplicate: false, reached: shard + 1, changed: shard };
    return request.kind === 'presence' || request.kind === 'user_sessions' ? { ...outcome, sessions: [session(shard)] } : outcome;
  };

  isReady(shard: number): boolean {
    return this.ready[shard]!;
  }
  federationConnected(shard: number): boolean {
    return this.connected[shard]!;
  }
  retryAfterSeconds(shard: number): number {
    return this.retryAfter[shard]!;
  }
  api(shard: number, request: ApiRequest, timeoutMs: number): Promise<ApiResult> {
    this.calls.push({ shard, request, timeoutMs });
    return Promise.resolve(this.answer(shard, request));
  }
  /** Resolves once `n` calls were made (within 5 s). */
  callsReach(n: number): Promise<void> {
    return waitFor(() => this.calls.length >= n, `${n} shard calls`);
  }
  metric(m: number): number {
    return this.primaryMetrics.values[m]!;
  }
}

export interface Response {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The body parsed, when it is JSON. */
  json: any;
}

/** A raw HTTP/1.1 connection to the API: write bytes, read whole responses one by one. */
export class Client {
  readonly socket: Socket;
  private buffered = Buffer.alloc(0);
  ended = false;
  /** Bytes written so far. */
  sent = 0;

  constructor(port: number) {
    this.socket = connect(port, '127.0.0.1');
    this.socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
    });
    this.socket.once('close', () => {
      this.ended = true;
    });
    this.socket.on('error', () => {});
  }

  send(text: string | Buffer): void {
    this.sent += Buffer.byteLength(text);
    this.socket.write(text);
  }

  /** The next whole response; fails if the connection ends first or none comes within 5 s. */
  async response(): Promise<Response> {
    let parsed: Response | null = null;
    await waitFor(
      () => {
        parsed = this.take();
        assert.ok(parsed !== null || !this.ended, `the connection closed; unread: ${JSON.stringify(this.unread)}`);
        return parsed !== null;
      },
      `a whole response (read: ${JSON.stringify(this.unread.slice(0, 200))})`,
    );
    return parsed!;
  }

  /** Fails unless the server closes the connection within 5 s; what was left unread must be nothing. */
  async waitClosed(): Promise<void> {
    await waitFor(() => this.ended, 'the server closes the connection');
    assert.equal(this.buffered.length, 0, `unread after the close: ${this.unread}`);
  }

  /** Bytes received and not taken as a response. */
  get unread(): string {
    return this.buffered.toString('latin1');
  }

  private take(): Response | null {
    const end = findHeadEnd(this.buffered);
    if (end === -1) return null;
    const lines = this.buffered
      .subarray(0, end - 4)
      .toString('latin1')
      .split('\r\n');
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(lines[0]!)![1]);
    const length = status === 100 ? 0 : Number(headers['content-length']);
    if (this.buffered.length < end + length) return null;
    const body = this.buffered.subarray(end, end + length).toString('utf8');
    this.buffered = this.buffered.subarray(end + length);
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      json = undefined;
    }
    return { status, headers, body, json };
  }
}

/** `method path` with the key (unless `auth` is given: null = none) and `body`, its Content-Length set. */
export function request(method: string, path: string, body = '', headers: Record<string, string> = {}, auth: string | null = `Bearer ${KEY}`): string {
  const all: Record<string, string> = { Host: 'x', ...(auth === null ? {} : { Authorization: auth }), ...headers };
  if (body !== '' && all['Content-Length'] === undefined && all['Transfer-Encoding'] === undefined) all['Content-Length'] = String(Buffer.byteLength(body));
  return `${method} ${path} HTTP/1.1\r\n${Object.entries(all)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n${body}`;
}

export interface Harness {
  api: ApiServer;
  pool: FakePool;
  config: ServeConfig;
  log: ReturnType<typeof recordingLogger>;
  /** Heads handed back to the primary (a request outside /api/v1/ on an API connection), with the `data` listeners their socket had then. */
  elsewhere: { head: RequestHead; dataListeners: number }[];
  /** A new connection to the API. */
  client(): Client;
  /** The server's end of `client` (once accepted). */
  serverEnd(client: Client): Socket | undefined;
  /** Resolves once the server's end of `client` has read every byte it sent (within 5 s). */
  allRead(client: Client): Promise<void>;
  /** One request on a new connection, and its response. */
  call(text: string): Promise<Response>;
  /** The API's open connections, oldest first (its private set). */
  connections(): ApiConnection[];
}

export async function harness(
  t: TestContext,
  options: { config?: Partial<Record<keyof ServeConfig, string | number | boolean>>; debug?: boolean } = {},
): Promise<Harness> {
  const config = resolveServeConfig({ jwtSecret: 's'.repeat(32), apiKey: KEY, workers: 2, ...options.config });
  const pool = new FakePool();
  const log = recordingLogger(options.debug ?? false);
  const elsewhere: Harness['elsewhere'] = [];
  const api = new ApiServer({
    config,
    pool: pool as unknown as ShardPool,
    log,
    elsewhere: (socket, head) => {
      elsewhere.push({ head, dataListeners: socket.listenerCount('data') });
      endWithResponse(socket, httpResponse(200, 'elsewhere\n'));
    },
  });
  const sockets = new Set<Socket>();
  // The primary's part: read the first head, then hand the socket (paused, with what followed the head) to the API.
  const server = createServer((socket) => {
    sockets.add(socket);
    let read = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      read = Buffer.concat([read, chunk]);
      const end = findHeadEnd(read);
      if (end === -1) return;
      socket.pause();
      socket.off('data', onData);
      const parsed = parseRequestHead(read, end);
      assert.ok(parsed.ok, 'the tests send a well-formed first head');
      api.accept(socket, parsed.head, read.subarray(end));
    };
    socket.on('data', onData);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const clients: Client[] = [];
  t.after(() => {
    for (const c of clients) c.socket.destroy();
    for (const s of sockets) s.destroy();
    server.close();
  });
  const client = () => {
    const c = new Client(port);
    clients.push(c);
    return c;
  };
  const serverEnd = (c: Client) => [...sockets].find((s) => s.remotePort === c.socket.localPort);
  return {
    api,
    pool,
    config,
    log,
    elsewhere,
    client,
    serverEnd,
    allRead: (c) => waitFor(() => serverEnd(c) !== undefined && serverEnd(c)!.bytesRead === c.sent, 'the server read all that was sent'),
    call: async (text) => {
      const c = client();
      c.send(text);
      return c.response();
    },
    connections: () => [...(api as unknown as { connections: Set<ApiConnection> }).connections],
  };
}

/** The `[status, code, message]` of a refusal. */
export const refusal = (res: Response) => [res.status, res.json?.code, res.json?.message];
