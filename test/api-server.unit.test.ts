/**
 * The server API on the primary in process (src/primary/api-server.ts and
 * api-connection.ts), on real loopback sockets, with a stand-in for the
 * shard pool that records each request and answers what the test says: a
 * listener reads each connection's first head as the primary does and
 * hands the socket over. Each answer is read byte-exact from a raw HTTP
 * connection: status, headers, the `{code, message}` of refusals; which
 * shards a call reaches, and that a refused one reaches none; keep-alive,
 * pipelining and the limits of a connection. test/api-errors.test.ts and
 * test/api-events.test.ts check the same through the real server.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { resolveServeConfig, type ServeConfig } from '../src/config.ts';
import { KEEP_ALIVE_IDLE_MS } from '../src/primary/api-connection.ts';
import { API_SHARD_TIMEOUT_MS, ApiServer, MAX_API_CONNECTIONS } from '../src/primary/api-server.ts';
import { shardFor } from '../src/primary/router.ts';
import type { ApiResult, ShardPool } from '../src/primary/shard-pool.ts';
import { MAX_API_BODY_BYTES, type ApiOutcome, type ApiRequest, type LiveSession } from '../src/protocol/api.ts';
import { findHeadEnd, httpResponse, parseRequestHead, type RequestHead } from '../src/protocol/http.ts';
import { endWithResponse } from '../src/linger.ts';
import { ApiMetric, createMetricsBuffer, MetricsSlot } from '../src/protocol/metrics.ts';
import { recordingLogger } from './helpers/shard-parts.ts';

const KEY = 'api-key-for-unit-tests-0123456789';
const FEDERATION_KEY = 'f'.repeat(32);

/** A desktop id whose room is on `shard` of 2. */
function desktopOn(shard: number): string {
  for (let i = 0; ; i++) if (shardFor(`desk-${i}`, 2) === shard) return `desk-${i}`;
}
const D0 = desktopOn(0);
const D1 = desktopOn(1);

interface Call {
  shard: number;
  request: ApiRequest;
  timeoutMs: number;
}

/** The shard pool as the API server sees it: two shards, whose state and answers the test sets. */
class FakePool {
  readonly size = 2;
  readonly primaryMetrics = new MetricsSlot(createMetricsBuffer(0), 0);
  ready = [true, true];
  connected = [true, true];
  retryAfter = [1, 1];
  readonly calls: Call[] = [];
  private called: (() => void) | null = null;
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
    this.called?.();
    return Promise.resolve(this.answer(shard, request));
  }
  /** Resolves once `n` calls were made (within 5 s). */
  async callsReach(n: number): Promise<void> {
    const deadline = Date.now() + 5000;
    while (this.calls.length < n) {
      assert.ok(Date.now() < deadline, `${this.calls.length} shard calls, not ${n}`);
      await new Promise<void>((resolve) => {
        this.called = resolve;
        setTimeout(resolve, 100).unref();
      });
    }
  }
  metric(m: number): number {
    return this.primaryMetrics.values[m]!;
  }
}

const session = (shard: number): LiveSession => ({
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

interface Response {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The body parsed, when it is JSON. */
  json: any;
}

/** A raw HTTP/1.1 connection to the API: write bytes, read whole responses one by one. */
class Client {
  readonly socket: Socket;
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  ended = false;
  readonly closed: Promise<void>;

  constructor(port: number) {
    this.socket = connect(port, '127.0.0.1');
    this.socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.wake?.();
    });
    this.closed = new Promise((resolve) =>
      this.socket.once('close', () => {
        this.ended = true;
        this.wake?.();
        resolve();
      }),
    );
    this.socket.on('error', () => {});
  }

  /** Bytes written so far. */
  sent = 0;

  send(text: string | Buffer): void {
    this.sent += Buffer.byteLength(text);
    this.socket.write(text);
  }

  /** The next whole response; fails if the connection ends first or none comes within 5 s. */
  async response(): Promise<Response> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const parsed = this.take();
      if (parsed !== null) return parsed;
      assert.ok(!this.ended, `the connection closed; unread: ${JSON.stringify(this.buffered.toString('latin1'))}`);
      assert.ok(Date.now() < deadline, `no whole response within 5 s; read: ${JSON.stringify(this.buffered.toString('latin1'))}`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100).unref();
      });
    }
  }

  /** Fails unless the server closes the connection within 5 s; what was left unread must be nothing. */
  async waitClosed(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.closed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('not closed within 5 s')), 5000)))]).finally(() =>
      clearTimeout(timer),
    );
    assert.equal(this.buffered.length, 0, `unread after the close: ${this.buffered.toString('latin1')}`);
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
function request(method: string, path: string, body = '', headers: Record<string, string> = {}, auth: string | null = `Bearer ${KEY}`): string {
  const all: Record<string, string> = { Host: 'x', ...(auth === null ? {} : { Authorization: auth }), ...headers };
  if (body !== '' && all['Content-Length'] === undefined && all['Transfer-Encoding'] === undefined) all['Content-Length'] = String(Buffer.byteLength(body));
  return `${method} ${path} HTTP/1.1\r\n${Object.entries(all)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n${body}`;
}

