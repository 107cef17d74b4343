/**
 * The in-process link between shards (two workers): a multiplexed
 * connection lives on its user's shard, and its topics whose rooms the
 * other shard owns go through the link. Presence and events cross it both
 * ways, in each member's framing; a restarted shard's subscribers leave the
 * rooms owned elsewhere, and the subscribers of its rooms are told.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { TopicErrorCode } from '../src/protocol/topics.ts';
import type { TokenClaims } from '../src/auth/token.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { join, rawRequest, type Frame, type TestClient } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, expectOp, subscribe } from './helpers/topics.ts';

const WORKERS = 2;
const ADMIN = 'admin-token-for-link-tests-0123456789';
const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: ['--admin-token', ADMIN, '--api-key', API_KEY] });
});
after(() => cleanup.run());

/** A user whose multiplexed connections live on `shard`. */
function userOnShard(name: string, shard: number): TokenClaims {
  for (;;) {
    const claims = user(name);
    if (fnv1a32(claims.userId) % WORKERS === shard) return claims;
  }
}

/** The next `count` frames as [topic, type, sessionId], sorted (their order across rooms is not defined). */
async function frames(client: TestClient, count: number): Promise<string[][]> {
  const got: Frame[] = [];
  while (got.length < count) got.push(await client.next());
  return sorted(got.map((f) => [f.topic, f.type, f.sessionId]));
}

const sorted = (rows: string[][]): string[][] => rows.sort((a, b) => a.join(' ').localeCompare(b.join(' ')));

describe('a connection whose topics live on both shards', () => {
  test('presence and events cross the link both ways, in each framing', async (t) => {
    const here = 0;
    const there = 1;
    const idHere = desktopOnShard(here, WORKERS, 'link');
    const idThere = desktopOnShard(there, WORKERS, 'link');
    const [topicHere, topicThere] = [`desktop:${idHere}`, `desktop:${idThere}`];

    const { client: legacyHere, joined: lhJoined } = await join(t, server.wsUrl(idHere), { token: token(user('Lhe')) });
    const { client: legacyThere, joined: ltJoined } = await join(t, server.wsUrl(idThere), { token: token(user('Lth')) });
    assert.deepEqual([legacyHere.shard, legacyThere.shard], [here, there]);

    const annUser = userOnShard('Ann', here);
    const ann = await connectTopics(t, server, token(annUser));
    assert.equal(ann.shard, here, 'placed by the hash of its user');
    const annHere = await subscribe(ann, topicHere);
    const annThere = await subscribe(ann, topicThere, 'far');
    assert.equal(annThere.ref, 'far');
    assert.equal(annThere.sessionId, annHere.sessionId);
    assert.deepEqual(
      annThere.sessions.map((s: Frame) => s.sessionId),
      [ltJoined.sessionId],
      "the other shard's room, listed by its owner",
    );
    const seenThere = await legacyThere.expect('session_joined');
    assert.deepEqual(seenThere.payload, {
      sessionId: annHere.sessionId,
      userId: annUser.userId,
      firstName: 'Ann',
      email: 'ann@example.com',
      permission: 'editor',
    });
    await legacyHere.expect('session_joined');

    // A subscriber on the other shard, in both rooms.
    const bob = await connectTopics(t, server, token(userOnShard('Bob', there)));
    assert.equal(bob.shard, there);
    const bobHere = await subscribe(bob, topicHere);
    assert.deepEqual(bobHere.sessions.map((s: Frame) => s.sessionId).sort(), [lhJoined.sessionId, annHere.sessionId].sort());
    await subscribe(bob, topicThere);
    assert.deepEqual(
      await frames(ann, 2),
      sorted([
        [topicHere, 'session_joined', bobHere.sessionId],
        [topicThere, 'session_joined', bobHere.sessionId],
      ]),
    );
    assert.equal((await legacyHere.expect('session_joined')).sessionId, bobHere.sessionId);
    assert.equal((await legacyThere.expect('session_joined')).sessionId, bobHere.sessionId);

    // Ann publishes on the far topic: the owner relays to its legacy socket and to Bob, there.
    ann.send({ op: 'publish', topic: topicThere, type: 'asset_moved', payload: { x: 1 } });
    const legacyMoved = await legacyThere.expect('asset_moved');
    assert.deepEqual([legacyMoved.sessionId, legacyMoved.payload], [annHere.sessionId, { x: 1 }]);
    const bobMoved = await expectEvent(bob, topicThere, 'asset_moved');
    assert.equal(bobMoved.timestamp, legacyMoved.timestamp, 'one event, stamped once');
    // Bob publishes on the near topic, owned by Ann's shard, from the other shard.
    bob.send({ op: 'publish', topic: topicHere, type: 'cursor', payload: { y: 2 } });
    assert.deepEqual((await expectEvent(ann, topicHere, 'cursor')).payload, { y: 2 });
    assert.deepEqual((await legacyHere.expect('cursor')).payload, { y: 2 });
    // The far legacy socket speaks: Ann hears it through the link, Bob on its own shard; nobody is echoed.
    legacyThere.send({ type: 'asset_resized', payload: { w: 3 } });
    assert.equal((await expectEvent(ann, topicThere, 'asset_resized')).sessionId, ltJoined.sessionId);
    assert.equal((await expectEvent(bob, topicThere, 'asset_resized')).sessionId, ltJoined.sessionId);
    assert.equal(ann.pending + bob.pending, 0);

    // A second subscriber on Ann's shard shares the far room's link traffic.
    const cid = await connectTopics(t, server, token(userOnShard('Cid', here)));
    await subscribe(cid, topicThere);
    await expectEvent(ann, topicThere, 'session_joined');
    await expectEvent(bob, topicThere, 'session_joined');
    await legacyThere.expect('session_joined');
    legacyThere.send({ type: 'both', payload: 1 });
    await expectEvent(ann, topicThere, 'both');
    await expectEvent(cid, topicThere, 'both');
    // Published on Ann's shard to a room owned elsewhere: Cid, beside Ann, gets it back through the owner, Ann does not.
    ann.send({ op: 'publish', topic: topicThere, type: 'from_ann' });
    await expectEvent(cid, topicThere, 'from_ann');
    cid.send({ op: 'publish', topic: topicThere, type: 'from_cid' });
    await expectEvent(ann, topicThere, 'from_cid');

    for (const type of ['from_ann', 'from_cid']) await legacyThere.expect(type);
    for (const type of ['both', 'from_ann', 'from_cid']) await expectEvent(bob, topicThere, type);

    // Ann closes: every room hears her leave, on both shards, in both framings.
    await ann.close();
    assert.equal((await legacyHere.expect('session_left')).sessionId, annHere.sessionId);
    assert.equal((await legacyThere.expect('session_left')).sessionId, annHere.sessionId);
    assert.deepEqual(
      await frames(bob, 2),
      sorted([
        [topicHere, 'session_left', annHere.sessionId],
        [topicThere, 'session_left', annHere.sessionId],
      ]),
    );
    assert.equal((await expectEvent(cid, topicThere, 'session_left')).sessionId, annHere.sessionId);
  });
});

