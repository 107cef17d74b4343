/**
 * The multiplexed route, `GET /ws/connection`, against the real server
 * (one worker: every topic on the connection's shard) and a real
 * permission API answering `/api/realtime/authorize`: every op, every
 * error code with its `ref`, presence, events, viewers, the size limit.
 * Absence of a frame is proven by ordering: a marker published later must
 * be the next frame, since one shard handles a room in order.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ClientEvent } from '../src/protocol/events.ts';
import { ConnectionLimit, TopicErrorCode } from '../src/protocol/topics.ts';
import type { TestClient } from './helpers/client.ts';
import { startPermissionStub, type PermissionHandler, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, expectOp, subscribe } from './helpers/topics.ts';

const SESSION_ID = /^session_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

// Users whose id contains "viewer" view, "owner" own, everyone else edits.
const byName: PermissionHandler = (req, res) => {
  res.setHeader('content-type', 'application/json');
  const id = req.userId ?? '';
  res.end(JSON.stringify({ permission: id.includes('viewer') ? 'viewer' : id.includes('owner') ? 'owner' : 'editor' }));
};

before(async () => {
  stub = await startPermissionStub(cleanup, byName);
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base });
});
after(() => cleanup.run());

const topic = (): string => `desktop:${desktop()}`;

/** Publish a marker on `topic` from `from` and read it as `to`'s next frame: nothing came before it. */
async function marker(from: TestClient, to: TestClient, on: string): Promise<void> {
  from.send({ op: 'publish', topic: on, type: 'marker', payload: { n: 1 } });
  await expectEvent(to, on, 'marker');
}

describe('subscribe', () => {
  test('nothing is sent before the first op; the ack has the sessionId, the permission, the others and the ref', async (t) => {
    const on = topic();
    const annUser = user('Ann');
    const ann = await connectTopics(t, server, token(annUser));
    // A ping round trip: had the server sent anything on open, it would be in the inbox by now.
    await new Promise<void>((resolve) => {
      ann.ws.once('pong', () => resolve());
      ann.ws.ping();
    });
    assert.equal(ann.pending, 0);
    const ack = await subscribe(ann, on, 'r1');
    assert.match(ack.sessionId, SESSION_ID);
    // The room's position (issue 21): a fresh room, at offset 0.
    assert.equal(typeof ack.epoch, 'string');
    assert.deepEqual(ack, {
      op: 'subscribed',
      topic: on,
      permission: 'editor',
      sessionId: ack.sessionId,
      sessions: [],
      epoch: ack.epoch,
      offset: 0,
      ref: 'r1',
    });

    const bobUser = user('Bob');
    const bob = await connectTopics(t, server, token(bobUser));
    const bobAck = await subscribe(bob, on);
    assert.equal(Object.hasOwn(bobAck, 'ref'), false, 'no ref: none echoed');
    assert.deepEqual(bobAck.sessions, [{ sessionId: ack.sessionId, userId: annUser.userId, firstName: 'Ann', email: 'ann@example.com', permission: 'editor' }]);
    const joined = await expectEvent(ann, on, 'session_joined');
    assert.deepEqual(joined, {
      op: 'event',
      topic: on,
      type: 'session_joined',
      sessionId: bobAck.sessionId,
      userId: bobUser.userId,
      firstName: 'Bob',
      email: 'bob@example.com',
      timestamp: joined.timestamp,
      payload: { sessionId: bobAck.sessionId, userId: bobUser.userId, firstName: 'Bob', email: 'bob@example.com', permission: 'editor' },
    });
    assert.equal(typeof joined.timestamp, 'number');
  });

  test('one sessionId per connection, the same on every topic', async (t) => {
    const ann = await connectTopics(t, server, token(user('Ann')));
    const first = await subscribe(ann, topic());
    const second = await subscribe(ann, topic());
    assert.equal(first.sessionId, second.sessionId);
  });

  test('a topic already held gets a fresh ack: no authorize call, no session_joined', async (t) => {
    const on = topic();
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(ann, on);
    await subscribe(bob, on);
    await expectEvent(ann, on, 'session_joined');
    const calls = stub.requests.filter((r) => r.topic === on).length;
    const again = await subscribe(bob, on, 'again');
    assert.equal(again.ref, 'again');
    assert.equal(again.sessions.length, 1);
    assert.equal(stub.requests.filter((r) => r.topic === on).length, calls);
    await marker(bob, ann, on);
  });

  test('a bad topic is bad_request, with the topic and the ref; surrounding whitespace included', async (t) => {
    const ann = await connectTopics(t, server, token(user('Ann')));
    const id = desktop();
    for (const bad of [
      ` desktop:${id}`,
      `desktop:${id} `,
      `desktop:${id}\n`,
      `canvas:${id}`,
      'desktop:',
      `desktop:${id}/x`,
      `desktop:${'a'.repeat(129)}`,
      'desktop',
    ]) {
      ann.send({ op: 'subscribe', topic: bad, ref: 'bad' });
      await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, topic: bad, ref: 'bad' });
    }
    ann.send({ op: 'subscribe', topic: 42, ref: 'n' });
    const noTopic = await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, ref: 'n' });
    assert.equal(Object.hasOwn(noTopic, 'topic'), false);
    assert.equal(stub.requests.filter((r) => r.topic?.includes(id)).length, 0, 'no authorize call for a bad topic');
  });
});

