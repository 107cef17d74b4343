/**
 * Several nodes, one desktop: real nats-server, real moodio-rt processes
 * (2 workers each) federated over it, real WebSocket clients, and a raw
 * NATS client (the official library, no moodio-rt code) to read and forge
 * the wire format. Absence is proven by a marker that must come next.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { connect as natsConnect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { BusSigner, SIGNATURE_HEADER } from '../src/protocol/bus-signature.ts';
import { api, API_KEY } from './helpers/api.ts';
import { connect, HandshakeRejected, join, type Frame, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startNats, type NatsServer } from './helpers/nats.ts';
import { startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const HEARTBEAT_MS = 250;
/** The fleet's --federation-key: the test signs with it what the fleet would, and leaves unsigned what a stranger would send. */
const KEY = 'federation-test-key-0123456789-abcdefghij';
const signer = new BusSigner(KEY);

/** Publish `data` on `subject` signed as a node of the fleet would. */
function publishSigned(subject: string, data: string): void {
  const h = natsHeaders();
  h.set(SIGNATURE_HEADER, signer.sign(subject, data));
  raw.publish(subject, data, { headers: h });
}
const ADMIN = 'federation-test-admin-token';

async function stats(server: ServerProcess): Promise<any> {
  const res = await fetch(`http://127.0.0.1:${server.port}/stats`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(res.status, 200);
  return res.json();
}
const cleanup = new Cleanup();
let nats: NatsServer;
let stubBase: string;
let a: ServerProcess;
let b: ServerProcess;
let raw: NatsConnection;

/** The app's answers that a test changed: `${userId} ${desktopId}` → a role, or `none` (403). */
const changedRoles = new Map<string, string>();
// Otherwise, users whose name contains "viewer" are viewers.
const byName: PermissionHandler = (req, res) => {
  const changed = changedRoles.get(`${req.userId} ${req.desktopId}`);
  if (changed === 'none') {
    res.statusCode = 403;
    res.end('{"error":"forbidden"}');
    return;
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ permission: changed ?? (req.userId?.includes('viewer') ? 'viewer' : 'editor') }));
};

/** A federated node on `natsUrl`, with every shard connected to the bus. */
async function startNode(t: Scope, nodeId: string, natsUrl: string, extra: string[] = [], waitConnected = true): Promise<ServerProcess> {
  const server = await startServer(t, {
    workers: 2,
    permissionApiBase: stubBase,
    args: ['--nats-url', natsUrl, '--node-id', nodeId, '--federation-heartbeat', `${HEARTBEAT_MS}ms`, '--rate-limit', '0', '--admin-token', ADMIN, '--api-key', API_KEY, '--api-broadcast-rate', '100', '--federation-key', KEY, ...extra],
  });
  if (waitConnected) await connectedShards(server, 2);
  return server;
}

async function connectedShards(server: ServerProcess, count: number, event = 'federation_connected', from = 0): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const shards = new Set(server.logs.slice(from).filter((l) => l.event === event).map((l) => l.worker));
    if (shards.size >= count) return;
    if (Date.now() > deadline) throw new Error(`${count} shards did not log ${event}`);
    await server.waitForLog((l) => l.event === event && !shards.has(l.worker), Math.max(1, deadline - Date.now())).catch(() => undefined);
  }
}

