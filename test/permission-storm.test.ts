/**
 * Handshake storms against the permission API (issue 11, findings 5 and 6):
 * identical lookups in flight share one request, answers are reused for
 * --permission-cache-ttl (denials 5 s at most), the queue to the API is
 * bounded, and one user's handshakes in flight and connects per second are
 * limited (429 with Retry-After) before the API is asked.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { connect, HandshakeRejected, join, rawRequest, upgradeHead } from './helpers/client.ts';
import { scrape } from './helpers/metrics.ts';
import { grant, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

async function serve(t: TestContext, stub: PermissionStub, args: string[]): Promise<ServerProcess> {
  return startServer(t, { workers: 2, permissionApiBase: stub.base, args });
}

/** Settle every handshake: the status of each refusal, 101 for each success. */
async function statuses(attempts: Promise<unknown>[]): Promise<number[]> {
  const settled = await Promise.allSettled(attempts);
  return settled.map((r) => {
    if (r.status === 'fulfilled') return 101;
    if (r.reason instanceof HandshakeRejected) return r.reason.status;
    throw r.reason;
  });
}

test('200 handshakes of one user to one desktop at once ask the API once; reconnecting within the TTL asks nothing', async (t) => {
  const stub = await startPermissionStub(t);
  // Answers after 100 ms, so that every handshake arrives while the first lookup is in flight.
  stub.handle((req, res) => void setTimeout(() => grant('editor')(req, res), 100));
  const server = await serve(t, stub, [
    '--max-handshakes-per-user',
    '0',
    '--connect-rate',
    '0',
    '--max-connections-per-user',
    '0',
    '--max-pending-per-address',
    '0',
  ]);
  const room = desktop();
  const tok = token(user('Sto'));
  const first = await Promise.all(Array.from({ length: 200 }, () => connect(t, server.wsUrl(room), { token: tok })));
  assert.equal(stub.requests.length, 1, 'one request for 200 identical lookups in flight');
  await Promise.all(first.map((c) => c.close()));
  await Promise.all(Array.from({ length: 50 }, () => connect(t, server.wsUrl(room), { token: tok })));
  assert.equal(stub.requests.length, 1, 'the reconnect storm is answered from the cache');
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_permission_lookups_total{outcome="shared"}'), 199);
  assert.equal(metrics.get('moodio_rt_permission_lookups_total{outcome="cached"}'), 50);
});

test('a denial is remembered; with --permission-cache-ttl 0 every handshake asks', async (t) => {
  const stub = await startPermissionStub(t);
  stub.handle((_req, res) => {
    res.statusCode = 403;
    res.end('{}');
  });
  const cached = await serve(t, stub, []);
  const room = desktop();
  const tok = token(user('Den'));
  for (let i = 0; i < 3; i++) {
    await assert.rejects(connect(t, cached.wsUrl(room), { token: tok }), (err: HandshakeRejected) => err.status === 403);
  }
  assert.equal(stub.requests.length, 1, 'a denial is reused');

  const uncached = await serve(t, stub, ['--permission-cache-ttl', '0']);
  for (let i = 0; i < 3; i++) {
    await assert.rejects(connect(t, uncached.wsUrl(room), { token: tok }), (err: HandshakeRejected) => err.status === 403);
  }
  assert.equal(stub.requests.length, 4, 'without a cache, each handshake asks');
});

test('past --permission-queue, handshakes fail fast with 503 and Retry-After instead of queueing', async (t) => {
  const stub = await startPermissionStub(t);
  stub.handle(() => 'hang');
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--permission-concurrency', '2', '--permission-queue', '3', '--permission-timeout', '30s'],
  });
  const room = desktop();
  // Five lookups fill the two connections and the queue of three; they never settle.
  for (let i = 0; i < 5; i++) connect(t, server.wsUrl(room), { token: token(user('Que')) }).catch(() => {});
  // Wait until the two connections to the API are busy, then overflow the queue.
  while (stub.requests.length < 2) await new Promise((r) => setImmediate(r));
  const started = Date.now();
  const refused = await statuses(Array.from({ length: 5 }, () => connect(t, server.wsUrl(room), { token: token(user('Ove')) })));
  assert.deepEqual(refused, [503, 503, 503, 503, 503]);
  assert.ok(Date.now() - started < 5000, 'refused at once, not after the 30 s timeout');
  const rejection = await connect(t, server.wsUrl(room), { token: token(user('Ret')) }).catch((e: HandshakeRejected) => e);
  assert.ok(rejection instanceof HandshakeRejected);
  assert.equal(rejection.headers['retry-after'], '1');
  assert.equal((await scrape(server.port)).metrics.get('moodio_rt_permission_lookups_total{outcome="queue_full"}'), 6);
});

