/**
 * Recovery on the multiplexed route (issue 21), against the real server
 * (2 shards), real clients and the real permission stub: a subscribe with
 * `recover` gets `recovered` in its ack and the missed events after it, in
 * order and once, before live ones, for a topic owned by the connection's
 * shard and for one owned by the other shard (its replay read over the
 * in-process link); event frames carry offsets; a bad `recover` is
 * refused; an unknown position replays nothing.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { TopicErrorCode } from '../src/protocol/topics.ts';
import { desktopOnShard } from './helpers/api.ts';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { connectTopics, expectEvent, expectOp, subscribe } from './helpers/topics.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--rate-limit', '100000', '--rate-limit-burst', '100000'] });
});
after(() => cleanup.run());

/** Two legacy sockets on `desktopId`: a sender and a witness that sees every event. */
async function legacyPair(t: Scope, desktopId: string): Promise<{ a: TestClient; w: TestClient }> {
  const a = await join(t, server.wsUrl(desktopId), { token: token(user('Ann')) });
  const w = await join(t, server.wsUrl(desktopId), { token: token(user('Wit')) });
  await a.client.expect('session_joined');
  return { a: a.client, w: w.client };
}

/** The next frame of `type` on a legacy socket, presence skipped (who joins and leaves is not what these tests are about). */
async function nextOf(client: TestClient, type: string): Promise<Frame> {
  for (;;) {
    const frame = await client.next();
    if (frame.type === type) return frame;
    assert.ok(frame.type === 'session_joined' || frame.type === 'session_left', `expected ${type}, got ${JSON.stringify(frame)}`);
  }
}

/** Send events numbered `from`… and wait until `witness` has them; their offsets. */
async function send(a: TestClient, witness: TestClient, from: number, count: number, pad = ''): Promise<number[]> {
  for (let i = 0; i < count; i++) a.send({ type: 'n', payload: { n: from + i, pad } });
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) offsets.push((await nextOf(witness, 'n')).offset);
  return offsets;
}

/** The next `n` events of `topic` of type `n` on a connection, skipping presence. */
async function events(client: TestClient, topic: string, n: number): Promise<Frame[]> {
  const got: Frame[] = [];
  while (got.length < n) {
    const frame = await client.next();
    assert.equal(frame.op, 'event', JSON.stringify(frame));
    assert.equal(frame.topic, topic);
    if (frame.type === 'n') got.push(frame);
  }
  return got;
}

for (const where of ['the connection’s shard', 'the other shard'] as const) {
  test(`a subscribe with recover, for a topic owned by ${where}: recovered, exactly the 50 missed in order, then live ones once`, async (t) => {
    const person = user('Mux');
    const probe = await connectTopics(t, server, token(person));
    const owner = where === 'the other shard' ? 1 - probe.shard : probe.shard;
    const desktopId = desktopOnShard(owner);
    const topic = `desktop:${desktopId}`;
    const { a, w } = await legacyPair(t, desktopId);

    const ack = await subscribe(probe, topic);
    assert.equal(typeof ack.epoch, 'string');
    assert.equal(ack.offset, 0);
    assert.equal('recovered' in ack, false);
    await a.expect('session_joined');
    await w.expect('session_joined');
    const [first] = await send(a, w, 0, 1);
    const live = await expectEvent(probe, topic, 'n');
    assert.equal(live.offset, first);
    await probe.close();
    await a.expect('session_left');
    await w.expect('session_left');

    // 50 events of 3 KB: the replay takes several steps (and batches over the link), while live events arrive.
    const missed = await send(a, w, 1, 50, 'x'.repeat(3000));
    const back = await connectTopics(t, server, token(person));
    back.send({ op: 'subscribe', topic, recover: { epoch: ack.epoch, offset: first } });
    const ack2 = await expectOp(back, 'subscribed', { topic });
    for (let i = 0; i < 5; i++) a.send({ type: 'n', payload: { n: 51 + i } });
    assert.equal(ack2.recovered, true);
    assert.equal(ack2.epoch, ack.epoch);
    assert.ok(ack2.offset >= missed[49]!);
    const got = await events(back, topic, 55);
    assert.deepEqual(
      got.map((f) => f.payload.n),
      Array.from({ length: 55 }, (_, i) => 1 + i),
    );
    assert.deepEqual(
      got.slice(0, 50).map((f) => f.offset),
      missed,
    );
    for (let i = 1; i < got.length; i++) assert.ok(got[i]!.offset > got[i - 1]!.offset);
    a.send({ type: 'marker' });
    assert.equal((await expectEvent(back, topic, 'marker')).offset, got[54]!.offset + 1);
    assert.equal(back.pending, 0);
  });
}

