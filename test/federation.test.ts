/**
 * Several nodes, one desktop: real nats-server, real moodio-rt processes
 * (2 workers each) federated over it, real WebSocket clients, and a raw
 * NATS client (the official library, no moodio-rt code) to read and forge
 * the wire format. Absence is proven by a marker that must come next.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { connect as natsConnect, headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import type { TokenClaims } from '../src/auth/token.ts';
import { BusSigner, formatStamp, SIGNATURE_HEADER, STAMP_HEADER } from '../src/protocol/bus-signature.ts';
import { api, API_KEY } from './helpers/api.ts';
import { connect, HandshakeRejected, join, type Frame, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startNats, type NatsServer } from './helpers/nats.ts';
import { startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { TcpProxy } from './helpers/tcp-proxy.ts';
import { token, user } from './helpers/tokens.ts';

const HEARTBEAT_MS = 250;
/** The fleet's --federation-key: the test signs with it what the fleet would, and leaves unsigned what a stranger would send. */
const KEY = 'federation-test-key-0123456789-abcdefghij';
const signer = new BusSigner(KEY);

let stamps = 0;
/** Publish `data` on `subject` signed as a node of the fleet would: stamped now (or at `time`), with an id of its own (or `id`). */
function publishSigned(subject: string, data: string | Uint8Array, time = Date.now(), id = `test-${process.pid}-${stamps++}`): void {
  const h = natsHeaders();
  const stamp = formatStamp(time, id);
  h.set(STAMP_HEADER, stamp);
  h.set(SIGNATURE_HEADER, signer.sign(subject, data, stamp));
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
    args: [
      '--nats-url',
      natsUrl,
      '--node-id',
      nodeId,
      '--federation-heartbeat',
      `${HEARTBEAT_MS}ms`,
      '--rate-limit',
      '0',
      '--admin-token',
      ADMIN,
      '--api-key',
      API_KEY,
      '--api-broadcast-rate',
      '100',
      '--federation-key',
      KEY,
      ...extra,
    ],
  });
  if (waitConnected) await connectedShards(server, 2);
  return server;
}

async function connectedShards(server: ServerProcess, count: number, event = 'federation_connected', from = 0): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const shards = new Set(
      server.logs
        .slice(from)
        .filter((l) => l.event === event)
        .map((l) => l.worker),
    );
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

async function open(server: ServerProcess, desk: string, name: string | TokenClaims): Promise<{ client: TestClient; joined: Frame; userId: string }> {
  const claims = typeof name === 'string' ? user(name) : name;
  const { client, joined } = await join(cleanup, server.wsUrl(desk), { token: token(claims) });
  return { client, joined, userId: claims.userId };
}

/** `server`'s count of bus messages dropped for `reason`, all shards together. */
async function droppedFor(server: ServerProcess, reason: string): Promise<number> {
  return sumOf((await scrape(server.port)).metrics, `moodio_rt_federation_dropped_total{reason="${reason}"}`);
}

/** Until `server`'s count for `reason` reaches `count` (bounded), then that count. */
async function droppedReaches(server: ServerProcess, reason: string, count: number, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let n = await droppedFor(server, reason);
  while (n < count && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    n = await droppedFor(server, reason);
  }
  return n;
}

/** A relayed event as a node publishes it: `{"r": node, "p": stamped event}`. */
function relayed(node: string, type: string, session: { sessionId: string; userId: string; firstName?: string }, payload: unknown = {}): string {
  const { sessionId, userId, firstName = 'X' } = session;
  return JSON.stringify({ r: node, p: { type, sessionId, userId, firstName, email: 'x@example.com', timestamp: 1, payload } });
}

