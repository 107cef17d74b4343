/**
 * The limits of a multiplexed connection and the order of its ops, against
 * the real server and a permission stub whose answers a test holds back:
 * the subscribe budget (20, refilled at 2/s), 50 topics, 64 queued ops with
 * the topic named, a slow authorize on one topic not holding the others,
 * per-topic order, and the ops of a closed socket dropped.
 */
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { ConnectionLimit, TopicErrorCode } from '../src/protocol/topics.ts';
import { HandshakeRejected, join, type Frame, type TestClient } from './helpers/client.ts';
import { startPermissionStub, type PermissionRequest, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, expectOp, subscribe } from './helpers/topics.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

/** Authorize calls held back, by `userId topic`: answered when the test says. */
const held = new Map<string, ServerResponse>();
const holding = new Set<string>();
/** Resolves when the held call for `key` has arrived. */
const arrivals = new Map<string, () => void>();

before(async () => {
  stub = await startPermissionStub(cleanup, (req: PermissionRequest, res) => {
    const key = `${req.userId} ${req.topic}`;
    if (holding.has(key)) {
      held.set(key, res);
      arrivals.get(key)?.();
      return 'hang';
    }
    res.setHeader('content-type', 'application/json');
    res.end('{"permission":"editor"}');
  });
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base, args: ['--rate-limit', '1000', '--rate-limit-burst', '1000'] });
});
after(() => cleanup.run());

const topic = (): string => `desktop:${desktop()}`;

/** Hold the authorize call of `userId` on `topic`; resolves once it is waiting at the stub. */
function hold(userId: string, on: string): Promise<void> {
  const key = `${userId} ${on}`;
  holding.add(key);
  return new Promise((resolve) => arrivals.set(key, resolve));
}

function release(userId: string, on: string): void {
  const key = `${userId} ${on}`;
  holding.delete(key);
  const res = held.get(key)!;
  res.setHeader('content-type', 'application/json');
  res.end('{"permission":"editor"}');
}

/** Read frames until one satisfies `done`; all of them, in order. */
async function readUntil(client: TestClient, done: (frame: Frame) => boolean): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (;;) {
    const frame = await client.next();
    frames.push(frame);
    if (done(frame)) return frames;
  }
}

