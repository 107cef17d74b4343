/**
 * Liveness: the server pings every --ping-interval; a session that answers
 * nothing is terminated and its room told, a healthy one stays forever.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { join } from './helpers/client.ts';
import { scrape } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

test('a session that stops answering pings is closed and its room hears session_left; a healthy one stays', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--ping-interval', '150ms'] });
  const room = desktop();
  const { client: healthy } = await join(t, server.wsUrl(room), { token: token(user('Hal')) });
  const { client: dead, joined } = await join(t, server.wsUrl(room), { token: token(user('Ded')), wsOptions: { autoPong: false } });
  await healthy.expect('session_joined');

  let pings = 0;
  healthy.ws.on('ping', () => pings++);
  const left = await healthy.expect('session_left', 5000);
  assert.equal(left.sessionId, joined.sessionId);
  assert.equal((await dead.closed).code, 1006, 'terminated without a close handshake');
  await server.waitForLog((l) => l.event === 'session_timeout' && l.sessionId === joined.sessionId);
  assert.equal((await scrape(server.port)).metrics.get('moodio_rt_protective_closes_total{reason="liveness"}'), 1);

  // The healthy session keeps answering and is never dropped: wait for several more pings.
  while (pings < 6) await once(healthy.ws, 'ping');
  assert.equal(healthy.ws.readyState, healthy.ws.OPEN);
  assert.equal(healthy.pending, 0);
});
