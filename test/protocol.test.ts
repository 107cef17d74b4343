/**
 * The seed's functional list against the real server (primary + 2 shard
 * workers) and a real permission API: isolation, presence, permissions,
 * stamping. Absence of a frame is proven by ordering: a marker sent later
 * must be the next frame, since one shard handles a room in order.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ClientEvent } from '../src/protocol/events.ts';
import { shardFor } from '../src/primary/router.ts';
import { join, type TestClient } from './helpers/client.ts';
import { startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WORKERS = 2;
const SESSION_ID = /^session_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const cleanup = new Cleanup();
let server: ServerProcess;

// Users whose id contains "viewer" are viewers, everyone else edits.
const byName: PermissionHandler = (req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ permission: req.userId?.includes('viewer') ? 'viewer' : 'editor' }));
};

before(async () => {
  const stub = await startPermissionStub(cleanup, byName);
  server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base });
});
after(() => cleanup.run());

/** `count` desktop ids that hash to the same shard. */
function sameShardDesktops(count: number): string[] {
  const first = desktop();
  const ids = [first];
  while (ids.length < count) {
    const id = desktop();
    if (shardFor(id, WORKERS) === shardFor(first, WORKERS)) ids.push(id);
  }
  return ids;
}

describe('room isolation', () => {
  test('an event reaches the rest of its room, not the sender and not another room', async (t) => {
    const [roomA, roomB] = sameShardDesktops(2);
    const { client: a1 } = await join(t, server.wsUrl(roomA!), { token: token(user('Ann')) });
    const { client: a2 } = await join(t, server.wsUrl(roomA!), { token: token(user('Abe')) });
    await a1.expect('session_joined');
    const { client: b1 } = await join(t, server.wsUrl(roomB!), { token: token(user('Bea')) });
    const { client: b2 } = await join(t, server.wsUrl(roomB!), { token: token(user('Bob')) });
    await b1.expect('session_joined');

    a1.send({ type: ClientEvent.ASSET_MOVED, payload: { id: 'asset-1', x: 100, y: 200 } });
    const got = await a2.expect(ClientEvent.ASSET_MOVED);
    assert.deepEqual(got.payload, { id: 'asset-1', x: 100, y: 200 });

    // Sent after a1's event was relayed: if a1 had been echoed, or room B
    // leaked, that frame would come first.
    a2.send({ type: 'marker', payload: 'a' });
    assert.deepEqual((await a1.expect('marker')).payload, 'a');
    b2.send({ type: 'marker', payload: 'b' });
    assert.deepEqual((await b1.expect('marker')).payload, 'b');
    assert.equal(a1.pending + a2.pending + b1.pending + b2.pending, 0);
  });

  test('two rooms sending at once each hear only themselves', async (t) => {
    const [roomX, roomY] = sameShardDesktops(2);
    const x1 = (await join(t, server.wsUrl(roomX!), { token: token(user('Xia')) })).client;
    const x2 = (await join(t, server.wsUrl(roomX!), { token: token(user('Xan')) })).client;
    await x1.expect('session_joined');
    const y1 = (await join(t, server.wsUrl(roomY!), { token: token(user('Yul')) })).client;
    const y2 = (await join(t, server.wsUrl(roomY!), { token: token(user('Yan')) })).client;
    await y1.expect('session_joined');

    for (let i = 0; i < 5; i++) {
      x1.send({ type: 'asset_moved', payload: { room: 'x', from: 1, i } });
      x2.send({ type: 'asset_moved', payload: { room: 'x', from: 2, i } });
      y1.send({ type: 'asset_moved', payload: { room: 'y', from: 1, i } });
      y2.send({ type: 'asset_moved', payload: { room: 'y', from: 2, i } });
    }
    const expectFrom = async (client: TestClient, room: string, from: number) => {
      for (let i = 0; i < 5; i++) assert.deepEqual((await client.expect('asset_moved')).payload, { room, from, i });
    };
    await Promise.all([expectFrom(x1, 'x', 2), expectFrom(x2, 'x', 1), expectFrom(y1, 'y', 2), expectFrom(y2, 'y', 1)]);
    x2.send({ type: 'marker' });
    y2.send({ type: 'marker' });
    await x1.expect('marker');
    await y1.expect('marker');
  });

  test('ten rooms over both shards each receive only their own payloads', async (t) => {
    // Five desktops on each shard, chosen by the documented hash.
    const rooms: string[] = [];
    while (rooms.length < 10) {
      const id = desktop('many');
      if (rooms.filter((r) => shardFor(r, WORKERS) === shardFor(id, WORKERS)).length < 5) rooms.push(id);
    }
    const pairs = [];
    for (const room of rooms) {
      const sender = (await join(t, server.wsUrl(room), { token: token(user('Sen')) })).client;
      const receiver = (await join(t, server.wsUrl(room), { token: token(user('Rec')) })).client;
      await sender.expect('session_joined');
      pairs.push({ room, sender, receiver });
    }
    assert.deepEqual(
      pairs.map((p) => p.sender.shard),
      rooms.map((id) => shardFor(id, WORKERS)),
    );
    for (const { room, sender } of pairs) sender.send({ type: 'asset_added', payload: { room } });
    for (const { room, receiver, sender } of pairs) {
      assert.deepEqual((await receiver.expect('asset_added')).payload, { room });
      sender.send({ type: 'marker', payload: room });
      assert.deepEqual((await receiver.expect('marker')).payload, room);
    }
  });
});

