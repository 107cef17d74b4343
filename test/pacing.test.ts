/**
 * Pacing through the real server: with --pacing always, a room that streams
 * gets its events in fewer, larger writes, all of them, in order, with the
 * sender's identity; a quiet room on the same shard still gets each event at
 * the end of its turn; and a session closed while its bytes are held on the
 * pacing wheel receives them before the close frame.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { join, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const STREAM = 400;
const tick = () => new Promise((resolve) => setTimeout(resolve, 1));

/** A one-shard server that paces every fast socket at `interval`. */
async function pacedServer(t: TestContext, interval: string): Promise<ServerProcess> {
  const stub = await startPermissionStub(t);
  return startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--pacing', 'always', '--pace-interval', interval, '--pace-above', '100', '--rate-limit', '0'],
  });
}

async function expectStream(client: TestClient, senderId: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const frame = await client.expect('asset_moved');
    assert.equal(frame.sessionId, senderId);
    assert.equal((frame.payload as { i: number }).i, i);
  }
}

test('--pacing always: a streaming room gets every event in order in fewer writes; a quiet room on the shard gets its events too', async (t) => {
  const server = await pacedServer(t, '50ms');
  const busy = desktop('busy');
  const quiet = desktop('quiet');
  const { client: sender, joined } = await join(t, server.wsUrl(busy), { token: token(user('Streamer')) });
  const a = (await join(t, server.wsUrl(busy), { token: token(user('Watcher-a')) })).client;
  const b = (await join(t, server.wsUrl(busy), { token: token(user('Watcher-b')) })).client;
  const { client: quietSender, joined: quietJoined } = await join(t, server.wsUrl(quiet), { token: token(user('Quiet')) });
  const quietReader = (await join(t, server.wsUrl(quiet), { token: token(user('Reader')) })).client;
  for (let n = 0; n < 2; n++) await sender.expect('session_joined');
  await a.expect('session_joined');
  await quietSender.expect('session_joined');
  const before = (await scrape(server.port)).metrics;

  // Two events a tick (≥ 300/s to each watcher); the quiet room sends one event every 50 ticks.
  for (let i = 0; i < STREAM / 2; i++) {
    sender.send({ type: 'asset_moved', payload: { i: 2 * i } });
    sender.send({ type: 'asset_moved', payload: { i: 2 * i + 1 } });
    if (i % 50 === 0) quietSender.send({ type: 'asset_added', payload: { n: i / 50 } });
    await tick();
  }
  await Promise.all([expectStream(a, joined.sessionId, STREAM), expectStream(b, joined.sessionId, STREAM)]);
  for (let n = 0; n < STREAM / 100; n++) {
    const frame = await quietReader.expect('asset_added');
    assert.deepEqual([frame.sessionId, frame.payload], [quietJoined.sessionId, { n }]);
  }

  const after = (await scrape(server.port)).metrics;
  const delta = (name: string) => sumOf(after, name) - sumOf(before, name);
  const deliveries = delta('moodio_rt_deliveries_total');
  const paced = (after.get('moodio_rt_outbound_writes_total{when="paced"}') ?? 0) - (before.get('moodio_rt_outbound_writes_total{when="paced"}') ?? 0);
  const writes = delta('moodio_rt_outbound_writes_total');
  assert.equal(deliveries, 2 * STREAM + STREAM / 100);
  assert.ok(paced > 0, 'some writes were paced');
  assert.equal(after.get('moodio_rt_pace_interval_seconds{shard="0"}'), 0.05, 'the gauge shows the interval in force');
  assert.ok(writes < deliveries / 4, `${writes} writes carried ${deliveries} frames`);
});

test('--pacing always: a session that closes while bytes are held for it gets them before the close frame', async (t) => {
  const server = await pacedServer(t, '1s');
  const room = desktop();
  const { client: sender, joined } = await join(t, server.wsUrl(room), { token: token(user('Streamer')) });
  const watcher = (await join(t, server.wsUrl(room), { token: token(user('Watcher')) })).client;
  await sender.expect('session_joined');
  // A stream fast enough to be paced at one write a second; it goes on until a
  // paced write has been seen, so bytes are held on the wheel when the server stops.
  let sent = 0;
  const pacedWrites = async () => (await scrape(server.port)).metrics.get('moodio_rt_outbound_writes_total{when="paced"}') ?? 0;
  while (sent < STREAM || (await pacedWrites()) === 0) {
    assert.ok(sent < 20 * STREAM, 'the stream was never paced');
    for (let n = 0; n < 20; n++) {
      sender.send({ type: 'asset_moved', payload: { i: sent++ } });
      sender.send({ type: 'asset_moved', payload: { i: sent++ } });
      await tick();
    }
  }
  // The server's close of this session (a 1012 at shutdown) flushes everything held first.
  const closed = watcher.closed;
  await server.stop();
  assert.equal((await closed).code, 1012);
  let received = 0;
  while (watcher.pending > 0) {
    const frame = await watcher.next();
    if (frame.type !== 'asset_moved') continue;
    assert.deepEqual([frame.sessionId, (frame.payload as { i: number }).i], [joined.sessionId, received]);
    received++;
  }
  assert.equal(received, sent, 'every event reached the watcher before the close frame');
});
