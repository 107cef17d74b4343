/**
 * Connection limits: per user across all shards (429), per worker (503),
 * a dead shard's sessions forgotten; and --trust-proxy for client addresses.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { clientAddress } from '../src/primary/primary.ts';
import { shardFor } from '../src/primary/router.ts';
import { connect, HandshakeRejected, join, rawRequest, type ConnectOptions } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

function onShard(shard: number, workers: number): string {
  for (;;) {
    const id = desktop();
    if (shardFor(id, workers) === shard) return id;
  }
}

async function refused(t: TestContext, url: string, options: ConnectOptions): Promise<HandshakeRejected> {
  const err = await connect(t, url, options).then(
    () => assert.fail('admitted'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof HandshakeRejected, String(err));
  return err;
}

async function admittedEventually(t: TestContext, server: ServerProcess, id: string, options: ConnectOptions): Promise<void> {
  // The server frees a slot when it sees the close; retry briefly until it has.
  for (let attempt = 0; ; attempt++) {
    try {
      await (await connect(t, server.wsUrl(id), options)).expect('room_joined');
      return;
    } catch (err) {
      if (!(err instanceof HandshakeRejected) || attempt > 50) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

test('a user over --max-connections-per-user across shards gets 429; others are unaffected; closing frees a slot', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--max-connections-per-user', '3'] });
  const alice = user('Ali');
  const sessions = [];
  for (const shard of [0, 1, 0]) {
    const client = await connect(t, server.wsUrl(onShard(shard, 2)), { token: token(alice) });
    await client.expect('room_joined');
    sessions.push(client);
  }
  const asked = stub.requests.length;
  for (const shard of [0, 1]) assert.equal((await refused(t, server.wsUrl(onShard(shard, 2)), { token: token(alice) })).status, 429);
  assert.equal(stub.requests.length, asked, 'a user over the limit is refused before the permission API is asked');
  await (await connect(t, server.wsUrl(onShard(1, 2)), { token: token(user('Bob')) })).expect('room_joined');
  await sessions[1]!.close();
  await admittedEventually(t, server, onShard(1, 2), { token: token(alice) });
});

test('a shard over --max-connections-per-worker answers 503 with Retry-After', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--max-connections-per-worker', '2'] });
  for (let i = 0; i < 2; i++) await (await connect(t, server.wsUrl(desktop()), { token: token(user('W')) })).expect('room_joined');
  const err = await refused(t, server.wsUrl(desktop()), { token: token(user('W')) });
  assert.equal(err.status, 503);
  assert.equal(err.headers['retry-after'], '5');
});

test("a dead shard's sessions no longer count against their users", async (t) => {
  const stub = await startPermissionStub(t);
  const admin = 'admin-token-limits-0123456789';
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--max-connections-per-user', '2', '--admin-token', admin] });
  const carol = user('Car');
  const doomed = [];
  for (let i = 0; i < 2; i++) {
    const client = await connect(t, server.wsUrl(onShard(0, 2)), { token: token(carol) });
    await client.expect('room_joined');
    doomed.push(client);
  }
  assert.equal((await refused(t, server.wsUrl(onShard(1, 2)), { token: token(carol) })).status, 429);
  const kill = await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${admin}\r\n\r\n`]);
  assert.equal(kill.status, 202);
  await Promise.all(doomed.map((c) => c.closed));
  await admittedEventually(t, server, onShard(1, 2), { token: token(carol) });
});

test('client addresses: X-Forwarded-For is believed only from --trust-proxy peers', async (t) => {
  assert.equal(clientAddress('10.0.0.5', '203.0.113.7', []), '10.0.0.5');
  assert.equal(clientAddress('10.0.0.5', '203.0.113.7', ['10.0.0.9']), '10.0.0.5');
  assert.equal(clientAddress('10.0.0.5', '203.0.113.7', ['10.0.0.5']), '203.0.113.7');
  assert.equal(clientAddress('::ffff:10.0.0.5', 'forged, 203.0.113.7, 10.0.0.4', ['10.0.0.5', '10.0.0.4']), '203.0.113.7');
  assert.equal(clientAddress('10.0.0.5', undefined, ['10.0.0.5']), '10.0.0.5');

  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--trust-proxy', '127.0.0.1'] });
  const client = await connect(t, server.wsUrl(desktop()), { token: token(user('Xff')), headers: { 'X-Forwarded-For': 'spoofed, 203.0.113.7' } });
  const { sessionId } = await client.expect('room_joined');
  const open = await server.waitForLog((l) => l.event === 'session_open' && l.sessionId === sessionId);
  assert.equal(open.remote, '203.0.113.7');
});

test('--max-room-size: a full room refuses the next session with 503 room_full; other rooms are open', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--max-room-size', '2'] });
  const room = desktop();
  await join(t, server.wsUrl(room), { token: token(user('Ro1')) });
  await join(t, server.wsUrl(room), { token: token(user('Ro2')) });
  const refused = await connect(t, server.wsUrl(room), { token: token(user('Ro3')) }).catch((e: HandshakeRejected) => e);
  assert.ok(refused instanceof HandshakeRejected);
  assert.equal(refused.status, 503);
  assert.equal(refused.headers['retry-after'], '5');
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'room_full');
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(user('Ro4')) });
  assert.equal(joined.type, 'room_joined');
});
