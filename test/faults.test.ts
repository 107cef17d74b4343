/**
 * Faults inside a shard stay inside one message or one request:
 *  - an exception while handling a message is caught, logged with the
 *    session id, answered with internal_error, and the room carries on;
 *  - requests to the permission API are bounded by --permission-concurrency
 *    (a reconnect storm queues instead of overloading the app);
 *  - members that vanish while frames are queued for them (a close frame, a
 *    TCP reset) are dropped quietly, and the room keeps every event in order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCode } from '../src/protocol/events.ts';
import type { Socket } from 'node:net';
import { connect, join, rawRequest, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { FAULT_HOOK_ARGS, FAULT_TYPE } from './helpers/fault-hook.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

test('an exception while handling one message is answered, logged and contained', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, nodeArgs: FAULT_HOOK_ARGS });
  const room = desktop();
  const { client: peer } = await join(t, server.wsUrl(room), { token: token(user('Pee')) });
  const { client: sender, joined } = await join(t, server.wsUrl(room), { token: token(user('Sen')) });
  await peer.expect('session_joined');

  sender.send({ type: FAULT_TYPE, payload: {} });
  const reply = await sender.next();
  assert.deepEqual([reply.type, reply.code], ['error', ErrorCode.INTERNAL_ERROR]);
  const logged = await server.waitForLog((l) => l.event === 'message_failed');
  assert.equal(logged.sessionId, joined.sessionId);
  assert.equal(logged.level, 'error');

  // The session, its room and the shard carry on.
  sender.send({ type: 'asset_moved', payload: { after: true } });
  assert.deepEqual((await peer.next()).payload, { after: true });
  assert.equal((await (await connect(t, server.wsUrl(desktop()), { token: token(user('New')) })).expect('room_joined')).type, 'room_joined');
});

test('at most --permission-concurrency requests reach the permission API at once', async (t) => {
  let inFlight = 0;
  let peak = 0;
  const stub = await startPermissionStub(t, (_req, res) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    setTimeout(() => {
      inFlight--;
      res.setHeader('content-type', 'application/json');
      res.end('{"permission":"editor"}');
    }, 100);
  });
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--permission-concurrency', '3'] });
  const storm = await Promise.all(Array.from({ length: 12 }, () => connect(t, server.wsUrl(desktop()), { token: token(user('Sto')) })));
  for (const client of storm) await client.expect('room_joined');
  assert.equal(stub.requests.length, 12, 'every handshake was checked');
  assert.equal(peak, 3, 'the pool never had more than 3 requests outstanding');
  assert.equal((await rawRequest(server.port, ['GET /health HTTP/1.1\r\n\r\n'])).status, 200);
});

test('members that vanish mid-stream are dropped quietly; the room keeps every event in order', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--rate-limit', '0', '--log-level', 'debug'] });
  const room = desktop();
  const { client: sender } = await join(t, server.wsUrl(room), { token: token(user('Sen')) });
  const { client: keeper } = await join(t, server.wsUrl(room), { token: token(user('Kee')) });
  const { client: quitter, joined: quit } = await join(t, server.wsUrl(room), { token: token(user('Qui')) });
  const { client: dropper, joined: drop } = await join(t, server.wsUrl(room), { token: token(user('Dro')) });
  for (const c of [sender, sender, sender, keeper, keeper, quitter]) await c.expect('session_joined');

  // The server is writing to all three receivers when two of them go: one
  // with a close frame, one with a TCP reset (no close frame, no FIN).
  const N = 600;
  const PAD = 'v'.repeat(1000);
  for (let i = 0; i < N / 2; i++) sender.send({ type: 'asset_moved', payload: { i, pad: PAD } });
  await keeper.expect('asset_moved');
  quitter.ws.close();
  (dropper.ws as unknown as { _socket: Socket })._socket.resetAndDestroy();
  for (let i = N / 2; i < N; i++) sender.send({ type: 'asset_moved', payload: { i, pad: PAD } });

  // The keeper gets all of them in order, and hears both leave (wherever that falls in the stream).
  const moved: number[] = [0];
  const left: string[] = [];
  while (moved.length < N || left.length < 2) {
    const frame = await keeper.next();
    if (frame.type === 'asset_moved') moved.push((frame.payload as { i: number }).i);
    else if (frame.type === 'session_left') left.push(frame.sessionId as string);
    else assert.fail(`unexpected ${JSON.stringify(frame)}`);
  }
  assert.deepEqual(
    moved,
    Array.from({ length: N }, (_, i) => i),
  );
  assert.deepEqual(left.sort(), [quit.sessionId, drop.sessionId].sort());

  // Nothing was logged as a failure, the shard counts two sessions, and the room still works both ways.
  const bad = server.logs.filter((l) => l.level === 'error' || l.level === 'warn');
  assert.deepEqual(bad, [], 'no error or warn lines');
  await waitForSessions(server.port, 2);
  keeper.send({ type: 'asset_moved', payload: { back: true } });
  const heard: string[] = [];
  let frame = await sender.next();
  for (; frame.type === 'session_left'; frame = await sender.next()) heard.push(frame.sessionId as string);
  assert.deepEqual(heard.sort(), [quit.sessionId, drop.sessionId].sort(), 'the sender heard both leave');
  assert.deepEqual([frame.type, frame.payload], ['asset_moved', { back: true }]);
  await closeAll([sender, keeper]);
});

/** Poll /metrics until the shards count `n` open sessions (the leaves are processed asynchronously). */
async function waitForSessions(port: number, n: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let value = -1;
  while (Date.now() < deadline) {
    value = sumOf((await scrape(port)).metrics, 'moodio_rt_connections');
    if (value === n) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`moodio_rt_connections stayed ${value}, not ${n}`);
}

async function closeAll(clients: TestClient[]): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
}