describe('the server API', () => {
  test("an event published to a desktop reaches its subscribers on both shards in their framing, but the excepted user's", async (t) => {
    const id = desktopOnShard(0, WORKERS, 'apipub');
    const topic = `desktop:${id}`;
    const { client: legacy } = await join(t, server.wsUrl(id), { token: token(user('Leo')) });
    const near = await connectTopics(t, server, token(userOnShard('Nea', 0)));
    const farUser = userOnShard('Far', 1);
    const far = await connectTopics(t, server, token(farUser));
    const skipped = await connectTopics(t, server, token(userOnShard('Ski', 1)));
    for (const conn of [near, far, skipped]) await subscribe(conn, topic);
    for (let i = 0; i < 3; i++) await legacy.expect('session_joined');
    await expectEvent(near, topic, 'session_joined');
    await expectEvent(near, topic, 'session_joined');
    await expectEvent(far, topic, 'session_joined');

    const res = await api(server, 'POST', `desktops/${id}/events`, { type: 'desktop_updated', payload: { v: 2 } });
    assert.equal(res.status, 202);
    const seen = await legacy.expect('desktop_updated');
    // Stamped once, by the room's owner: one offset in both framings, on both shards (issue 21).
    assert.deepEqual(seen, { type: 'desktop_updated', sessionId: 'server', userId: 'server', timestamp: seen.timestamp, payload: { v: 2 }, offset: 1 });
    for (const conn of [near, far, skipped]) {
      assert.deepEqual(await expectEvent(conn, topic, 'desktop_updated'), {
        op: 'event',
        topic,
        type: 'desktop_updated',
        sessionId: 'server',
        userId: 'server',
        timestamp: seen.timestamp,
        payload: { v: 2 },
        offset: 1,
      });
    }
    const skippedUser = (await api(server, 'POST', `desktops/${id}/events`, { type: 'not_for_far', exceptUserId: farUser.userId })).status;
    assert.equal(skippedUser, 202);
    await legacy.expect('not_for_far');
    await expectEvent(near, topic, 'not_for_far');
    await expectEvent(skipped, topic, 'not_for_far');
    // Far's next frame is a later event: the excepted one never came.
    legacy.send({ type: 'marker' });
    await expectEvent(far, topic, 'marker');
  });
});

