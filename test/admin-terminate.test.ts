/**
 * POST /admin/shards/{n}/terminate: the shard's sessions are told 1012
 * (service restart) before the worker stops, and an operator's terminate is
 * not a crash: however many in a row, the restart comes after the base delay.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RESTART_BASE_MS } from '../src/primary/shard-pool.ts';
import { shardFor } from '../src/primary/router.ts';
import { CloseCode } from '../src/protocol/events.ts';
import { join, rawRequest } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ADMIN = 'admin-token-terminate-0123456789';
const TERMINATES = 3;

function desktopOnShard(shard: number, workers: number): string {
  for (;;) {
    const id = desktop(`t${shard}`);
    if (shardFor(id, workers) === shard) return id;
  }
}

test(`an admin terminate closes the shard's sessions with 1012, and ${TERMINATES} in a row each restart after the base delay`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--admin-token', ADMIN] });
  const room = desktopOnShard(0, 2);
  for (let n = 1; n <= TERMINATES; n++) {
    const { client } = await join(t, server.wsUrl(room), { token: token(user('Ter')) });
    assert.equal(client.shard, 0);
    const kill = await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
    assert.equal(kill.status, 202);
    const closed = await client.closed;
    assert.deepEqual(closed, { code: CloseCode.SERVICE_RESTART, reason: 'service restart' }, `terminate ${n}`);
    await server.waitForLog((l) => l.event === 'shard_ready' && l.shard === 0 && l.restarts === n);
  }
  const exits = server.logs.filter((l) => l.event === 'shard_exit' && l.shard === 0);
  assert.deepEqual(
    exits.map((l) => [l.reason, l.restartInMs]),
    Array.from({ length: TERMINATES }, () => ['terminated', RESTART_BASE_MS]),
    'no crash backoff for an operator',
  );
});