test('a subscriber’s own publish is stamped by the room’s owner: legacy sockets and subscribers on both shards see one offset', async (t) => {
  const desktopId = desktopOnShard(0);
  const topic = `desktop:${desktopId}`;
  const { a, w } = await legacyPair(t, desktopId);
  // Two users whose connections live on different shards.
  const conns: TestClient[] = [];
  for (let i = 0; conns.length < 2 && i < 64; i++) {
    const c = await connectTopics(t, server, token(user(`S${i}`)));
    if (conns.every((o) => o.shard !== c.shard)) conns.push(c);
    else await c.close();
  }
  assert.equal(conns.length, 2);
  for (const c of conns) await subscribe(c, topic);
  conns[1]!.send({ op: 'publish', topic, type: 'n', payload: { n: 1 } });
  let seen = await conns[0]!.next();
  while (seen.type !== 'n') seen = await conns[0]!.next();
  const offsets = [(await nextOf(a, 'n')).offset, (await nextOf(w, 'n')).offset, seen.offset];
  assert.equal(new Set(offsets).size, 1, `${offsets}`);
  assert.ok(offsets[0] > 0);
});

test('a bad recover is refused with bad_recover, and the topic is not joined', async (t) => {
  const c = await connectTopics(t, server, token(user('Bad')));
  const topic = `desktop:${desktopOnShard(1)}`;
  const bad: unknown[] = [
    'x',
    null,
    [],
    { epoch: 'a' },
    { offset: 1 },
    { epoch: '', offset: 1 },
    { epoch: 'a b', offset: 1 },
    { epoch: 'e'.repeat(10 * 1024), offset: 1 },
    { epoch: 'a', offset: -1 },
    { epoch: 'a', offset: 1.5 },
    { epoch: 'a', offset: '1' },
    { epoch: 'a', offset: 2 ** 53 },
  ];
  for (const recover of bad) {
    c.send({ op: 'subscribe', topic, recover, ref: 'r' });
    const error = await expectOp(c, 'error', { code: TopicErrorCode.BAD_RECOVER, topic, ref: 'r' });
    assert.match(error.message, /recover/);
  }
  // Not joined: a publish with a ref is not_subscribed.
  c.send({ op: 'publish', topic, type: 'x', ref: 'p' });
  await expectOp(c, 'error', { code: TopicErrorCode.NOT_SUBSCRIBED });
});

test('an unknown epoch, or an offset never given, gets recovered: false and no replay; a held topic asked to recover replays nothing', async (t) => {
  for (const owner of [0, 1]) {
    const desktopId = desktopOnShard(owner);
    const topic = `desktop:${desktopId}`;
    const { a, w } = await legacyPair(t, desktopId);
    const first = await connectTopics(t, server, token(user('Fir')));
    const ack = await subscribe(first, topic);
    let latest = (await send(a, w, 0, 3))[2]!;
    for (const recover of [
      { epoch: 'nope', offset: 0 },
      { epoch: ack.epoch, offset: 99 },
    ]) {
      const c = await connectTopics(t, server, token(user('Rec')));
      c.send({ op: 'subscribe', topic, recover });
      const got = await expectOp(c, 'subscribed', { topic });
      assert.equal(got.recovered, false, JSON.stringify(recover));
      assert.equal(got.offset, latest);
      a.send({ type: 'marker' });
      assert.equal((await expectEvent(c, topic, 'marker')).type, 'marker', 'no replay');
      await nextOf(w, 'marker');
      // Held already: recovered false, nothing replayed.
      c.send({ op: 'subscribe', topic, recover: { epoch: ack.epoch, offset: 0 } });
      const again = await expectOp(c, 'subscribed', { topic });
      assert.equal(again.recovered, false);
      a.send({ type: 'marker2' });
      assert.equal((await c.next()).type, 'marker2');
      latest = (await nextOf(w, 'marker2')).offset;
    }
  }
});
