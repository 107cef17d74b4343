/** GET /stats (admin token): per-shard sessions and rooms, the largest rooms, process memory. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join, rawRequest } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ADMIN = 'admin-token-stats-0123456789';

test('/stats needs the admin token and reports shards, rooms and the largest rooms', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--admin-token', ADMIN] });
  const big = desktop('big');
  const small = desktop('small');
  for (let i = 0; i < 3; i++) await join(t, server.wsUrl(big), { token: token(user('Big')) });
  await join(t, server.wsUrl(small), { token: token(user('Sma')) });

  assert.equal((await rawRequest(server.port, ['GET /stats HTTP/1.1\r\n\r\n'])).status, 401);
  assert.equal((await rawRequest(server.port, ['GET /stats HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n'])).status, 401);
  const res = await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type']!, /application\/json/);
  const stats = JSON.parse(res.body);
  assert.equal(stats.connections, 4);
  assert.equal(stats.rooms, 2);
  assert.deepEqual(
    stats.shards.map((s: { shard: number; state: string }) => [s.shard, s.state]),
    [
      [0, 'ready'],
      [1, 'ready'],
    ],
  );
  assert.equal(
    stats.shards.reduce((n: number, s: { connections: number }) => n + s.connections, 0),
    4,
  );
  assert.deepEqual(
    stats.topRooms.map((r: { desktopId: string; sessions: number }) => [r.desktopId, r.sessions]),
    [
      [big, 3],
      [small, 1],
    ],
  );
  assert.ok(stats.memory.rss > 0 && stats.memory.heapUsed > 0);

  const off = await startServer(t, { workers: 1, permissionApiBase: stub.base });
  assert.equal((await rawRequest(off.port, ['GET /stats HTTP/1.1\r\n\r\n'])).status, 404, 'no admin token configured: no /stats');
});
