/**
 * The shard's handshake in process: real sockets accepted on loopback as
 * the primary accepts them (never read), a head handed over as the
 * primary's message carries it, a real `ws` server for the upgrade and a
 * real UserAdmission; the permission API and the connection limits are
 * stand-ins the test answers. Each refusal is checked as the client reads
 * it (status, Retry-After, the shard header, body) and as it is counted
 * and logged. test/auth.test.ts, test/permission.test.ts and
 * test/limits.test.ts check the same answers through the real server.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { WebSocketServer } from 'ws';
import type { PermissionSource } from '../src/auth/permission-client.ts';
import type { Identity } from '../src/auth/token.ts';
import { AuthErrorCode, PermissionError, PermissionErrorCode } from '../src/errors.ts';
import type { Permission } from '../src/protocol/events.ts';
import { reportLingeringTo } from '../src/linger.ts';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { Rejections, type Rejection } from '../src/protocol/rejections.ts';
import { Handshake, type Admitted } from '../src/shard/handshake.ts';
import { UserAdmission, type UserAdmissionOptions } from '../src/shard/user-admission.ts';
import { upgradeHead } from './helpers/client.ts';
import { TEST_SECRET } from './helpers/server.ts';
import { recordingLogger } from './helpers/shard-parts.ts';
import { rawToken, token, user } from './helpers/tokens.ts';

const NOW = 1_800_000_000_000;
const SHARD = 3;
const REMOTE = '203.0.113.7';

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function parseReply(raw: string): Reply {
  const end = raw.indexOf('\r\n\r\n');
  const [statusLine, ...lines] = raw.slice(0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
  return { status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine!)![1]), headers, body: raw.slice(end + 4) };
}

interface Call {
  desktopId: string;
  identity: Identity;
  cookie: string | undefined;
}

interface Attempt {
  /** admit()'s promise. */
  done: Promise<void>;
  /** What the client reads: the whole answer once the server closes, or the head of a 101. */
  reply: Promise<Reply>;
  opened: () => Admitted | null;
  /** The first message the upgraded session receives. */
  firstMessage: Promise<string>;
}

/** A Handshake of shard 3 with stand-ins for the permission API and the connection limits. */
async function harness(t: TestContext, users: Partial<UserAdmissionOptions> = {}) {
  const log = recordingLogger(false);
  const metrics = new MetricsSlot(createMetricsBuffer(1), 0);
  const calls: Call[] = [];
  const limitChecks: [string, string][] = [];
  const state = {
    accepting: true,
    permission: (_call: Call): Promise<Permission> => Promise.resolve('editor'),
    limit: (_identity: Identity, _desktopId: string): Rejection | null => null,
  };
  const permissions: PermissionSource = {
    check(desktopId, identity, cookie) {
      const call = { desktopId, identity, cookie };
      calls.push(call);
      return state.permission(call);
    },
    close: () => Promise.resolve(),
  };
  const wss = new WebSocketServer({ noServer: true, clientTracking: false, perMessageDeflate: false });
  // The multiplexed route's own server: its upgrades are counted by the headers it writes.
  const connectionWss = new WebSocketServer({ noServer: true, clientTracking: false, perMessageDeflate: false });
  const upgrades = { legacy: 0, multiplexed: 0 };
  wss.on('headers', () => upgrades.legacy++);
  connectionWss.on('headers', () => upgrades.multiplexed++);
  const handshake = new Handshake({
    shardId: SHARD,
    jwtSecret: TEST_SECRET,
    permissions,
    wss,
    connectionWss,
    log,
    metrics,
    accepting: () => state.accepting,
    admit: (identity, desktopId) => {
      limitChecks.push([identity.userId, desktopId]);
      return state.limit(identity, desktopId);
    },
    users: new UserAdmission({ connectRate: 0, connectBurst: 1, maxInFlight: 0, ...users }),
  });

  // Accepted as the primary accepts: paused, never read.
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const sockets: Socket[] = [];
  let lastClient: Socket | null = null;
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });

  /** Hand over a connection whose head (and `early` bytes after it) the primary has read. */
  async function attempt(head: string, early: Buffer = Buffer.alloc(0)): Promise<Attempt> {
    const accepted = once(server, 'connection') as Promise<[Socket]>;
    const client = connect(port, '127.0.0.1');
    client.on('error', () => {});
    sockets.push(client);
    lastClient = client;
    const [socket] = await accepted;
    sockets.push(socket);
    const chunks: Buffer[] = [];
    const reply = new Promise<Reply>((resolve) => {
      client.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        const raw = Buffer.concat(chunks).toString('latin1');
        if (raw.startsWith('HTTP/1.1 101 ') && raw.includes('\r\n\r\n')) resolve(parseReply(raw));
      });
      client.on('end', () => {
        client.end();
        resolve(parseReply(Buffer.concat(chunks).toString('latin1')));
      });
    });
    // As the message arrives in a shard: a view into a larger buffer.
    const bytes = Buffer.concat([Buffer.from('garbage'), Buffer.from(head, 'latin1'), early]).subarray(7);
    let opened: Admitted | null = null;
    let first: (text: string) => void = () => {};
    const firstMessage = new Promise<string>((resolve) => (first = resolve));
    const done = handshake.admit({ type: 'connection', socket, bytes, headLength: Buffer.byteLength(head, 'latin1'), remoteAddress: REMOTE }, (admitted) => {
      opened = admitted;
      sockets.push(admitted.socket);
      admitted.ws.once('message', (data: Buffer) => first(data.toString()));
    });
    return {
      done: within(done, 'admit() to end'),
      reply: within(reply, 'the reply'),
      opened: () => opened,
      firstMessage: within(firstMessage, 'the first message'),
    };
  }

  const rejected = () => log.entries.filter((e) => e.event === 'handshake_rejected').map((e) => e.fields);
  return { handshake, log, metrics, calls, limitChecks, state, upgrades, attempt, rejected, lastClient: () => lastClient! };
}

