/**
 * Recovery with two federated nodes and a real nats-server (issue 21, the
 * local part): an event from another node gets this node's offset on
 * arrival, and a client that resumes on the node it left recovers the
 * events relayed from the other node meanwhile; a position from one node
 * means nothing on another (a fleet-wide sequence is JetStream's, not this
 * history's): `recovered: false`, never a wrong replay.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { startNats } from './helpers/nats.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

async function node(t: Scope, id: string, natsUrl: string, stubBase: string): Promise<ServerProcess> {
  const server = await startServer(t, { workers: 2, permissionApiBase: stubBase, args: ['--nats-url', natsUrl, '--node-id', id, '--rate-limit', '0'] });
  await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === 0);
  await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === 1);
  return server;
}

/** The next frame that is not presence. */
async function nextEvent(client: TestClient): Promise<Frame> {
  for (;;) {
    const frame = await client.next(10_000);
    if (frame.type !== 'session_joined' && frame.type !== 'session_left') return frame;
  }
}

test('events from another node get this node’s offsets; a resume on the same node recovers them; on another node it says recovered: false', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const [a, b] = await Promise.all([node(t, 'rec-a', nats.url, stub.base), node(t, 'rec-b', nats.url, stub.base)]);
  const desk = desktop('fed');
  const w = await join(t, b.wsUrl(desk), { token: token(user('Wit')) });
  const x = await join(t, b.wsUrl(desk), { token: token(user('Xav')) });
  const s = await join(t, a.wsUrl(desk), { token: token(user('Sam')) });
  // Sam's room on node A heard of both; its events now reach node B.
  for (let known = s.joined.sessions.length; known < 2; known++) await s.client.expect('session_joined', 10_000);
  s.client.send({ type: 'n', payload: { n: 0 } });
  const first = await nextEvent(x.client);
  assert.equal(first.type, 'n');
  assert.equal(typeof first.offset, 'number');
  assert.equal((await nextEvent(w.client)).offset, first.offset, 'one offset per node');
  await x.client.close();

  for (let n = 1; n <= 5; n++) s.client.send({ type: 'n', payload: { n } });
  const missed: number[] = [];
  for (let n = 1; n <= 5; n++) {
    const frame = await nextEvent(w.client);
    assert.equal(frame.payload.n, n);
    missed.push(frame.offset);
  }
  const back = await join(t, `${b.wsUrl(desk)}?epoch=${x.joined.epoch}&offset=${first.offset}`, { token: token(user('Xav')) });
  assert.equal(back.joined.recovered, true);
  const got: Frame[] = [];
  while (got.length < 5) got.push(await nextEvent(back.client));
  assert.deepEqual(
    got.map((f) => [f.payload.n, f.offset]),
    missed.map((offset, i) => [i + 1, offset]),
  );

  // Node B's position on node A: another sequence.
  const elsewhere = await join(t, `${a.wsUrl(desk)}?epoch=${x.joined.epoch}&offset=${first.offset}`, { token: token(user('Xav')) });
  assert.equal(elsewhere.joined.recovered, false);
  s.client.send({ type: 'marker' });
  assert.equal((await nextEvent(elsewhere.client)).type, 'marker', 'no replay');
});