interface Harness {
  api: ApiServer;
  pool: FakePool;
  config: ServeConfig;
  log: ReturnType<typeof recordingLogger>;
  /** Heads handed back to the primary (a request outside /api/v1/ on an API connection). */
  elsewhere: RequestHead[];
  /** A new connection to the API. */
  client(): Client;
  /** Resolves once the server's end of `client` has read every byte it sent (within 5 s). */
  allRead(client: Client): Promise<void>;
  /** One request on a new connection, and its response. */
  call(text: string): Promise<Response>;
}

async function harness(
  t: TestContext,
  options: { config?: Partial<Record<keyof ServeConfig, string | number | boolean>>; debug?: boolean } = {},
): Promise<Harness> {
  const config = resolveServeConfig({ jwtSecret: 's'.repeat(32), apiKey: KEY, workers: 2, ...options.config });
  const pool = new FakePool();
  const log = recordingLogger(options.debug ?? false);
  const elsewhere: RequestHead[] = [];
  const api = new ApiServer({
    config,
    pool: pool as unknown as ShardPool,
    log,
    elsewhere: (socket, head) => {
      elsewhere.push(head);
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
  return {
    api,
    pool,
    config,
    log,
    elsewhere,
    client,
    allRead: async (c) => {
      const end = () => [...sockets].find((s) => s.remotePort === c.socket.localPort);
      await waitFor(() => end() !== undefined && end()!.bytesRead === c.sent);
    },
    call: async (text) => {
      const c = client();
      c.send(text);
      return c.response();
    },
  };
}

const logged = (h: Harness, event: string): Record<string, unknown>[] =>
  h.log.entries.filter((e) => e.event === event).map((e) => ({ level: e.level, ...e.fields }));
const refusal = (res: Response) => [res.status, res.json?.code, res.json?.message];

test('each call goes, as one request, to the shard that owns its desktop or to every shard, and is answered with what they did', async (t) => {
  const h = await harness(t);
  const c = h.client();
  const ask = async (text: string) => {
    c.send(text);
    return c.response();
  };
  const shardsOf = (from: number) => h.pool.calls.slice(from).map((call) => call.shard);

  let res = await ask(request('POST', `/api/v1/desktops/${D1}/events`, '{"type":"note","payload":{"n":1}}'));
  assert.equal(res.status, 202);
  assert.deepEqual(shardsOf(0), [1]);
  const publish = h.pool.calls[0]!;
  assert.equal(publish.timeoutMs, API_SHARD_TIMEOUT_MS);
  assert.equal(publish.request.kind, 'publish');
  assert.match(publish.request.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.deepEqual(res.json, { id: publish.request.id, delivered: 2 });
  assert.equal(res.body, `${JSON.stringify({ id: publish.request.id, delivered: 2 })}\n`);
  assert.equal(res.headers['content-type'], 'application/json');
  assert.equal(res.headers.connection, 'keep-alive');

  res = await ask(request('POST', '/api/v1/users/u-1/events', '{"type":"hello"}'));
  assert.deepEqual(shardsOf(1), [0, 1]);
  assert.deepEqual(res.json, { id: h.pool.calls[1]!.request.id, delivered: 3 });
  assert.notEqual(h.pool.calls[1]!.request.id, publish.request.id, 'each call has its own id');

  res = await ask(request('POST', '/api/v1/broadcast', '{"type":"maintenance"}'));
  assert.deepEqual([res.status, shardsOf(3)], [202, [0, 1]]);
  assert.deepEqual(res.json, { id: h.pool.calls[3]!.request.id, delivered: 3 });

  res = await ask(request('PUT', `/api/v1/desktops/${D0}/permissions/u-1`, '{"permission":"viewer"}'));
  assert.deepEqual([res.status, shardsOf(5)], [202, [0]]);
  assert.deepEqual(res.json, { id: h.pool.calls[5]!.request.id, sessions: 1, changed: 0 });

  res = await ask(request('POST', '/api/v1/users/u-1/disconnect', '{"reason":"bye"}'));
  assert.deepEqual([res.status, shardsOf(6)], [202, [0, 1]]);
  assert.deepEqual(res.json, { id: h.pool.calls[6]!.request.id, disconnected: 1 });

  res = await ask(request('GET', `/api/v1/desktops/${D1}/presence`));
  assert.deepEqual([res.status, shardsOf(8)], [200, [1]]);
  assert.deepEqual(res.json, { desktopId: D1, sessions: [session(1)] });

  res = await ask(request('GET', '/api/v1/users/u-1/sessions'));
  assert.deepEqual([res.status, shardsOf(9)], [200, [0, 1]]);
  assert.deepEqual(res.json, { userId: 'u-1', sessions: [session(0), session(1)] });

  for (const m of [
    ApiMetric.PUBLISH,
    ApiMetric.USER_EVENT,
    ApiMetric.BROADCAST,
    ApiMetric.SET_PERMISSION,
    ApiMetric.DISCONNECT,
    ApiMetric.PRESENCE,
    ApiMetric.USER_SESSIONS,
  ]) {
    assert.equal(h.pool.metric(m), 1);
  }
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 1, 'one connection carried them all');

  // Calls that change who may do what are logged at info; events and queries only at debug (off here).
  const info = logged(h, 'api_request');
  assert.deepEqual(
    info.map(({ ms, ...rest }) => (assert.equal(typeof ms, 'number'), rest)),
    [
      { level: 'info', id: h.pool.calls[3]!.request.id, kind: 'broadcast', reached: 3, changed: 1 },
      { level: 'info', id: h.pool.calls[5]!.request.id, kind: 'set_permission', desktopId: D0, userId: 'u-1', reached: 1, changed: 0 },
      { level: 'info', id: h.pool.calls[6]!.request.id, kind: 'disconnect', userId: 'u-1', reached: 3, changed: 1 },
    ],
  );
});

test('with debug on, events and queries are logged at debug', async (t) => {
  const h = await harness(t, { debug: true });
  await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"note"}'));
  await h.call(request('GET', '/api/v1/users/u-2/sessions'));
  assert.deepEqual(
    logged(h, 'api_request').map((e) => [e.level, e.kind, e.desktopId, e.userId]),
    [
      ['debug', 'publish', D0, undefined],
      ['debug', 'user_sessions', undefined, 'u-2'],
    ],
  );
});

test('without the key: 401 with WWW-Authenticate, before anything else, and no shard is asked; the scheme is case-insensitive', async (t) => {
  const h = await harness(t);
  const path = `/api/v1/desktops/${D0}/events`;
  for (const auth of [null, 'Bearer nope', `Bearer ${KEY}x`, `Bearer ${KEY.slice(0, -1)}`, `Basic ${KEY}`, KEY, 'Bearer ']) {
    const c = h.client();
    c.send(request('POST', path, '{"type":"x"}', {}, auth));
    const res = await c.response();
    assert.deepEqual(refusal(res), [401, 'unauthorized', 'a valid API key is required: Authorization: Bearer <key>'], String(auth));
    assert.equal(res.headers['www-authenticate'], 'Bearer');
    assert.equal(res.headers.connection, 'close');
    await c.waitClosed();
  }
  assert.equal((await h.call(request('GET', '/api/v1/nothing', '', {}, null))).status, 401, 'an unknown path without the key is 401, not 404');
  assert.equal(h.pool.calls.length, 0);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_401), 8);
  assert.equal((await h.call(request('GET', `/api/v1/desktops/${D0}/presence`, '', {}, `bearer ${KEY}`))).status, 200);
});

