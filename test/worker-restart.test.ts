/**
 * A shard that dies takes only its own sessions with it: it is restarted
 * with backoff while every other shard keeps relaying.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { shardFor } from '../src/primary/router.ts';
import { join, rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ADMIN = 'admin-token-for-tests-0123456789';

function desktopOnShard(shard: number, workers: number): string {
  for (;;) {
    const id = desktop(`s${shard}`);
    if (shardFor(id, workers) === shard) return id;
  }
}

test('a shard killed mid-traffic is restarted and the other shard never stops relaying', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--admin-token', ADMIN, '--rate-limit', '0'] });
  const doomed = desktopOnShard(0, 2);
  const survivor = desktopOnShard(1, 2);
  const { client: d1 } = await join(t, server.wsUrl(doomed), { token: token(user('Dee')) });
  const { client: d2 } = await join(t, server.wsUrl(doomed), { token: token(user('Dot')) });
  const { client: s1 } = await join(t, server.wsUrl(survivor), { token: token(user('Sal')) });
  const { client: s2 } = await join(t, server.wsUrl(survivor), { token: token(user('Sid')) });
  await d1.expect('session_joined');
  await s1.expect('session_joined');

  // Traffic in both rooms while shard 0 is killed.
  let sent = 0;
  const pump = setInterval(() => {
    s1.send({ type: 'asset_dragging', payload: { n: sent++ } });
    if (d1.ws.readyState === d1.ws.OPEN) d1.send({ type: 'asset_dragging', payload: {} });
  }, 2);
  t.after(() => clearInterval(pump));
  for (let i = 0; i < 20; i++) assert.equal((await s2.expect('asset_dragging')).payload.n, i);

  const unauthorized = await rawRequest(server.port, ['POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n']);
  assert.equal(unauthorized.status, 401);
  const kill = await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  assert.equal(kill.status, 202);

  // The doomed shard's sessions are told to reconnect (1012, service restart)...
  assert.equal((await d1.closed).code, 1012);
  assert.equal((await d2.closed).code, 1012);
  // ...while the survivor's messages keep arriving in order, through the crash and the restart.
  const exit = await server.waitForLog((l) => l.event === 'shard_exit' && l.shard === 0);
  assert.equal(typeof exit.restartInMs, 'number');
  await server.waitForLog((l) => l.event === 'shard_ready' && l.shard === 0 && l.restarts === 1);
  for (let i = 20; i < 200; i++) assert.equal((await s2.expect('asset_dragging')).payload.n, i);
  clearInterval(pump);

  // The restarted shard serves its desktops again, from an empty room.
  const { client: back, joined } = await join(t, server.wsUrl(doomed), { token: token(user('Dee')) });
  assert.equal(back.shard, 0);
  assert.deepEqual(joined.sessions, []);
  const health = await rawRequest(server.port, ['GET /health HTTP/1.1\r\n\r\n']);
  assert.equal(health.status, 200);
  // Metrics: one restart; the dead shard's sessions are no longer counted.
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_shard_restarts_total'), 1);
  assert.equal(metrics.get('moodio_rt_connections{shard="0"}'), 1, 'only the session that rejoined after the restart');
  assert.equal(sumOf(metrics, 'moodio_rt_connections'), 3);
});

test('handshakes for a shard that is restarting get 503 with Retry-After, never a hang', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--admin-token', ADMIN] });
  const doomed = desktopOnShard(0, 2);
  const healthy = desktopOnShard(1, 2);
  const attempt = async (id: string): Promise<number> =>
    (await rawRequest(server.port, [upgradeHead(`/ws/desktop/${id}`, { Cookie: `moodio_access_token=${token(user('Cha'))}` })], { until: untilJoined })).status;

  // Keep knocking on the doomed shard while it is killed and restarted.
  const statuses: number[] = [];
  const retryAfter: string[] = [];
  let stop = false;
  const knocking = (async () => {
    while (!stop) {
      const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${doomed}`, { Cookie: `moodio_access_token=${token(user('Kno'))}` })], {
        until: untilJoined,
      });
      statuses.push(res.status);
      if (res.status === 503) retryAfter.push(res.headers['retry-after'] ?? '');
    }
  })();
  while (statuses.length < 3) await new Promise((r) => setImmediate(r));
  const kill = await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  assert.equal(kill.status, 202);
  // The other shard serves throughout.
  assert.equal(await attempt(healthy), 101);
  await server.waitForLog((l) => l.event === 'shard_ready' && l.shard === 0 && l.restarts === 1);
  const afterRestart = statuses.length;
  while (statuses.length < afterRestart + 3) await new Promise((r) => setImmediate(r));
  stop = true;
  await knocking;

  // The one handshake that was inside the shard when it died goes with it, like its
  // sessions: the client sees the connection close (status 0), not a hang. Every
  // other attempt is answered.
  assert.ok(statuses.filter((s) => s === 0).length <= 1, `at most the in-flight handshake is lost: ${statuses}`);
  assert.ok(
    statuses.every((s) => s === 101 || s === 503 || s === 0),
    `only 101 or 503: ${[...new Set(statuses)]}`,
  );
  assert.ok(retryAfter.length > 0, 'some attempts hit the restart window');
  assert.ok(
    retryAfter.every((v) => Number(v) >= 1),
    `Retry-After: ${retryAfter}`,
  );
  assert.equal(statuses.at(-1), 101, 'the restarted shard admits again');
});
