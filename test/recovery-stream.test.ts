/**
 * Recovery across nodes (issue 21): two real nodes with `--history-stream`
 * and a real `nats-server -js`. Every relayed event gets the stream's
 * sequence as its offset on every node; a client that was on node A
 * resumes on node B (which had no member of the desktop) and recovers
 * exactly what it missed, on the legacy and the multiplexed route; an old
 * epoch, or the epoch of a stream that nats-server lost (memory storage,
 * restarted), says `recovered: false`. A Go-relay-style core publish on
 * `room.{id}` gets an offset too; hostile messages in the stream are
 * dropped as on the bus.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect as natsConnect } from '@nats-io/transport-node';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { startNats } from './helpers/nats.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { connectTopics, expectOp } from './helpers/topics.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { token, user } from './helpers/tokens.ts';

async function node(t: Scope, id: string, natsUrl: string, stubBase: string, stream = 'moodio', workers = 1): Promise<ServerProcess> {
  const args = ['--nats-url', natsUrl, '--node-id', id, '--rate-limit', '0', '--api-key', API_KEY];
  if (stream !== '') args.push('--history-stream', stream);
  const server = await startServer(t, { workers, permissionApiBase: stubBase, args });
  for (let w = 0; w < workers; w++) {
    await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === w);
    if (stream !== '') await server.waitForLog((l) => l.event === 'history_stream_epoch' && l.worker === w);
  }
  return server;
}

/** The next frame that is not presence. */
async function nextEvent(client: TestClient): Promise<Frame> {
  for (;;) {
    const frame = await client.next(10_000);
    if (frame.type !== 'session_joined' && frame.type !== 'session_left') return frame;
  }
}

async function fleet(t: Scope, workers = 1): Promise<{ a: ServerProcess; b: ServerProcess; natsUrl: string; restart: () => Promise<void> }> {
  const nats = await startNats(t, { jetstream: true });
  const stub = await startPermissionStub(t);
  const [a, b] = await Promise.all([node(t, 'js-a', nats.url, stub.base, 'moodio', workers), node(t, 'js-b', nats.url, stub.base, 'moodio', workers)]);
  return {
    a,
    b,
    natsUrl: nats.url,
    restart: async () => {
      await nats.kill();
      await nats.start();
    },
  };
}

test('legacy route: a client of node A resumes on node B (no member there before) with A’s epoch and offset: exactly the missed events, same offsets, then live ones; an old epoch says false', async (t) => {
  const { a, b } = await fleet(t);
  const desk = desktop('js-legacy');
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  const w = await join(t, a.wsUrl(desk), { token: token(user('Wit')) });
  const x = await join(t, a.wsUrl(desk), { token: token(user('Xav')) });
  assert.match(String(x.joined.epoch), /^moodio~\d+$/, 'the stream’s epoch');
  s.client.send({ type: 'n', payload: { n: 0 } });
  const first = await nextEvent(x.client);
  assert.equal(first.payload.n, 0);
  assert.equal(typeof first.offset, 'number');
  assert.equal((await nextEvent(w.client)).offset, first.offset, 'one offset for every member');
  await x.client.close();

  const missed: number[] = [];
  for (let n = 1; n <= 5; n++) s.client.send({ type: 'n', payload: { n } });
  for (let n = 1; n <= 5; n++) {
    const frame = await nextEvent(w.client);
    assert.equal(frame.payload.n, n);
    assert.ok(frame.offset > (missed.at(-1) ?? first.offset), 'offsets increase');
    missed.push(frame.offset);
  }
  const back = await join(t, `${b.wsUrl(desk)}?epoch=${x.joined.epoch}&offset=${first.offset}`, { token: token(user('Xav')) });
  assert.equal(back.joined.recovered, true);
  assert.equal(back.joined.epoch, x.joined.epoch, 'one epoch for the fleet');
  // The room's subject carries presence too (the stream keeps it, no event is framed from it): the position may be past the last event.
  assert.ok(back.joined.offset >= missed.at(-1)!);
  const got: Frame[] = [];
  while (got.length < 5) got.push(await nextEvent(back.client));
  assert.deepEqual(
    got.map((f) => [f.payload.n, f.offset]),
    missed.map((offset, i) => [i + 1, offset]),
  );
  s.client.send({ type: 'live' });
  const live = await nextEvent(back.client);
  assert.equal(live.type, 'live');
  assert.equal((await nextEvent(w.client)).offset, live.offset, 'the same offset on both nodes');
  // And B's members' events reach A with the same offsets.
  back.client.send({ type: 'from-b' });
  const fromB = await nextEvent(w.client);
  assert.equal(fromB.type, 'from-b');
  assert.equal((await nextEvent(s.client)).offset, fromB.offset);

  const old = await join(t, `${b.wsUrl(desk)}?epoch=${x.joined.epoch}x&offset=${first.offset}`, { token: token(user('Xav')) });
  assert.equal(old.joined.recovered, false);
  s.client.send({ type: 'marker' });
  assert.equal((await nextEvent(old.client)).type, 'marker', 'no replay');
});

