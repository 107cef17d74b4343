/**
 * The server's hand on a multiplexed connection's subscriptions, with two
 * workers and topics on both shards (the connection's own, and the other
 * through the in-process link): a role change through the server API is
 * announced in each framing, `--permission-recheck` asks the authorize
 * endpoint again, user events and the user's sessions reach the
 * connections, presence lists subscribers, and `--enforce-token-expiry`
 * ends a connection.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TokenClaims } from '../src/auth/token.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { TopicErrorCode } from '../src/protocol/topics.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectOp, subscribe } from './helpers/topics.ts';

const WORKERS = 2;
const cleanup = new Cleanup();
/** Without --permission-recheck: the server API alone changes roles. */
let server: ServerProcess;
/** With --permission-recheck: what the stub answers now decides. */
let rechecked: ServerProcess;

/** `${userId}\0${topic}` → the status and body the authorize endpoint answers (editor otherwise). */
const answers = new Map<string, { status: number; permission?: string }>();
const byUserAndTopic: PermissionHandler = (req, res) => {
  const answer = answers.get(`${req.userId}\0${req.topic}`) ?? { status: 200, permission: 'editor' };
  res.statusCode = answer.status;
  if (answer.permission !== undefined) res.setHeader('content-type', 'application/json');
  res.end(answer.permission === undefined ? '' : JSON.stringify({ permission: answer.permission }));
};

before(async () => {
  const stub = await startPermissionStub(cleanup, byUserAndTopic);
  [server, rechecked] = await Promise.all([
    startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--enforce-token-expiry'] }),
    startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: ['--permission-recheck', '200ms'] }),
  ]);
});
after(() => cleanup.run());

/** A user whose multiplexed connections live on `shard`. */
function userOnShard(name: string, shard: number): TokenClaims {
  for (;;) {
    const claims = user(name);
    if (fnv1a32(claims.userId) % WORKERS === shard) return claims;
  }
}

/** Two desktops: one owned by shard 0 (the connection's), one by shard 1 (through the link). */
function topics(prefix: string): { here: string; there: string; idHere: string; idThere: string } {
  const idHere = desktopOnShard(0, WORKERS, prefix);
  const idThere = desktopOnShard(1, WORKERS, prefix);
  return { idHere, idThere, here: `desktop:${idHere}`, there: `desktop:${idThere}` };
}

/** Frames until one matches `match` (presence of other members may come first, in any order across rooms). */
async function until(client: TestClient, match: (f: Frame) => boolean): Promise<Frame> {
  for (;;) {
    const frame = await client.next();
    if (match(frame)) return frame;
  }
}

const info = (sessionId: string, u: TokenClaims, permission: string) => ({ sessionId, userId: u.userId, firstName: u.firstName, email: u.email, permission });