test('endpoint and body refusals reach no shard: 404, 405 with Allow, a GET with a body, a body that is not UTF-8 or not JSON', async (t) => {
  const h = await harness(t);
  assert.deepEqual(refusal(await h.call(request('POST', '/api/v1/desktops/d/nothing', '{}'))), [404, 'not_found', 'no such endpoint']);
  const wrong = await h.call(request('GET', '/api/v1/broadcast'));
  assert.deepEqual([wrong.status, wrong.json.code, wrong.headers.allow], [405, 'method_not_allowed', 'POST']);
  assert.deepEqual(refusal(await h.call(request('GET', `/api/v1/desktops/${D0}/presence`, '{}'))), [400, 'bad_request', 'GET takes no body']);
  assert.equal((await h.call(request('GET', `/api/v1/desktops/${D0}/presence`, '', { 'Content-Length': '0' }))).status, 200, 'an empty body is no body');
  const c = h.client();
  c.send(Buffer.concat([Buffer.from(request('POST', `/api/v1/desktops/${D0}/events`, '', { 'Content-Length': '4' })), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])]));
  assert.deepEqual(refusal(await c.response()), [400, 'invalid_json', 'the body is not UTF-8']);
  assert.deepEqual(refusal(await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":'))).slice(0, 2), [400, 'invalid_json']);
  assert.deepEqual(refusal(await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"room_joined"}'))).slice(0, 2), [400, 'reserved_type']);
  assert.equal(h.pool.calls.length, 1, 'only the presence with an empty body');
  assert.equal(h.pool.metric(ApiMetric.REFUSED_400), 4);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_404), 1);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_405), 1);
});