for (const owner of [0, 1])
  test(`multiplexed route (2 workers, the room on shard ${owner}): a subscriber of node A resubscribes on node B with recover: recovered, exactly the missed events, then live ones`, async (t) => {
    const { a, b } = await fleet(t, 2);
    // The connection lands on either shard: of the two tests, one has its room on the other shard (read over the link).
    const desk = desktopOnShard(owner, 2, 'js-topic');
    const topic = `desktop:${desk}`;
    const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
    const c = await connectTopics(t, a, token(user('Cat')));
    c.send({ op: 'subscribe', topic });
    const ack = await expectOp(c, 'subscribed', { topic });
    assert.match(String(ack.epoch), /^moodio~\d+$/);
    s.client.send({ type: 'n', payload: { n: 0 } });
    const first = await expectOp(c, 'event', { topic, type: 'n' });
    await c.close();
    const sent: number[] = [];
    for (let n = 1; n <= 5; n++) s.client.send({ type: 'n', payload: { n } });
    // The truth: a witness on A.
    const w = await join(t, `${a.wsUrl(desk)}?epoch=${ack.epoch}&offset=${first.offset}`, { token: token(user('Wit')) });
    assert.equal(w.joined.recovered, true);
    for (let n = 1; n <= 5; n++) sent.push((await nextEvent(w.client)).offset);

    const back = await connectTopics(t, b, token(user('Cat')));
    back.send({ op: 'subscribe', topic, recover: { epoch: ack.epoch, offset: first.offset } });
    const again = await expectOp(back, 'subscribed', { topic });
    assert.equal(again.recovered, true);
    assert.equal(again.epoch, ack.epoch);
    const got: Frame[] = [];
    while (got.length < 5) {
      const frame = await back.next(10_000);
      if (frame.op === 'event' && frame.type === 'n') got.push(frame);
    }
    assert.deepEqual(
      got.map((f) => [f.payload.n, f.offset]),
      sent.map((offset, i) => [i + 1, offset]),
    );
    s.client.send({ type: 'live' });
    for (;;) {
      const frame = await back.next(10_000);
      if (frame.op !== 'event' || frame.type === 'session_joined') continue;
      assert.equal(frame.type, 'live');
      assert.ok(frame.offset > sent.at(-1)!);
      break;
    }
  });

test('20 clients of node A resume on node B at once: all recovered exactly, and B read the stream once or twice, not once each', async (t) => {
  const { a, b } = await fleet(t);
  const desk = desktop('js-crowd');
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  const w = await join(t, a.wsUrl(desk), { token: token(user('Wit')) });
  s.client.send({ type: 'n', payload: { n: 0 } });
  const first = await nextEvent(w.client);
  const sent: number[] = [];
  for (let n = 1; n <= 10; n++) s.client.send({ type: 'n', payload: { n } });
  for (let n = 1; n <= 10; n++) sent.push((await nextEvent(w.client)).offset);
  const crowd = await Promise.all(
    Array.from({ length: 20 }, (_, i) => join(t, `${b.wsUrl(desk)}?epoch=${w.joined.epoch}&offset=${first.offset}`, { token: token(user(`C${i}`)) })),
  );
  for (const c of crowd) {
    assert.equal(c.joined.recovered, true);
    const got: number[] = [];
    while (got.length < 10) got.push((await nextEvent(c.client)).offset);
    assert.deepEqual(got, sent);
  }
  const reads = b.logs.filter((l) => l.event === 'history_stream_read').length;
  assert.ok(reads >= 1 && reads <= 2, `${reads} reads of the stream`);
});

test('a server API publish goes through the stream: one offset on every node, exceptUserId kept, recovered on the other node', async (t) => {
  const { a, b } = await fleet(t);
  const desk = desktop('js-api');
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  const una = user('Una');
  const u = await join(t, a.wsUrl(desk), { token: token(una) });
  const w = await join(t, b.wsUrl(desk), { token: token(user('Wit')) });
  for (let known = s.joined.sessions.length; known < 2; known++) await s.client.expect('session_joined', 10_000);
  assert.equal((await api(a, 'POST', `desktops/${desk}/events`, { type: 'api-ev', payload: { n: 1 }, exceptUserId: una.userId })).status, 202);
  const onA = await nextEvent(s.client);
  const onB = await nextEvent(w.client);
  assert.deepEqual([onA.type, onA.sessionId, typeof onA.offset], ['api-ev', 'server', 'number']);
  assert.equal(onB.offset, onA.offset, 'the same offset on both nodes');
  s.client.send({ type: 'marker' });
  assert.equal((await nextEvent(u.client)).type, 'marker', 'the excepted user got nothing before');
  assert.equal((await nextEvent(w.client)).type, 'marker');
  await w.client.close();
  assert.equal((await api(a, 'POST', `desktops/${desk}/events`, { type: 'api-missed' })).status, 202);
  assert.equal((await nextEvent(s.client)).type, 'api-missed');
  const back = await join(t, `${a.wsUrl(desk)}?epoch=${w.joined.epoch}&offset=${onB.offset}`, { token: token(user('Wit')) });
  assert.equal(back.joined.recovered, true);
  assert.deepEqual([(await nextEvent(back.client)).type, (await nextEvent(back.client)).type], ['marker', 'api-missed']);
});