/** Until every shard of `server` has heard `peer`'s heartbeats (peer log lines are rate-limited; /stats is not). */
async function knowsPeer(server: ServerProcess, peer: string): Promise<void> {
  for (;;) {
    const { shards } = (await stats(server)) as { shards: { federation: { peers: { nodeId: string }[] } | null }[] };
    if (shards.every((s) => s.federation?.peers.some((p) => p.nodeId === peer))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function open(server: ServerProcess, desk: string, name: string): Promise<{ client: TestClient; joined: Frame; userId: string }> {
  const claims = user(name);
  const { client, joined } = await join(cleanup, server.wsUrl(desk), { token: token(claims) });
  return { client, joined, userId: claims.userId };
}

const ids = (joined: Frame): string[] => (joined.sessions as { sessionId: string }[]).map((s) => s.sessionId).sort();

/** The next frame of `client` that is not presence (presence of unrelated joins may interleave). */
async function nextEvent(client: TestClient, timeoutMs = 5000): Promise<Frame> {
  for (;;) {
    const frame = await client.next(timeoutMs);
    if (frame.type !== 'session_joined' && frame.type !== 'session_left') return frame;
  }
}

before(async () => {
  nats = await startNats(cleanup);
  stubBase = (await startPermissionStub(cleanup, byName)).base;
  [a, b] = await Promise.all([startNode(cleanup, 'node-a', nats.url), startNode(cleanup, 'node-b', nats.url)]);
  raw = await natsConnect({ servers: nats.url });
  cleanup.after(() => raw.close());
});
after(() => cleanup.run());

describe('two nodes, one desktop', () => {
  test('an event crosses nodes stamped, exactly once, in order over 1,000 events, with no echo', async () => {
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const bob = await open(b, desk, 'Bob');
    // The late joiner on B sees Alice (on A) in room_joined; Alice hears Bob join.
    assert.deepEqual(ids(bob.joined), [alice.joined.sessionId]);
    const joinedBob = await alice.client.expect('session_joined');
    assert.equal(joinedBob.sessionId, bob.joined.sessionId);
    assert.equal(joinedBob.userId, bob.userId);
    assert.equal(joinedBob.payload.permission, 'editor');

    for (let i = 0; i < 1000; i++) alice.client.send({ type: 'asset_moved', payload: { i }, sessionId: 'forged', userId: 'forged' });
    alice.client.send({ type: 'marker_done' });
    for (let i = 0; i < 1000; i++) {
      const frame = await bob.client.expect('asset_moved');
      assert.equal(frame.payload.i, i, 'in order, none lost, none twice');
      if (i === 0) {
        assert.equal(frame.sessionId, alice.joined.sessionId, 'stamped with the sender, not what it claimed');
        assert.equal(frame.userId, alice.userId);
        assert.equal(frame.firstName, 'Alice');
        assert.equal(frame.email, 'alice@example.com');
        assert.equal(typeof frame.timestamp, 'number');
      }
    }
    assert.equal((await bob.client.next()).type, 'marker_done', 'exactly once: nothing after the 1,000th but the marker');
    bob.client.send({ type: 'marker_back' });
    assert.equal((await alice.client.next()).type, 'marker_back', 'Alice got none of her own events back');
  });

  test('presence both ways: joins and leaves on either node, and room_joined lists both nodes', async () => {
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const bob = await open(b, desk, 'Bob');
    assert.equal((await alice.client.expect('session_joined')).sessionId, bob.joined.sessionId);
    const carol = await open(a, desk, 'Carol');
    assert.deepEqual(ids(carol.joined), [alice.joined.sessionId, bob.joined.sessionId].sort(), 'local and remote sessions alike');
    assert.equal((await bob.client.expect('session_joined')).sessionId, carol.joined.sessionId);
    assert.equal((await alice.client.expect('session_joined')).sessionId, carol.joined.sessionId);
    const dave = await open(b, desk, 'Dave');
    assert.deepEqual(ids(dave.joined), [alice.joined.sessionId, bob.joined.sessionId, carol.joined.sessionId].sort());
    await bob.client.close();
    for (const c of [alice, carol, dave]) {
      if (c !== dave) assert.equal((await c.client.expect('session_joined')).sessionId, dave.joined.sessionId);
      const left = await c.client.expect('session_left');
      assert.equal(left.sessionId, bob.joined.sessionId);
      assert.equal(left.payload.userId, bob.userId);
    }
  });

  test('rooms stay isolated across nodes', async () => {
    const desk1 = desktop();
    const desk2 = desktop();
    const alice = await open(a, desk1, 'Alice');
    const bob = await open(b, desk1, 'Bob');
    await alice.client.expect('session_joined');
    const eve = await open(b, desk2, 'Eve');
    const frank = await open(a, desk2, 'Frank');
    await eve.client.expect('session_joined');
    eve.client.send({ type: 'asset_moved', payload: { secret: true } });
    assert.equal((await frank.client.next()).type, 'asset_moved', 'desk2 gets its own event');
    bob.client.send({ type: 'marker' });
    assert.equal((await alice.client.next()).type, 'marker', 'desk1 got nothing of desk2');
    assert.deepEqual(ids(frank.joined), [eve.joined.sessionId], 'desk2 lists only its own sessions');
  });

  test("a viewer's mutation on node A never reaches node B", async () => {
    const desk = desktop();
    const viewer = await open(a, desk, 'viewer-Vic');
    const bob = await open(b, desk, 'Bob');
    await viewer.client.expect('session_joined');
    assert.equal(bob.joined.sessions[0].permission, 'viewer');
    viewer.client.send({ type: 'asset_moved', payload: { x: 1 } });
    viewer.client.send({ type: 'asset_removed', payload: { id: 'a1' } });
    viewer.client.send({ type: 'cursor_moved', payload: { x: 2 } });
    const frame = await bob.client.next();
    assert.equal(frame.type, 'cursor_moved', 'the mutations were dropped at the origin; a non-mutation passes');
  });
});

describe('the wire format, read and forged with a raw NATS client', () => {
  test('subject, envelope, presence_sync_request and its answers', async () => {
    const desk = desktop();
    const seen: { subject: string; data: string }[] = [];
    const sub = raw.subscribe(`room.${desk}`, { callback: (_e, m) => void seen.push({ subject: m.subject, data: m.string() }) });
    await raw.flush();
    const alice = await open(a, desk, 'Alice');
    alice.client.send('{"type":"asset_moved","payload":{"x":1.5e3,"y":"y"}}');
    const waitFor = async (n: number) => {
      const deadline = Date.now() + 5000;
      while (seen.length < n && Date.now() < deadline) await raw.flush();
      assert.ok(seen.length >= n, `expected ${n} bus messages, got ${JSON.stringify(seen)}`);
    };
    await waitFor(3);
    const [sync, joined, moved] = seen.map((m) => ({ subject: m.subject, ...JSON.parse(m.data) }));
    assert.equal(sync.subject, `room.${desk}`);
    assert.deepEqual(sync, { subject: `room.${desk}`, r: 'node-a', p: { type: 'presence_sync_request' } });
    assert.deepEqual(Object.keys(joined), ['subject', 'r', 'p']);
    assert.equal(joined.r, 'node-a');
    assert.deepEqual(joined.p, { ...joined.p, type: 'session_joined', sessionId: alice.joined.sessionId, userId: alice.userId, firstName: 'Alice', email: 'alice@example.com' });
    assert.deepEqual(joined.p.payload, { sessionId: alice.joined.sessionId, userId: alice.userId, firstName: 'Alice', email: 'alice@example.com', permission: 'editor' });
    assert.equal(typeof joined.p.timestamp, 'number');
    assert.equal(moved.r, 'node-a');
    assert.deepEqual(Object.keys(moved.p), ['type', 'sessionId', 'userId', 'firstName', 'email', 'timestamp', 'payload']);
    assert.ok(seen[2]!.data.includes('"payload":{"x":1.5e3,"y":"y"}'), 'the payload travels as the client sent it');

    // A Go relay's sync request (no reply subject): node A answers with a session_joined per local session.
    const before = seen.length;
    raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay-1', p: { type: 'presence_sync_request' } }));
    await waitFor(before + 2);
    const answer = JSON.parse(seen[before + 1]!.data);
    assert.equal(answer.r, 'node-a');
    assert.equal(answer.p.type, 'session_joined');
    assert.equal(answer.p.sessionId, alice.joined.sessionId);
    sub.unsubscribe();

    // A Go relay's session and event reach the local member; its node never heartbeats, so it stays until it leaves.
    const goSession = { sessionId: 'session_go-1', userId: 'user-go-0001', firstName: 'Gopher', email: 'go@example.com', permission: 'editor' };
    raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay-1', p: { type: 'session_joined', ...goSession, timestamp: 1, payload: goSession } }));
    const goJoined = await alice.client.expect('session_joined');
    assert.equal(goJoined.sessionId, 'session_go-1');
    raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay-1', p: { type: 'asset_moved', sessionId: 'session_go-1', userId: 'user-go-0001', firstName: 'Gopher', email: 'go@example.com', timestamp: 2, payload: { x: 9 } } }));
    const goMoved = await alice.client.expect('asset_moved');
    assert.deepEqual(goMoved.payload, { x: 9 });
    const late = await open(a, desk, 'Late');
    assert.ok(ids(late.joined).includes('session_go-1'), 'the Go session is listed in room_joined');
    raw.publish(`room.${desk}`, JSON.stringify({ r: 'go-relay-1', p: { type: 'session_left', ...goSession, timestamp: 3, payload: goSession } }));
    assert.equal((await alice.client.expect('session_joined')).sessionId, late.joined.sessionId);
    assert.equal((await alice.client.expect('session_left')).sessionId, 'session_go-1');
  });

  test('hostile bus messages are dropped and counted, and the shards stay up', async () => {
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const subject = `room.${desk}`;
    const before = await scrape(a.port);
    const dropped = (m: typeof before.metrics, reason: string) => sumOf(m, `moodio_rt_federation_dropped_total{reason="${reason}"}`);
    const stamp = { sessionId: 'session_x', userId: 'user-x-0001', firstName: 'X', email: 'x@example.com', timestamp: 1 };
    const info = { sessionId: 'session_x', userId: 'user-x-0001', firstName: 'X', email: 'x@example.com', permission: 'editor' };
    const hostile: [string, string | Uint8Array][] = [
      ['malformed', 'not json'],
      ['malformed', '[1,2,3]'],
      ['malformed', '{"p":{"type":"asset_moved"}}'],
      ['invalid_event', '{"r":"evil","p":"a string"}'],
      ['invalid_event', '{"r":"evil","p":{"payload":1}}'],
      ['invalid_event', JSON.stringify({ r: 'evil', p: { type: 'session_joined', ...stamp } })],
      ['invalid_event', JSON.stringify({ r: 'evil', p: { type: 'session_joined', ...stamp, payload: { ...info, sessionId: 'session_other' } } })],
      ['reserved_type', JSON.stringify({ r: 'evil', p: { type: 'room_joined', ...stamp, sessions: [] } })],
      ['room_mismatch', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, desktopId: 'another-desk' } })],
      ['forged', JSON.stringify({ r: 'node-a', p: { type: 'asset_moved', ...stamp, payload: {} } })],
      ['forged', JSON.stringify({ r: 'evil', p: { type: 'session_left', ...stamp, sessionId: alice.joined.sessionId, payload: { ...info, sessionId: alice.joined.sessionId, userId: 'user-x-0001' } } })],
      ['forged', JSON.stringify({ r: 'evil', p: { type: 'asset_removed', ...stamp, sessionId: alice.joined.sessionId, payload: {} } })],
      ['unsigned', JSON.stringify({ r: 'node-b', p: { type: 'asset_moved', ...stamp, payload: {} } })],
      ['too_large', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, payload: 'x'.repeat(900_000) } })],
      ['malformed', new Uint8Array([0xff, 0xfe, 0x00, 0x7b])],
    ];
    for (const [, data] of hostile) raw.publish(subject, data);
    // A valid event from a peer, published last: if anything hostile had reached Alice, it would come before it.
    raw.publish(subject, JSON.stringify({ r: 'peer-z', p: { type: 'marker', ...stamp, payload: { ok: true } } }));
    const next = await alice.client.next();
    assert.equal(next.type, 'marker', `nothing hostile was delivered, got ${JSON.stringify(next)}`);
    assert.deepEqual(next.payload, { ok: true });
    const afterScrape = await scrape(a.port);
    const expected = new Map<string, number>();
    for (const [reason] of hostile) expected.set(reason, (expected.get(reason) ?? 0) + 1);
    for (const [reason, count] of expected) {
      assert.equal(dropped(afterScrape.metrics, reason) - dropped(before.metrics, reason), count, `dropped{reason="${reason}"}`);
    }
    assert.ok(a.logs.some((l) => l.event === 'federation_message_dropped'), 'drops are logged');

    // A stranger's heartbeats (unsigned) count for nothing, even in node-a's own name with an older start.
    const unsignedBefore = sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}');
    for (let i = 0; i < 50; i++) raw.publish('moodio-rt.heartbeat', JSON.stringify({ r: i === 0 ? 'node-a' : `stranger-${i}`, i: 'x', t: 0, s: 0, w: 1, k: 'k', h: 10, g: '' }));
    await raw.flush();
    const unsignedDropped = async () => sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}') - unsignedBefore;
    while ((await unsignedDropped()) < 2 * 50) await new Promise((r) => setTimeout(r, 20));

    // 1,100 peers signed with the fleet's key (a compromised node): each shard keeps at most 1,024, drops the rest, and logs at most 20 peer lines a second.
    const peerLines = a.logs.filter((l) => l.event === 'federation_peer_up').length;
    const forgedAt = Date.now();
    for (let i = 0; i < 1100; i++) {
      publishSigned('moodio-rt.heartbeat', JSON.stringify({ r: `forged-${i}`, i: 'x', t: 1, s: 0, w: 1, k: 'k', h: 10, g: '' }));
    }
    await raw.flush();
    const peersDropped = async () => sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="too_many_peers"}');
    while ((await peersDropped()) < 2 * 76) await new Promise((r) => setTimeout(r, 20));
    const peers = await scrape(a.port);
    for (const shard of ['0', '1']) assert.ok(peers.metrics.get(`moodio_rt_federation_peer_nodes{shard="${shard}"}`)! <= 1024);
    const seconds = Math.max(1, Math.ceil((Date.now() - forgedAt) / 1000));
    assert.ok(a.logs.filter((l) => l.event === 'federation_peer_up').length - peerLines <= 2 * 20 * (seconds + 1), 'peer lines are rate-limited');
    // Silent after one beat, they expire (3 intervals), and real peers have room again.
    const peerGauge = async () => sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_peer_nodes');
    while ((await peerGauge()) > 2 * 8) await new Promise((r) => setTimeout(r, 50));
    // Still serving, both shards: Alice's room relays, and a new room on each shard opens.
    const bob = await open(a, desk, 'Bob');
    bob.client.send({ type: 'still_up' });
    assert.equal((await nextEvent(alice.client)).type, 'still_up');
    for (let i = 0; i < 4; i++) await open(a, desktop(), 'Probe');
    assert.equal(a.child.exitCode, null);
  });
});