test('--max-handshakes-per-user: one user cannot fill the queue to the API; others still get in', async (t) => {
  const stub = await startPermissionStub(t);
  const hung = new Set<string>();
  stub.handle((req, res) => {
    if (req.userId !== null && hung.has(req.userId)) return 'hang';
    grant('editor')(req, res);
  });
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--max-handshakes-per-user', '3', '--permission-timeout', '30s'] });
  const greedy = user('Gre');
  hung.add(greedy.userId);
  const tok = token(greedy);
  // Distinct desktops: no two lookups are identical, so single-flight does not merge them.
  // Three hang at the API; the other five must be refused, whichever they are.
  const refused: number[] = [];
  await new Promise<void>((resolve) => {
    for (let i = 0; i < 8; i++) {
      connect(t, server.wsUrl(desktop()), { token: tok }).catch((err: HandshakeRejected) => {
        refused.push(err.status);
        if (refused.length === 5) resolve();
      });
    }
  });
  assert.deepEqual(refused, [429, 429, 429, 429, 429]);
  while (stub.requests.length < 3) await new Promise((r) => setTimeout(r, 5));
  assert.equal(stub.requests.length, 3);
  // Another user is not held up.
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Oth')) });
  assert.equal(joined.type, 'room_joined');
  assert.equal((await scrape(server.port)).metrics.get('moodio_rt_handshakes_refused_total{limit="in_flight"}'), 5);
});

test('--connect-rate: a user who churns connections gets 429 past the burst, and the room hears only the admitted ones', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--connect-rate', '1', '--connect-burst', '3'] });
  const room = desktop();
  const { client: watcher } = await join(t, server.wsUrl(room), { token: token(user('Wat')) });
  const churner = token(user('Chu'));
  const outcomes: number[] = [];
  let retryAfter = '';
  // Each admitted connect must cost the watcher exactly one join and one leave.
  for (let i = 0; i < 10; i++) {
    try {
      const client = await connect(t, server.wsUrl(room), { token: churner });
      assert.equal((await watcher.next()).type, 'session_joined');
      await client.close();
      assert.equal((await watcher.next()).type, 'session_left');
      outcomes.push(101);
    } catch (err) {
      assert.ok(err instanceof HandshakeRejected);
      outcomes.push(err.status);
      retryAfter = String(err.headers['retry-after']);
    }
  }
  assert.deepEqual(outcomes.slice(0, 3), [101, 101, 101]);
  assert.ok(outcomes.slice(3).filter((s) => s === 429).length >= 6, `outcomes ${outcomes}`);
  assert.ok(Number(retryAfter) >= 1);
  // Nothing else reached the watcher: a marker from a new member is its next frame.
  const admitted = outcomes.filter((s) => s === 101).length;
  const { client: marker } = await join(t, server.wsUrl(room), { token: token(user('Mar')) });
  assert.equal((await watcher.next()).type, 'session_joined');
  marker.send({ type: 'marker' });
  assert.equal((await watcher.next()).type, 'marker');
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_handshakes_refused_total{limit="connect_rate"}'), 10 - admitted);
  assert.equal(stub.requests.length, 3, 'the watcher, the first churn and the marker asked the API; the rest came from the cache or were refused first');
});

test("--handshake-rate-per-address: a handshake flood from one address gets 429 from the primary; other addresses, and a proxy's other clients, do not", async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--handshake-rate-per-address', '2', '--trust-proxy', '127.0.0.3'] });
  // 5 s worth at once (10), then 2 a second: bad tokens, as a flood would send them.
  const statusesOf = async (n: number, headers: Record<string, string>, localAddress?: string) => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { Authorization: 'Bearer not-a-token', ...headers })], {
        localAddress,
      });
      out.push(res.status);
      if (res.status === 429) assert.ok(Number(res.headers['retry-after']) >= 1);
    }
    return out;
  };
  const flood = await statusesOf(14, {});
  assert.deepEqual(flood.slice(0, 10), Array(10).fill(401));
  assert.ok(
    flood.slice(10).every((s) => s === 429),
    `flood: ${flood}`,
  );
  // Another address is not held up.
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Oth')), wsOptions: { localAddress: '127.0.0.2' } });
  assert.equal(joined.type, 'room_joined');
  // Behind a trusted proxy, clients count by their forwarded address.
  const a = await statusesOf(11, { 'X-Forwarded-For': '203.0.113.1' }, '127.0.0.3');
  const b = await statusesOf(3, { 'X-Forwarded-For': '203.0.113.2' }, '127.0.0.3');
  assert.equal(a.at(-1), 429);
  assert.deepEqual(b, [401, 401, 401]);
  assert.ok((await scrape(server.port, undefined, '127.0.0.4')).metrics.get('moodio_rt_handshakes_refused_total{limit="address_rate"}')! >= 5);
});