describe('a shard restarts', () => {
  test('its subscribers leave the rooms owned elsewhere; the subscribers of its rooms lose the topic, and may subscribe again once it is back', async (t) => {
    const here = 0;
    const there = 1;
    const idHere = desktopOnShard(here, WORKERS, 'restart');
    const idThere = desktopOnShard(there, WORKERS, 'restart');
    const [topicHere, topicThere] = [`desktop:${idHere}`, `desktop:${idThere}`];
    const { client: legacyHere } = await join(t, server.wsUrl(idHere), { token: token(user('Lhe')) });
    const ann = await connectTopics(t, server, token(userOnShard('Ann', here)));
    await subscribe(ann, topicThere, 'far');
    const bob = await connectTopics(t, server, token(userOnShard('Bob', there)));
    const bobAck = await subscribe(bob, topicHere);
    await legacyHere.expect('session_joined');

    const linkUp = (l: { event: string; worker: unknown; peer?: unknown }): boolean => l.event === 'shard_link_up' && l.worker === here && l.peer === there;
    const links = server.logs.filter(linkUp).length;
    const kill = await rawRequest(server.port, [`POST /admin/shards/${there}/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
    assert.equal(kill.status, 202);
    assert.equal((await bob.closed).code, 1012);
    // Bob was on the stopped shard: the room Ann's shard owns hears him leave.
    assert.equal((await legacyHere.expect('session_left')).sessionId, bobAck.sessionId);
    // Ann held a room of the stopped shard: she is told, with the topic.
    await expectOp(ann, 'error', { code: TopicErrorCode.INTERNAL, topic: topicThere });
    ann.send({ op: 'publish', topic: topicThere, type: 'lost', ref: 'p' });
    await expectOp(ann, 'error', { code: TopicErrorCode.NOT_SUBSCRIBED, topic: topicThere, ref: 'p' });

    // Ann's shard is handed a port to the restarted one.
    await server.waitForLog((l) => linkUp(l) && server.logs.filter(linkUp).length > links);
    await subscribe(ann, topicThere);
    const { client: legacyThere, joined } = await join(t, server.wsUrl(idThere), { token: token(user('Lth')) });
    assert.equal(joined.sessions.length, 1);
    assert.equal((await expectEvent(ann, topicThere, 'session_joined')).sessionId, joined.sessionId);
    legacyThere.send({ type: 'back', payload: true });
    assert.equal((await expectEvent(ann, topicThere, 'back')).payload, true);
  });
});

describe('room size across the link', () => {
  test("a subscribe from the other shard into a full room is refused by its owner: rate_limited with the topic and the ref, and the connection's later ops on it run", async (t) => {
    const stub = await startPermissionStub(t);
    const small = await startServer(t, { workers: WORKERS, permissionApiBase: stub.base, args: ['--max-room-size', '1'] });
    const id = desktopOnShard(0, WORKERS, 'full');
    const topic = `desktop:${id}`;
    const { client: legacy } = await join(t, small.wsUrl(id), { token: token(user('Leo')) });
    const far = await connectTopics(t, small, token(userOnShard('Far', 1)));
    assert.equal(far.shard, 1);
    far.send({ op: 'subscribe', topic, ref: 'in?' });
    far.send({ op: 'publish', topic, type: 'never', ref: 'p' });
    await expectOp(far, 'error', { code: TopicErrorCode.RATE_LIMITED, topic, ref: 'in?', message: 'the room is full' });
    await expectOp(far, 'error', { code: TopicErrorCode.NOT_SUBSCRIBED, topic, ref: 'p' });
    await legacy.close();
    await small.waitForLog((l) => l.event === 'session_close' && l.desktopId === id);
    await subscribe(far, topic);
  });
});
