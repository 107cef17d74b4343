/**
 * A slowloris (connections that never send a byte) must not turn other
 * clients away: one address is held to --max-pending-per-address slow
 * heads, and a full pending table sheds the connection with the least
 * progress instead of refusing the newcomer. The address limit bites on
 * slowness, not on concurrency: an office behind one address opening 200
 * tabs at once is admitted.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PendingTable } from '../src/primary/pending-table.ts';
import { addressKey, PENDING_SLOW_AFTER_MS } from '../src/primary/primary.ts';
import { join, rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { count, Crowd, type IdleSocket } from './helpers/idle.ts';
import { scrape, untilMetrics, type Metrics } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop, type Scope } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const FLOOD = 1500;
/** The defaults of --max-pending-handshakes and --max-pending-per-address (src/config.ts). */
const MAX_PENDING = 1000;
const PER_ADDRESS = 64;
const OTHER = '127.0.0.2';
/** Tabs opened at once behind one address (an office's NAT). */
const OFFICE = 200;

test('the victim is the oldest silent connection, else the fewest bytes (ties: the oldest)', () => {
  const table = new PendingTable<string, { received: number }>({ slowAfterMs: 1000, maxSlowPerAddress: 64 });
  const a = { received: 0 };
  const b = { received: 0 };
  const c = { received: 0 };
  table.add('a', a, '10.0.0.1', 0);
  table.add('b', b, '10.0.0.1', 0);
  table.add('c', c, null, 0);
  assert.equal(table.leastProgress(), 'a');
  a.received = 10;
  assert.equal(table.leastProgress(), 'b', 'a sent bytes: the oldest silent one is next');
  b.received = 5;
  c.received = 5;
  assert.equal(table.leastProgress(), 'b', 'none silent: fewest bytes, the older of a tie');
  table.delete('b');
  assert.equal(table.leastProgress(), 'c');
  table.add('d', { received: 0 }, '10.0.0.1', 0);
  assert.equal(table.leastProgress(), 'd', 'a newcomer that has sent nothing');
  assert.equal(table.size, 3);
  assert.equal(table.delete('b'), undefined);
});

test('a connection counts against its address only once pending for slowAfterMs; past the limit, those turning slow are handed back', () => {
  const table = new PendingTable<string, { received: number }>({ slowAfterMs: 1000, maxSlowPerAddress: 2 });
  table.add('o', { received: 0 }, '10.0.0.2', 0);
  table.add('x', { received: 0 }, null, 0);
  for (const [key, at] of [
    ['a', 0],
    ['b', 10],
    ['c', 20],
    ['d', 30],
  ] as const)
    table.add(key, { received: 0 }, '10.0.0.1', at);
  assert.equal(table.fromAddress('10.0.0.1'), 0, 'four at once from one address: none is slow yet');
  assert.equal(table.addressFull('10.0.0.1'), false);
  assert.equal(table.nextSlowAt(), 1000);
  assert.deepEqual(table.age(999), []);
  assert.deepEqual(table.age(1010), []);
  assert.equal(table.fromAddress('10.0.0.1'), 2, 'a and b are slow');
  assert.equal(table.fromAddress('10.0.0.2'), 1);
  assert.equal(table.addressFull('10.0.0.1'), true, 'a newcomer from it is refused');
  assert.equal(table.nextSlowAt(), 1020);
  // c turns slow with its address full: handed back and gone from the table.
  assert.deepEqual(table.age(1020), [['c', { received: 0 }]]);
  assert.equal(table.has('c'), false);
  assert.equal(table.size, 5);
  // One of the slow ones completes (or closes): d, turning slow, takes its place.
  table.delete('a');
  assert.equal(table.fromAddress('10.0.0.1'), 1);
  assert.deepEqual(table.age(5000), []);
  assert.equal(table.fromAddress('10.0.0.1'), 2);
  assert.equal(table.nextSlowAt(), undefined, 'x is exempt: never counted');
  for (const key of ['b', 'd', 'o', 'x']) table.delete(key);
  assert.equal(table.fromAddress('10.0.0.1'), 0);
  assert.equal(table.fromAddress('10.0.0.2'), 0);
  assert.equal(table.size, 0);
  const unlimited = new PendingTable<string, { received: number }>({ slowAfterMs: 1000, maxSlowPerAddress: 0 });
  for (let i = 0; i < 100; i++) unlimited.add(String(i), { received: 0 }, '10.0.0.1', 0);
  assert.deepEqual(unlimited.age(2000), []);
  assert.equal(unlimited.addressFull('10.0.0.1'), false);
});