test('a Go relay’s core publish on room.{id} gets an offset from the stream and is recovered; hostile messages in the stream are dropped as on the bus', async (t) => {
  const { b, natsUrl } = await fleet(t);
  const desk = desktop('js-go');
  const w = await join(t, b.wsUrl(desk), { token: token(user('Wit')) });
  const raw = await natsConnect({ servers: natsUrl });
  t.after(() => raw.close());
  const stamp = { sessionId: 'go-session', userId: 'go-user', firstName: 'Go', email: 'go@example.com', timestamp: 1 };
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay', p: { type: 'from-go', ...stamp, payload: { n: 1 } } }));
  const fromGo = await nextEvent(w.client);
  assert.equal(fromGo.type, 'from-go');
  assert.equal(typeof fromGo.offset, 'number');
  // Hostile: not JSON, a reserved type, another room's event, node B's own id on an event it never published.
  raw.publish(`room.${desk}`, 'not json');
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'evil', p: { type: 'room_joined', ...stamp, sessions: [] } }));
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'evil', p: { type: 'x', ...stamp, desktopId: 'another' } }));
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'js-b', p: { type: 'forged', ...stamp, payload: {} } }));
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay', p: { type: 'after', ...stamp, payload: { n: 2 } } }));
  const after = await nextEvent(w.client);
  assert.equal(after.type, 'after', 'nothing hostile came through');
  await w.client.close();
  raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay', p: { type: 'missed', ...stamp, payload: { n: 3 } } }));
  await raw.flush();
  const back = await join(t, `${b.wsUrl(desk)}?epoch=${w.joined.epoch}&offset=${fromGo.offset}`, { token: token(user('Wit')) });
  assert.equal(back.joined.recovered, true);
  assert.deepEqual([(await nextEvent(back.client)).type, (await nextEvent(back.client)).type], ['after', 'missed'], 'the hostile ones are not replayed either');
});

test('nats-server restarted with a memory stream: events still reach this node’s members meanwhile (no offset); then a new epoch, members told to resume (4009), old positions say false', async (t) => {
  const nats = await startNats(t, { jetstream: true });
  const stub = await startPermissionStub(t);
  const args = (id: string) => ['--nats-url', nats.url, '--node-id', id, '--rate-limit', '0', '--history-stream', 'mem', '--history-stream-storage', 'memory'];
  const a = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: args('mem-a') });
  await a.waitForLog((l) => l.event === 'history_stream_epoch');
  const desk = desktop('js-mem');
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  const w = await join(t, a.wsUrl(desk), { token: token(user('Wit')) });
  s.client.send({ type: 'n' });
  const before = await nextEvent(w.client);
  await nats.kill();
  await a.waitForLog((l) => l.event === 'federation_disconnected');
  // The bus down: the room's events still reach its members here, without an offset (no history has them).
  s.client.send({ type: 'during' });
  const during = await nextEvent(w.client);
  assert.equal(during.type, 'during');
  assert.equal('offset' in during, false);
  await nats.start();
  await a.waitForLog((l) => l.event === 'history_stream_epoch' && l.epoch !== w.joined.epoch, 20_000);
  const closed = await w.client.closed;
  assert.equal(closed.code, 4009);
  const back = await join(t, `${a.wsUrl(desk)}?epoch=${w.joined.epoch}&offset=${before.offset}`, { token: token(user('Wit')) });
  assert.equal(back.joined.recovered, false);
  assert.notEqual(back.joined.epoch, w.joined.epoch);
});

test('without --history-stream, a resume on another node says recovered: false (and resumes on the same node still recover: recovery-federation.test.ts)', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const [a, b] = await Promise.all([node(t, 'plain-a', nats.url, stub.base, ''), node(t, 'plain-b', nats.url, stub.base, '')]);
  const desk = desktop('js-none');
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  const x = await join(t, a.wsUrl(desk), { token: token(user('Xav')) });
  s.client.send({ type: 'n' });
  const first = await nextEvent(x.client);
  await x.client.close();
  s.client.send({ type: 'n' });
  const back = await join(t, `${b.wsUrl(desk)}?epoch=${x.joined.epoch}&offset=${first.offset}`, { token: token(user('Xav')) });
  assert.equal(back.joined.recovered, false);
});
