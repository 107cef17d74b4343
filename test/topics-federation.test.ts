/**
 * Topics federate as the upstream relay at 0e2290d federates them: subject
 * `room.<topic>`, envelope `{"r":node,"p":<the event frame exactly as local
 * multiplexed clients get it>}`, the sync request
 * `{"op":"event","topic":T,"type":"presence_sync_request"}` answered with one
 * `session_joined` per local member. A raw NATS client plays that relay. A
 * desktop room also keeps `room.{id}` with flat events (the Go relay at
 * 1379d3c, and moodio-rt nodes among themselves); its copy on the topic
 * subject is marked, so that another moodio-rt node takes each event once.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect as natsConnect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { BusSigner, formatStamp, SIGNATURE_HEADER, STAMP_HEADER } from '../src/protocol/bus-signature.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { desktopOnShard } from './helpers/api.ts';
import { join, type Frame } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startNats } from './helpers/nats.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import type { Scope } from './helpers/scope.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, subscribe } from './helpers/topics.ts';

const KEY = 'topics-federation-test-key-0123456789-abcdef';
const TOPIC_EVENT_KEYS = ['op', 'topic', 'type', 'sessionId', 'userId', 'firstName', 'email', 'timestamp', 'payload'];

interface Heard {
  subject: string;
  text: string;
  value: { r: string; p: Record<string, unknown> };
  copy: boolean;
}

/** A raw NATS client that records everything on `room.>`. */
async function listen(t: Scope, url: string): Promise<{ raw: NatsConnection; heard: Heard[]; until: (what: string, f: () => boolean) => Promise<void> }> {
  const raw = await natsConnect({ servers: url });
  t.after(() => raw.close());
  const heard: Heard[] = [];
  raw.subscribe('room.>', {
    callback: (_e, m) => void heard.push({ subject: m.subject, text: m.string(), value: JSON.parse(m.string()), copy: m.headers?.has('Moodio-Copy') === true }),
  });
  await raw.flush();
  const until = async (what: string, f: () => boolean) => {
    const deadline = Date.now() + 5000;
    while (!f()) {
      if (Date.now() > deadline) throw new Error(`not within 5 s: ${what}; heard ${JSON.stringify(heard.map((h) => [h.subject, h.value.p.type]))}`);
      await raw.flush();
    }
  };
  return { raw, heard, until };
}

/** A topic event as the upstream relay puts it on the bus. */
function upstream(
  node: string,
  topic: string,
  type: string,
  session: { sessionId: string; userId: string; firstName: string; email: string },
  payload: unknown,
): string {
  return JSON.stringify({ r: node, p: { op: 'event', topic, type, ...session, timestamp: Date.now(), payload } });
}

async function node(t: Scope, natsUrl: string, stubBase: string, nodeId: string, workers: number, extra: string[] = []): Promise<ServerProcess> {
  const server = await startServer(t, {
    workers,
    permissionApiBase: stubBase,
    args: ['--nats-url', natsUrl, '--node-id', nodeId, '--rate-limit', '0', ...extra],
  });
  for (let w = 0; w < workers; w++) await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === w, 15_000);
  return server;
}