describe('a role change through the server API', () => {
  for (const where of ['there', 'here'] as const) {
    test(`is announced to the subscriber and to the room in each framing; the room (${where === 'here' ? 'on its own shard' : 'owned by the other shard'}) lists the new role`, async (t) => {
      const ids = topics(`grant-${where}`);
      const topic = ids[where];
      const desktopId = where === 'here' ? ids.idHere : ids.idThere;
      const ann = userOnShard('Ann', 0);
      const leo = user('Leo');
      const { client: legacy } = await join(t, server.wsUrl(desktopId), { token: token(leo) });
      const conn = await connectTopics(t, server, token(ann));
      const bob = await connectTopics(t, server, token(userOnShard('Bob', 1)));
      const annAck = await subscribe(conn, topic);
      await legacy.expect('session_joined');
      await subscribe(bob, topic);
      await expectOp(conn, 'event', { topic, type: 'session_joined' });
      await legacy.expect('session_joined');

      const changed = await api(server, 'PUT', `desktops/${desktopId}/permissions/${ann.userId}`, { permission: 'viewer' });
      assert.equal(changed.status, 202);
      assert.deepEqual(await conn.next(), { op: 'event', topic, type: 'permission_changed', permission: 'viewer' });
      const updated = await expectOp(bob, 'event', { topic, type: 'session_updated', sessionId: annAck.sessionId, userId: ann.userId, permission: 'viewer' });
      assert.deepEqual(updated.payload, info(annAck.sessionId, ann, 'viewer'));
      const legacyUpdated = await legacy.expect('session_updated');
      assert.equal(legacyUpdated.op, undefined);
      assert.deepEqual(
        [legacyUpdated.sessionId, legacyUpdated.permission, legacyUpdated.payload],
        [annAck.sessionId, 'viewer', info(annAck.sessionId, ann, 'viewer')],
      );

      // The same role again is told nobody; a later subscriber's ack lists the new role.
      await api(server, 'PUT', `desktops/${desktopId}/permissions/${ann.userId}`, { permission: 'viewer' });
      const cid = await connectTopics(t, server, token(userOnShard('Cid', where === 'here' ? 1 : 0)));
      const cidAck = await subscribe(cid, topic);
      const listed = cidAck.sessions.find((s: { sessionId: string }) => s.sessionId === annAck.sessionId);
      assert.deepEqual(listed, info(annAck.sessionId, ann, 'viewer'));
      const joined = await expectOp(conn, 'event', { topic, type: 'session_joined' });
      assert.equal(joined.sessionId, cidAck.sessionId, 'no second permission_changed before it');
    });
  }
});

describe('the server API reaches multiplexed connections', () => {
  test('a user event reaches them with no topic; the user sessions list their desktop subscriptions; presence lists subscribers on both shards', async (t) => {
    const { idHere, idThere, here, there } = topics('reach');
    const ann = userOnShard('Ann', 0);
    const { client: annLegacy, joined: annJoined } = await join(t, server.wsUrl(idHere), { token: token(ann) });
    const conn = await connectTopics(t, server, token(ann));
    const annAck = await subscribe(conn, here);
    await subscribe(conn, there);
    await subscribe(conn, 'production-table:reach');
    const zed = userOnShard('Zed', 1);
    const zedConn = await connectTopics(t, server, token(zed));
    const zedAck = await subscribe(zedConn, there);
    await expectOp(conn, 'event', { topic: there, type: 'session_joined' });

    const sent = await api(server, 'POST', `users/${ann.userId}/events`, { type: 'export_ready', payload: { n: 1e20 } });
    assert.deepEqual([sent.status, sent.body.delivered], [202, 2]);
    const legacyEvent = await until(annLegacy, (f) => f.type === 'export_ready');
    const event = await until(conn, (f) => f.type === 'export_ready');
    assert.deepEqual(event, {
      op: 'event',
      type: 'export_ready',
      sessionId: 'server',
      userId: 'server',
      timestamp: legacyEvent.timestamp,
      payload: { n: 1e20 },
    });
    assert.equal(Object.hasOwn(event, 'topic'), false);

    const mine = await api(server, 'GET', `users/${ann.userId}/sessions`);
    assert.equal(mine.status, 200);
    const rows = mine.body.sessions.map((s: Record<string, unknown>) => [s.sessionId, s.desktopId, s.permission, s.shard]);
    rows.sort((a: string[], b: string[]) => `${a[0]}${a[1]}`.localeCompare(`${b[0]}${b[1]}`));
    const expected = [
      [annJoined.sessionId, idHere, 'editor', 0],
      [annAck.sessionId, idHere, 'editor', 0],
      [annAck.sessionId, idThere, 'editor', 0],
    ].sort((a, b) => `${a[0]}${a[1]}`.localeCompare(`${b[0]}${b[1]}`));
    assert.deepEqual(rows, expected);

    const presence = await api(server, 'GET', `desktops/${idThere}/presence`);
    assert.equal(presence.status, 200);
    const people = presence.body.sessions.map((s: Record<string, unknown>) => [
      s.sessionId,
      s.userId,
      s.firstName,
      s.permission,
      s.shard,
      typeof s.connectedAt,
    ]);
    people.sort((a: string[], b: string[]) => a[0]!.localeCompare(b[0]!));
    const want = [
      [annAck.sessionId, ann.userId, ann.firstName, 'editor', 0, 'number'],
      [zedAck.sessionId, zed.userId, zed.firstName, 'editor', 1, 'number'],
    ].sort((a, b) => String(a[0]).localeCompare(String(b[0])));
    assert.deepEqual(people, want);
    assert.ok(presence.body.sessions.every((s: { connectedAt: number }) => s.connectedAt > 0 && s.connectedAt <= Date.now()));
  });

  test('a broadcast reaches the connections on both shards, with no topic', async (t) => {
    const conns = await Promise.all([0, 1].map((shard) => connectTopics(t, server, token(userOnShard('Ann', shard)))));
    assert.deepEqual(
      conns.map((c) => c.shard),
      [0, 1],
    );
    const sent = await api(server, 'POST', 'broadcast', { type: 'maintenance', payload: { at: '02:00' } });
    assert.equal(sent.status, 202);
    assert.ok(sent.body.delivered >= 2, `delivered ${sent.body.delivered}`);
    for (const conn of conns) {
      const event = await conn.next();
      assert.deepEqual(event, {
        op: 'event',
        type: 'maintenance',
        sessionId: 'server',
        userId: 'server',
        timestamp: event.timestamp,
        payload: { at: '02:00' },
      });
    }
  });

  test('--enforce-token-expiry ends a connection: every room it was in hears session_left, and it gets 4001 token expired', async (t) => {
    const { here, there } = topics('expiry');
    const ann = userOnShard('Ann', 0);
    const conn = await connectTopics(t, server, token(ann, undefined, 2));
    const bob = await connectTopics(t, server, token(userOnShard('Bob', 1)));
    const annAck = await subscribe(conn, here);
    await subscribe(conn, there);
    await subscribe(bob, here);
    await subscribe(bob, there);
    const left = [await bob.next(5000), await bob.next(5000)];
    assert.deepEqual(
      left.map((f) => [f.topic, f.type, f.sessionId]).sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
      [
        [here, 'session_left', annAck.sessionId],
        [there, 'session_left', annAck.sessionId],
      ].sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
    );
    assert.deepEqual(await conn.closed, { code: 4001, reason: 'token expired' });
  });
});