describe('unsubscribe', () => {
  test('leaves: session_left to the others, then unsubscribed with the ref; again is not_subscribed', async (t) => {
    const on = topic();
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    const annAck = await subscribe(ann, on);
    await subscribe(bob, on);
    await expectEvent(ann, on, 'session_joined');
    bob.send({ op: 'unsubscribe', topic: on, ref: 'u1' });
    assert.deepEqual(await bob.next(), { op: 'unsubscribed', topic: on, ref: 'u1' });
    const left = await expectEvent(ann, on, 'session_left');
    assert.notEqual(left.sessionId, annAck.sessionId);
    bob.send({ op: 'unsubscribe', topic: on, ref: 'u2' });
    await expectOp(bob, 'error', { code: TopicErrorCode.NOT_SUBSCRIBED, topic: on, ref: 'u2' });
  });

  test('closing the socket leaves every topic', async (t) => {
    const [one, two] = [topic(), topic()];
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(ann, one);
    await subscribe(ann, two);
    const ack = await subscribe(bob, one);
    await subscribe(bob, two);
    await expectEvent(ann, one, 'session_joined');
    await expectEvent(ann, two, 'session_joined');
    await bob.close();
    const lefts = [await ann.next(), await ann.next()];
    assert.deepEqual(
      lefts.map((f) => [f.topic, f.type, f.sessionId]).sort(),
      [
        [one, 'session_left', ack.sessionId],
        [two, 'session_left', ack.sessionId],
      ].sort(),
    );
  });
});

