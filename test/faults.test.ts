/**
 * Faults inside a shard stay inside one message or one request:
 *  - an exception while handling a message is caught, logged with the
 *    session id, answered with internal_error, and the room carries on;
 *  - requests to the permission API are bounded by --permission-concurrency
 *    (a reconnect storm queues instead of overloading the app).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCode } from '../src/protocol/events.ts';
import { FAULT_TYPE } from '../src/shard/relay.ts';
import { connect, join, rawRequest } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

test('an exception while handling one message is answered, logged and contained', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, env: { MOODIO_RT_FAULT_INJECTION: '1' } });
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