test('the address limit counts an IPv4 address, or the /64 of an IPv6 address', () => {
  assert.equal(addressKey('127.0.0.2'), '127.0.0.2');
  assert.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:DB8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:0db8:0001:0002::ffff'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(addressKey('::1'), '0:0:0:0::/64');
  assert.equal(addressKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:2:ffff:ffff:ffff:ffff'));
  assert.notEqual(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:3::1'));
});

/** Joins and `GET /health`s from another address, all at once; every one must succeed. */
async function fromOtherAddress(t: Scope, port: number, wsUrl: (id: string) => string, n: number): Promise<void> {
  const joins = Array.from({ length: n }, () => join(t, wsUrl(desktop()), { token: token(user('Ola')), wsOptions: { localAddress: OTHER } }));
  const healths = Array.from({ length: n }, () => rawRequest(port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], { localAddress: OTHER }));
  for (const { joined } of await Promise.all(joins)) assert.equal(joined.type, 'room_joined');
  assert.deepEqual(
    (await Promise.all(healths)).map((h) => h.status),
    Array(n).fill(200),
  );
}

test(`${FLOOD} silent sockets from one address: every handshake and /health from another address succeeds, during the flood and after`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base });
  const crowd = new Crowd(t);
  const silent = await crowd.open(server.port, FLOOD);
  // At first none of the flood is slow: the table is full of it, and sheds it to read newcomers.
  await fromOtherAddress(t, server.port, (id) => server.wsUrl(id), 20);
  // Once slow, the flood past the address's limit is refused (503), or was shed (closed without an answer).
  await crowd.until(() => count(silent, (s) => s.closedAt !== 0) === FLOOD - PER_ADDRESS, 10_000, 'the flood past the address limit was refused or shed');
  const refused = silent.filter((s) => s.received !== '');
  assert.ok(refused.length > 0);
  for (const s of refused) assert.match(s.received, /^HTTP\/1\.1 503 .*\r\nRetry-After: 1\r\n/s);
  await fromOtherAddress(t, server.port, (id) => server.wsUrl(id), 20);

  // The flood was still there throughout: 64 of it are pending, unanswered.
  assert.equal(
    count(silent, (s) => s.received === '' && s.closedAt === 0),
    PER_ADDRESS,
  );
  const { metrics } = await scrape(server.port, undefined, OTHER);
  assert.equal(metrics.get('moodio_rt_pending_handshakes{shard="primary"}'), PER_ADDRESS);
  assert.equal(metrics.get('moodio_rt_pending_handshakes_closed_total{reason="address_limit"}'), refused.length);
  assert.equal(metrics.get('moodio_rt_pending_handshakes_closed_total{reason="shed_least_progress"}'), FLOOD - PER_ADDRESS - refused.length);
  // The refusals are logged at a bounded rate, and the skipped lines are counted.
  const lines = server.logs.filter((l) => l.event === 'handshake_rejected' && l.worker === 'primary');
  assert.ok(lines.length < FLOOD - PER_ADDRESS, `${lines.length} lines for ${FLOOD - PER_ADDRESS} refusals`);
  // And a newcomer from the flooding address is refused at once: the address holds its limit's worth of slow heads.
  const more = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(more.status, 503);
});

test(`with no address limit, ${FLOOD} silent sockets fill the table, the surplus is shed, and newcomers are still read`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--max-pending-per-address', '0'] });
  const crowd = new Crowd(t);
  const silent = await crowd.open(server.port, FLOOD);
  await crowd.until(() => count(silent, (s) => s.closedAt !== 0) === FLOOD - MAX_PENDING, 10_000, 'the surplus silent sockets were shed');
  // Shed without an answer: they never sent a request.
  assert.equal(
    count(silent, (s) => s.received !== ''),
    0,
  );

  // A newcomer from the same address, and another, each make room for themselves.
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Pat')) });
  assert.equal(joined.type, 'room_joined');
  const health = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(health.status, 200);
  const { metrics } = await scrape(server.port);
  const shed = metrics.get('moodio_rt_pending_handshakes_closed_total{reason="shed_least_progress"}')!;
  assert.equal(
    shed,
    count(silent, (s) => s.closedAt !== 0),
    'every shed is a silent socket closed',
  );
  assert.ok(shed >= FLOOD - MAX_PENDING && shed <= FLOOD - MAX_PENDING + 3, `${shed} shed`);
  assert.ok(metrics.get('moodio_rt_pending_handshakes{shard="primary"}')! <= MAX_PENDING);
});