describe('publish', () => {
  test('an event reaches every other member, stamped by the server, never echoed; payload null when absent', async (t) => {
    const on = topic();
    const annUser = user('Ann');
    const ann = await connectTopics(t, server, token(annUser));
    const bob = await connectTopics(t, server, token(user('Bob')));
    const cid = await connectTopics(t, server, token(user('Cid')));
    const annAck = await subscribe(ann, on);
    await subscribe(bob, on);
    await subscribe(cid, on);
    await expectEvent(ann, on, 'session_joined');
    await expectEvent(ann, on, 'session_joined');
    await expectEvent(bob, on, 'session_joined');

    ann.send({ op: 'publish', topic: on, type: ClientEvent.ASSET_MOVED, payload: { id: 'a', x: 1e2 }, sessionId: 'forged', userId: 'forged' });
    for (const to of [bob, cid]) {
      const event = await expectEvent(to, on, ClientEvent.ASSET_MOVED);
      assert.deepEqual(event, {
        op: 'event',
        topic: on,
        type: ClientEvent.ASSET_MOVED,
        sessionId: annAck.sessionId,
        userId: annUser.userId,
        firstName: 'Ann',
        email: 'ann@example.com',
        timestamp: event.timestamp,
        payload: { id: 'a', x: 100 },
        offset: 1,
      });
    }
    ann.send({ op: 'publish', topic: on, type: 'cursor' });
    const bare = await expectEvent(bob, on, 'cursor');
    assert.equal(bare.payload, null);
    assert.equal(Object.hasOwn(bare, 'payload'), true);
    // No echo and no ack: the sender's next frame is bob's marker.
    await marker(bob, ann, on);
  });

  test('not subscribed: not_subscribed with a ref, silence without', async (t) => {
    const on = topic();
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(bob, on);
    ann.send({ op: 'publish', topic: on, type: 'cursor', ref: 'p1' });
    await expectOp(ann, 'error', { code: TopicErrorCode.NOT_SUBSCRIBED, topic: on, ref: 'p1' });
    ann.send({ op: 'publish', topic: on, type: 'cursor' });
    // Bob got nothing, and Ann nothing either: her next frame answers her next op.
    await subscribe(ann, on, 'after');
    await expectEvent(bob, on, 'session_joined');
    await marker(ann, bob, on);
  });

  test('server-only types are refused as bad_request and reach nobody', async (t) => {
    const on = topic();
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(ann, on);
    await subscribe(bob, on);
    await expectEvent(ann, on, 'session_joined');
    for (const type of ['session_joined', 'session_left', 'presence_sync_request']) {
      ann.send({ op: 'publish', topic: on, type, payload: { sessionId: 'forged' }, ref: type });
      await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, topic: on, ref: type });
    }
    await marker(ann, bob, on);
  });

  test("a viewer's mutations are dropped, its other events relayed; owner acts as editor", async (t) => {
    const on = `production-table:${desktop()}`;
    const viewer = await connectTopics(t, server, token(user('viewer')));
    const owner = await connectTopics(t, server, token(user('owner')));
    const viewerAck = await subscribe(viewer, on);
    assert.equal(viewerAck.permission, 'viewer');
    const ownerAck = await subscribe(owner, on);
    assert.equal(ownerAck.permission, 'editor');
    assert.equal(ownerAck.sessions[0].permission, 'viewer');
    const joined = await expectEvent(viewer, on, 'session_joined');
    assert.equal(joined.payload.permission, 'editor');
    // The relay's mutation table (the production table's pt_* types join it with the configurable table).
    for (const type of [ClientEvent.ASSET_MOVED, ClientEvent.ASSET_ADDED, ClientEvent.ASSET_REMOVED])
      viewer.send({ op: 'publish', topic: on, type, payload: {} });
    viewer.send({ op: 'publish', topic: on, type: 'cursor_moved', payload: { x: 1 } });
    await expectEvent(owner, on, 'cursor_moved');
    owner.send({ op: 'publish', topic: on, type: ClientEvent.ASSET_MOVED, payload: { row: 1 } });
    await expectEvent(viewer, on, ClientEvent.ASSET_MOVED);
  });
});

describe('errors', () => {
  test('not JSON or not an object: invalid json, no ref; unknown op: bad_request with the ref; a bad type: bad_request', async (t) => {
    const ann = await connectTopics(t, server, token(user('Ann')));
    for (const bad of ['{', '[1]', '"x"', 'null', '12']) {
      ann.send(bad);
      const error = await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, message: 'invalid json' });
      assert.deepEqual(Object.keys(error).sort(), ['code', 'message', 'op']);
    }
    ann.send({ op: 'join', topic: topic(), ref: 'k' });
    await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, message: 'unknown op', ref: 'k' });
    ann.send({ topic: topic(), ref: 'none' });
    await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, ref: 'none' });
    const on = topic();
    await subscribe(ann, on);
    for (const type of ['', 7, 'x'.repeat(65)]) {
      ann.send({ op: 'publish', topic: on, type, ref: 't' });
      await expectOp(ann, 'error', { code: TopicErrorCode.BAD_REQUEST, topic: on, ref: 't' });
    }
  });

  test(`messages up to ${ConnectionLimit.MAX_MESSAGE_BYTES} bytes are relayed; larger closes with 1009`, async (t) => {
    const on = topic();
    const ann = await connectTopics(t, server, token(user('Ann')));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(ann, on);
    await subscribe(bob, on);
    await expectEvent(ann, on, 'session_joined');
    const empty = JSON.stringify({ op: 'publish', topic: on, type: 'big', payload: '' });
    const frame = (size: number): string => empty.replace('"payload":""', `"payload":"${'x'.repeat(size - empty.length)}"`);
    const largest = frame(ConnectionLimit.MAX_MESSAGE_BYTES);
    assert.equal(Buffer.byteLength(largest), ConnectionLimit.MAX_MESSAGE_BYTES);
    ann.send(largest);
    const big = await expectEvent(bob, on, 'big');
    assert.equal(big.payload.length, ConnectionLimit.MAX_MESSAGE_BYTES - empty.length);
    ann.send(frame(ConnectionLimit.MAX_MESSAGE_BYTES + 1));
    assert.equal((await ann.closed).code, 1009);
    await expectEvent(bob, on, 'session_left');
  });
});