test('a refusal that asks for no wait has no Retry-After; a connection its client closes gives its place back at once', async (t) => {
  const h = await harness(t);
  for (const [text, status] of [
    [request('GET', '/api/v1/nope'), 404],
    [request('GET', `/api/v1/desktops/${D0}/presence`, '', {}, null), 401],
    [request('GET', `/api/v1/desktops/${D0}/presence`, 'x'), 400],
  ] as const) {
    const res = await h.call(text);
    assert.equal(res.status, status);
    assert.equal(res.headers['retry-after'], undefined, `${status}`);
  }
  await waitFor(() => h.pool.metric(ApiMetric.CONNECTIONS) === 0);
  // The connection's timers stand still: only its client's close can give its place back.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const kept = h.client();
  kept.send(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.equal((await kept.response()).status, 200);
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 1);
  kept.socket.end();
  await waitFor(() => h.pool.metric(ApiMetric.CONNECTIONS) === 0);
});

test('a shard that is restarting: 503 with the longest Retry-After of the shards down, and nothing sent to any shard', async (t) => {
  const h = await harness(t);
  h.pool.ready = [true, false];
  h.pool.retryAfter = [1, 7];
  for (const text of [
    request('POST', `/api/v1/desktops/${D1}/events`, '{"type":"x"}'),
    request('POST', '/api/v1/users/u/events', '{"type":"x"}'),
    request('GET', '/api/v1/users/u/sessions'),
  ]) {
    const res = await h.call(text);
    assert.deepEqual(refusal(res), [503, 'shard_unavailable', 'shard 1 is restarting; nothing was applied']);
    assert.equal(res.headers['retry-after'], '7');
  }
  assert.equal(h.pool.calls.length, 0);
  assert.equal((await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'))).status, 202, "the other shard's desktops are served");
  h.pool.ready = [false, false];
  h.pool.retryAfter = [3, 2];
  const both = await h.call(request('POST', '/api/v1/broadcast', '{"type":"x"}'));
  assert.deepEqual(refusal(both), [503, 'shard_unavailable', 'shard 0, 1 is restarting; nothing was applied']);
  assert.equal(both.headers['retry-after'], '3');
  assert.equal(h.pool.calls.length, 1);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_503), 4);
});