test('a full table sheds the silent connection, not the one that sent bytes, and reads the newcomer', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--max-pending-handshakes', '20'] });
  const crowd = new Crowd(t);
  // One at a time, so that the server accepts them in this order.
  const [started] = await crowd.open(server.port, 1, { write: 'GET /ws/desk' });
  const rest: IdleSocket[] = [];
  for (let i = 0; i < 19; i++) rest.push(...(await crowd.open(server.port, 1)));
  const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { Cookie: `moodio_access_token=${token(user('New'))}` })], {
    until: untilJoined,
  });
  assert.equal(res.status, 101, 'the newcomer is read, not refused');
  // The oldest connection had sent bytes; the oldest silent one goes.
  await crowd.until(() => rest[0]!.closedAt !== 0, 5000, 'the oldest silent connection was shed');
  assert.equal(started!.closedAt, 0);
  assert.equal(
    count(rest, (s) => s.closedAt !== 0),
    1,
  );
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'shed_least_progress');
});

test(`${OFFICE} users behind one address connecting at once all get 101: the address limit bites on slowness, not on concurrency`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base });
  const crowd = new Crowd(t);
  // Every connection is open before any head is sent, so the server holds
  // all of them pending from 127.0.0.1 at once: an office opening its tabs.
  const office = await crowd.open(server.port, OFFICE);
  const pending = (m: Metrics) =>
    m.get('moodio_rt_pending_handshakes{shard="primary"}')! + m.get('moodio_rt_pending_handshakes_closed_total{reason="address_limit"}')!;
  await untilMetrics(server.port, (m) => pending(m) === OFFICE, 10_000, 'the server accepted every connection', OTHER);
  const desks = Array.from({ length: 10 }, () => desktop('office'));
  office.forEach((s, i) =>
    s.socket.write(upgradeHead(`/ws/desktop/${desks[i % desks.length]}`, { Cookie: `moodio_access_token=${token(user(`Office${i}`))}` })),
  );
  await crowd.until(() => count(office, (s) => untilJoined(s.received) || s.closedAt !== 0) === OFFICE, 30_000, 'every tab joined or was refused');
  const statuses = new Map<string, number>();
  for (const s of office) {
    const status = s.received.slice(0, 12);
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
  }
  assert.deepEqual([...statuses], [['HTTP/1.1 101', OFFICE]]);
  assert.equal(
    count(office, (s) => untilJoined(s.received)),
    OFFICE,
  );
  const { metrics } = await scrape(server.port, undefined, OTHER);
  assert.equal(metrics.get('moodio_rt_pending_handshakes_closed_total{reason="address_limit"}'), 0);
  assert.equal(metrics.get('moodio_rt_pending_handshakes_closed_total{reason="shed_least_progress"}'), 0);
  // Raw sockets answer no close frame: gone before the server's drain.
  for (const s of office) s.socket.destroy();
});

test('a --trust-proxy peer is exempt from the address limit (nginx buffers heads itself)', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--max-pending-per-address', '2', '--trust-proxy', '127.0.0.1'],
  });
  const crowd = new Crowd(t);
  const silent = await crowd.open(server.port, 3);
  const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { Cookie: `moodio_access_token=${token(user('Ngx'))}` })], {
    until: untilJoined,
  });
  assert.equal(res.status, 101);
  assert.equal(
    count(silent, (s) => s.received !== '' || s.closedAt !== 0),
    0,
    'none refused',
  );
  // Another address is held to the limit, once its connections are slow: until then its newcomers are read.
  const opened = performance.now();
  await crowd.open(server.port, 2, { localAddress: OTHER });
  const health = () => rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], { localAddress: OTHER });
  let answer = await health();
  assert.equal(answer.status, 200, 'two connections just opened are not slow');
  while (answer.status === 200 && performance.now() - opened < PENDING_SLOW_AFTER_MS + 5000) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    answer = await health();
  }
  const refusedAfter = performance.now() - opened;
  assert.equal(answer.status, 503);
  assert.equal(answer.headers['retry-after'], '1');
  assert.ok(refusedAfter >= PENDING_SLOW_AFTER_MS, `refused ${Math.round(refusedAfter)} ms after the two connected`);
});