test('a desktop topic on the bus: the subjects, the envelope, the sync request and its answers; events and presence both ways with the upstream relay', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const server = await node(t, nats.url, stub.base, 'node-t', 1);
  const { raw, heard, until } = await listen(t, nats.url);
  const id = desktop();
  const topic = `desktop:${id}`;
  const subject = `room.${topic}`;
  const on = (s: string) => heard.filter((h) => h.subject === s);
  const fromNode = (type: string, from = 0) => heard.slice(from).filter((h) => h.subject === subject && h.value.r === 'node-t' && h.value.p.type === type);

  // The first subscriber's room asks on both subjects; its presence goes flat on room.{id}, for the Go relays of that generation.
  const sue = await connectTopics(t, server, token(user('Sue')));
  const sueAck = await subscribe(sue, topic);
  await until('the sync request on the topic subject', () => on(subject).length >= 1);
  assert.equal(on(subject)[0]!.text, `{"r":"node-t","p":{"op":"event","topic":${JSON.stringify(topic)},"type":"presence_sync_request"}}`);
  await until('the flat session_joined', () => on(`room.${id}`).some((h) => h.value.p.type === 'session_joined'));
  const flatJoined = on(`room.${id}`).find((h) => h.value.p.type === 'session_joined')!.value.p;
  assert.deepEqual([flatJoined.op, flatJoined.sessionId], [undefined, sueAck.sessionId]);

  // A second subscriber and a legacy socket. No upstream relay was heard in the room: nothing but the sync request on its topic subject.
  const tom = await connectTopics(t, server, token(user('Tom')));
  await subscribe(tom, topic);
  await expectEvent(sue, topic, 'session_joined');
  const { client: leo } = await join(t, server.wsUrl(id), { token: token(user('Leo')) });
  await expectEvent(sue, topic, 'session_joined');
  await expectEvent(tom, topic, 'session_joined');
  sue.send({ op: 'publish', topic, type: 'asset_moved', payload: { x: 0 } });
  await expectEvent(tom, topic, 'asset_moved');
  await leo.expect('asset_moved');
  await until('the flat event', () => on(`room.${id}`).some((h) => h.value.p.type === 'asset_moved'));
  assert.equal(on(subject).length, 1, 'no copy while no upstream relay is heard');

  // The upstream relay's first word in the room (a session of its own joins): it learns the three sessions here, in the topic framing.
  const ursula = { sessionId: 'session_up-1', userId: 'user-up-0001', firstName: 'Ursula', email: 'u@example.com' };
  let mark = heard.length;
  raw.publish(subject, upstream('upstream-1', topic, 'session_joined', ursula, { ...ursula, permission: 'owner' }));
  await until('three announcements', () => fromNode('session_joined', mark).length >= 3);
  for (const joined of fromNode('session_joined', mark)) {
    assert.deepEqual(Object.keys(joined.value.p), TOPIC_EVENT_KEYS);
    assert.equal(joined.value.p.topic, topic);
    assert.equal((joined.value.p.payload as { sessionId: string }).sessionId, joined.value.p.sessionId);
  }
  assert.equal(new Set(fromNode('session_joined', mark).map((a) => a.value.p.sessionId)).size, 3);
  const seenBySue = await expectEvent(sue, topic, 'session_joined');
  assert.deepEqual([seenBySue.sessionId, (seenBySue.payload as Frame).permission], [ursula.sessionId, 'editor'], 'owner acts as editor');
  await expectEvent(tom, topic, 'session_joined');
  assert.equal((await leo.expect('session_joined')).sessionId, ursula.sessionId);

  // The upstream relay asks who is there: one session_joined per local member, in the topic framing, on the topic subject.
  mark = heard.length;
  raw.publish(subject, JSON.stringify({ r: 'upstream-1', p: { op: 'event', topic, type: 'presence_sync_request' } }));
  await until('three answers', () => fromNode('session_joined', mark).length >= 3);
  assert.deepEqual(
    new Set(fromNode('session_joined', mark).map((a) => a.value.p.sessionId)),
    new Set(
      fromNode('session_joined', 0)
        .slice(0, 3)
        .map((a) => a.value.p.sessionId),
    ),
  );

  // From now on every event goes to the topic subject too: exactly what a local subscriber gets, marked as a copy.
  sue.send({ op: 'publish', topic, type: 'asset_moved', payload: { x: 1, y: [2, 3] } });
  const local = await expectEvent(tom, topic, 'asset_moved');
  assert.deepEqual((await leo.expect('asset_moved')).payload, { x: 1, y: [2, 3] });
  await until('the event on the topic subject', () => fromNode('asset_moved').length >= 1);
  // Byte for byte but the offset: each node stamps its own (issue 21), so the bus carries none.
  const { offset, ...unstamped } = local;
  assert.equal(typeof offset, 'number');
  assert.equal(fromNode('asset_moved')[0]!.text, `{"r":"node-t","p":${JSON.stringify(unstamped)}}`, 'p is the frame a local subscriber gets, byte for byte');
  assert.ok(
    on(subject)
      .filter((h) => h.value.r === 'node-t')
      .every((h) => h.copy) && on(`room.${id}`).every((h) => !h.copy),
    'the topic copy is marked, the flat original not',
  );

  // A Go relay of the 1379d3c generation speaks flat on room.{id}: subscribers hear it in their framing.
  const gopher = { sessionId: 'session_go-1', userId: 'user-go-0001', firstName: 'Gopher', email: 'go@example.com' };
  raw.publish(`room.${id}`, JSON.stringify({ r: 'go-relay-1', p: { type: 'asset_added', ...gopher, timestamp: Date.now(), payload: { id: 'g' } } }));
  const fromGo = await expectEvent(tom, topic, 'asset_added');
  assert.deepEqual([fromGo.sessionId, fromGo.payload], [gopher.sessionId, { id: 'g' }]);
  await expectEvent(sue, topic, 'asset_added');
  await leo.expect('asset_added');

  // The upstream session is listed, speaks and leaves; each local member hears it in its framing.
  const late = await connectTopics(t, server, token(user('Late')));
  const lateAck = await subscribe(late, topic);
  assert.ok(
    (lateAck.sessions as Frame[]).some((s) => s.sessionId === ursula.sessionId),
    'the upstream session is listed',
  );
  await expectEvent(sue, topic, 'session_joined');
  await leo.expect('session_joined');
  raw.publish(subject, upstream('upstream-1', topic, 'asset_moved', ursula, { x: 9 }));
  const event = await expectEvent(sue, topic, 'asset_moved');
  assert.deepEqual([event.sessionId, event.userId, event.firstName, event.payload], [ursula.sessionId, ursula.userId, 'Ursula', { x: 9 }]);
  const flat = await leo.expect('asset_moved');
  assert.deepEqual([flat.op, flat.sessionId, flat.payload], [undefined, ursula.sessionId, { x: 9 }]);
  raw.publish(subject, upstream('upstream-1', topic, 'session_left', ursula, { ...ursula, permission: 'owner' }));
  assert.equal((await expectEvent(sue, topic, 'session_left')).sessionId, ursula.sessionId);
  assert.equal((await leo.expect('session_left')).sessionId, ursula.sessionId);
  // An upstream event naming another topic is refused.
  raw.publish(
    subject,
    JSON.stringify({ r: 'upstream-1', p: { op: 'event', topic: 'desktop:other', type: 'asset_moved', ...ursula, timestamp: 1, payload: {} } }),
  );
  raw.publish(subject, upstream('upstream-1', topic, 'marker', ursula, null));
  assert.deepEqual((await expectEvent(sue, topic, 'marker')).payload, null);
});