describe('node failure', () => {
  test('SIGKILL of a node: the others send session_left for its sessions within 3 heartbeats + 1 s', async (t) => {
    const c = await startNode(t, 'node-c', nats.url);
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const carol = await open(c, desk, 'Carol');
    const carol2 = await open(c, desk, 'Carol2');
    await alice.client.expect('session_joined');
    await alice.client.expect('session_joined');
    // C's peers know it by its heartbeats (every shard of A: whichever owns the room).
    await knowsPeer(a, 'node-c');
    c.child.kill('SIGKILL');
    const started = Date.now();
    const budget = 3 * HEARTBEAT_MS + 1000;
    const left = [await alice.client.expect('session_left', budget), await alice.client.expect('session_left', budget)];
    assert.ok(Date.now() - started <= budget, `session_left after ${Date.now() - started} ms`);
    assert.deepEqual(left.map((f) => f.sessionId).sort(), [carol.joined.sessionId, carol2.joined.sessionId].sort());
    const late = await open(a, desk, 'Late');
    assert.deepEqual(ids(late.joined), [alice.joined.sessionId], 'no ghost of node C');
  });

  test('SIGTERM of a node: session_left at once, not after the heartbeat lapses', async (t) => {
    // Its heartbeat is 10 s: peers would wait 30 s before they forget it.
    const d = await startServer(t, {
      workers: 2,
      permissionApiBase: stubBase,
      args: ['--nats-url', nats.url, '--node-id', 'node-d', '--federation-heartbeat', '10s'],
    });
    await connectedShards(d, 2);
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const dan = await open(d, desk, 'Dan');
    assert.equal((await alice.client.expect('session_joined')).sessionId, dan.joined.sessionId);
    d.child.kill('SIGTERM');
    const left = await alice.client.expect('session_left', 5000);
    assert.equal(left.sessionId, dan.joined.sessionId);
    assert.equal((await d.exited).code, 0);
  });

  test('two processes with one node id: the later one stops with exit code 2, loudly', async (t) => {
    const dup = await startServer(t, {
      workers: 1,
      permissionApiBase: stubBase,
      args: ['--nats-url', nats.url, '--node-id', 'node-a', '--federation-heartbeat', `${HEARTBEAT_MS}ms`],
    });
    const { code } = await dup.exited;
    assert.equal(code, 2);
    assert.ok(dup.logs.some((l) => l.event === 'federation_duplicate_node_id' && l.level === 'error' && l.action === 'this process stops'));
    assert.ok(dup.logs.some((l) => l.event === 'fatal' && l.code === 'ERR_DUPLICATE_NODE_ID'));
    // The first node keeps running and serving.
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const bob = await open(b, desk, 'Bob');
    assert.deepEqual(ids(bob.joined), [alice.joined.sessionId]);
  });
});