describe('presence', () => {
  test('room_joined lists the others, session_joined tells them who came', async (t) => {
    const room = desktop();
    const ann = user('Ann');
    const bob = user('Bob');
    const vic = user('Vic', { userId: `viewer-vic-${Date.now()}` });

    const { client: a, joined: aJoined } = await join(t, server.wsUrl(room), { token: token(ann) });
    assert.match(aJoined.sessionId, SESSION_ID);
    // The room's epoch and latest offset (issue 21): a fresh room, at 0.
    assert.equal(typeof aJoined.epoch, 'string');
    assert.deepEqual(aJoined, { type: 'room_joined', sessionId: aJoined.sessionId, permission: 'editor', sessions: [], epoch: aJoined.epoch, offset: 0 });
    const annInfo = { sessionId: aJoined.sessionId, userId: ann.userId, firstName: 'Ann', email: ann.email, permission: 'editor' };

    const before = Date.now();
    const { client: b, joined: bJoined } = await join(t, server.wsUrl(room), { token: token(bob), via: 'bearer' });
    assert.match(bJoined.sessionId, SESSION_ID);
    assert.notEqual(bJoined.sessionId, aJoined.sessionId);
    assert.deepEqual(bJoined.sessions, [annInfo]);
    const bobInfo = { sessionId: bJoined.sessionId, userId: bob.userId, firstName: 'Bob', email: bob.email, permission: 'editor' };

    const seen = await a.expect('session_joined');
    assert.ok(seen.timestamp >= before && seen.timestamp <= Date.now());
    assert.deepEqual(seen, {
      type: 'session_joined',
      sessionId: bobInfo.sessionId,
      userId: bob.userId,
      firstName: 'Bob',
      email: bob.email,
      timestamp: seen.timestamp,
      payload: bobInfo,
    });

    const { joined: vJoined } = await join(t, server.wsUrl(room), { token: token(vic) });
    const vicInfo = { sessionId: vJoined.sessionId, userId: vic.userId, firstName: 'Vic', email: vic.email, permission: 'viewer' };
    assert.deepEqual(
      [...vJoined.sessions].sort((x, y) => x.userId.localeCompare(y.userId)),
      [annInfo, bobInfo].sort((x, y) => x.userId.localeCompare(y.userId)),
    );
    assert.deepEqual((await a.expect('session_joined')).payload, vicInfo);
    assert.deepEqual((await b.expect('session_joined')).payload, vicInfo);
  });

  test('session_left reaches everyone who stays, and a rejoin sees the room without the leaver', async (t) => {
    const room = desktop();
    const { client: a, joined: aJoined } = await join(t, server.wsUrl(room), { token: token(user('Ann')) });
    const bob = user('Bob');
    const { client: b, joined: bJoined } = await join(t, server.wsUrl(room), { token: token(bob) });
    const { client: c, joined: cJoined } = await join(t, server.wsUrl(room), { token: token(user('Cat')) });
    await a.expect('session_joined');
    await a.expect('session_joined');
    await b.expect('session_joined');

    await b.close();
    for (const client of [a, c]) {
      const left = await client.expect('session_left');
      assert.equal(left.sessionId, bJoined.sessionId);
      assert.equal(left.userId, bob.userId);
      assert.equal(typeof left.timestamp, 'number');
      assert.deepEqual(left.payload, { sessionId: bJoined.sessionId, userId: bob.userId, firstName: 'Bob', email: bob.email, permission: 'editor' });
    }
    const { joined: dJoined } = await join(t, server.wsUrl(room), { token: token(user('Dan')) });
    const ids = dJoined.sessions.map((info: { sessionId: string }) => info.sessionId).sort();
    assert.deepEqual(ids, [aJoined.sessionId, cJoined.sessionId].sort());
  });
});