test('a production table federates on room.production-table:{id} alone, in the topic framing, for its subscribers and its legacy sockets', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const server = await node(t, nats.url, stub.base, 'node-pt', 1);
  const { raw, heard, until } = await listen(t, nats.url);
  const id = desktop('table');
  const topic = `production-table:${id}`;
  const subject = `room.${topic}`;
  const pat = await connectTopics(t, server, token(user('Pat')));
  await subscribe(pat, topic);
  const { client: lia } = await join(t, `ws://127.0.0.1:${server.port}/ws/production-table/${id}`, { token: token(user('Lia')) });
  await expectEvent(pat, topic, 'session_joined');
  lia.send({ type: 'pt_cell_updated', payload: { row: 1 } });
  const local = await expectEvent(pat, topic, 'pt_cell_updated');
  await until("the legacy socket's event on the bus", () => heard.some((h) => h.value.p.type === 'pt_cell_updated'));
  const { offset, ...unstamped } = local;
  assert.equal(typeof offset, 'number');
  assert.equal(heard.find((h) => h.value.p.type === 'pt_cell_updated')!.text, `{"r":"node-pt","p":${JSON.stringify(unstamped)}}`);
  assert.deepEqual([...new Set(heard.map((h) => h.subject))], [subject], 'one subject');
  assert.ok(
    heard.every((h) => h.value.p.op === 'event' && h.value.p.topic === topic && !h.copy),
    'all in the topic framing, none a copy',
  );
  const ursula = { sessionId: 'session_up-2', userId: 'user-up-0002', firstName: 'Ursula', email: 'u@example.com' };
  raw.publish(subject, upstream('upstream-2', topic, 'pt_cell_updated', ursula, { row: 2 }));
  assert.deepEqual((await expectEvent(pat, topic, 'pt_cell_updated')).payload, { row: 2 });
  assert.deepEqual((await lia.expect('pt_cell_updated')).payload, { row: 2 });
});

test('a subscriber on node A and a legacy socket on node B share a desktop room: presence and events both ways, each once', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const [a, b] = await Promise.all([node(t, nats.url, stub.base, 'node-a', 2), node(t, nats.url, stub.base, 'node-b', 2)]);
  // The room owned by shard 0, Sue's connection on shard 1: her node's side goes through the link between shards too.
  const id = desktopOnShard(0, 2, 'mixed');
  const topic = `desktop:${id}`;
  let sueUser = user('Sue');
  while (fnv1a32(sueUser.userId) % 2 !== 1) sueUser = user('Sue');
  const sue = await connectTopics(t, a!, token(sueUser));
  assert.equal(sue.shard, 1);
  const ack = await subscribe(sue, topic);
  const { client: leo, joined } = await join(t, b!.wsUrl(id), { token: token(user('Leo')) });
  assert.deepEqual(
    (joined.sessions as Frame[]).map((s) => s.sessionId),
    [ack.sessionId],
    "Leo's room_joined lists the subscriber on the other node",
  );
  assert.equal((await expectEvent(sue, topic, 'session_joined')).sessionId, joined.sessionId);
  sue.send({ op: 'publish', topic, type: 'asset_moved', payload: { x: 1 } });
  sue.send({ op: 'publish', topic, type: 'marker' });
  assert.deepEqual((await leo.expect('asset_moved')).payload, { x: 1 });
  assert.equal((await leo.next()).type, 'marker', 'the event came once');
  leo.send({ type: 'asset_added', payload: { id: 'z' } });
  leo.send({ type: 'marker' });
  assert.deepEqual((await expectEvent(sue, topic, 'asset_added')).payload, { id: 'z' });
  assert.equal((await expectEvent(sue, topic, 'marker')).sessionId, joined.sessionId, 'the event came once');
  await leo.close();
  assert.equal((await expectEvent(sue, topic, 'session_left')).sessionId, joined.sessionId);
});