describe('NATS outage', () => {
  test('killed and restarted: local relaying never stops, cross-node relaying and presence come back, no ghost or duplicate', async (t) => {
    const own = await startNats(t);
    const [x, y] = await Promise.all([startNode(t, 'node-x', own.url), startNode(t, 'node-y', own.url)]);
    const desk = desktop();
    const alice = await open(x, desk, 'Alice');
    const alice2 = await open(x, desk, 'Alice2');
    await alice.client.expect('session_joined');
    const bob = await open(y, desk, 'Bob');
    const bert = await open(y, desk, 'Bert');
    for (const c of [alice, alice2]) {
      assert.equal((await c.client.expect('session_joined')).sessionId, bob.joined.sessionId);
      assert.equal((await c.client.expect('session_joined')).sessionId, bert.joined.sessionId);
    }
    await bob.client.expect('session_joined');

    const xLogs = x.logs.length;
    const yLogs = y.logs.length;
    await own.kill();
    await connectedShards(x, 1, 'federation_disconnected', xLogs);
    // Local relaying goes on.
    alice.client.send({ type: 'asset_moved', payload: { during: 'outage' } });
    assert.deepEqual((await alice2.client.expect('asset_moved')).payload, { during: 'outage' });
    const health = await fetch(`http://127.0.0.1:${x.port}/health`);
    assert.equal(health.status, 200);
    // A revocation now would reach X's sessions only: refused, nothing applied.
    const revoke = await api(x, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(bob.userId)}`, { permission: 'none' });
    assert.equal(revoke.status, 503);
    assert.equal(revoke.body.code, 'federation_unavailable');
    assert.equal(revoke.headers.get('retry-after'), '1');
    // Meanwhile on Y: Bert leaves and Erin comes; X cannot hear it yet.
    await bert.client.close();
    const erin = await open(y, desk, 'Erin');

    await own.start();
    await connectedShards(x, 1, 'federation_reconnected', xLogs);
    await connectedShards(y, 1, 'federation_reconnected', yLogs);
    // After the resync, X's members hear exactly what changed: Erin came, Bert left (in some order), and nothing twice.
    const changes = [await alice.client.next(10_000), await alice.client.next(10_000)].map((f) => `${f.type}:${f.sessionId}`).sort();
    assert.deepEqual(changes, [`session_joined:${erin.joined.sessionId}`, `session_left:${bert.joined.sessionId}`].sort());
    alice.client.send({ type: 'asset_moved', payload: { after: 'outage' } });
    assert.deepEqual((await nextEvent(bob.client, 10_000)).payload, { after: 'outage' }, 'cross-node relaying is back');
    // Nothing else arrived for Alice: no duplicate presence.
    bob.client.send({ type: 'marker' });
    assert.equal((await alice.client.next()).type, 'marker');
    // A late joiner on each node sees exactly the live sessions.
    const live = [alice.joined.sessionId, alice2.joined.sessionId, bob.joined.sessionId, erin.joined.sessionId];
    const lateX = await open(x, desk, 'LateX');
    assert.deepEqual(ids(lateX.joined), [...live].sort());
    const lateY = await open(y, desk, 'LateY');
    assert.deepEqual(ids(lateY.joined), [...live, lateX.joined.sessionId].sort());
  });

  test('NATS unreachable at start: the node serves locally, /health is 200, and it federates once NATS is up', async (t) => {
    const later = await startNats(t);
    await later.kill();
    const z = await startNode(t, 'node-z', later.url, [], false);
    await z.waitForLog((l) => l.event === 'federation_unreachable');
    assert.equal((await fetch(`http://127.0.0.1:${z.port}/health`)).status, 200);
    const desk = desktop();
    const zoe = await open(z, desk, 'Zoe');
    const zed = await open(z, desk, 'Zed');
    await zoe.client.expect('session_joined');
    zed.client.send({ type: 'local_only' });
    assert.equal((await zoe.client.next()).type, 'local_only');
    await later.start();
    const w = await startNode(t, 'node-w', later.url);
    await connectedShards(z, 2);
    const wes = await open(w, desk, 'Wes');
    assert.deepEqual(ids(wes.joined), [zoe.joined.sessionId, zed.joined.sessionId].sort(), "Z's sessions were announced once it connected");
    assert.equal((await zoe.client.expect('session_joined')).sessionId, wes.joined.sessionId);
    assert.equal((await stats(z)).federation.nodeId, 'node-z');
    await knowsPeer(w, 'node-z');
  });
});