/** `promise`, or a rejection naming `what` if it has not settled within 5 s (every answer here comes within milliseconds). */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within 5 s`)), 5000).unref();
  });
  const bounded = Promise.race([promise, late]).finally(() => clearTimeout(timer));
  bounded.catch(() => {}); // awaited where it matters; a test need not await all three
  return bounded;
}

const claims = (name: string) => user(name);
const withToken = (tok: string, extra: Record<string, string> = {}) =>
  upgradeHead('/ws/desktop/desk-1', { Cookie: `moodio_access_token=${tok}; theme=dark`, ...extra });
/** The identity the handshake makes of `c`'s token `tok` (its exp in ms, as token-expiry reads it). */
const identityOf = (c: ReturnType<typeof user>, tok: string): Identity => ({
  userId: c.userId,
  firstName: c.firstName!,
  email: c.email!,
  permissionClaim: undefined,
  expiresAt: (JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp * 1000,
});

/** A client frame as a browser sends it: masked. */
function maskedText(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = Buffer.from([1, 2, 3, 4]);
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i % 4]!)]);
}

/** The reply a refusal must read as. */
function assertRefused(reply: Reply, status: number, body: string, retryAfter?: string): void {
  assert.equal(reply.status, status);
  assert.equal(reply.headers['x-moodio-shard'], String(SHARD));
  assert.equal(reply.headers['retry-after'], retryAfter);
  assert.equal(reply.headers.connection, 'close');
  assert.equal(reply.body, body);
}

test('a valid token and a granted permission upgrade the socket; onOpen gets who, where, what and from where; early bytes are the first frame', async (t) => {
  const h = await harness(t);
  const ann = claims('Ann');
  const tok = token(ann);
  h.state.permission = () => Promise.resolve('viewer');
  const a = await h.attempt(withToken(tok), maskedText('{"type":"early"}'));
  await a.done;
  const reply = await a.reply;
  assert.equal(reply.status, 101);
  const opened = a.opened()!;
  assert.deepEqual(
    { ...opened, ws: null, socket: null },
    {
      ws: null,
      socket: null,
      desktopId: 'desk-1',
      multiplexed: false,
      identity: identityOf(ann, tok),
      permission: 'viewer',
      remoteAddress: REMOTE,
      cookie: `moodio_access_token=${tok}; theme=dark`,
    },
  );
  assert.equal(opened.ws.readyState, 1);
  assert.equal(await a.firstMessage, '{"type":"early"}');
  assert.deepEqual(h.calls, [{ desktopId: 'desk-1', identity: identityOf(ann, tok), cookie: `moodio_access_token=${tok}; theme=dark` }]);
  assert.deepEqual(
    h.limitChecks,
    [
      [ann.userId, 'desk-1'],
      [ann.userId, 'desk-1'],
    ],
    'limits checked before the permission API and again after it',
  );
  assert.deepEqual(h.rejected(), []);
  assert.equal(h.metrics.values[Metric.HANDSHAKE_OK], 0, 'the shard counts a 101 once the session exists');
});

test('/ws/connection: upgraded by its own ws server with no room and no permission API call (each topic is authorized on subscribe); the limits still apply', async (t) => {
  const h = await harness(t);
  const ann = claims('Ann');
  const tok = token(ann);
  const a = await h.attempt(upgradeHead('/ws/connection', { Cookie: `moodio_access_token=${tok}` }), maskedText('{"op":"ping"}'));
  await a.done;
  assert.equal((await a.reply).status, 101);
  const opened = a.opened()!;
  assert.deepEqual(
    { ...opened, ws: null, socket: null },
    {
      ws: null,
      socket: null,
      desktopId: '',
      multiplexed: true,
      identity: identityOf(ann, tok),
      permission: 'viewer',
      remoteAddress: REMOTE,
      cookie: `moodio_access_token=${tok}`,
    },
  );
  assert.equal(await a.firstMessage, '{"op":"ping"}');
  assert.deepEqual(h.calls, [], 'no permission API call');
  assert.deepEqual(h.limitChecks, [
    [ann.userId, ''],
    [ann.userId, ''],
  ]);
  assert.deepEqual(h.upgrades, { legacy: 0, multiplexed: 1 });

  // A legacy route goes through the other server.
  const legacy = await h.attempt(withToken(tok));
  await legacy.done;
  assert.equal((await legacy.reply).status, 101);
  assert.deepEqual(h.upgrades, { legacy: 1, multiplexed: 1 });

  h.state.limit = () => Rejections.TOO_MANY_CONNECTIONS_FOR_USER;
  const limited = await h.attempt(upgradeHead('/ws/connection', { Cookie: `moodio_access_token=${tok}` }));
  await limited.done;
  assertRefused(await limited.reply, 429, 'too many connections for user\n');
  assert.deepEqual(h.rejected(), [{ status: 429, reason: 'too_many_connections_for_user', remote: REMOTE }]);
  assert.deepEqual(h.upgrades, { legacy: 1, multiplexed: 1 });
});

test('a head that is not a desktop upgrade is a 400; while draining, 503; neither looks at the token', async (t) => {
  const h = await harness(t);
  for (const head of ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /ws/desktop/desk-1 HTTP/1.1\nHost: x\n\n']) {
    const a = await h.attempt(head);
    await a.done;
    assertRefused(await a.reply, 400, 'bad request\n');
  }
  h.state.accepting = false;
  const a = await h.attempt(withToken(token(claims('Ann'))));
  await a.done;
  assertRefused(await a.reply, 503, 'shutting down\n', '1');
  assert.deepEqual(h.rejected(), [
    { status: 400, reason: 'bad_request', remote: REMOTE },
    { status: 400, reason: 'bad_request', remote: REMOTE },
    { status: 503, reason: 'shutting_down', remote: REMOTE, desktopId: 'desk-1' },
  ]);
  assert.deepEqual([h.calls.length, h.limitChecks.length], [0, 0]);
  assert.deepEqual([h.metrics.values[Metric.HANDSHAKE_4XX], h.metrics.values[Metric.HANDSHAKE_503]], [2, 1]);
});

test('no token, a bad signature or an expired token: 401 with the same body; the code and detail are logged, never sent', async (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: NOW });
  const h = await harness(t);
  const nowS = NOW / 1000;
  const cases: [string, string][] = [
    [upgradeHead('/ws/desktop/desk-1', { Cookie: 'theme=dark' }), AuthErrorCode.MISSING_TOKEN],
    [withToken(rawToken({ alg: 'HS256', typ: 'JWT' }, { userId: 'u-1', exp: nowS + 60 }, 'another-secret-0123456789-abcdefghij')), AuthErrorCode.INVALID_TOKEN],
    [withToken(rawToken({ alg: 'HS256', typ: 'JWT' }, { userId: 'u-1', exp: nowS - 1 })), AuthErrorCode.EXPIRED],
  ];
  for (const [head] of cases) {
    const a = await h.attempt(head);
    await a.done;
    assertRefused(await a.reply, 401, 'unauthorized\n');
  }
  const logged = h.rejected();
  assert.deepEqual(
    logged.map((f) => [f!.status, f!.reason, f!.code, f!.remote, f!.desktopId]),
    cases.map(([, code]) => [401, 'unauthorized', code, REMOTE, 'desk-1']),
  );
  assert.equal(logged[0]!.detail, 'no access token in Sec-WebSocket-Protocol, cookie or Authorization header');
  for (const f of logged) assert.equal(typeof f!.detail, 'string');
  assert.equal(h.metrics.values[Metric.HANDSHAKE_401], 3);
  assert.deepEqual([h.calls.length, h.limitChecks.length], [0, 0]);
});

test('a user over a connection limit gets its refusal before the permission API is asked', async (t) => {
  const h = await harness(t);
  const ann = claims('Ann');
  for (const [rejection, status, body, retryAfter] of [
    [Rejections.TOO_MANY_CONNECTIONS_FOR_USER, 429, 'too many connections for user\n', undefined],
    [Rejections.ROOM_FULL, 503, 'room full\n', '5'],
  ] as const) {
    h.state.limit = () => rejection;
    const a = await h.attempt(withToken(token(ann)));
    await a.done;
    assertRefused(await a.reply, status, body, retryAfter);
  }
  assert.deepEqual(h.rejected(), [
    { status: 429, reason: 'too_many_connections_for_user', remote: REMOTE, desktopId: 'desk-1' },
    { status: 503, reason: 'room_full', remote: REMOTE, desktopId: 'desk-1' },
  ]);
  assert.deepEqual(h.limitChecks, [
    [ann.userId, 'desk-1'],
    [ann.userId, 'desk-1'],
  ]);
  assert.equal(h.calls.length, 0);
  assert.deepEqual([h.metrics.values[Metric.HANDSHAKE_4XX], h.metrics.values[Metric.HANDSHAKE_503]], [1, 1]);
});

test('per-user connect rate: 429 with the seconds until the next token; other users are not affected', async (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: NOW });
  const h = await harness(t, { connectRate: 0.1, connectBurst: 1 });
  const ann = claims('Ann');
  const first = await h.attempt(withToken(token(ann)));
  await first.done;
  assert.equal((await first.reply).status, 101);
  const second = await h.attempt(withToken(token(ann)));
  await second.done;
  assertRefused(await second.reply, 429, 'too many connects for user\n', '10');
  const bob = await h.attempt(withToken(token(claims('Bob'))));
  await bob.done;
  assert.equal((await bob.reply).status, 101);
  assert.deepEqual(h.rejected(), [{ status: 429, reason: 'too_many_connects_for_user', remote: REMOTE, desktopId: 'desk-1' }]);
  assert.deepEqual(
    [h.metrics.values[Metric.REFUSED_CONNECT_RATE], h.metrics.values[Metric.REFUSED_HANDSHAKES_IN_FLIGHT], h.metrics.values[Metric.HANDSHAKE_4XX]],
    [1, 0, 1],
  );
  assert.equal(h.calls.length, 2);
});

test('per-user handshakes in flight: 429 while one waits for the permission API; the slot is free once it ends, granted or not', async (t) => {
  const h = await harness(t, { maxInFlight: 1 });
  const ann = claims('Ann');
  const answers: ((p: Permission | Error) => void)[] = [];
  h.state.permission = () => new Promise((resolve, reject) => answers.push((p) => (p instanceof Error ? reject(p) : resolve(p))));
  const first = await h.attempt(withToken(token(ann)));
  const second = await h.attempt(withToken(token(ann)));
  await second.done;
  assertRefused(await second.reply, 429, 'too many handshakes for user\n', '1');
  assert.deepEqual([h.metrics.values[Metric.REFUSED_HANDSHAKES_IN_FLIGHT], h.metrics.values[Metric.REFUSED_CONNECT_RATE]], [1, 0]);
  answers[0]!(new PermissionError(PermissionErrorCode.DENIED, 'denied'));
  await first.done;
  assertRefused(await first.reply, 403, 'forbidden\n');
  const third = await h.attempt(withToken(token(ann)));
  answers[1]!('editor');
  await third.done;
  assert.equal((await third.reply).status, 101);
  const fourth = await h.attempt(withToken(token(ann)));
  answers[2]!('editor');
  await fourth.done;
  assert.equal((await fourth.reply).status, 101);
  assert.equal(h.calls.length, 3);
});

test('permission answers: denied or nonsense → 403, unreachable → 503 in 2 s, busy → 503 in 1 s, a bug → 500 and an error log', async (t) => {
  const h = await harness(t);
  const cases: [Error, number, string, string | undefined][] = [
    [new PermissionError(PermissionErrorCode.DENIED, 'the API said 403'), 403, 'forbidden\n', undefined],
    [new PermissionError(PermissionErrorCode.BAD_RESPONSE, 'the API said "owner"'), 403, 'forbidden\n', undefined],
    [new PermissionError(PermissionErrorCode.UNAVAILABLE, 'the API timed out'), 503, 'permission service unavailable\n', '2'],
    [new PermissionError(PermissionErrorCode.BUSY, '64 lookups wait'), 503, 'permission service busy\n', '1'],
    [new TypeError('a bug'), 500, 'internal error\n', undefined],
  ];
  for (const [err, status, body, retryAfter] of cases) {
    h.state.permission = () => Promise.reject(err);
    const a = await h.attempt(withToken(token(claims('Ann'))));
    await a.done;
    assertRefused(await a.reply, status, body, retryAfter);
    assert.equal(a.opened(), null);
  }
  assert.deepEqual(h.rejected(), [
    { status: 403, reason: 'forbidden', code: PermissionErrorCode.DENIED, detail: 'the API said 403', remote: REMOTE, desktopId: 'desk-1' },
    { status: 403, reason: 'forbidden', code: PermissionErrorCode.BAD_RESPONSE, detail: 'the API said "owner"', remote: REMOTE, desktopId: 'desk-1' },
    { status: 503, reason: 'permission_unavailable', code: PermissionErrorCode.UNAVAILABLE, detail: 'the API timed out', remote: REMOTE, desktopId: 'desk-1' },
    { status: 503, reason: 'permission_busy', code: PermissionErrorCode.BUSY, detail: '64 lookups wait', remote: REMOTE, desktopId: 'desk-1' },
    { status: 500, reason: 'internal_error', remote: REMOTE, desktopId: 'desk-1' },
  ]);
  const errors = h.log.entries.filter((e) => e.level === 'error');
  assert.deepEqual(errors, [{ level: 'error', event: 'handshake_failed', fields: { desktopId: 'desk-1', remote: REMOTE, err: cases[4]![0] } }]);
  assert.deepEqual([h.metrics.values[Metric.HANDSHAKE_403], h.metrics.values[Metric.HANDSHAKE_503], h.metrics.values[Metric.HANDSHAKE_4XX]], [2, 2, 1]);
});

test('while the permission API answers, the shard starts draining, or the user reaches a limit: refused after all', async (t) => {
  const h = await harness(t);
  let answer: (p: Permission) => void = () => {};
  h.state.permission = () => new Promise((resolve) => (answer = resolve));
  const draining = await h.attempt(withToken(token(claims('Ann'))));
  h.state.accepting = false;
  answer('editor');
  await draining.done;
  assertRefused(await draining.reply, 503, 'shutting down\n', '1');
  assert.equal(draining.opened(), null);

  h.state.accepting = true;
  const limited = await h.attempt(withToken(token(claims('Bob'))));
  h.state.limit = () => Rejections.TOO_MANY_CONNECTIONS_FOR_USER;
  answer('editor');
  await limited.done;
  assertRefused(await limited.reply, 429, 'too many connections for user\n');
  assert.equal(limited.opened(), null);
  assert.deepEqual(
    h.rejected().map((f) => f!.reason),
    ['shutting_down', 'too_many_connections_for_user'],
  );
  assert.equal(h.calls.length, 2);
});

test('refusal log lines: at most 100 a second, and the next one says how many were left out', async (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: NOW });
  const h = await harness(t);
  h.state.accepting = false;
  const refuse = async () => {
    const a = await h.attempt(withToken('x'));
    await a.done;
    assertRefused(await a.reply, 503, 'shutting down\n', '1');
  };
  for (let i = 0; i < 102; i++) await refuse();
  assert.equal(h.rejected().length, 100);
  assert.equal(h.log.entries.length, 100);
  t.mock.timers.tick(1000);
  await refuse();
  assert.deepEqual(h.rejected().at(-1), { status: 503, reason: 'shutting_down', remote: REMOTE, desktopId: 'desk-1', suppressed: 2 });
  assert.equal(h.metrics.values[Metric.HANDSHAKE_503], 103);
});

test('a client that resets while the permission API answers: its refusal meets a dead socket, and nothing throws', async (t) => {
  const h = await harness(t);
  let answer: (err: Error) => void = () => {};
  h.state.permission = () => new Promise((_resolve, reject) => (answer = reject));
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  t.after(() => process.off('uncaughtException', onUncaught));
  // Answered sockets are counted while they linger (src/linger.ts): the count tells when this one is gone.
  const lingering = new MetricsSlot(createMetricsBuffer(1), 0);
  reportLingeringTo(lingering);
  const settled = async () => {
    while (lingering.values[Metric.LINGERING] !== 0) await new Promise((resolve) => setImmediate(resolve));
  };
  await settled(); // earlier tests' answered sockets
  const a = await h.attempt(withToken(token(claims('Ann'))));
  const client = h.lastClient();
  client.resetAndDestroy();
  await once(client, 'close');
  answer(new PermissionError(PermissionErrorCode.DENIED, 'denied'));
  await a.done;
  assert.equal(lingering.values[Metric.LINGERING], 1);
  // The refusal's write fails (EPIPE or ECONNRESET): the socket errors and closes.
  await settled();
  assert.equal(lingering.values[Metric.LINGER_CUT], 0, 'closed by its error, not cut at the linger deadline');
  assert.deepEqual(uncaught, []);
  assert.deepEqual(
    h.rejected().map((f) => f!.reason),
    ['forbidden'],
  );
});

test('UserAdmission on its own: in flight per user up to the limit, released one by one; a user leaves the map with its last handshake', () => {
  const admission = new UserAdmission({ connectRate: 0, connectBurst: 1, maxInFlight: 2 });
  const inFlight = () => (admission as unknown as { inFlight: Map<string, number> }).inFlight;
  assert.equal(admission.enter('ann', NOW), null);
  assert.equal(admission.enter('ann', NOW), null);
  assert.deepEqual(admission.enter('ann', NOW), { limit: 'in_flight', retryAfterSeconds: 1 });
  assert.equal(admission.enter('bob', NOW), null);
  admission.leave('ann');
  assert.deepEqual(
    [...inFlight()],
    [
      ['ann', 1],
      ['bob', 1],
    ],
  );
  assert.equal(admission.enter('ann', NOW), null);
  assert.deepEqual(admission.enter('ann', NOW), { limit: 'in_flight', retryAfterSeconds: 1 });
  admission.leave('ann');
  admission.leave('ann');
  admission.leave('bob');
  assert.deepEqual([...inFlight()], []);
  // A leave without an enter changes nothing.
  admission.leave('carol');
  assert.deepEqual([...inFlight()], []);
  assert.equal(admission.enter('carol', NOW), null);
  assert.equal(admission.enter('carol', NOW), null);
  assert.deepEqual(admission.enter('carol', NOW), { limit: 'in_flight', retryAfterSeconds: 1 });
  // 0 = no limit.
  const open = new UserAdmission({ connectRate: 0, connectBurst: 1, maxInFlight: 0 });
  for (let i = 0; i < 100; i++) assert.equal(open.enter('ann', NOW), null);
});

test('UserAdmission connect rate: the burst, then a token per 1/rate; Retry-After rounds up to whole seconds, at least 1', () => {
  const admission = new UserAdmission({ connectRate: 0.5, connectBurst: 2, maxInFlight: 0 });
  assert.equal(admission.enter('ann', NOW), null);
  assert.equal(admission.enter('ann', NOW), null);
  assert.deepEqual(admission.enter('ann', NOW), { limit: 'connect_rate', retryAfterSeconds: 2 });
  assert.deepEqual(admission.enter('ann', NOW + 1999), { limit: 'connect_rate', retryAfterSeconds: 1 });
  assert.equal(admission.enter('ann', NOW + 2000), null);
  const fast = new UserAdmission({ connectRate: 100, connectBurst: 1, maxInFlight: 0 });
  assert.equal(fast.enter('ann', NOW), null);
  assert.deepEqual(fast.enter('ann', NOW), { limit: 'connect_rate', retryAfterSeconds: 1 });
});

test('a legacy route’s ?epoch=…&offset=… is handed to the room as the resume position; a query without them, or /ws/connection, hands none', async (t) => {
  const h = await harness(t);
  const tok = token(claims('Ann'));
  const cookie = { Cookie: `moodio_access_token=${tok}` };
  const resumed = await h.attempt(upgradeHead('/ws/desktop/desk-1?v=2&epoch=mxd.3&offset=41', cookie));
  await resumed.done;
  assert.equal((await resumed.reply).status, 101);
  assert.deepEqual(resumed.opened()!.resume, { epoch: 'mxd.3', offset: 41 });
  assert.equal(resumed.opened()!.desktopId, 'desk-1');
  const plain = await h.attempt(upgradeHead('/ws/desktop/desk-1?v=2', cookie));
  await plain.done;
  assert.equal('resume' in plain.opened()!, false);
  const conn = await h.attempt(upgradeHead('/ws/connection?epoch=a&offset=1', cookie));
  await conn.done;
  assert.equal('resume' in conn.opened()!, false);
});