test("a subscriber's ack waits for the room's first sync with the other nodes, as room_joined does: it lists their sessions, and no session_joined of theirs follows", async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const [a, b] = await Promise.all([node(t, nats.url, stub.base, 'node-a', 2), node(t, nats.url, stub.base, 'node-b', 2)]);
  let sueUser = user('Sue');
  while (fnv1a32(sueUser.userId) % 2 !== 1) sueUser = user('Sue');
  // Two fresh rooms on node A, both owned by shard 0: Sue's connection (shard 1) joins hers through the link, Sam's on the owner itself.
  let samUser = user('Sam');
  while (fnv1a32(samUser.userId) % 2 !== 0) samUser = user('Sam');
  for (const [who, viaLink] of [
    [sueUser, true],
    [samUser, false],
  ] as const) {
    const id = desktopOnShard(0, 2, 'first-sync');
    const topic = `desktop:${id}`;
    // A legacy socket on node B first; node A has never had the room.
    const leoUser = user('Leo');
    const { client: leo, joined } = await join(t, b!.wsUrl(id), { token: token(leoUser) });
    assert.deepEqual(joined.sessions, []);
    const conn = await connectTopics(t, a!, token(who));
    assert.equal(conn.shard, viaLink ? 1 : 0);
    const ack = await subscribe(conn, topic, 'first');
    assert.deepEqual(
      (ack.sessions as Frame[]).map((s) => [s.sessionId, s.userId]),
      [[joined.sessionId, leoUser.userId]],
      `the ack lists the session on the other node (${viaLink ? 'through the link' : 'on the owner shard'})`,
    );
    assert.equal(ack.ref, 'first');
    // The next frame is Leo's marker: his presence came in the ack, not as a session_joined after it.
    await leo.expect('session_joined');
    leo.send({ type: 'marker' });
    const next = await conn.next();
    assert.deepEqual([next.op, next.type, next.sessionId], ['event', 'marker', joined.sessionId], JSON.stringify(next));
  }
});

test('a subscriber whose connection closes while its room waits for the first sync never joins: no session_joined on the bus, nobody in the room', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const a = await node(t, nats.url, stub.base, 'node-a', 2);
  // The raw client listens on room.> and never answers a sync: the room's first sync waits its whole bound (500 ms).
  const { heard, until } = await listen(t, nats.url);
  const id = desktopOnShard(0, 2, 'gone');
  let sueUser = user('Sue');
  while (fnv1a32(sueUser.userId) % 2 !== 1) sueUser = user('Sue');
  const sue = await connectTopics(t, a, token(sueUser));
  sue.send({ op: 'subscribe', topic: `desktop:${id}` });
  // The owner shard asked who is there for Sue's join (sent through the link): she goes now.
  await until('the sync request', () => heard.some((h) => h.subject === `room.${id}` && h.value.p.type === 'presence_sync_request'));
  await sue.close();
  await a.waitForLog((l) => l.event === 'connection_close' && l.sessionId !== undefined && l.userId === sueUser.userId);
  // A legacy socket joins after her: its room_joined lists nobody, and its join is the only one the bus hears.
  const { joined } = await join(t, a.wsUrl(id), { token: token(user('Mia')) });
  assert.deepEqual(joined.sessions, []);
  await until("Mia's session_joined", () => heard.some((h) => h.subject === `room.${id}` && h.value.p.type === 'session_joined'));
  assert.deepEqual(
    heard.filter((h) => h.subject === `room.${id}` && h.value.p.type !== 'presence_sync_request').map((h) => [h.value.p.type, h.value.p.sessionId]),
    [['session_joined', joined.sessionId]],
  );
});