describe('the server API across nodes', () => {
  test('a call made on one node reaches the sessions of every node, once', async () => {
    const desk = desktop();
    const other = desktop();
    const alice = await open(a, desk, 'Alice');
    const bob = await open(b, desk, 'Bob');
    await alice.client.expect('session_joined');
    const carl = await open(b, other, 'Carl');

    // Publish on A: Alice (A) and Bob (B) get it; Carl (another desktop, on B) does not.
    const published = await api(a, 'POST', `desktops/${desk}/events`, { type: 'export_ready', payload: { n: 1 } });
    assert.equal(published.status, 202);
    assert.equal(published.body.delivered, 1, "delivered counts this node's sessions");
    for (const c of [alice, bob]) {
      const frame = await c.client.expect('export_ready');
      assert.deepEqual([frame.sessionId, frame.userId, frame.payload], ['server', 'server', { n: 1 }]);
    }
    // A broadcast from B reaches all three, once: a marker published after it must come next everywhere.
    assert.equal((await api(b, 'POST', 'broadcast', { type: 'maintenance' })).status, 202);
    for (const c of [alice, bob, carl]) assert.equal((await c.client.next()).type, 'maintenance');
    assert.equal((await api(a, 'POST', `desktops/${desk}/events`, { type: 'marker' })).status, 202);
    for (const c of [alice, bob]) assert.equal((await c.client.next()).type, 'marker', 'nothing twice');

    // A user event from A reaches Carl's session on B.
    assert.equal((await api(a, 'POST', `users/${encodeURIComponent(carl.userId)}/events`, { type: 'note' })).status, 202);
    assert.equal((await carl.client.next()).type, 'note');

    // Presence and a user's sessions, asked on A, list both nodes' sessions with their node ids.
    const presence = await api(a, 'GET', `desktops/${desk}/presence`);
    assert.equal(presence.status, 200);
    const listed = (presence.body.sessions as { sessionId: string; node: string }[]).map((s) => `${s.node}:${s.sessionId}`).sort();
    assert.deepEqual(listed, [`node-a:${alice.joined.sessionId}`, `node-b:${bob.joined.sessionId}`].sort());
    const sessions = await api(a, 'GET', `users/${encodeURIComponent(carl.userId)}/sessions`);
    assert.deepEqual(
      (sessions.body.sessions as { sessionId: string; node: string; desktopId: string }[]).map((s) => [s.node, s.sessionId, s.desktopId]),
      [['node-b', carl.joined.sessionId, other]],
    );

    // Bob (on B) made a viewer through A's API: he is told, the room sees the new role, and his next mutation is dropped.
    const changed = await api(a, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(bob.userId)}`, { permission: 'viewer' });
    assert.equal(changed.status, 202);
    assert.deepEqual(await bob.client.expect('permission_changed'), { type: 'permission_changed', permission: 'viewer' });
    const updated = await alice.client.expect('session_updated');
    assert.deepEqual([updated.sessionId, updated.permission, updated.payload.permission], [bob.joined.sessionId, 'viewer', 'viewer'], 'A hears the new role');
    const late = await open(a, desk, 'Late');
    assert.equal(late.joined.permission, 'editor', 'room_joined tells the joiner its own role');
    assert.equal(late.joined.sessions.find((s: { sessionId: string }) => s.sessionId === bob.joined.sessionId).permission, 'viewer', "A's table has Bob's new role");
    assert.equal((await alice.client.expect('session_joined')).sessionId, late.joined.sessionId);
    bob.client.send({ type: 'asset_moved', payload: { x: 1 } });
    bob.client.send({ type: 'cursor_moved', payload: { x: 2 } });
    assert.equal((await alice.client.next()).type, 'cursor_moved', "the viewer's mutation was dropped on B");

    // Alice (on A) logged out through B's API: 4001.
    assert.equal((await api(b, 'POST', `users/${encodeURIComponent(alice.userId)}/disconnect`)).status, 202);
    assert.equal((await alice.client.closed).code, 4001);
  });

  test("a role set through A's API replaces B's cached answer: a reconnect on B at once gets the new role (viewer, then none: 403)", async () => {
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const bob = user('Bob');
    const jwt = token(bob);
    const { client: first } = await join(cleanup, b.wsUrl(desk), { token: jwt });
    await alice.client.expect('session_joined');

    changedRoles.set(`${bob.userId} ${desk}`, 'viewer');
    assert.equal((await api(a, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(bob.userId)}`, { permission: 'viewer' })).status, 202);
    // B applied the call from the bus: its session is told, and with it B's cache.
    assert.deepEqual(await first.next(), { type: 'permission_changed', permission: 'viewer' });
    assert.equal((await alice.client.expect('session_updated')).permission, 'viewer');
    await first.close();
    await alice.client.expect('session_left');
    const { client: again, joined } = await join(cleanup, b.wsUrl(desk), { token: jwt });
    assert.equal(joined.permission, 'viewer', 'room_joined on B gives the new role');
    assert.equal((await alice.client.expect('session_joined')).payload.permission, 'viewer');
    again.send({ type: 'asset_moved', payload: { x: 1 } });
    again.send({ type: 'marker' });
    assert.deepEqual([(await alice.client.next()).type], ['marker'], "the viewer's mutation was dropped");

    changedRoles.set(`${bob.userId} ${desk}`, 'none');
    assert.equal((await api(a, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(bob.userId)}`, { permission: 'none' })).status, 202);
    assert.equal((await again.closed).code, 4003);
    const err = await connect(cleanup, b.wsUrl(desk), { token: jwt }).then(
      () => assert.fail('the handshake on B was accepted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof HandshakeRejected, String(err));
    assert.equal(err.status, 403);
  });

  test('API calls forged on the bus are dropped and counted', async () => {
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const before = sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total');
    const unsignedBefore = sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}');
    const event = (type: string, sender = 'server') => JSON.stringify({ type, sessionId: sender, userId: sender, timestamp: 1 });
    const forged = [
      { r: 'evil', q: { kind: 'publish', id: 'f1', desktopId: desk, type: 'x', event: event('room_joined') } },
      { r: 'evil', q: { kind: 'publish', id: 'f2', desktopId: desk, type: 'x', event: event('asset_moved', 'session_someone') } },
      { r: 'evil', q: { kind: 'publish', id: 'f3', desktopId: desk, type: 'x', event: 'not json' } },
      { r: 'evil', q: { kind: 'set_permission', id: 'f4', desktopId: desk, userId: alice.userId, permission: 'owner' } },
      { r: 'evil', q: { kind: 'publish', id: 'f5', desktopId: 'other-desk', type: 'x', event: event('hello') } },
    ];
    // Signed with the fleet's key (a buggy node): each is still checked field by field.
    for (const message of forged) publishSigned(`api.desktop.${desk}`, JSON.stringify(message));
    publishSigned(`api.desktop.${desk}`, '{broken');
    // Unsigned (anyone who can publish on NATS): a perfectly formed call is refused.
    const valid = (id: string, type: string) => JSON.stringify({ r: 'evil', q: { kind: 'publish', id, desktopId: desk, type, event: event(type) } });
    raw.publish(`api.desktop.${desk}`, valid('u-1', 'unsigned_call'));
    raw.publish(`api.desktop.${desk}`, JSON.stringify({ r: 'evil', q: { kind: 'set_permission', id: 'u-2', desktopId: desk, userId: alice.userId, permission: 'none' } }));
    publishSigned(`api.desktop.${desk}`, valid('ok-1', 'marker'));
    assert.equal((await alice.client.next()).type, 'marker', 'nothing forged reached Alice, and she is still connected');
    // Every shard of A hears desktop calls; each drops the forged ones (the owner and the others alike).
    // The marker proves the owner shard is done; the other shard may still be reading: wait for its count, then assert it exactly.
    const deadline = Date.now() + 5000;
    let after = (await scrape(a.port)).metrics;
    while (sumOf(after, 'moodio_rt_federation_dropped_total') - before < 2 * 8 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      after = (await scrape(a.port)).metrics;
    }
    assert.equal(sumOf(after, 'moodio_rt_federation_dropped_total') - before, 2 * 8);
    assert.equal(sumOf(after, 'moodio_rt_federation_dropped_total{reason="unsigned"}') - unsignedBefore, 2 * 2);
  });
});

test('metrics and /stats show the federation', async () => {
  const { metrics } = await scrape(a.port);
  assert.equal(sumOf(metrics, 'moodio_rt_federation_connected'), 2, 'both shards connected');
  assert.ok(sumOf(metrics, 'moodio_rt_federation_messages_total{direction="published"}') > 0);
  assert.ok(sumOf(metrics, 'moodio_rt_federation_messages_total{direction="received"}') > 0);
  const { federation } = (await stats(a)) as {
    federation: { nodeId: string; connectedShards: number; peers: { nodeId: string; lastHeartbeatMsAgo: number }[] };
  };
  assert.equal(federation.nodeId, 'node-a');
  assert.equal(federation.connectedShards, 2);
  const peerB = federation.peers.find((p) => p.nodeId === 'node-b');
  assert.ok(peerB !== undefined && peerB.lastHeartbeatMsAgo < 3 * HEARTBEAT_MS, JSON.stringify(federation));
  assert.ok(sumOf(metrics, 'moodio_rt_federation_peer_nodes') >= 2, 'each shard knows node-b');
});
