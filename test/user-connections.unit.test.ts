/**
 * --max-connections-per-user, in process: the count-min sketch of
 * src/protocol/user-connections.ts on its own (every shard's table, the
 * smaller of a user's two counters, clearing a dead shard), then the limit
 * as two real shards enforce it (src/shard/shard.ts checkLimits, with the
 * per-worker and per-room limits beside it). test/limits.test.ts checks
 * the same through the real server.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { createUserConnectionsBuffer, UserConnections } from '../src/protocol/user-connections.ts';
import { connect, HandshakeRejected, join, type TestClient } from './helpers/client.ts';
import { inProcessServer, type InProcessServer } from './helpers/in-process-server.ts';
import { token, user } from './helpers/tokens.ts';

const ROW = 1 << 16;

/** The non-zero counters of `buffer`, as [index, value]. */
function counters(buffer: SharedArrayBuffer): [number, number][] {
  const all = new Int32Array(buffer);
  const found: [number, number][] = [];
  for (let i = 0; i < all.length; i++) if (all[i] !== 0) found.push([i, all[i]!]);
  return found;
}

test('a shard table is two rows of 2^16 counters; a session counts once in each row of its own shard table', () => {
  assert.equal(createUserConnectionsBuffer(3).byteLength, 3 * 2 * ROW * 4);
  const buffer = createUserConnectionsBuffer(3);
  const shard1 = new UserConnections(buffer, 3, 1);
  shard1.add('alice', 1);
  const slots = counters(buffer);
  assert.equal(slots.length, 2);
  const [[first, a], [second, b]] = slots as [[number, number], [number, number]];
  assert.deepEqual([a, b], [1, 1]);
  assert.equal(first, 2 * ROW + (fnv1a32('alice') & (ROW - 1)), 'row one of table 1: fnv1a32 of the id');
  assert.ok(second >= 3 * ROW && second < 4 * ROW, `row two of table 1 (${second})`);
  shard1.add('alice', -1);
  assert.deepEqual(counters(buffer), []);
});

test("counts a user's sessions over every shard; clearing a dead shard forgets its sessions only", () => {
  const buffer = createUserConnectionsBuffer(3);
  const [s0, s1, s2] = [0, 1, 2].map((shard) => new UserConnections(buffer, 3, shard)) as [UserConnections, UserConnections, UserConnections];
  const primary = new UserConnections(buffer, 3, -1);
  s0.add('alice', 1);
  s0.add('alice', 1);
  s1.add('alice', 1);
  s2.add('bob', 1);
  for (const view of [s0, s1, s2, primary])
    assert.deepEqual(
      ['alice', 'bob', 'carol'].map((u) => view.count(u)),
      [3, 1, 0],
    );
  s1.add('alice', -1);
  s1.add('bob', 1);
  assert.deepEqual([primary.count('alice'), primary.count('bob')], [2, 2]);
  primary.clearShard(0);
  assert.deepEqual([primary.count('alice'), primary.count('bob')], [0, 2]);
  primary.clearShard(2);
  assert.deepEqual([primary.count('alice'), primary.count('bob')], [0, 1]);
  primary.clearShard(1);
  assert.deepEqual(counters(buffer), []);
  s2.add('alice', 1);
  assert.equal(s0.count('alice'), 1);
});

test('a user whose first counter it shares with another still counts its own sessions: the smaller counter', () => {
  // Two ids with the same slot in row one (found by search; row two tells them apart).
  const byRowOne = new Map<number, string>();
  let pair: [string, string] | null = null;
  for (let i = 0; pair === null; i++) {
    const id = `user-${i}`;
    const slot = fnv1a32(id) & (ROW - 1);
    const other = byRowOne.get(slot);
    if (other === undefined) byRowOne.set(slot, id);
    else pair = [other, id];
  }
  const [u, v] = pair;
  const view = new UserConnections(createUserConnectionsBuffer(1), 1, 0);
  view.add(u, 1);
  for (let i = 0; i < 5; i++) view.add(v, 1);
  assert.deepEqual([view.count(u), view.count(v)], [1, 5]);
});

