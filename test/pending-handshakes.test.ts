/**
 * A slowloris (connections that never send a byte) must not turn other
 * clients away: one address is held to --max-pending-per-address, and a
 * full pending table sheds the connection with the least progress instead
 * of refusing the newcomer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PendingTable } from '../src/primary/pending-table.ts';
import { addressKey } from '../src/primary/primary.ts';
import { join, rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { count, Crowd, type IdleSocket } from './helpers/idle.ts';
import { scrape } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const FLOOD = 1500;
/** The defaults of --max-pending-handshakes and --max-pending-per-address (src/config.ts). */
const MAX_PENDING = 1000;
const PER_ADDRESS = 64;
const OTHER = '127.0.0.2';

test('the victim is the oldest silent connection, else the fewest bytes (ties: the oldest); addresses are counted', () => {
  const table = new PendingTable<string, { received: number }>();
  const a = { received: 0 };
  const b = { received: 0 };
  const c = { received: 0 };
  table.add('a', a, '10.0.0.1');
  table.add('b', b, '10.0.0.1');
  table.add('c', c, null);
  assert.equal(table.fromAddress('10.0.0.1'), 2);
  assert.equal(table.leastProgress(), 'a');
  a.received = 10;
  assert.equal(table.leastProgress(), 'b', 'a sent bytes: the oldest silent one is next');
  b.received = 5;
  c.received = 5;
  assert.equal(table.leastProgress(), 'b', 'none silent: fewest bytes, the older of a tie');
  table.delete('b');
  assert.equal(table.leastProgress(), 'c');
  assert.equal(table.fromAddress('10.0.0.1'), 1);
  table.add('d', { received: 0 }, '10.0.0.1');
  assert.equal(table.leastProgress(), 'd', 'a newcomer that has sent nothing');
  assert.equal(table.size, 3);
  table.delete('a');
  table.delete('d');
  assert.equal(table.fromAddress('10.0.0.1'), 0);
  assert.equal(table.delete('a'), undefined);
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

test(`${FLOOD} silent sockets from one address: other addresses still connect and /health answers`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base });
  const crowd = new Crowd(t);
  const silent = await crowd.open(server.port, FLOOD);
  // Past the address's limit, each is answered 503 (and closes, as clients do).
  await crowd.until(() => count(silent, (s) => s.received !== '') === FLOOD - PER_ADDRESS, 10_000, 'the flood past the address limit was refused');
  for (const s of silent.filter((s) => s.received !== '')) assert.match(s.received, /^HTTP\/1\.1 503 .*\r\nRetry-After: 1\r\n/s);

  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Ola')), wsOptions: { localAddress: OTHER } });
  assert.equal(joined.type, 'room_joined');
  const health = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], { localAddress: OTHER });
  assert.equal(health.status, 200);

  // The flood was still there throughout: its first 64 are pending, unanswered.
  assert.equal(count(silent, (s) => s.received === '' && s.closedAt === 0), PER_ADDRESS);
  const { metrics } = await scrape(server.port, undefined, OTHER);
  assert.equal(metrics.get('moodio_rt_pending_handshakes{shard="primary"}'), PER_ADDRESS);
  assert.equal(metrics.get('moodio_rt_pending_handshakes_closed_total{reason="address_limit"}'), FLOOD - PER_ADDRESS);
  // The refusals are logged at a bounded rate, and the skipped lines are counted.
  const lines = server.logs.filter((l) => l.event === 'handshake_rejected' && l.worker === 'primary');
  assert.ok(lines.length < FLOOD - PER_ADDRESS, `${lines.length} lines for ${FLOOD - PER_ADDRESS} refusals`);
});

test(`with no address limit, ${FLOOD} silent sockets fill the table, the surplus is shed, and newcomers are still read`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--max-pending-per-address', '0'] });
  const crowd = new Crowd(t);
  const silent = await crowd.open(server.port, FLOOD);
  await crowd.until(() => count(silent, (s) => s.closedAt !== 0) === FLOOD - MAX_PENDING, 10_000, 'the surplus silent sockets were shed');
  // Shed without an answer: they never sent a request.
  assert.equal(count(silent, (s) => s.received !== ''), 0);

  // A newcomer from the same address, and another, each make room for themselves.
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Pat')) });
  assert.equal(joined.type, 'room_joined');
  const health = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(health.status, 200);
  const { metrics } = await scrape(server.port);
  const shed = metrics.get('moodio_rt_pending_handshakes_closed_total{reason="shed_least_progress"}')!;
  assert.equal(shed, count(silent, (s) => s.closedAt !== 0), 'every shed is a silent socket closed');
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
  assert.equal(count(rest, (s) => s.closedAt !== 0), 1);
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'shed_least_progress');
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
  assert.equal(count(silent, (s) => s.received !== '' || s.closedAt !== 0), 0, 'none refused');
  // Another address is held to the limit.
  await crowd.open(server.port, 2, { localAddress: OTHER });
  const refused = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], { localAddress: OTHER });
  assert.equal(refused.status, 503);
  assert.equal(refused.headers['retry-after'], '1');
});
