/**
 * The primary: what it answers itself, and which shard gets each desktop.
 * Rejections are checked with hand-written requests on raw sockets.
 */
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { route, shardFor } from '../src/primary/router.ts';
import { ACCESS_TOKEN_COOKIE, SHARD_HEADER } from '../src/protocol/events.ts';
import { parseRequestHead } from '../src/protocol/http.ts';
import { connect, join, rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WORKERS = 2;
const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: ['--handshake-timeout', '400ms'] });
});
after(() => cleanup.run());

const authHeader = () => ({ Cookie: `${ACCESS_TOKEN_COOKIE}=${token(user('Rob'))}` });

test('GET /health → 200 ok, answered by the primary', async () => {
  const res = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(res.status, 200);
  assert.equal(res.body, 'ok');
  assert.equal(res.headers[SHARD_HEADER], undefined);
  const head = await rawRequest(server.port, ['HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
});

test('the same desktop always lands on the same shard, which is fnv1a32(id) mod workers', async (t) => {
  for (const id of ['a', 'demo', desktop(), desktop()]) {
    const shards = new Set<number>();
    for (let i = 0; i < 4; i++) shards.add((await connect(t, server.wsUrl(id), { token: token(user('Sam')) })).shard);
    assert.deepEqual([...shards], [shardFor(id, WORKERS)], `desktop ${id}`);
  }
});

test('desktops spread over every shard', async (t) => {
  const seen = new Set<number>();
  // Fixed ids, so the outcome is deterministic: fnv1a32 sends these 16 to both shards.
  for (let i = 0; i < 16; i++) seen.add((await connect(t, server.wsUrl(`spread-${i}`), { token: token(user('Sue')) })).shard);
  assert.deepEqual([...seen].sort(), [0, 1]);
});

test('invalid desktop ids → 400', async () => {
  for (const id of ['bad.id', 'a%20b', 'x'.repeat(129), '', '%2e%2e', 'é']) {
    const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${id}`, authHeader())]);
    assert.equal(res.status, 400, `id ${JSON.stringify(id)}: ${res.head}`);
  }
  const longest = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${'x'.repeat(128)}`, authHeader())], { until: untilJoined });
  assert.equal(longest.status, 101, 'a 128-character id is valid');
});

test('unknown paths → 404, including traversal and nested paths', async () => {
  for (const path of ['/', '/ws', '/ws/desktop', '/ws/desktop/a/b', '/ws/desktop/../health', '/WS/desktop/a', '/healthz']) {
    const res = await rawRequest(server.port, [upgradeHead(path, authHeader())]);
    assert.equal(res.status, 404, `path ${path}`);
  }
});