describe('permissions', () => {
  test("a viewer cannot send any of the seed's seven mutations, but other types pass", async (t) => {
    const room = desktop();
    const { client: editor } = await join(t, server.wsUrl(room), { token: token(user('Eve')) });
    const viewerUser = user('Vic', { userId: `viewer-${Date.now()}-x` });
    const { client: viewer, joined } = await join(t, server.wsUrl(room), { token: token(viewerUser) });
    await editor.expect('session_joined');

    for (const type of Object.values(ClientEvent)) viewer.send({ type, payload: { id: 'asset-1' } });
    viewer.send({ type: 'cursor_moved', payload: { x: 1 } });
    const next = await editor.next();
    assert.equal(next.type, 'cursor_moved', `a viewer mutation leaked: ${JSON.stringify(next)}`);
    assert.equal(next.sessionId, joined.sessionId);
    assert.equal(editor.pending, 0);
    // The viewer got no error for them either: dropped silently, as the reference does.
    editor.send({ type: 'marker' });
    assert.equal((await viewer.next()).type, 'marker');
  });

  test("an editor can send the seed's seven mutations and a viewer watches them", async (t) => {
    const room = desktop();
    const { client: editor, joined } = await join(t, server.wsUrl(room), { token: token(user('Eve')) });
    const { client: viewer } = await join(t, server.wsUrl(room), { token: token(user('Vic', { userId: `viewer-${Date.now()}-y` })) });
    await editor.expect('session_joined');
    const types = Object.values(ClientEvent);
    types.forEach((type, i) => editor.send({ type, payload: { id: `asset-${i}` } }));
    for (const [i, type] of types.entries()) {
      const frame = await viewer.expect(type);
      assert.equal(frame.sessionId, joined.sessionId);
      assert.deepEqual(frame.payload, { id: `asset-${i}` });
    }
  });
});

describe('stamped identity', () => {
  test('relayed events carry the sender identity from its token, whatever the client claims', async (t) => {
    const room = desktop();
    const alice = user('Alice');
    const { client: sender, joined } = await join(t, server.wsUrl(room), { token: token(alice) });
    const { client: receiver } = await join(t, server.wsUrl(room), { token: token(user('Rick')) });
    await sender.expect('session_joined');

    const before = Date.now();
    sender.send({
      type: 'asset_resized',
      payload: { id: 'asset-9', w: 10, h: 20, nested: { deep: [1, 'two', null, true] } },
      sessionId: 'session_forged',
      userId: 'mallory',
      firstName: 'Mallory',
      email: 'm@evil.example',
      timestamp: 1,
      extra: 'ignored',
    });
    const frame = await receiver.expect('asset_resized');
    assert.ok(frame.timestamp >= before && frame.timestamp <= Date.now(), 'server timestamp in ms');
    assert.deepEqual(frame, {
      type: 'asset_resized',
      sessionId: joined.sessionId,
      userId: alice.userId,
      firstName: 'Alice',
      email: alice.email,
      timestamp: frame.timestamp,
      payload: { id: 'asset-9', w: 10, h: 20, nested: { deep: [1, 'two', null, true] } },
      offset: 1,
    });
    assert.deepEqual(Object.keys(frame), ['type', 'sessionId', 'userId', 'firstName', 'email', 'timestamp', 'payload', 'offset']);
  });

  test('a frame without payload is relayed without one; a null payload stays null', async (t) => {
    const room = desktop();
    const { client: sender } = await join(t, server.wsUrl(room), { token: token(user('Sam')) });
    const { client: receiver } = await join(t, server.wsUrl(room), { token: token(user('Ray')) });
    await sender.expect('session_joined');
    sender.send({ type: 'asset_deselected' });
    sender.send({ type: 'asset_selected', payload: null });
    assert.equal('payload' in (await receiver.expect('asset_deselected')), false);
    assert.equal((await receiver.expect('asset_selected')).payload, null);
  });
});
