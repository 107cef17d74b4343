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
import { connectTopics, expectEvent, subscribe } from './helpers/topics.ts';

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

test('a multiplexed connection that stops answering pings is closed, and each of its topics hears session_left', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--ping-interval', '150ms'] });
  const topics = [`desktop:${desktop()}`, `production-table:${desktop()}`];
  const healthy = await connectTopics(t, server, token(user('Hal')));
  const dead = await connectTopics(t, server, token(user('Ded')), { wsOptions: { autoPong: false } });
  // It answers pings until it holds its topics, however slow the machine, then stops.
  let answering = true;
  dead.ws.on('ping', () => {
    if (answering) dead.ws.pong();
  });
  for (const topic of topics) await subscribe(healthy, topic);
  let deadId = '';
  for (const topic of topics) deadId = (await subscribe(dead, topic)).sessionId;
  answering = false;
  for (const topic of topics) await expectEvent(healthy, topic, 'session_joined');
  const lefts = [await healthy.next(5000), await healthy.next(5000)];
  assert.deepEqual(
    lefts.map((f) => [f.type, f.sessionId]),
    [
      ['session_left', deadId],
      ['session_left', deadId],
    ],
  );
  assert.deepEqual(lefts.map((f) => f.topic).sort(), [...topics].sort());
  assert.equal((await dead.closed).code, 1006, 'terminated without a close handshake');
  assert.equal(healthy.ws.readyState, healthy.ws.OPEN);
});
