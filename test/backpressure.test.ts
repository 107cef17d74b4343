/**
 * Slow consumers: a client that stops reading never slows the others, loses
 * no ordered event, gets only the newest transient event, and is closed
 * with 4008 once it stays over budget for --slow-consumer-timeout.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { CloseCode } from '../src/protocol/events.ts';
import { join, type TestClient } from './helpers/client.ts';
import { scrape } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const BIG = 2000; // × ~3.5 KB ≈ 7 MB: more than loopback's kernel buffers absorb
const PAD = 'p'.repeat(3400);

const socketOf = (client: TestClient) => (client.ws as unknown as { _socket: Socket })._socket;

async function setup(
  t: TestContext,
  timeout: string,
): Promise<{ server: ServerProcess; sender: TestClient; fast: TestClient; slow: TestClient; slowId: string }> {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    // The hard caps are far above this backlog: these tests are about the soft budget.
    args: ['--max-buffered-bytes', '65536', '--slow-consumer-timeout', timeout, '--rate-limit', '0', '--max-session-backlog', String(256 << 20)],
  });
  const room = desktop();
  const { client: sender } = await join(t, server.wsUrl(room), { token: token(user('Sen')) });
  const { client: fast } = await join(t, server.wsUrl(room), { token: token(user('Fas')) });
  const { client: slow, joined } = await join(t, server.wsUrl(room), { token: token(user('Slo')) });
  await sender.expect('session_joined');
  await sender.expect('session_joined');
  await fast.expect('session_joined');
  socketOf(slow).pause(); // stops reading: its server-side backlog grows
  for (let i = 0; i < BIG; i++) sender.send({ type: 'asset_moved', payload: { i, pad: PAD } });
  // The fast member gets every ordered event, in order, while the slow one is stuck.
  for (let i = 0; i < BIG; i++) assert.equal((await fast.expect('asset_moved')).payload.i, i);
  return { server, sender, fast, slow, slowId: joined.sessionId };
}

test('a member that stops reading is closed with 4008 after the timeout; the others lose nothing', async (t) => {
  const { server, sender, fast, slow, slowId } = await setup(t, '1s');
  const left = await fast.expect('session_left', 10_000);
  assert.equal(left.sessionId, slowId, 'the slow member leaves the room at once');
  await server.waitForLog((l) => l.event === 'slow_consumer_close' && l.sessionId === slowId);
  // The sender's room keeps relaying to the fast member.
  sender.send({ type: 'asset_moved', payload: { after: true } });
  assert.deepEqual((await fast.expect('asset_moved')).payload, { after: true });
  assert.equal((await scrape(server.port)).metrics.get('moodio_rt_protective_closes_total{reason="slow_consumer"}'), 1);

  // Once it reads again, it finds its whole backlog in order, then the close
  // frame (the server flushes what it holds before closing), then nothing.
  socketOf(slow).resume();
  assert.deepEqual(await slow.closed, { code: CloseCode.SLOW_CONSUMER, reason: 'slow consumer' });
  const backlog: number[] = [];
  while (slow.pending > 0) {
    const frame = await slow.next();
    assert.equal(frame.type, 'asset_moved', `only the backlog precedes the close frame, got ${JSON.stringify(frame).slice(0, 80)}`);
    backlog.push((frame.payload as { i: number }).i);
  }
  assert.deepEqual(
    backlog,
    Array.from({ length: BIG }, (_, i) => i),
  );
});

test('over budget, transient events are coalesced to the newest per sender and type; ordered ones all arrive', async (t) => {
  const { server, sender, fast, slow } = await setup(t, '60s');
  for (let i = 0; i < 300; i++) sender.send({ type: 'asset_dragging', payload: { i } });
  sender.send({ type: 'asset_moved', payload: { final: true } });
  for (let i = 0; i < 300; i++) assert.equal((await fast.expect('asset_dragging')).payload.i, i, 'a fast member gets every drag');
  assert.deepEqual((await fast.expect('asset_moved')).payload, { final: true });

  socketOf(slow).resume();
  const got: { type: string; payload: Record<string, unknown> }[] = [];
  while (!(got.at(-1)?.type === 'asset_dragging')) got.push((await slow.next(10_000)) as never);
  const moved = got.filter((f) => f.type === 'asset_moved');
  assert.equal(moved.length, BIG + 1, 'no ordered event was dropped');
  assert.deepEqual(
    moved.slice(0, BIG).map((f) => f.payload.i),
    Array.from({ length: BIG }, (_, i) => i),
  );
  assert.deepEqual(moved.at(-1)!.payload, { final: true });
  const drags = got.filter((f) => f.type === 'asset_dragging');
  assert.deepEqual(
    drags.map((f) => f.payload.i),
    [299],
    'only the newest drag, once the socket drained',
  );
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_messages_dropped_total{reason="coalesced"}'), 299);
  assert.equal(metrics.get('moodio_rt_protective_closes_total{reason="slow_consumer"}'), 0);
});