test('with federation, a command while a shard it needs has lost the bus is 503 federation_unavailable; queries are answered', async (t) => {
  const h = await harness(t, { config: { natsUrls: 'nats://127.0.0.1:4222', federationKey: FEDERATION_KEY } });
  h.pool.connected = [true, false];
  const commands = [
    request('POST', `/api/v1/desktops/${D1}/events`, '{"type":"x"}'),
    request('PUT', `/api/v1/desktops/${D1}/permissions/u`, '{"permission":"viewer"}'),
    request('POST', '/api/v1/users/u/events', '{"type":"x"}'),
    request('POST', '/api/v1/users/u/disconnect', '{}'),
    request('POST', '/api/v1/broadcast', '{"type":"x"}'),
  ];
  for (const text of commands) {
    const res = await h.call(text);
    assert.deepEqual(
      refusal(res),
      [503, 'federation_unavailable', 'this node has lost the bus to the other nodes; nothing was applied'],
      text.split('\r\n')[0],
    );
    assert.equal(res.headers['retry-after'], '1');
  }
  assert.equal(h.pool.calls.length, 0);
  assert.equal((await h.call(request('GET', `/api/v1/desktops/${D1}/presence`))).status, 200);
  assert.equal((await h.call(request('GET', '/api/v1/users/u/sessions'))).status, 200);
  assert.equal((await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'))).status, 202, 'a desktop whose shard has the bus');
});

test('without a federation key the API does not federate, so a shard without the bus still takes commands', async (t) => {
  const h = await harness(t, { config: { natsUrls: 'nats://127.0.0.1:4222' } });
  h.pool.connected = [false, false];
  assert.equal((await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'))).status, 202);
});

test('broadcasts over --api-broadcast-rate: 429 with Retry-After in whole seconds, reaching no shard; other calls are not limited', async (t) => {
  const h = await harness(t, { config: { apiBroadcastRate: '0.5' } });
  assert.equal((await h.call(request('POST', '/api/v1/broadcast', '{"type":"x"}'))).status, 202);
  const res = await h.call(request('POST', '/api/v1/broadcast', '{"type":"x"}'));
  assert.deepEqual(refusal(res), [429, 'rate_limited', 'at most 0.5 broadcast(s) a second']);
  assert.equal(res.headers['retry-after'], '2', 'one broadcast per 2 s: the next is about 2 s away');
  assert.equal(h.pool.calls.length, 2);
  assert.equal((await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'))).status, 202);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_429), 1);
  assert.equal(h.pool.metric(ApiMetric.BROADCAST), 1);
});

test('a shard that does not answer in time: 504 naming it, logged; one that exited is logged and the others count; a failure is 500', async (t) => {
  const h = await harness(t);
  h.pool.answer = (shard) => (shard === 1 ? 'timeout' : { duplicate: false, reached: 4, changed: 0 });
  const late = await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'));
  assert.deepEqual(refusal(late), [504, 'shard_timeout', `shard 1 did not answer within ${API_SHARD_TIMEOUT_MS} ms; the call may have been applied in part`]);
  const warned = logged(h, 'api_shard_timeout');
  assert.deepEqual(
    warned.map(({ ms, ...rest }) => rest),
    [{ level: 'warn', id: h.pool.calls[0]!.request.id, kind: 'user_event', userId: 'u', reached: 4, changed: 0, shards: [1] }],
  );
  assert.equal(h.pool.metric(ApiMetric.REFUSED_504), 1);
  assert.equal(h.pool.metric(ApiMetric.USER_EVENT), 0);

  h.pool.answer = (shard) => (shard === 1 ? 'exited' : { duplicate: false, reached: 4, changed: 0 });
  const res = await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'));
  assert.deepEqual([res.status, res.json.delivered], [202, 4]);
  assert.deepEqual(logged(h, 'api_shard_exited'), [{ level: 'warn', shards: 1 }]);
  h.pool.answer = () => ({ duplicate: false, reached: 1, changed: 0 });
  await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'));
  assert.equal(logged(h, 'api_shard_exited').length, 1, 'only when a shard exited');

  h.pool.answer = () => Promise.reject(new Error('boom'));
  const c = h.client();
  c.send(request('POST', '/api/v1/users/u/events', '{"type":"x"}'));
  const failed = await c.response();
  assert.deepEqual(refusal(failed), [500, 'internal_error', 'the server failed to handle this request']);
  assert.equal(failed.headers.connection, 'close');
  await c.waitClosed();
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 1);
});

test(`at most ${MAX_API_CONNECTIONS} connections: an idle kept-alive one is closed for a newcomer; with none idle, 503 busy (401 without the key)`, async (t) => {
  const h = await harness(t);
  const path = `/api/v1/desktops/${D0}/events`;
  // Each holds a request whose body has not all arrived: busy, not idle.
  const held: Client[] = [];
  for (let i = 0; i < MAX_API_CONNECTIONS; i++) {
    const c = h.client();
    c.send(request('POST', path, '', { 'Content-Length': '12' }) + '{"type"');
    held.push(c);
  }
  const deadline = Date.now() + 10_000;
  while (h.pool.metric(ApiMetric.CONNECTIONS) < MAX_API_CONNECTIONS) {
    assert.ok(Date.now() < deadline, `${h.pool.metric(ApiMetric.CONNECTIONS)} connections taken`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const busy = h.client();
  busy.send(request('POST', path, '{"type":"x"}'));
  const refused = await busy.response();
  assert.deepEqual(refusal(refused), [503, 'busy', `${MAX_API_CONNECTIONS} API connections are busy`]);
  assert.equal(refused.headers['retry-after'], '1');
  await busy.waitClosed();
  const stranger = h.client();
  stranger.send(request('POST', path, '{"type":"x"}', {}, null));
  assert.equal((await stranger.response()).status, 401, 'no hint of load to a caller without the key');
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), MAX_API_CONNECTIONS);

  // One finishes its request and stays open, idle: the next newcomer takes its place.
  held[0]!.send(':"x"}');
  assert.equal((await held[0]!.response()).status, 202);
  const newcomer = h.client();
  newcomer.send(request('POST', path, '{"type":"y"}'));
  assert.equal((await newcomer.response()).status, 202);
  await held[0]!.waitClosed();
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), MAX_API_CONNECTIONS);
  assert.equal(held[1]!.ended, false, 'busy connections are left alone');
});

test('shutdown: idle connections close at once, a busy one after its answer, and later calls are 503 shutting_down', async (t) => {
  const h = await harness(t);
  const idle = h.client();
  idle.send(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.equal((await idle.response()).headers.connection, 'keep-alive');
  let release: (result: ApiResult) => void = () => {};
  h.pool.answer = () => new Promise((resolve) => (release = resolve));
  const busy = h.client();
  busy.send(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'));
  await h.pool.callsReach(2);
  h.api.shutdown();
  await idle.waitClosed();
  assert.equal(busy.ended, false);
  release({ duplicate: false, reached: 1, changed: 0 });
  const res = await busy.response();
  assert.deepEqual([res.status, res.headers.connection], [202, 'close']);
  await busy.waitClosed();
  assert.deepEqual(refusal(await h.call(request('GET', `/api/v1/desktops/${D0}/presence`))), [503, 'shutting_down', 'the server is shutting down']);
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 0);
});

test('keep-alive: requests one after another and pipelined, answered in order, one at a time; HTTP/1.0 and Connection: close end it', async (t) => {
  const h = await harness(t);
  const releases: ((result: ApiResult) => void)[] = [];
  h.pool.answer = () => new Promise((resolve) => releases.push(resolve));
  const c = h.client();
  const publish = (type: string) => request('POST', `/api/v1/desktops/${D0}/events`, JSON.stringify({ type }));
  c.send(publish('one') + publish('two') + request('GET', `/api/v1/desktops/${D0}/presence`));
  await h.pool.callsReach(1);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(h.pool.calls.length, 1, 'the pipelined requests wait for the first answer');
  releases[0]!({ duplicate: false, reached: 1, changed: 0 });
  const first = await c.response();
  assert.deepEqual([first.status, first.json.id, first.headers.connection], [202, h.pool.calls[0]!.request.id, 'keep-alive']);
  await h.pool.callsReach(2);
  releases[1]!({ duplicate: false, reached: 1, changed: 0 });
  assert.deepEqual((await c.response()).json.id, h.pool.calls[1]!.request.id);
  await h.pool.callsReach(3);
  releases[2]!({ duplicate: false, reached: 0, changed: 0, sessions: [] });
  assert.equal((await c.response()).status, 200);
  assert.deepEqual(
    h.pool.calls.map((call) => call.request.kind),
    ['publish', 'publish', 'presence'],
  );
  assert.deepEqual(
    h.pool.calls.map((call) => (call.request as { type?: string }).type),
    ['one', 'two', undefined],
  );
  assert.equal(c.ended, false);

  // A request that arrives while one is being answered waits too.
  c.send(publish('three'));
  await h.pool.callsReach(4);
  c.send(publish('four'));
  await h.allRead(c);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(h.pool.calls.length, 4, 'read, not begun');
  releases[3]!({ duplicate: false, reached: 1, changed: 0 });
  assert.equal((await c.response()).json.id, h.pool.calls[3]!.request.id);
  await h.pool.callsReach(5);
  releases[4]!({ duplicate: false, reached: 1, changed: 0 });
  assert.equal((await c.response()).json.id, h.pool.calls[4]!.request.id);

  h.pool.answer = () => ({ duplicate: false, reached: 0, changed: 0, sessions: [] });
  c.send(request('GET', `/api/v1/desktops/${D0}/presence`, '', { Connection: 'close' }));
  assert.equal((await c.response()).headers.connection, 'close');
  await c.waitClosed();
  const old = h.client();
  old.send(`GET /api/v1/desktops/${D0}/presence HTTP/1.0\r\nAuthorization: Bearer ${KEY}\r\n\r\n`);
  assert.equal((await old.response()).headers.connection, 'close');
  await old.waitClosed();
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 0);
});

test('bodies: in pieces, Expect: 100-continue answered only when the body is still to come; chunked 411, a bad Content-Length 400, over 64 KiB 413', async (t) => {
  const h = await harness(t);
  const path = `/api/v1/desktops/${D0}/events`;
  const body = '{"type":"pieces"}';
  const c = h.client();
  c.send(request('POST', path, '', { 'Content-Length': String(body.length), Expect: '100-continue' }));
  const go = await c.response();
  assert.equal(go.status, 100);
  c.send(body.slice(0, 5));
  await new Promise((resolve) => setImmediate(resolve));
  c.send(body.slice(5));
  assert.equal((await c.response()).status, 202);
  assert.equal(h.pool.calls[0]!.request.kind, 'publish');
  assert.match((h.pool.calls[0]!.request as { event: string }).event, /"type":"pieces"/);
  // The body already there: straight to the answer.
  c.send(request('POST', path, body, { Expect: '100-continue' }));
  assert.equal((await c.response()).status, 202);

  const cases: [Record<string, string>, string, number, string, string][] = [
    [{ 'Transfer-Encoding': 'chunked' }, '5\r\n{"ty"\r\n0\r\n\r\n', 411, 'length_required', 'send the body with Content-Length'],
    [{ 'Content-Length': '12x' }, '', 400, 'bad_request', 'invalid Content-Length'],
    [{ 'Content-Length': '-1' }, '', 400, 'bad_request', 'invalid Content-Length'],
    [{ 'Content-Length': String(MAX_API_BODY_BYTES + 1) }, '', 413, 'body_too_large', `the body is over ${MAX_API_BODY_BYTES} bytes`],
  ];
  for (const [headers, sent, status, code, message] of cases) {
    const refused = h.client();
    refused.send(request('POST', path, sent, headers));
    const res = await refused.response();
    assert.deepEqual(refusal(res), [status, code, message], JSON.stringify(headers));
    assert.equal(res.headers.connection, 'close');
    await refused.waitClosed();
  }
  assert.equal(h.pool.calls.length, 2);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_413), 1);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 1, '411');

  // Exactly 64 KiB is accepted.
  const frame = { type: 'big', payload: '' };
  frame.payload = 'p'.repeat(MAX_API_BODY_BYTES - JSON.stringify(frame).length);
  assert.equal((await h.call(request('POST', path, JSON.stringify(frame)))).status, 202);
});