test('2,000 users with a session each: at most 2 over-counted, by one (both of their counters shared), as the two hashes spread them', () => {
  const buffer = createUserConnectionsBuffer(2);
  const views = [new UserConnections(buffer, 2, 0), new UserConnections(buffer, 2, 1)];
  const ids = Array.from({ length: 2000 }, (_, i) => `user-${i.toString(36)}-${(i * 7919).toString(16)}`);
  ids.forEach((id, i) => views[i % 2]!.add(id, 1));
  // One row alone would over-count ~60 of them (2,000 ids in 65,536 slots); both rows, ~2 expected.
  const over = ids.filter((id) => views[0]!.count(id) !== 1);
  assert.ok(over.length <= 2, `${over.length} over-counted`);
  for (const id of over) assert.equal(views[1]!.count(id), 2);
  // Each id took two slots: one in each row of its shard's table.
  const rowTwo = counters(buffer).filter(([index]) => index % (2 * ROW) >= ROW);
  assert.equal(
    rowTwo.reduce((sum, [, value]) => sum + value, 0),
    2000,
  );
});

async function refusal(t: TestContext, url: string, tok: string): Promise<HandshakeRejected> {
  const err = await connect(t, url, { token: tok }).then(
    () => assert.fail('admitted'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof HandshakeRejected, String(err));
  return err;
}

/** Wait until the shards have seen `client` close (its slot is free once they have). */
async function closed(server: InProcessServer, client: TestClient, userId: string, left: number): Promise<void> {
  await client.close();
  while (server.users.count(userId) !== left) await new Promise((resolve) => setImmediate(resolve));
}

test('--max-connections-per-user across two shards: the limit-th session is the last admitted, on either shard; others are unaffected; a close frees a slot', async (t) => {
  const server = await inProcessServer(t, { maxConnectionsPerUser: '3' });
  const alice = user('Ali');
  const sessions: TestClient[] = [];
  for (const shard of [0, 1, 0]) sessions.push((await join(t, server.wsUrl(server.desktopOn(shard)), { token: token(alice) })).client);
  assert.equal(server.users.count(alice.userId), 3);
  const asked = server.stub.requests.length;
  for (const shard of [0, 1]) {
    const err = await refusal(t, server.wsUrl(server.desktopOn(shard)), token(alice));
    assert.deepEqual([err.status, err.body], [429, 'too many connections for user\n']);
  }
  assert.equal(server.stub.requests.length, asked, 'refused before the permission API is asked');
  await join(t, server.wsUrl(server.desktopOn(1)), { token: token(user('Bob')) });
  await closed(server, sessions[1]!, alice.userId, 2);
  await join(t, server.wsUrl(server.desktopOn(1)), { token: token(alice) });
  assert.equal((await refusal(t, server.wsUrl(server.desktopOn(0)), token(alice))).status, 429);
});

test('--max-connections-per-worker and --max-room-size: the limit-th session is the last admitted; 503 with Retry-After after it', async (t) => {
  const server = await inProcessServer(t, { maxConnectionsPerWorker: '3', maxRoomSize: '2' });
  const room = server.desktopOn(0);
  await join(t, server.wsUrl(room), { token: token(user('Ann')) });
  await join(t, server.wsUrl(room), { token: token(user('Bob')) });
  const full = await refusal(t, server.wsUrl(room), token(user('Cat')));
  assert.deepEqual([full.status, full.headers['retry-after'], full.body], [503, '5', 'room full\n']);
  await join(t, server.wsUrl(server.desktopOn(0)), { token: token(user('Dan')) });
  const busy = await refusal(t, server.wsUrl(server.desktopOn(0)), token(user('Eve')));
  assert.deepEqual([busy.status, busy.headers['retry-after'], busy.body], [503, '5', 'worker full\n']);
  await join(t, server.wsUrl(server.desktopOn(1)), { token: token(user('Fay')) });
});

test('under the default limits (50 per user, 200 per room, none per worker), a few sessions of one user in one room are admitted', async (t) => {
  const server = await inProcessServer(t, {}, 1);
  const alice = user('Ali');
  const room = server.desktopOn(0);
  for (let i = 0; i < 4; i++) await join(t, server.wsUrl(room), { token: token(alice) });
  assert.equal(server.users.count(alice.userId), 4);
});

test('0 turns a limit off: --max-connections-per-user 0 and --max-room-size 0 admit every session', async (t) => {
  const server = await inProcessServer(t, { maxConnectionsPerUser: '0', maxRoomSize: '0' }, 1);
  const alice = user('Ali');
  const room = server.desktopOn(0);
  for (let i = 0; i < 3; i++) await join(t, server.wsUrl(room), { token: token(alice) });
  assert.equal(server.users.count(alice.userId), 3);
});