describe('--permission-recheck covers subscriptions', () => {
  test('a new role is announced, a 403 ends that subscription alone with forbidden, on both shards', async (t) => {
    const { here, there } = topics('recheck');
    const ann = userOnShard('Ann', 0);
    const conn = await connectTopics(t, rechecked, token(ann));
    const bob = await connectTopics(t, rechecked, token(userOnShard('Bob', 1)));
    const annAck = await subscribe(conn, here);
    await subscribe(conn, there);
    await subscribe(bob, here);
    await subscribe(bob, there);
    await expectOp(conn, 'event', { type: 'session_joined' });
    await expectOp(conn, 'event', { type: 'session_joined' });

    answers.set(`${ann.userId}\0${there}`, { status: 200, permission: 'viewer' });
    assert.deepEqual(await conn.next(), { op: 'event', topic: there, type: 'permission_changed', permission: 'viewer' });
    const updated = await expectOp(bob, 'event', { topic: there, type: 'session_updated', sessionId: annAck.sessionId, permission: 'viewer' });
    assert.deepEqual(updated.payload, info(annAck.sessionId, ann, 'viewer'));

    answers.set(`${ann.userId}\0${here}`, { status: 403 });
    assert.deepEqual(await conn.next(), { op: 'error', topic: here, code: TopicErrorCode.FORBIDDEN, message: 'permission revoked' });
    await expectOp(bob, 'event', { topic: here, type: 'session_left', sessionId: annAck.sessionId });
    // The connection and its other topic go on, as a viewer there.
    conn.send({ op: 'publish', topic: there, type: 'asset_moved', payload: {} });
    conn.send({ op: 'publish', topic: there, type: 'cursor', payload: { x: 1 } });
    await expectOp(bob, 'event', { topic: there, type: 'cursor', sessionId: annAck.sessionId });
  });
});
