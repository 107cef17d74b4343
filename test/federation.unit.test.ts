/**
 * One shard's link to the other nodes (src/shard/federation.ts) in the test
 * process: a real nats-server (test/helpers/nats.ts), the Federation class
 * wired to the real parts of a shard as shard.ts wires it (the relay's bus;
 * deliveries through the relay), real sessions over loopback WebSockets, and
 * a raw NATS client (the official library, no moodio-rt code) playing the
 * other node. Each test asserts the exact bytes on the bus and the exact
 * frames local members get; absence is shown by a later message from the
 * same publisher arriving first. test/federation.test.ts checks the same
 * between real server processes.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { connect as natsConnect, headers as natsHeaders, type Msg, type NatsConnection } from '@nats-io/transport-node';
import type { ApiOutcome, ApiRequest } from '../src/protocol/api.ts';
import { BusSigner, SIGNATURE_HEADER } from '../src/protocol/bus-signature.ts';
import { DROP_REASONS, type DropReasonValue } from '../src/protocol/bus.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { Metric } from '../src/protocol/metrics.ts';
import { Federation } from '../src/shard/federation.ts';
import type { RelayBus } from '../src/shard/relay.ts';
import type { Session } from '../src/shard/session.ts';
import { startNats, type NatsServer } from './helpers/nats.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { shardParts, type Member } from './helpers/shard-parts.ts';

const KEY = 'k'.repeat(32);
const cleanup = new Cleanup();
let nats: NatsServer;
before(async () => {
  nats = await startNats(cleanup);
});
after(() => cleanup.run());

/** Wait for `condition`, at most `ms`. */
async function until(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

interface NodeOptions {
  key?: string;
  heartbeatMs?: number;
  workers?: number;
  shardId?: number;
  /** What applyApi answers (default: reached 0). */
  outcome?: (request: ApiRequest) => ApiOutcome;
}

/** This node ("node-a"): a shard's parts with a Federation as the relay's bus, connected to the test's nats-server. */
async function nodeA(t: TestContext, options: NodeOptions = {}) {
  let federation: Federation | null = null;
  const bus: RelayBus = {
    remoteSessionsJson: (desktopId) => federation!.remoteSessionsJson(desktopId),
    publish: (desktopId, eventJson) => federation!.publish(desktopId, eventJson),
    roomEmptied: (desktopId) => federation!.roomEmptied(desktopId),
  };
  const p = await shardParts(t, { bus });
  const applied: ApiRequest[] = [];
  const fatal: string[] = [];
  const fed = new Federation({
    config: {
      natsUrls: [nats.url],
      natsCreds: '',
      nodeId: 'node-a',
      region: 'r-a',
      federationHeartbeatMs: options.heartbeatMs ?? 1000,
      federationKey: options.key ?? '',
      processInstance: 'proc-a',
      startedAt: Date.now(),
      workers: options.workers ?? 1,
      maxMessageSize: 4096,
      maxRoomSize: 0,
      apiBroadcastRate: 1,
    },
    shardId: options.shardId ?? 0,
    log: p.log,
    metrics: p.metrics,
    rooms: p.rooms,
    deliver: (room, frame, transientKey) => p.relay.deliverRemote(room, frame, transientKey),
    transientTypes: new Set(['asset_dragging']),
    onFatal: (code) => void fatal.push(code),
    applyApi: (request) => {
      applied.push(request);
      return options.outcome?.(request) ?? { duplicate: false, reached: 0, changed: 0 };
    },
  });
  federation = fed;
  t.after(() => fed.close(1000));
  await until(() => p.metrics.values[Metric.FEDERATION_CONNECTED] === 1, 'connected to NATS');
  /** A local session of `desktopId`, admitted as the shard admits one (after the room's first sync), with its room_joined read. */
  const join = async (firstName: string, desktopId: string, permission: 'editor' | 'viewer' = 'editor') => {
    const m = await p.open(firstName, { desktopId, permission });
    await new Promise<void>((resolve) =>
      fed.admit(desktopId, () => {
        p.relay.join(m.session);
        resolve();
      }),
    );
    return { ...m, joined: await m.client.json() };
  };
  const dropped = (reason: DropReasonValue) => p.metrics.values[Metric.BUS_DROPPED_0 + DROP_REASONS.indexOf(reason)];
  return { p, fed, join, applied, fatal, dropped };
}

/** The other node: a raw NATS connection. */
async function peer(t: TestContext): Promise<NatsConnection> {
  const nc = await natsConnect({ servers: nats.url, name: 'test peer' });
  t.after(() => nc.close());
  return nc;
}

/** Every message on `subject`, as text, with its headers. */
function record(nc: NatsConnection, subject: string): { messages: { data: string; sessions?: string; signature?: string; reply?: string }[] } {
  const seen: { data: string; sessions?: string; signature?: string; reply?: string }[] = [];
  nc.subscribe(subject, {
    callback: (_err, msg: Msg) => {
      seen.push({
        data: msg.string(),
        ...(msg.headers?.has('Moodio-Sessions') ? { sessions: msg.headers.get('Moodio-Sessions') } : {}),
        ...(msg.headers?.has(SIGNATURE_HEADER) ? { signature: msg.headers.get(SIGNATURE_HEADER) } : {}),
        ...(msg.reply ? { reply: msg.reply } : {}),
      });
    },
  });
  return { messages: seen };
}

interface Remote {
  sessionId: string;
  userId: string;
  firstName: string;
  email: string;
  permission: 'editor' | 'viewer';
}
const remote = (name: string, permission: 'editor' | 'viewer' = 'editor'): Remote => ({
  sessionId: `session_${name.toLowerCase()}_b`,
  userId: `u-${name.toLowerCase()}`,
  firstName: name,
  email: `${name.toLowerCase()}@b.example`,
  permission,
});
const infoJson = (s: Remote | Session) =>
  `{"sessionId":${JSON.stringify('sessionId' in s ? s.sessionId : s.id)},"userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)},"permission":"${s.permission}"}`;
const stampJson = (s: Remote) => `"sessionId":${JSON.stringify(s.sessionId)},"userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)}`;
const presence = (type: 'session_joined' | 'session_left', s: Remote, at: number) => `{"type":"${type}",${stampJson(s)},"timestamp":${at},"payload":${infoJson(s)}}`;
const relayed = (s: Remote, type: string, at: number, payload = '{"x":1}') => `{"type":"${type}",${stampJson(s)},"timestamp":${at},"payload":${payload}}`;
const env = (node: string, event: string) => `{"r":${JSON.stringify(node)},"p":${event}}`;
const localStamp = (s: Session) => `"sessionId":"${s.id}","userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)}`;

/** Publish on `subject` and wait until the server has it (so that what follows is ordered after it). */
async function send(nc: NatsConnection, subject: string, data: string, signer?: BusSigner): Promise<void> {
  if (signer === undefined) nc.publish(subject, data);
  else {
    const h = natsHeaders();
    h.set(SIGNATURE_HEADER, signer.sign(subject, data));
    nc.publish(subject, data, { headers: h });
  }
  await nc.flush();
}

/** A marker relayed by `from` through the bus: each of `to` reads it next (nothing else came before it). */
async function marker(nc: NatsConnection, desk: string, from: Remote, to: Member[], n: number): Promise<void> {
  const text = relayed(from, 'marker', n);
  await send(nc, `room.${desk}`, env('node-b', text));
  for (const m of to) assert.equal(await m.client.next(), text, `${m.session.firstName}'s next frame`);
}

test('events cross: local presence and events go out in the envelope; a peer\'s presence and events reach every local member exactly; room_joined lists remote sessions', async (t) => {
  const a = await nodeA(t);
  const nc = await peer(t);
  const desk = desktop();
  const bus = record(nc, `room.${desk}`);
  await nc.flush();

  const ann = await a.join('Ann', desk);
  assert.deepEqual(ann.joined.sessions, []);
  await until(() => bus.messages.length >= 2, 'the sync request and the announcement');
  // The first local session: the room asks who is there (listing its own sessions: none yet), then announces it.
  assert.equal(bus.messages[0]!.data, env('node-a', '{"type":"presence_sync_request"}'));
  assert.equal(bus.messages[0]!.sessions, '');
  assert.ok(bus.messages[0]!.reply, 'the request names a reply subject');
  const joinedAt = JSON.parse(bus.messages[1]!.data).p.timestamp as number;
  assert.equal(bus.messages[1]!.data, env('node-a', `{"type":"session_joined",${localStamp(ann.session)},"timestamp":${joinedAt},"payload":${infoJson(ann.session)}}`));

  // A local event is published as the exact frame text the room got.
  a.p.relay.onMessage(ann.session, Buffer.from('{"type":"asset_moved","payload":{"id":7}}'), false);
  await until(() => bus.messages.length >= 3, 'the relayed event');
  const movedAt = JSON.parse(bus.messages[2]!.data).p.timestamp as number;
  assert.equal(bus.messages[2]!.data, env('node-a', `{"type":"asset_moved",${localStamp(ann.session)},"timestamp":${movedAt},"payload":{"id":7}}`));

  const bob = remote('Bob');
  await send(nc, `room.${desk}`, env('node-b', presence('session_joined', bob, 11)));
  assert.equal(await ann.client.next(), presence('session_joined', bob, 11));
  assert.equal(a.p.metrics.values[Metric.REMOTE_SESSIONS], 1);
  assert.equal(a.fed.remoteSessionsJson(desk), infoJson(bob));

  const cat = await a.join('Cat', desk);
  assert.deepEqual(cat.joined.sessions, [JSON.parse(infoJson(ann.session)), JSON.parse(infoJson(bob))], 'the local member, then the remote one');
  assert.match(await ann.client.next(), /^\{"type":"session_joined"/);

  const moved = relayed(bob, 'asset_moved', 12);
  await send(nc, `room.${desk}`, env('node-b', moved));
  assert.equal(await ann.client.next(), moved);
  assert.equal(await cat.client.next(), moved);

  // Announced again (an answer to a sync, a reconnect): not news.
  await send(nc, `room.${desk}`, env('node-b', presence('session_joined', bob, 13)));
  await marker(nc, desk, bob, [ann, cat], 14);

  await send(nc, `room.${desk}`, env('node-b', presence('session_left', bob, 15)));
  assert.equal(await ann.client.next(), presence('session_left', bob, 15));
  assert.equal(await cat.client.next(), presence('session_left', bob, 15));
  assert.equal(a.p.metrics.values[Metric.REMOTE_SESSIONS], 0);
  assert.equal(a.fed.remoteSessionsJson(desk), '');
});

test('hostile room messages are dropped, each counted under its reason, and the room carries on', async (t) => {
  const a = await nodeA(t);
  const nc = await peer(t);
  const desk = desktop();
  const subject = `room.${desk}`;
  const ann = await a.join('Ann', desk);
  const bob = remote('Bob');
  await send(nc, subject, env('node-b', presence('session_joined', bob, 1)));
  assert.equal(await ann.client.next(), presence('session_joined', bob, 1));
  const annAsRemote: Remote = { sessionId: ann.session.id, userId: ann.session.userId, firstName: 'Ann', email: 'ann@example.com', permission: 'editor' };

  await send(nc, subject, 'nope');
  await send(nc, subject, env('node-a', relayed(bob, 'asset_moved', 2)));
  await send(nc, subject, env('node-b', presence('session_joined', annAsRemote, 3)));
  await send(nc, subject, env('node-b', relayed(annAsRemote, 'asset_moved', 4)));
  await send(nc, subject, env('node-b', presence('session_left', annAsRemote, 5)));
  // Only the node that announced a session may say it left, or change it: silently ignored.
  await send(nc, subject, env('node-c', presence('session_left', bob, 6)));
  await send(nc, subject, env('node-c', `{"type":"session_updated",${stampJson(bob)},"permission":"viewer","timestamp":7,"payload":${infoJson({ ...bob, permission: 'viewer' })}}`));
  await marker(nc, desk, bob, [ann], 8);
  assert.equal(a.dropped('malformed'), 1);
  assert.equal(a.dropped('forged'), 4, 'our own node id, a local session announced, relayed and left by another node');
  assert.equal(a.fed.remoteSessionsJson(desk), infoJson(bob), 'Bob is still there, as an editor');

  // Its own node turns Bob into a viewer: local members are told, and his mutations are dropped here too.
  const viewer = { ...bob, permission: 'viewer' as const };
  const updated = `{"type":"session_updated",${stampJson(bob)},"permission":"viewer","timestamp":9,"payload":${infoJson(viewer)}}`;
  await send(nc, subject, env('node-b', updated));
  assert.equal(await ann.client.next(), updated);
  await send(nc, subject, env('node-b', relayed(bob, 'asset_moved', 10)));
  await marker(nc, desk, bob, [ann], 11);
  assert.equal(a.dropped('viewer'), 1);
  assert.deepEqual(
    a.p.log.entries.filter((e) => e.event === 'federation_message_dropped').map((e) => e.fields!.reason),
    ['malformed', 'forged', 'forged', 'forged', 'forged', 'viewer'],
  );
});

function heartbeat(node: string, k: string, h: number, instance = `proc-${node}`, extra: Partial<Record<string, unknown>> = {}): string {
  return JSON.stringify({ r: node, i: instance, t: 1, s: 0, w: 1, k, h, g: 'r-b', ...extra });
}

test('a peer shard silent for 3 heartbeat intervals loses its sessions; one back under a new incarnation loses them at once', async (t) => {
  const a = await nodeA(t, { heartbeatMs: 100 });
  const nc = await peer(t);
  const desk = desktop();
  const ann = await a.join('Ann', desk);
  const beatAt = Date.now();
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-b', 'inc-1', 100));
  await until(() => a.p.metrics.values[Metric.PEER_NODES] === 1, 'the peer is known');
  const bob = remote('Bob');
  await send(nc, `room.${desk}`, env('node-b', presence('session_joined', bob, 1)));
  assert.equal(await ann.client.next(), presence('session_joined', bob, 1));
  const left = JSON.parse(await ann.client.next(5000));
  assert.ok(Date.now() - beatAt >= 300, 'not before 3 intervals of silence');
  assert.deepEqual([left.type, left.sessionId, left.payload.sessionId], ['session_left', bob.sessionId, bob.sessionId]);
  await until(() => a.p.metrics.values[Metric.PEER_NODES] === 0, 'the peer is gone');
  assert.equal(a.fed.remoteSessionsJson(desk), '');

  // Back, and its shard restarts: what it announced under the old incarnation is gone.
  const beat = setInterval(() => nc.publish('moodio-rt.heartbeat', heartbeat('node-b', 'inc-1', 100)), 50);
  t.after(() => clearInterval(beat));
  await until(() => a.p.metrics.values[Metric.PEER_NODES] === 1, 'the peer is back');
  await send(nc, `room.${desk}`, env('node-b', presence('session_joined', bob, 2)));
  assert.equal(await ann.client.next(), presence('session_joined', bob, 2));
  clearInterval(beat);
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-b', 'inc-2', 100));
  const gone = JSON.parse(await ann.client.next());
  assert.deepEqual([gone.type, gone.sessionId], ['session_left', bob.sessionId]);
});

test('a sync request is answered: this node\'s sessions announced first, then their ids on the reply subject; a followed peer\'s list removes what it no longer has', async (t) => {
  const a = await nodeA(t);
  const nc = await peer(t);
  const desk = desktop();
  const ann = await a.join('Ann', desk);
  const bus = record(nc, `room.${desk}`);
  await nc.flush();
  const answers = await nc.requestMany(`room.${desk}`, env('node-b', '{"type":"presence_sync_request"}'), { strategy: 'stall', stall: 200, maxWait: 2000 });
  const replies: string[] = [];
  for await (const answer of answers) replies.push(answer.string());
  assert.deepEqual(replies, [`{"r":"node-a","s":["${ann.session.id}"]}`]);
  const announced = bus.messages.filter((m) => m.data.startsWith('{"r":"node-a"'));
  assert.equal(announced.length, 1);
  assert.equal(JSON.parse(announced[0]!.data).p.sessionId, ann.session.id);

  // Bob, from a node whose heartbeats this one follows; its next sync request lists no sessions: Bob is gone.
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-b', 'inc-1', 1000));
  await until(() => a.p.metrics.values[Metric.PEER_NODES] === 1, 'the peer is known');
  const bob = remote('Bob');
  await send(nc, `room.${desk}`, env('node-b', presence('session_joined', bob, 1)));
  assert.equal(await ann.client.next(), presence('session_joined', bob, 1));
  const h = natsHeaders();
  h.set('Moodio-Sessions', '');
  nc.publish(`room.${desk}`, env('node-b', '{"type":"presence_sync_request"}'), { headers: h });
  const left = JSON.parse(await ann.client.next());
  assert.deepEqual([left.type, left.sessionId], ['session_left', bob.sessionId]);
  // From a node it does not follow, such a list is not trusted.
  const cy = remote('Cy');
  await send(nc, `room.${desk}`, env('node-c', presence('session_joined', cy, 2)));
  assert.equal(await ann.client.next(), presence('session_joined', cy, 2));
  nc.publish(`room.${desk}`, env('node-c', '{"type":"presence_sync_request"}'), { headers: h });
  await marker(nc, desk, bob, [ann], 3);
  assert.equal(a.fed.remoteSessionsJson(desk), infoJson(cy));
});

const serverEvent = (type: string) => `{"type":"${type}","sessionId":"server","userId":"server","timestamp":1}`;

test('server API calls from the bus (--federation-key): a signed call from another node is applied; unsigned, our own, another shard\'s desktop or the wrong subject is not', async (t) => {
  const signer = new BusSigner(KEY);
  const a = await nodeA(t, { key: KEY, workers: 2, shardId: 0, outcome: () => ({ duplicate: false, reached: 1, changed: 0, sessions: [] }) });
  const nc = await peer(t);
  const call = (node: string, request: object) => JSON.stringify({ r: node, q: request });
  const mine = (() => {
    for (let i = 0; ; i++) if (fnv1a32(`d-${i}`) % 2 === 0) return `d-${i}`;
  })();
  const theirs = (() => {
    for (let i = 0; ; i++) if (fnv1a32(`d-${i}`) % 2 === 1) return `d-${i}`;
  })();
  const userEvent = { kind: 'user_event', id: 'call-1', userId: 'u-1', event: serverEvent('hello') };
  await send(nc, 'api.users', call('node-b', userEvent), signer);
  await until(() => a.applied.length === 1, 'the signed call applied');
  assert.deepEqual(a.applied[0], { kind: 'user_event', id: 'call-1', userId: 'u-1', type: 'hello', event: serverEvent('hello') });

  await send(nc, 'api.users', call('node-b', { ...userEvent, id: 'call-2' }));
  await send(nc, 'api.users', call('node-a', { ...userEvent, id: 'call-3' }), signer);
  await send(nc, `api.desktop.${theirs}`, call('node-b', { kind: 'publish', id: 'call-4', desktopId: theirs, event: serverEvent('x') }), signer);
  await send(nc, `api.desktop.${theirs}`, call('node-b', { kind: 'publish', id: 'call-5', desktopId: mine, event: serverEvent('x') }), signer);
  await send(nc, `api.desktop.${mine}`, call('node-b', { kind: 'publish', id: 'call-6', desktopId: mine, event: serverEvent('x') }), signer);
  await until(() => a.applied.length === 2, 'the last call applied');
  assert.deepEqual(
    a.applied.map((r) => r.id),
    ['call-1', 'call-6'],
  );
  assert.equal(a.dropped('unsigned'), 1);
  assert.equal(a.dropped('room_mismatch'), 1);

  // A query with a reply subject is answered there, signed, with this node's sessions.
  const answers = await nc.requestMany('api.users', call('node-b', { kind: 'user_sessions', id: 'call-7', userId: 'u-1' }), {
    strategy: 'stall',
    stall: 200,
    maxWait: 2000,
    headers: (() => {
      const h = natsHeaders();
      h.set(SIGNATURE_HEADER, signer.sign('api.users', call('node-b', { kind: 'user_sessions', id: 'call-7', userId: 'u-1' })));
      return h;
    })(),
  });
  const replies: Msg[] = [];
  for await (const answer of answers) replies.push(answer);
  assert.equal(replies.length, 1);
  assert.equal(replies[0]!.string(), '{"r":"node-a","s":[]}');
  assert.ok(signer.verify(replies[0]!.subject, replies[0]!.data, replies[0]!.headers?.get(SIGNATURE_HEADER)), 'the answer is signed');
});

test('calls this node took: a command is published signed for the other nodes, a query gathers their signed answers and drops unsigned ones', async (t) => {
  const signer = new BusSigner(KEY);
  const a = await nodeA(t, { key: KEY });
  const nc = await peer(t);
  const seen = record(nc, 'api.users');
  await nc.flush();
  const command: ApiRequest = { kind: 'disconnect', id: 'own-1', userId: 'u-1', reason: 'bye' };
  a.fed.publishApi(command);
  await until(() => seen.messages.length === 1, 'the command on the bus');
  assert.equal(seen.messages[0]!.data, `{"r":"node-a","q":${JSON.stringify(command)}}`);
  assert.ok(signer.verify('api.users', Buffer.from(seen.messages[0]!.data), seen.messages[0]!.signature));

  // Two other nodes answer a query: one signed, one not.
  const live = { sessionId: 's-b', userId: 'u-1', firstName: 'Bo', email: 'bo@b.example', desktopId: 'd-1', permission: 'editor', connectedAt: 5, node: 'node-b', shard: 0 };
  nc.subscribe('api.users', {
    callback: (_err, msg) => {
      if (!msg.string().includes('"user_sessions"')) return;
      const signed = JSON.stringify({ r: 'node-b', s: [live] });
      const h = natsHeaders();
      h.set(SIGNATURE_HEADER, signer.sign(msg.reply!, signed));
      nc.publish(msg.reply!, signed, { headers: h });
      nc.publish(msg.reply!, JSON.stringify({ r: 'node-x', s: [{ ...live, node: 'node-x' }] }));
    },
  });
  await nc.flush();
  const sessions = await a.fed.gatherApi({ kind: 'user_sessions', id: 'own-2', userId: 'u-1' });
  assert.deepEqual(sessions, [live]);
  assert.equal(a.dropped('unsigned'), 1);
});

test('close: every local session is announced as left, then the connection drains', async (t) => {
  const a = await nodeA(t);
  const nc = await peer(t);
  const desk = desktop();
  const ann = await a.join('Ann', desk);
  const cat = await a.join('Cat', desk);
  assert.match(await ann.client.next(), /^\{"type":"session_joined"/);
  const bus = record(nc, `room.${desk}`);
  await nc.flush();
  await a.fed.close(2000);
  await until(() => bus.messages.length === 2, 'both session_left');
  assert.deepEqual(
    bus.messages.map((m) => {
      const { r, p } = JSON.parse(m.data);
      return [r, p.type, p.sessionId];
    }),
    [
      ['node-a', 'session_left', ann.session.id],
      ['node-a', 'session_left', cat.session.id],
    ],
  );
  assert.equal(a.p.metrics.values[Metric.FEDERATION_CONNECTED], 0);
  const counts = () => [a.p.metrics.values[Metric.BUS_PUBLISHED], a.p.metrics.values[Metric.BUS_UNPUBLISHED]];
  const before = counts();
  a.fed.publish(desk, '{"type":"late"}');
  assert.deepEqual(counts(), before, 'nothing is published, or counted as unpublished, after close');
});

test('another process under this node id that started first: this one, just started, stops', async (t) => {
  const a = await nodeA(t);
  const nc = await peer(t);
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-a', 'inc-x', 1000, 'proc-older', { t: 1 }));
  await until(() => a.fatal.length === 1, 'the fatal stop');
  assert.deepEqual(a.fatal, ['ERR_DUPLICATE_NODE_ID']);
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-a', 'inc-y', 1000, 'proc-older', { t: 1 }));
  await send(nc, 'moodio-rt.heartbeat', heartbeat('node-a', 'inc-z', 1000, 'proc-a', { t: 1 }));
  assert.equal(a.fatal.length, 1, 'said once');
  assert.equal(a.p.log.entries.filter((e) => e.event === 'federation_duplicate_node_id').length, 1);
});