test('with --federation-key, unsigned topic traffic is dropped; with --federation-unsigned-rooms admit it is taken, never in the name of a signed session', async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const signer = new BusSigner(KEY);
  const [k, m] = await Promise.all([
    node(t, nats.url, stub.base, 'node-k', 1, ['--federation-key', KEY]),
    node(t, nats.url, stub.base, 'node-m', 1, ['--federation-key', KEY, '--federation-unsigned-rooms', 'admit']),
  ]);
  const { raw } = await listen(t, nats.url);
  let stamps = 0;
  const publishSigned = (subject: string, data: string) => {
    const h = natsHeaders();
    const stamp = formatStamp(Date.now(), `test-${stamps++}`);
    h.set(STAMP_HEADER, stamp);
    h.set(SIGNATURE_HEADER, signer.sign(subject, data, stamp));
    raw.publish(subject, data, { headers: h });
  };
  const dropped = async (server: ServerProcess) => sumOf((await scrape(server.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}');
  const id = desktop();
  const topic = `desktop:${id}`;
  const subject = `room.${topic}`;
  const sueUser = user('Sue');
  const sue = await connectTopics(t, k!, token(sueUser));
  const sueAck = await subscribe(sue, topic);
  const max = await connectTopics(t, m!, token(user('Max')));
  const maxAck = await subscribe(max, topic);
  await expectEvent(sue, topic, 'session_joined');
  // Max's node asked who is there: Sue's node answered, signed, before Max's ack, which lists her.
  assert.deepEqual(
    (maxAck.sessions as Frame[]).map((s) => s.sessionId),
    [sueAck.sessionId],
  );
  const ursula = { sessionId: 'session_up-3', userId: 'user-up-0003', firstName: 'Ursula', email: 'u@example.com' };
  const sueInfo = { sessionId: sueAck.sessionId as string, userId: sueUser.userId, firstName: 'Sue', email: '' };
  const kBefore = await dropped(k!);
  const mBefore = await dropped(m!);
  // Unsigned, as the upstream relay sends: a join and an event; and a leave in the name of Sue, whose node signs.
  raw.publish(subject, upstream('upstream-3', topic, 'session_joined', ursula, { ...ursula, permission: 'editor' }));
  raw.publish(subject, upstream('upstream-3', topic, 'asset_moved', ursula, { x: 1 }));
  raw.publish(subject, upstream('upstream-3', topic, 'session_left', sueInfo, { ...sueInfo, permission: 'editor' }));
  publishSigned(subject, upstream('node-s', topic, 'marker', { sessionId: 'session_s', userId: 'user-s-0001', firstName: 'S', email: '' }, null));
  assert.equal((await sue.next()).type, 'marker', 'nothing unsigned reached Sue');
  assert.equal((await dropped(k!)) - kBefore, 3);
  assert.equal((await expectEvent(max, topic, 'session_joined')).sessionId, ursula.sessionId);
  assert.deepEqual((await expectEvent(max, topic, 'asset_moved')).payload, { x: 1 });
  assert.equal((await max.next()).type, 'marker', "no session_left in Sue's name reached Max");
  assert.equal((await dropped(m!)) - mBefore, 1);

  // Sue's copy for the upstream relay, played again with its Moodio-Copy header stripped: its signature no longer checks.
  const copies: { data: Uint8Array; stamp: string; signature: string }[] = [];
  const tap = raw.subscribe(subject, {
    callback: (_e, msg) => {
      if (msg.headers?.has('Moodio-Copy') === true)
        copies.push({ data: msg.data, stamp: msg.headers.get(STAMP_HEADER), signature: msg.headers.get(SIGNATURE_HEADER) });
    },
  });
  t.after(() => tap.unsubscribe());
  await raw.flush();
  sue.send({ op: 'publish', topic, type: 'asset_moved', payload: { x: 2 } });
  assert.deepEqual((await expectEvent(max, topic, 'asset_moved')).payload, { x: 2 });
  const deadline = Date.now() + 5000;
  while (copies.length === 0 && Date.now() < deadline) await raw.flush();
  const stripped = natsHeaders();
  stripped.set(STAMP_HEADER, copies[0]!.stamp);
  stripped.set(SIGNATURE_HEADER, copies[0]!.signature);
  const mStripped = await dropped(m!);
  raw.publish(subject, copies[0]!.data, { headers: stripped });
  publishSigned(subject, upstream('node-s', topic, 'marker', { sessionId: 'session_s', userId: 'user-s-0001', firstName: 'S', email: '' }, null));
  assert.equal((await max.next()).type, 'marker', 'the stripped copy was not taken as a second event');
  assert.equal((await dropped(m!)) - mStripped, 1);
});