/** A presence event (`session_joined`, `session_left`, `session_updated`) as a node publishes it. */
function presence(node: string, type: string, info: { sessionId: string; userId: string; firstName: string; email: string; permission: string }): string {
  const extra = type === 'session_updated' ? { permission: info.permission } : {};
  return JSON.stringify({
    r: node,
    p: { type, sessionId: info.sessionId, userId: info.userId, firstName: info.firstName, email: info.email, ...extra, timestamp: 1, payload: info },
  });
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
    const seen: { subject: string; data: string; headers?: MsgHdrs; raw: Uint8Array }[] = [];
    const sub = raw.subscribe(`room.${desk}`, {
      callback: (_e, m) => void seen.push({ subject: m.subject, data: m.string(), headers: m.headers, raw: m.data }),
    });
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
    assert.deepEqual(joined.p, {
      ...joined.p,
      type: 'session_joined',
      sessionId: alice.joined.sessionId,
      userId: alice.userId,
      firstName: 'Alice',
      email: 'alice@example.com',
    });
    assert.deepEqual(joined.p.payload, {
      sessionId: alice.joined.sessionId,
      userId: alice.userId,
      firstName: 'Alice',
      email: 'alice@example.com',
      permission: 'editor',
    });
    assert.equal(typeof joined.p.timestamp, 'number');
    assert.equal(moved.r, 'node-a');
    assert.deepEqual(Object.keys(moved.p), ['type', 'sessionId', 'userId', 'firstName', 'email', 'timestamp', 'payload']);
    assert.ok(seen[2]!.data.includes('"payload":{"x":1.5e3,"y":"y"}'), 'the payload travels as the client sent it');

    // Each is stamped and signed in NATS headers, which the Go relay ignores: the stamp (time.id) is inside what is signed.
    for (const m of seen.slice(0, 3)) {
      const stamp = m.headers!.get(STAMP_HEADER);
      assert.match(stamp, /^\d+\.[A-Za-z0-9_-]+$/);
      assert.ok(Math.abs(Number(stamp.split('.')[0]) - Date.now()) < 10_000);
      const roster = m.headers!.has('Moodio-Sessions') ? m.headers!.get('Moodio-Sessions') : '';
      assert.ok(signer.verify(m.subject, m.raw, m.headers!.get(SIGNATURE_HEADER), stamp, roster), 'signed with the fleet key');
    }
    assert.equal(new Set(seen.slice(0, 3).map((m) => m.headers!.get(STAMP_HEADER).split('.')[1])).size, 3, 'each with an id of its own');
    sub.unsubscribe();
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
      ['unsigned', JSON.stringify({ r: 'node-b', p: { type: 'asset_moved', ...stamp, payload: {} } })],
      ['unsigned', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, payload: {} } })],
      ['too_large', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, payload: 'x'.repeat(900_000) } })],
      ['malformed', new Uint8Array([0xff, 0xfe, 0x00, 0x7b])],
    ];
    for (const [, data] of hostile) raw.publish(subject, data);
    // Signed with the fleet's key (a compromised node): still no local session's id, and no stamp out of the window or taken before.
    const signedHostile: [string, string, number?, string?][] = [
      [
        'forged',
        JSON.stringify({
          r: 'evil',
          p: {
            type: 'session_left',
            ...stamp,
            sessionId: alice.joined.sessionId,
            payload: { ...info, sessionId: alice.joined.sessionId, userId: 'user-x-0001' },
          },
        }),
      ],
      ['forged', JSON.stringify({ r: 'evil', p: { type: 'asset_removed', ...stamp, sessionId: alice.joined.sessionId, payload: {} } })],
      ['stale', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, payload: {} } }), Date.now() - 60_000],
      ['stale', JSON.stringify({ r: 'evil', p: { type: 'asset_moved', ...stamp, payload: {} } }), Date.now() + 60_000],
    ];
    for (const [, data, time] of signedHostile) publishSigned(subject, data, time);
    const once = JSON.stringify({ r: 'evil', p: { type: 'once', ...stamp, payload: {} } });
    const onceAt = Date.now();
    publishSigned(subject, once, onceAt, `once-${process.pid}`);
    assert.equal((await alice.client.next()).type, 'once');
    publishSigned(subject, once, onceAt, `once-${process.pid}`);
    hostile.push(...signedHostile.map(([reason, data]): [string, string] => [reason, data]), ['replayed', once]);
    // A valid event from a peer, published last: if anything hostile had reached Alice, it would come before it.
    publishSigned(subject, JSON.stringify({ r: 'peer-z', p: { type: 'marker', ...stamp, payload: { ok: true } } }));
    const next = await alice.client.next();
    assert.equal(next.type, 'marker', `nothing hostile was delivered, got ${JSON.stringify(next)}`);
    assert.deepEqual(next.payload, { ok: true });
    const afterScrape = await scrape(a.port);
    const expected = new Map<string, number>();
    for (const [reason] of hostile) expected.set(reason, (expected.get(reason) ?? 0) + 1);
    for (const [reason, count] of expected) {
      assert.equal(dropped(afterScrape.metrics, reason) - dropped(before.metrics, reason), count, `dropped{reason="${reason}"}`);
    }
    assert.ok(
      a.logs.some((l) => l.event === 'federation_message_dropped'),
      'drops are logged',
    );

    // A stranger's heartbeats (unsigned) count for nothing, even in node-a's own name with an older start.
    const unsignedBefore = sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}');
    for (let i = 0; i < 50; i++)
      raw.publish('moodio-rt.heartbeat', JSON.stringify({ r: i === 0 ? 'node-a' : `stranger-${i}`, i: 'x', t: 0, s: 0, w: 1, k: 'k', h: 10, g: '', q: 1 }));
    await raw.flush();
    const unsignedDropped = async () => sumOf((await scrape(a.port)).metrics, 'moodio_rt_federation_dropped_total{reason="unsigned"}') - unsignedBefore;
    while ((await unsignedDropped()) < 2 * 50) await new Promise((r) => setTimeout(r, 20));

    // 1,100 peers signed with the fleet's key (a compromised node): each shard keeps at most 1,024, drops the rest, and logs at most 20 peer lines a second.
    const peerLines = a.logs.filter((l) => l.event === 'federation_peer_up').length;
    const forgedAt = Date.now();
    for (let i = 0; i < 1100; i++) {
      publishSigned('moodio-rt.heartbeat', JSON.stringify({ r: `forged-${i}`, i: 'x', t: 1, s: 0, w: 1, k: 'k', h: 10, g: '', q: 1 }));
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

  test('SIGTERM of a node: session_left as its session closes, not after the heartbeat lapses', async (t) => {
    // Its heartbeat is 10 s: peers would wait 30 s before they forget it.
    const d = await startServer(t, {
      workers: 2,
      permissionApiBase: stubBase,
      args: ['--nats-url', nats.url, '--node-id', 'node-d', '--federation-heartbeat', '10s', '--federation-key', KEY],
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
    assert.equal(
      late.joined.sessions.find((s: { sessionId: string }) => s.sessionId === bob.joined.sessionId).permission,
      'viewer',
      "A's table has Bob's new role",
    );
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
    raw.publish(
      `api.desktop.${desk}`,
      JSON.stringify({ r: 'evil', q: { kind: 'set_permission', id: 'u-2', desktopId: desk, userId: alice.userId, permission: 'none' } }),
    );
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

describe('trust: unsigned room traffic and replays, from a raw NATS client without the key', () => {
  test('unsigned room events are dropped by default, under a new node id too, and nothing of them reaches a member or presence', async () => {
    const desk = desktop();
    const subject = `room.${desk}`;
    const alice = await open(a, desk, 'Alice');
    const bob = await open(b, desk, 'Bob');
    await alice.client.expect('session_joined');
    const unsignedBefore = await droppedFor(a, 'unsigned');
    // Bob's live session id under a node id nobody knows: a removal "from Bob", and a made-up session.
    raw.publish(subject, relayed('rogue-1', 'asset_removed', { sessionId: bob.joined.sessionId, userId: bob.userId, firstName: 'Bob' }, { id: 'a1' }));
    const fake = { sessionId: 'session_fake-1', userId: 'user-fake-0001', firstName: 'Mallory', email: 'm@example.com', permission: 'editor' };
    raw.publish(subject, presence('rogue-1', 'session_joined', fake));
    // A Go relay's sync request, unsigned too: A would answer it with its sessions.
    raw.publish(subject, JSON.stringify({ r: 'rogue-1', p: { type: 'presence_sync_request' } }));
    publishSigned(subject, relayed('node-t', 'marker', { sessionId: 'session_t', userId: 'user-t-0001' }));
    const next = await alice.client.next();
    assert.equal(next.type, 'marker', `nothing unsigned reached Alice, got ${JSON.stringify(next)}`);
    // Only the shard that owns the room hears it.
    assert.equal((await droppedFor(a, 'unsigned')) - unsignedBefore, 3);
    const late = await open(a, desk, 'Late');
    assert.deepEqual(ids(late.joined), [alice.joined.sessionId, bob.joined.sessionId].sort(), 'no made-up session in presence');
  });

  test('with --federation-unsigned-rooms admit, a Go relay is taken unsigned, but a signed peer and its sessions speak only signed', async (t) => {
    const admit = ['--federation-unsigned-rooms', 'admit'];
    const [p, q] = await Promise.all([startNode(t, 'node-p', nats.url, admit), startNode(t, 'node-q', nats.url, admit)]);
    const desk = desktop();
    const subject = `room.${desk}`;
    const carol = await open(p, desk, 'Carol');
    const dan = await open(q, desk, 'Dan');
    assert.equal((await carol.client.expect('session_joined')).sessionId, dan.joined.sessionId);
    const danInfo = { sessionId: dan.joined.sessionId, userId: dan.userId, firstName: 'Dan', email: 'dan@example.com', permission: 'editor' };
    // A Go relay (it never signs) asks who is there, with no reply subject: each node answers with a session_joined per local session.
    const answers: { r: string; p: { type: string; sessionId: string } }[] = [];
    const sub = raw.subscribe(subject, { callback: (_e, m) => void answers.push(JSON.parse(m.string())) });
    t.after(() => sub.unsubscribe());
    await raw.flush();
    raw.publish(subject, JSON.stringify({ r: 'go-relay-2', p: { type: 'presence_sync_request' } }));
    const deadline = Date.now() + 5000;
    while (answers.filter((m) => m.p.type === 'session_joined').length < 2 && Date.now() < deadline) await raw.flush();
    assert.deepEqual(
      answers
        .filter((m) => m.p.type === 'session_joined')
        .map((m) => `${m.r}:${m.p.sessionId}`)
        .sort(),
      [`node-p:${carol.joined.sessionId}`, `node-q:${dan.joined.sessionId}`].sort(),
    );
    // Its session and its events reach Carol; its node never heartbeats, so the session stays until it leaves.
    const goSession = { sessionId: 'session_go-2', userId: 'user-go-0002', firstName: 'Gopher', email: 'go@example.com', permission: 'editor' };
    raw.publish(subject, presence('go-relay-2', 'session_joined', goSession));
    assert.equal((await carol.client.expect('session_joined')).sessionId, goSession.sessionId);
    raw.publish(subject, relayed('go-relay-2', 'asset_moved', goSession, { x: 1 }));
    assert.deepEqual((await carol.client.expect('asset_moved')).payload, { x: 1 });
    const unsignedBefore = await droppedFor(p, 'unsigned');
    // Unsigned, in the name of Dan's session (node-q signs): an event, a leave, a role change, a second join; and anything in node-q's own name.
    raw.publish(subject, relayed('rogue-2', 'asset_removed', danInfo, { id: 'a1' }));
    raw.publish(subject, presence('rogue-2', 'session_left', danInfo));
    raw.publish(subject, presence('rogue-2', 'session_updated', { ...danInfo, permission: 'viewer' }));
    raw.publish(subject, presence('rogue-2', 'session_joined', danInfo));
    raw.publish(subject, relayed('node-q', 'asset_removed', danInfo, { id: 'a2' }));
    raw.publish(subject, relayed('go-relay-2', 'marker', goSession));
    const next = await carol.client.next();
    assert.equal(next.type, 'marker', `nothing in Dan's name reached Carol, got ${JSON.stringify(next)}`);
    assert.equal((await droppedFor(p, 'unsigned')) - unsignedBefore, 5);
    const late = await open(p, desk, 'Late');
    assert.deepEqual(ids(late.joined), [carol.joined.sessionId, dan.joined.sessionId, goSession.sessionId].sort());
    assert.equal(late.joined.sessions.find((s: { sessionId: string }) => s.sessionId === dan.joined.sessionId).permission, 'editor');
    // Dan still speaks, signed; the Go session leaves when its relay says so.
    dan.client.send({ type: 'from_dan' });
    assert.equal((await nextEvent(carol.client)).type, 'from_dan');
    raw.publish(subject, presence('go-relay-2', 'session_left', goSession));
    assert.equal((await carol.client.expect('session_left')).sessionId, goSession.sessionId);
  });

  test('a captured API call replayed on the bus closes nobody: not at once, and not after the node restarts', async (t) => {
    const window = 2000;
    const x = await startNode(t, 'node-x3', nats.url);
    let y = await startNode(t, 'node-y3', nats.url, ['--federation-replay-window', `${window}ms`]);
    const desk = desktop();
    const captured: { subject: string; data: Uint8Array; headers?: MsgHdrs; at: number }[] = [];
    const sub = raw.subscribe('api.>', { callback: (_e, m) => void captured.push({ subject: m.subject, data: m.data, headers: m.headers, at: Date.now() }) });
    t.after(() => sub.unsubscribe());
    await raw.flush();
    const captureOf = async (subject: string) => {
      const deadline = Date.now() + 5000;
      for (;;) {
        const found = captured.find((c) => c.subject === subject);
        if (found !== undefined) return found;
        if (Date.now() > deadline) throw new Error(`nothing captured on ${subject}`);
        await raw.flush();
      }
    };
    const ursula = user('Ursula');
    let session = await open(y, desk, ursula);
    // Logged out through X (4001), then revoked through X (4003): each reaches Y over the bus, signed.
    assert.equal((await api(x, 'POST', `users/${encodeURIComponent(ursula.userId)}/disconnect`)).status, 202);
    assert.equal((await session.client.closed).code, 4001);
    const disconnect = await captureOf('api.users');
    session = await open(y, desk, ursula);
    assert.equal((await api(x, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(ursula.userId)}`, { permission: 'none' })).status, 202);
    assert.equal((await session.client.closed).code, 4003);
    const revoke = await captureOf(`api.desktop.${desk}`);
    const replayBoth = () => {
      for (const c of [disconnect, revoke]) raw.publish(c.subject, c.data, c.headers === undefined ? undefined : { headers: c.headers });
    };
    const marker = (type: string) =>
      publishSigned(
        `api.desktop.${desk}`,
        JSON.stringify({
          r: 'node-t',
          q: { kind: 'publish', id: `m-${type}`, desktopId: desk, type, event: JSON.stringify({ type, sessionId: 'server', userId: 'server', timestamp: 1 }) },
        }),
      );

    // The revocation is now the permission cache's newest word (a reconnect gets 403 for a while): the app gives the role back.
    assert.equal((await api(x, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(ursula.userId)}`, { permission: 'editor' })).status, 202);
    // At once, to the same process: it remembers their ids.
    session = await open(y, desk, ursula);
    const replayedBefore = await droppedFor(y, 'replayed');
    replayBoth();
    marker('marker_1');
    assert.equal((await session.client.next()).type, 'marker_1', 'the replays closed nothing');
    // Every shard hears both calls and drops both.
    assert.equal((await droppedReaches(y, 'replayed', replayedBefore + 4)) - replayedBefore, 4);

    // After Y restarts, its memory is new: the replays are older than the window.
    y.child.kill('SIGKILL');
    await y.exited;
    y = await startNode(t, 'node-y3', nats.url, ['--federation-replay-window', `${window}ms`]);
    session = await open(y, desk, ursula);
    const outside = Math.max(disconnect.at, revoke.at) + window + 100;
    while (Date.now() < outside) await new Promise((r) => setTimeout(r, outside - Date.now()));
    replayBoth();
    marker('marker_2');
    assert.equal((await session.client.next()).type, 'marker_2', 'the replays closed nothing after the restart');
    assert.equal(await droppedReaches(y, 'stale', 4), 4);
  });

  test("replaying a killed node's heartbeats does not keep its sessions: they leave within 3 heartbeats + 1 s", async (t) => {
    const c = await startNode(t, 'node-c4', nats.url);
    const beats: Msg[] = [];
    let capturing = true;
    const sub = raw.subscribe('moodio-rt.heartbeat', {
      callback: (_e, m) => {
        // Until the kill: the replays come back to this subscription too.
        if (capturing && (JSON.parse(m.string()) as { r: string }).r === 'node-c4') beats.push(m);
      },
    });
    t.after(() => sub.unsubscribe());
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const carol = await open(c, desk, 'Carol');
    assert.equal((await alice.client.expect('session_joined')).sessionId, carol.joined.sessionId);
    await knowsPeer(a, 'node-c4');
    // A few beats of each shard captured.
    while (beats.length < 6) await new Promise((r) => setTimeout(r, 20));
    capturing = false;
    c.child.kill('SIGKILL');
    const started = Date.now();
    const replay = setInterval(() => {
      for (const m of beats) raw.publish(m.subject, m.data, m.headers === undefined ? undefined : { headers: m.headers });
    }, 50);
    t.after(() => clearInterval(replay));
    const budget = 3 * HEARTBEAT_MS + 1000;
    const left = await alice.client.expect('session_left', budget);
    clearInterval(replay);
    assert.equal(left.sessionId, carol.joined.sessionId);
    assert.ok(Date.now() - started <= budget, `session_left after ${Date.now() - started} ms`);
    assert.ok((await droppedFor(a, 'replayed')) > 0, 'the replays were counted');
  });
});

describe('lifecycle: shutdown, reconnect and restart', () => {
  test('a sync request that reaches a node during its shutdown drain is refused: no session is announced again after its session_left', async (t) => {
    const proxy = await TcpProxy.start(t, nats.port);
    const d = await startNode(t, 'node-d5', proxy.url, ['--drain-timeout', '3s']);
    const desk = desktop();
    const dan = await open(d, desk, 'Dan');
    const alice = await open(a, desk, 'Alice');
    assert.equal((await dan.client.expect('session_joined')).sessionId, alice.joined.sessionId);
    // Dan reads nothing more: his session stays in its room through the drain, as a slow tab's would.
    (dan.client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    // The bus holds what D sends from now on: its drain cannot finish until released.
    const up = proxy.mark('up');
    const down = proxy.mark('down');
    proxy.hold('up');
    d.child.kill('SIGTERM');
    // Dan never answers his close frame: his session is cut at the drain's deadline (3 s), and its session_left is the last thing D sends
    // before it closes its bus link; from then on it is closing, and its subscriptions stay on the server until released.
    await proxy.waitFor('up', 'session_left', up);
    // A fleet node asks who is in the room, while D drains.
    const request = JSON.stringify({ r: 'node-t', p: { type: 'presence_sync_request' } });
    publishSigned(`room.${desk}`, request);
    await proxy.waitFor('down', 'presence_sync_request', down);
    proxy.release('up');
    await d.exited;
    await proxy.idle();
    const sent = proxy.text('up', up);
    assert.equal(
      sent.includes('session_joined'),
      false,
      `D announced Dan again after his session_left: ${JSON.stringify(sent.slice(sent.indexOf('session_joined') - 200, sent.indexOf('session_joined') + 50))}`,
    );
    assert.equal((await alice.client.expect('session_left')).sessionId, dan.joined.sessionId);
  });

  test("a room's first sync keeps a session that joined on the answering node after its answer, though that answer is read after the session's session_joined", async (t) => {
    const proxy = await TcpProxy.start(t, nats.port);
    const p = await startNode(t, 'node-p9', proxy.url);
    const desk = desktop();
    const bob = await open(b, desk, 'Bob');
    // From here P reads nothing from the bus until released: B's answer to P's first sync, then Zoe's session_joined, reach P in one read.
    const down = proxy.mark('down');
    proxy.hold('down');
    const pia = open(p, desk, 'Pia');
    // B answered P's request with its list of the room: Bob alone.
    await proxy.waitFor('down', `"s":["${bob.joined.sessionId}"]`, down);
    const zoe = await open(b, desk, 'Zoe');
    await proxy.waitFor('down', `"sessionId":"${zoe.joined.sessionId}"`, down);
    proxy.release('down');
    // The list was true when B sent it; Zoe joined after, and stays known.
    assert.deepEqual(ids((await pia).joined), [bob.joined.sessionId, zoe.joined.sessionId].sort());
  });

  test("a room whose first sync spans a reconnect is synced again: it learns the other node's sessions", async (t) => {
    const proxy = await TcpProxy.start(t, nats.port);
    const n = await startNode(t, 'node-n6', proxy.url);
    const connectedAt = Date.now();
    const desk = desktop();
    const pat = await open(a, desk, 'Pat');
    // A resync of every room runs at most once per 5 s: the one N ran on connecting must be that far behind.
    const resyncGap = connectedAt + 5000 + 100;
    while (Date.now() < resyncGap) await new Promise((r) => setTimeout(r, resyncGap - Date.now()));
    // The moment N asks who is in the room, its connections drop (the request and its answers are lost); it reconnects at once.
    proxy.when('up', 'presence_sync_request', () => proxy.cut());
    const nina = await open(n, desk, 'Nina');
    assert.deepEqual(ids(nina.joined), [], 'the first sync heard nobody');
    const joined = await nina.client.expect('session_joined', 5000);
    assert.equal(joined.sessionId, pat.joined.sessionId);
    assert.equal((await pat.client.expect('session_joined')).sessionId, nina.joined.sessionId);
  });

  test('a node restarted under the same id before its peers expired it keeps the sessions of its new process', async (t) => {
    // A 2 s heartbeat: peers wait 6 s before they declare the old process gone, and the new one is up well before.
    const args = ['--federation-heartbeat', '2s'];
    let e = await startNode(t, 'node-e7', nats.url, args);
    const desk = desktop();
    const alice = await open(a, desk, 'Alice');
    const eve = await open(e, desk, 'Eve');
    assert.equal((await alice.client.expect('session_joined')).sessionId, eve.joined.sessionId);
    await knowsPeer(a, 'node-e7');
    e.child.kill('SIGKILL');
    const killedAt = Date.now();
    e = await startNode(t, 'node-e7', nats.url, args);
    const erin = await open(e, desk, 'Erin');
    assert.ok(Date.now() - killedAt < 6000, 'the new process was up before the old one expired');
    assert.deepEqual(ids(erin.joined), [alice.joined.sessionId]);
    // The new process's first sync listed its sessions of the room (none yet): Eve, the old process's, is gone at once.
    assert.equal((await alice.client.expect('session_left')).sessionId, eve.joined.sessionId);
    assert.equal((await alice.client.expect('session_joined')).sessionId, erin.joined.sessionId);
    // Then the old process falls silent for 3 of its intervals, on every shard of A.
    const silent = new Set<unknown>();
    const deadline = killedAt + 15_000;
    while (silent.size < 2) {
      const line = await a.waitForLog(
        (l) => l.event === 'federation_peer_down' && l.peer === 'node-e7' && !silent.has(l.worker),
        Math.max(1, deadline - Date.now()),
      );
      silent.add(line.worker);
    }
    erin.client.send({ type: 'marker' });
    const next = await alice.client.next();
    assert.equal(next.type, 'marker', `Erin stayed, got ${JSON.stringify(next)}`);
    const late = await open(a, desk, 'Late');
    assert.deepEqual(ids(late.joined), [alice.joined.sessionId, erin.joined.sessionId].sort());
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