test("a kept-alive connection's next head: too large 431, malformed 400; outside /api/v1/ it goes back to the primary", async (t) => {
  const h = await harness(t, { config: { maxHeadBytes: 1024 } });
  const presence = request('GET', `/api/v1/desktops/${D0}/presence`);
  const open = async () => {
    const c = h.client();
    c.send(presence);
    assert.equal((await c.response()).status, 200);
    return c;
  };
  let c = await open();
  c.send(`GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\nX-Long: ${'a'.repeat(1100)}`);
  assert.deepEqual(refusal(await c.response()), [431, 'head_too_large', 'the request head is too large']);
  await c.waitClosed();
  c = await open();
  c.send(`GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\nX-Long: ${'a'.repeat(1100)}\r\n\r\n`);
  assert.deepEqual(refusal(await c.response()).slice(0, 2), [431, 'head_too_large'], 'a whole head over the limit too');
  await c.waitClosed();
  c = await open();
  c.send(`GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\nno colon here\r\n\r\n`);
  assert.deepEqual(refusal(await c.response()).slice(0, 2), [400, 'bad_request']);
  await c.waitClosed();

  c = await open();
  c.send('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
  const res = await c.response();
  assert.deepEqual([res.status, res.body], [200, 'elsewhere\n']);
  await c.waitClosed();
  assert.deepEqual(
    h.elsewhere.map((head) => head.path),
    ['/health'],
  );
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 0, "the connection is no longer the API's");
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 2, 'two 431s');
});

