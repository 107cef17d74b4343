/**
 * With federation on (a real nats-server, one node), what the multiplexed
 * route and the production-table route put on the bus: a production-table
 * room speaks only on `room.production-table:{id}`, in the topic framing
 * (never flat there, where the upstream relay federates that topic); a
 * desktop room keeps its flat events on `room.{id}`, now with its
 * subscribers' too (test/topics-federation.test.ts covers the topic
 * subjects). A raw NATS client reads the bus. And a role change through one
 * node's server API reaches the user's multiplexed subscriptions on another
 * node.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect as natsConnect } from '@nats-io/transport-node';
import { join } from './helpers/client.ts';
import { startNats } from './helpers/nats.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, expectOp, subscribe } from './helpers/topics.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { TopicErrorCode } from '../src/protocol/topics.ts';

test("a production-table room speaks in the topic framing on its topic subject alone; a desktop room keeps its flat events on room.{id}, its subscribers' too", async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  // One worker: one NATS connection, so the bus sees this shard's publications in the order made.
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--nats-url', nats.url, '--node-id', 'node-topics', '--rate-limit', '0'],
  });
  await server.waitForLog((l) => l.event === 'federation_connected');
  const raw = await natsConnect({ servers: nats.url });
  t.after(() => raw.close());
  const seen: { subject: string; data: string }[] = [];
  raw.subscribe('room.>', { callback: (_e, m) => void seen.push({ subject: m.subject, data: m.string() }) });
  await raw.flush();

  const tableId = desktop('table');
  const { client: table } = await join(t, `ws://127.0.0.1:${server.port}/ws/production-table/${tableId}`, { token: token(user('Tab')) });
  const sub = await connectTopics(t, server, token(user('Sue')));
  await subscribe(sub, `production-table:${tableId}`);
  await table.expect('session_joined');
  table.send({ type: 'pt_cell_updated', payload: { row: 1 } });
  await expectEvent(sub, `production-table:${tableId}`, 'pt_cell_updated');
  sub.send({ op: 'publish', topic: `production-table:${tableId}`, type: 'pt_cell_selected', payload: { row: 1 } });
  await table.expect('pt_cell_selected');

  // Then a legacy desktop socket, whose presence and event go to the bus after all of the above.
  const id = desktop();
  const { client: legacy } = await join(t, server.wsUrl(id), { token: token(user('Leo')) });
  await subscribe(sub, `desktop:${id}`);
  sub.send({ op: 'publish', topic: `desktop:${id}`, type: 'from_subscriber' });
  await legacy.expect('session_joined');
  await legacy.expect('from_subscriber');
  legacy.send({ type: 'marker' });
  const deadline = Date.now() + 5000;
  while (!seen.some((m) => m.data.includes('"marker"')) && Date.now() < deadline) await raw.flush();
  assert.deepEqual([...new Set(seen.map((m) => m.subject))].sort(), [`room.${id}`, `room.desktop:${id}`, `room.production-table:${tableId}`].sort());
  const tableMessages = seen
    .filter((m) => m.subject === `room.production-table:${tableId}`)
    .map((m) => JSON.parse(m.data) as { p: { op?: string; topic?: string; type: string } });
  assert.ok(
    tableMessages.every((m) => m.p.op === 'event' && m.p.topic === `production-table:${tableId}`),
    'the table room speaks in the topic framing only',
  );
  assert.ok(
    tableMessages.some((m) => m.p.type === 'pt_cell_updated') && tableMessages.some((m) => m.p.type === 'pt_cell_selected'),
    "both framings' events went out",
  );
  assert.deepEqual(
    seen
      .filter((m) => m.subject === `room.${id}`)
      .map((m) => (JSON.parse(m.data) as { p: { op?: string; type: string } }).p)
      .map((p) => `${p.op ?? 'flat'} ${p.type}`),
    ['flat presence_sync_request', 'flat session_joined', 'flat session_joined', 'flat from_subscriber', 'flat marker'],
    "the legacy socket's and the subscriber's presence and events, flat",
  );
});

test("a role change made through one node's server API reaches a subscription on another node, on the user's shard", async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  // With a federation key, the server API's calls travel the bus.
  const args = (node: string) => [
    '--nats-url',
    nats.url,
    '--node-id',
    node,
    '--rate-limit',
    '0',
    '--api-key',
    API_KEY,
    '--federation-key',
    'topics-bus-test-key-0123456789-abcdefghij',
  ];
  const [a, b] = await Promise.all(['node-a', 'node-b'].map((node) => startServer(t, { workers: 2, permissionApiBase: stub.base, args: args(node) })));
  for (const node of [a!, b!]) for (const worker of [0, 1]) await node.waitForLog((l) => l.event === 'federation_connected' && l.worker === worker, 15_000);
  // The desktop on shard 0, the user's connections on shard 1: the change must reach a shard that holds no session of the desktop.
  const id = desktopOnShard(0, 2, 'busrole');
  const topic = `desktop:${id}`;
  let ann = user('Ann');
  while (fnv1a32(ann.userId) % 2 !== 1) ann = user('Ann');
  const conn = await connectTopics(t, b!, token(ann));
  const peer = await connectTopics(t, b!, token(user('Bob')));
  assert.equal(conn.shard, 1);
  await subscribe(conn, topic);
  await subscribe(peer, topic);
  await expectEvent(conn, topic, 'session_joined');
  assert.equal((await api(a!, 'PUT', `desktops/${id}/permissions/${ann.userId}`, { permission: 'none' })).status, 202);
  await expectOp(conn, 'error', { code: TopicErrorCode.FORBIDDEN, topic });
  assert.equal((await expectEvent(peer, topic, 'session_left')).userId, ann.userId);
});