test('a plain GET on the WebSocket path → 426 Upgrade Required; other methods → 405', async () => {
  const res = await rawRequest(server.port, [`GET /ws/desktop/${desktop()} HTTP/1.1\r\nHost: x\r\n\r\n`]);
  assert.equal(res.status, 426);
  assert.equal(res.headers.upgrade, 'websocket');
  const post = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`).replace('GET', 'POST')]);
  assert.equal(post.status, 405);
});

test('route: an upgrade with a body, or whose Connection does not list upgrade, is refused', () => {
  const decide = (headers: string) => {
    const parsed = parseRequestHead(Buffer.from(`GET /ws/desktop/abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n${headers}\r\n`));
    assert.ok(parsed.ok);
    const decision = route(parsed.head, { workers: 2, adminToken: '', allowedOrigins: [], metricsToken: '' });
    return decision.kind === 'reject' ? decision.rejection.status : decision.kind;
  };
  assert.equal(decide('Connection: Upgrade\r\n'), 'shard');
  assert.equal(decide('Connection: keep-alive, upgrade\r\n'), 'shard');
  assert.equal(decide('connection: UPGRADE\r\nContent-Length: 0\r\n'), 'shard');
  assert.equal(decide(''), 426);
  assert.equal(decide('Connection: keep-alive\r\n'), 426);
  assert.equal(decide('Connection: upgrades\r\n'), 426);
  assert.equal(decide('Connection: Upgrade\r\nContent-Length: 5\r\n'), 400);
  assert.equal(decide('Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n'), 400);
  assert.equal(decide('Connection: Upgrade\r\nTransfer-Encoding: identity\r\n'), 400);
});

/** Until-condition: a whole answer (head and the short body of a refusal), or a 101 head. */
const answered = (raw: string): boolean => /\r\n\r\n[\s\S]*\n$/.test(raw) || raw.startsWith('HTTP/1.1 101');

test('an upgrade with Content-Length or Transfer-Encoding → 400; Content-Length: 0 is accepted', async () => {
  const path = () => `/ws/desktop/${desktop()}`;
  const withLength = await rawRequest(server.port, [upgradeHead(path(), { ...authHeader(), 'Content-Length': '5' }) + 'hello'], { until: answered });
  assert.equal(withLength.status, 400);
  assert.equal(withLength.body, 'body not allowed\n');
  const chunked = await rawRequest(server.port, [upgradeHead(path(), { ...authHeader(), 'Transfer-Encoding': 'chunked' }) + '0\r\n\r\n'], { until: answered });
  assert.equal(chunked.status, 400);
  const empty = await rawRequest(server.port, [upgradeHead(path(), { ...authHeader(), 'Content-Length': '0' })], { until: untilJoined });
  assert.equal(empty.status, 101);
});

test('an upgrade without Connection: upgrade → 426; the token may sit in a list, in any case', async () => {
  const path = () => `/ws/desktop/${desktop()}`;
  const missing = await rawRequest(server.port, [upgradeHead(path(), authHeader()).replace('Connection: Upgrade\r\n', '')], { until: answered });
  assert.equal(missing.status, 426);
  assert.equal(missing.headers.upgrade, 'websocket');
  const other = await rawRequest(server.port, [upgradeHead(path(), { ...authHeader(), Connection: 'keep-alive' })], { until: answered });
  assert.equal(other.status, 426);
  const listed = await rawRequest(server.port, [upgradeHead(path(), { ...authHeader(), Connection: 'keep-alive, UPGRADE' })], { until: untilJoined });
  assert.equal(listed.status, 101);
});

test("a head larger than 16 KiB (the default, as Node's) → 431; one of exactly 16 KiB is accepted", async () => {
  const big = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { 'X-Pad': 'p'.repeat(16 * 1024) })]);
  assert.equal(big.status, 431);
  const base = upgradeHead(`/ws/desktop/${desktop()}`, { ...authHeader(), 'X-Pad': '' }).length;
  const fits = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { ...authHeader(), 'X-Pad': 'p'.repeat(16 * 1024 - base) })], {
    until: untilJoined,
  });
  assert.equal(fits.status, 101);
});

test('malformed heads → 400 (bare LF, header injection, NUL, obs-fold, duplicate Host)', async () => {
  const id = desktop();
  const cases = [
    `GET /ws/desktop/${id} HTTP/1.1\nHost: x\n\n\r\n\r\n`,
    `GET /ws/desktop/${id} HTTP/1.1\r\nHost: x\r\nX-A: b\rInjected: 1\r\n\r\n`,
    `GET /ws/desktop/${id} HTTP/1.1\r\nHost: x\0\r\n\r\n`,
    `GET /ws/desktop/${id} HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n`,
    `GET /ws/desktop/${id} HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\n\r\n`,
    `GET  /ws/desktop/${id} HTTP/1.1\r\n\r\n`,
    `GET /ws/desktop/${id}\r\n\r\n`,
    `\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n`,
  ];
  for (const head of cases) {
    const res = await rawRequest(server.port, [head]);
    assert.equal(res.status, 400, JSON.stringify(head));
  }
  const http2 = await rawRequest(server.port, [`GET /ws/desktop/${id} HTTP/2.0\r\nHost: x\r\n\r\n`]);
  assert.equal(http2.status, 505);
});

test('a head that arrives in many small pieces is reassembled and upgraded', async () => {
  const head = upgradeHead(`/ws/desktop/${desktop()}`, authHeader());
  const pieces: string[] = [];
  for (let i = 0; i < head.length; i += 40) pieces.push(head.slice(i, i + 40));
  const res = await rawRequest(server.port, pieces, { gapMs: 5, until: untilJoined });
  assert.equal(res.status, 101);
  assert.match(res.raw, /"type":"room_joined"/);
});

test('bytes sent right behind the head (an early frame) reach the shard intact', async (t) => {
  const room = desktop();
  const { client: peer } = await join(t, server.wsUrl(room), { token: token(user('Pia')) });
  const text = Buffer.from(JSON.stringify({ type: 'asset_moved', payload: { early: true } }));
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(text.map((b, i) => b ^ mask[i % 4]!));
  const frame = Buffer.concat([Buffer.from([0x81, 0x80 | text.length]), mask, masked]);
  const socket = netConnect(server.port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.write(Buffer.concat([Buffer.from(upgradeHead(`/ws/desktop/${room}`, authHeader())), frame]));
  assert.equal((await peer.expect('session_joined')).type, 'session_joined');
  assert.deepEqual((await peer.expect('asset_moved')).payload, { early: true });
});

test('a client that never finishes its head is closed after --handshake-timeout', async () => {
  const started = Date.now();
  const res = await rawRequest(server.port, [`GET /ws/desktop/${desktop()} HTTP/1.1\r\nHost: x\r\n`]);
  assert.equal(res.raw, '', 'closed without a response');
  assert.ok(Date.now() - started >= 350, 'not before the timeout');
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'handshake_timeout');
});

test('hundreds of half-open handshakes do not hold up a real one', async (t) => {
  // A server of its own with the default handshake timeout (10 s), so that the half-open crowd stays pending throughout.
  const stub = await startPermissionStub(t);
  const own = await startServer(t, { workers: WORKERS, permissionApiBase: stub.base });
  /** Median time of `n` real handshakes, one after another, to room_joined. */
  const handshakeMs = async (n: number): Promise<number> => {
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const started = performance.now();
      const { client } = await join(t, own.wsUrl(desktop()), { token: token(user('Quick')) });
      times.push(performance.now() - started);
      client.ws.terminate();
    }
    return times.sort((a, b) => a - b)[Math.floor(n / 2)]!;
  };
  await handshakeMs(3); // warm-up
  const baseline = await handshakeMs(10);
  const idle: Socket[] = [];
  t.after(() => idle.forEach((s) => s.destroy()));
  await Promise.all(
    // From ten other addresses, 60 each: under --max-pending-per-address, so all 600 are pending.
    Array.from(
      { length: 600 },
      (_, i) =>
        new Promise<void>((resolve) => {
          const s = netConnect({ port: own.port, host: '127.0.0.1', localAddress: `127.0.0.${10 + (i % 10)}` }, () => {
            s.write('GET /ws/desktop/slow HTTP/1.1\r\n');
            resolve();
          });
          s.on('error', () => {});
          idle.push(s);
        }),
    ),
  );
  const during = await handshakeMs(10);
  assert.ok(baseline < 150, `a real handshake takes ${baseline.toFixed(1)} ms on a quiet server`);
  assert.ok(during <= Math.max(3 * baseline, baseline + 50), `median handshake ${during.toFixed(1)} ms with 600 half-open, ${baseline.toFixed(1)} ms without`);
  assert.equal(idle.filter((s) => s.destroyed).length, 0, 'the half-open crowd was still there');
  const health = await rawRequest(own.port, ['GET /health HTTP/1.1\r\n\r\n']);
  assert.equal(health.status, 200);
});