test('deadlines: a request not all there within --handshake-timeout is 408; an idle kept-alive connection closes after 5 s; a new request has its own deadline', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const h = await harness(t, { config: { handshakeTimeoutMs: '2s' } });
  const path = `/api/v1/desktops/${D0}/events`;
  const slow = h.client();
  slow.send(request('POST', path, '', { 'Content-Length': '20' }) + '{"type"');
  await waitFor(() => h.pool.metric(ApiMetric.CONNECTIONS) === 1);
  t.mock.timers.tick(1999);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 0, 'not before its deadline');
  t.mock.timers.tick(1);
  assert.deepEqual(refusal(await slow.response()), [408, 'body_timeout', 'the request did not arrive within 2000 ms']);
  await slow.waitClosed();

  const idle = h.client();
  idle.send(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.equal((await idle.response()).status, 200);
  t.mock.timers.tick(KEEP_ALIVE_IDLE_MS - 1);
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 1);
  t.mock.timers.tick(1);
  await idle.waitClosed();
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 0);

  // The first byte of a kept-alive connection's next request starts that request's deadline.
  const again = h.client();
  again.send(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.equal((await again.response()).status, 200);
  t.mock.timers.tick(KEEP_ALIVE_IDLE_MS - 1);
  again.send('GET /api/v1/');
  await waitFor(() => idleConnections(h) === 0);
  t.mock.timers.tick(1999);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 1, "the idle deadline is gone, the request's not reached yet");
  t.mock.timers.tick(1);
  assert.deepEqual(refusal(await again.response()).slice(0, 2), [408, 'body_timeout']);
});

/** Connections between two requests (ApiConnection's `idle`, read through the server's private set). */
const idleConnections = (h: Harness) => [...(h.api as unknown as { connections: Set<{ idle: boolean }> }).connections].filter((c) => c.idle).length;

/** Wait for `condition`, at most 5 s (real time: the test's own timers may be mocked, so this polls on setImmediate). */
async function waitFor(condition: () => boolean): Promise<void> {
  const deadline = performance.now() + 5000;
  while (!condition()) {
    assert.ok(performance.now() < deadline, 'condition not met within 5 s');
    await new Promise((resolve) => setImmediate(resolve));
  }
}