describe('subscribe limits', () => {
  test(`the subscribe budget: ${ConnectionLimit.SUBSCRIBE_BURST} at once, the next one rate_limited with its topic and ref`, async (t) => {
    const conn = await connectTopics(t, server, token(user('Ann')));
    const topics = Array.from({ length: ConnectionLimit.SUBSCRIBE_BURST + 1 }, topic);
    // Sent in one write, so that the shard reads them in one turn: no token can come back meanwhile
    // (one a half second), however loaded the machine.
    const socket = (conn.ws as unknown as { _socket: import('node:net').Socket })._socket;
    socket.cork();
    for (const [i, on] of topics.entries()) conn.send({ op: 'subscribe', topic: on, ref: String(i) });
    socket.uncork();
    const frames: Frame[] = [];
    while (frames.length < topics.length) frames.push(await conn.next());
    const refused = frames.filter((f) => f.op === 'error');
    assert.equal(frames.filter((f) => f.op === 'subscribed').length, ConnectionLimit.SUBSCRIBE_BURST);
    assert.deepEqual(refused, [
      { op: 'error', topic: topics.at(-1), code: TopicErrorCode.RATE_LIMITED, message: 'too many subscribe requests', ref: String(topics.length - 1) },
    ]);
    assert.equal(stub.requests.filter((r) => r.topic === topics.at(-1)).length, 0, 'no authorize call for a refused subscribe');
  });

  test(`at most ${ConnectionLimit.MAX_TOPICS} topics on a connection`, async (t) => {
    const conn = await connectTopics(t, server, token(user('Ann')));
    let held = 0;
    // The budget gives 20 at once and 2 a second after that: wait for the budget, not for a time.
    const deadline = Date.now() + 40_000;
    while (held < ConnectionLimit.MAX_TOPICS) {
      assert.ok(Date.now() < deadline, `only ${held} topics within 40 s`);
      const on = topic();
      conn.send({ op: 'subscribe', topic: on });
      const frame = await conn.next();
      if (frame.op === 'subscribed') held++;
      else {
        assert.equal(frame.message, 'too many subscribe requests');
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
    // Whatever the budget: the topic count is checked first.
    await new Promise((resolve) => setTimeout(resolve, 600));
    const over = topic();
    conn.send({ op: 'subscribe', topic: over, ref: 'over' });
    await expectOp(conn, 'error', {
      code: TopicErrorCode.RATE_LIMITED,
      topic: over,
      ref: 'over',
      message: `more than ${ConnectionLimit.MAX_TOPICS} topics on this connection`,
    });
    assert.equal(stub.requests.filter((r) => r.topic === over).length, 0);
  });
});

describe('the op queue', () => {
  test('a slow authorize holds its own topic only; its ops then run in order; the 65th waiting op is rate_limited, naming its topic', async (t) => {
    const slow = topic();
    const fast = topic();
    const annUser = user('Ann');
    const ann = await connectTopics(t, server, token(annUser));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(bob, slow);
    await subscribe(bob, fast);
    const waiting = hold(annUser.userId, slow);
    ann.send({ op: 'subscribe', topic: slow, ref: 'slow' });
    await waiting;
    for (let i = 0; i < ConnectionLimit.MAX_QUEUED_OPS; i++) ann.send({ op: 'publish', topic: slow, type: 'seq', payload: i });
    ann.send({ op: 'publish', topic: slow, type: 'seq', payload: 'one too many', ref: 'full' });
    await expectOp(ann, 'error', { code: TopicErrorCode.RATE_LIMITED, topic: slow, ref: 'full' });
    // The other topic is not held up by the waiting authorize.
    await subscribe(ann, fast, 'fast');
    await expectEvent(bob, fast, 'session_joined');
    ann.send({ op: 'publish', topic: fast, type: 'quick', payload: 1 });
    await expectEvent(bob, fast, 'quick');

    release(annUser.userId, slow);
    await expectOp(ann, 'subscribed', { topic: slow, ref: 'slow' });
    await expectEvent(bob, slow, 'session_joined');
    for (let i = 0; i < ConnectionLimit.MAX_QUEUED_OPS; i++) assert.equal((await expectEvent(bob, slow, 'seq')).payload, i);
    // The refused one never came: the next frame is a later marker.
    ann.send({ op: 'publish', topic: slow, type: 'marker' });
    await expectEvent(bob, slow, 'marker');
  });

  test('ops still queued when the socket closes are dropped: no phantom join, no authorize call for a dead socket', async (t) => {
    const on = topic();
    const annUser = user('Ann');
    const ann = await connectTopics(t, server, token(annUser));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(bob, on);
    const waiting = hold(annUser.userId, on);
    ann.send({ op: 'subscribe', topic: on });
    await waiting;
    // Queued behind the waiting subscribe: would ask again once it is done.
    ann.send({ op: 'unsubscribe', topic: on });
    ann.send({ op: 'subscribe', topic: on });
    ann.send({ op: 'publish', topic: on, type: 'ghost' });
    await ann.close();
    await server.waitForLog((l) => l.event === 'connection_close' && l.userId === annUser.userId);
    release(annUser.userId, on);
    await server.waitForLog((l) => l.event === 'subscribe_dropped' && l.userId === annUser.userId && l.topic === on);
    // Bob's own marker comes back through another member: nothing of Ann's came before it.
    const cid = await connectTopics(t, server, token(user('Cid')));
    await subscribe(cid, on);
    const frames = await readUntil(bob, (f) => f.type === 'session_joined');
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.firstName, 'Cid');
    assert.equal(stub.requests.filter((r) => r.topic === on && r.userId === annUser.userId).length, 1);
  });
});

describe('room size', () => {
  test('--max-room-size counts every kind of member: a subscribe to a full room is rate_limited with its topic, as a handshake would get 503', async (t) => {
    const small = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--max-room-size', '2'] });
    const id = desktop();
    const on = `desktop:${id}`;
    const { client: legacy } = await join(t, small.wsUrl(id), { token: token(user('Leo')) });
    const ann = await connectTopics(t, small, token(user('Ann')));
    await subscribe(ann, on);
    await legacy.expect('session_joined');
    const bob = await connectTopics(t, small, token(user('Bob')));
    bob.send({ op: 'subscribe', topic: on, ref: 'full' });
    await expectOp(bob, 'error', { code: TopicErrorCode.RATE_LIMITED, topic: on, ref: 'full', message: 'the room is full' });
    await assert.rejects(join(t, small.wsUrl(id), { token: token(user('Cid')) }), (err: unknown) => err instanceof HandshakeRejected && err.status === 503);
    // Ann leaves: Bob gets in.
    ann.send({ op: 'unsubscribe', topic: on });
    await expectOp(ann, 'unsubscribed');
    await subscribe(bob, on);
    bob.send({ op: 'publish', topic: on, type: 'in' });
    await legacy.expect('session_left');
    await legacy.expect('session_joined');
    await legacy.expect('in');
  });
});
