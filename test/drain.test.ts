/**
 * A drain that hands clients over (issue 21): on SIGTERM a node stops
 * accepting, closes every session with 1012 "service restart" spread evenly
 * over --drain-spread in a random order, keeps its bus link up until its
 * sessions are gone (each session_left reaches the other nodes as its
 * session closes, and their events still reach the sessions waiting for
 * their turn), then exits. Real servers, real clients, a real nats-server.
 * Spreads are asserted structurally: the span of the closes, and how many
 * fall in each slice of the window.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { shardFor } from '../src/primary/router.ts';
import { CloseCode, SERVICE_RESTART_REASON } from '../src/protocol/events.ts';
import { connect, join, type Frame, type TestClient } from './helpers/client.ts';
import { startNats } from './helpers/nats.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import type { TokenClaims } from '../src/auth/token.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, subscribe } from './helpers/topics.ts';

const SPREAD_MS = 2000;
const SLICES = 10;
/** Closes one slice of the window may hold: three times an even share (a busy machine delays a timer, and what was due goes together). */
const sliceBound = (count: number): number => Math.ceil((3 * count) / SLICES);

/** Desktops routed to each of two shards. */
function desktopsOn(perShard: number): string[] {
  const ids: string[] = [];
  for (const shard of [0, 1]) {
    for (let found = 0; found < perShard; ) {
      const id = desktop();
      if (shardFor(id, 2) === shard) {
        ids.push(id);
        found++;
      }
    }
  }
  return ids;
}

/** How many of `times` fall in each slice of [first, first + SPREAD_MS]; later ones count in the last. */
function perSlice(times: number[]): number[] {
  const first = Math.min(...times);
  const counts = new Array<number>(SLICES).fill(0);
  for (const at of times) counts[Math.min(SLICES - 1, Math.floor(((at - first) * SLICES) / SPREAD_MS))]!++;
  return counts;
}

function assertSpread(times: number[], what: string): void {
  const span = Math.max(...times) - Math.min(...times);
  assert.ok(span >= SPREAD_MS / 2, `${what} span ${Math.round(span)} ms, at least half of the ${SPREAD_MS} ms window`);
  const counts = perSlice(times);
  assert.ok(
    counts.every((n) => n <= sliceBound(times.length)),
    `${what} per slice of ${SPREAD_MS / SLICES} ms: ${counts.join(' ')}, none over ${sliceBound(times.length)}`,
  );
}

interface Member {
  client: TestClient;
  room: string;
  claims: TokenClaims;
  /** A connection of the multiplexed route, subscribed to the room's topic. */
  mux: boolean;
  closedAt: Promise<number>;
}

/** `claims` opens a legacy tab in `room`, or a multiplexed connection subscribed to `desktop:{room}`. */
async function member(t: Scope, server: ServerProcess, room: string, claims: TokenClaims, mux: boolean): Promise<Member> {
  let client: TestClient;
  if (mux) {
    client = await connectTopics(t, server, token(claims));
    await subscribe(client, `desktop:${room}`);
  } else client = (await join(t, server.wsUrl(room), { token: token(claims) })).client;
  return { client, room, claims, mux, closedAt: client.closed.then(() => performance.now()) };
}

/** Every frame `client` receives from now on, parsed, with when it arrived (apart from its ordered inbox). */
function heard(client: TestClient): { frame: Frame; at: number }[] {
  const frames: { frame: Frame; at: number }[] = [];
  client.ws.on('message', (data) => frames.push({ frame: JSON.parse(data.toString()) as Frame, at: performance.now() }));
  return frames;
}

test('SIGTERM: every session, legacy or multiplexed, on both shards gets 1012 "service restart", spread over --drain-spread in no room at once; new connections are refused; the process exits after the last', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--drain-spread', `${SPREAD_MS}ms`] });
  // Four desktops on each shard, four tabs in each, and in each desktop one multiplexed connection subscribed to it.
  const rooms = desktopsOn(4);
  const members: Member[] = [];
  for (const room of rooms) {
    for (let i = 0; i < 4; i++) members.push(await member(t, server, room, user('Tab'), false));
    members.push(await member(t, server, room, user('Mux'), true));
  }
  assert.deepEqual(
    [0, 1].map((shard) => members.filter((m) => m.client.shard === shard && !m.mux).length),
    [16, 16],
    'the legacy tabs are on both shards',
  );

  const signalled = performance.now();
  server.child.kill('SIGTERM');
  // Once the drain began, a new connection finds no listener: nginx (or the SDK given every node) goes to another node at once.
  await Promise.race(members.map((m) => m.closedAt));
  const refused = await connect(t, server.wsUrl(rooms[0]!), { token: token(user('Late')) }).then(
    () => 'accepted',
    (err: NodeJS.ErrnoException) => err.code,
  );
  assert.equal(refused, 'ECONNREFUSED');

  for (const m of members) assert.deepEqual(await m.client.closed, { code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON }, m.claims.userId);
  const times = await Promise.all(members.map((m) => m.closedAt));
  t.diagnostic(
    `closes from ${Math.round(Math.min(...times) - signalled)} to ${Math.round(Math.max(...times) - signalled)} ms after SIGTERM; per slice: ${perSlice(times).join(' ')}`,
  );
  assertSpread(times, 'the closes');
  // The multiplexed connections are spread too, not closed together before or after the tabs.
  const muxTimes = await Promise.all(members.filter((m) => m.mux).map((m) => m.closedAt));
  assert.ok(
    Math.max(...muxTimes) - Math.min(...muxTimes) >= SPREAD_MS / 4,
    `the multiplexed connections closed within ${Math.round(Math.max(...muxTimes) - Math.min(...muxTimes))} ms`,
  );
  // No room lost all its members in one instant: each shard spaces its closes about 2000/20 = 100 ms apart.
  for (const room of rooms) {
    const at = await Promise.all(members.filter((m) => m.room === room).map((m) => m.closedAt));
    assert.ok(
      Math.max(...at) - Math.min(...at) >= SPREAD_MS / members.length,
      `room ${room}: its five members closed within ${Math.round(Math.max(...at) - Math.min(...at))} ms`,
    );
  }

  const lastClose = Math.max(...times);
  assert.deepEqual(await server.exited, { code: 0, signal: null });
  assert.ok(performance.now() >= lastClose);
  const started = server.logs.filter((l) => l.event === 'drain_started');
  assert.deepEqual(
    started.map((l) => l.spreadMs),
    [SPREAD_MS, SPREAD_MS],
    'both shards spread over the window',
  );
  const drained = server.logs.filter((l) => l.event === 'shard_drained');
  assert.equal(
    drained.reduce((sum, l) => sum + (l.closed as number), 0),
    members.length,
  );
  assert.deepEqual(
    server.logs.filter((l) => l.event === 'shard_exit').map((l) => l.code),
    [0, 0],
  );
  assert.ok(server.logs.some((l) => l.event === 'stopped'));
});

test('a second SIGTERM during the spread ends the process at once, with exit code 1', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--drain-spread', '60s'] });
  const room = desktop();
  const clients: TestClient[] = [];
  for (let i = 0; i < 6; i++) clients.push((await join(t, server.wsUrl(room), { token: token(user(`Tab${i}`)) })).client);
  server.child.kill('SIGTERM');
  // The first close goes at once; the next one is 10 s away.
  await Promise.race(clients.map((c) => c.closed));
  server.child.kill('SIGTERM');
  assert.deepEqual(await server.exited, { code: 1, signal: null });
  const codes = (await Promise.all(clients.map((c) => c.closed))).map((c) => c.code).sort();
  assert.deepEqual(codes, [1006, 1006, 1006, 1006, 1006, CloseCode.SERVICE_RESTART], 'one was told, the others were cut with the process');
  assert.ok(server.logs.some((l) => l.event === 'forced_exit'));
});

/** Until every shard of `server` logged `federation_connected`. */
async function federated(server: ServerProcess): Promise<void> {
  await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === 0, 15_000);
  await server.waitForLog((l) => l.event === 'federation_connected' && l.worker === 1, 15_000);
}

async function until(what: string, holds: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!holds()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("a fleet: peers hear each session_left as its session closes, the node's bus link relays until its last session left, and a client that reconnects to the other node joins normally", async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const node = (id: string, extra: string[] = []) =>
    startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--nats-url', nats.url, '--node-id', id, '--rate-limit', '0', ...extra] });
  const a = await node(`drain-a-${process.pid}`, ['--drain-spread', `${SPREAD_MS}ms`]);
  const b = await node(`drain-b-${process.pid}`);
  await Promise.all([federated(a), federated(b)]);

  // Two desktops on each shard of A. In each: an observer on B, then four tabs and a multiplexed connection on A.
  const rooms = desktopsOn(2);
  const observers = new Map<string, { client: TestClient; userId: string; frames: { frame: Frame; at: number }[] }>();
  const onA: Member[] = [];
  for (const room of rooms) {
    const claims = user('Obs');
    const { client } = await join(t, b.wsUrl(room), { token: token(claims) });
    observers.set(room, { client, userId: claims.userId, frames: heard(client) });
    for (let i = 0; i < 4; i++) onA.push(await member(t, a, room, user('Tab'), false));
    onA.push(await member(t, a, room, user('Mux'), true));
  }
  const onB = (room: string, type: string) => observers.get(room)!.frames.filter((h) => h.frame.type === type);
  const heardAll = (type: string) => () => onA.every((m) => onB(m.room, type).some((h) => h.frame.userId === m.claims.userId));
  await until('every observer on B saw the sessions of A in its room join', heardAll('session_joined'));
  // From here on, what each client of A hears until its close.
  const before = new Map(onA.map((m) => [m, heard(m.client)]));

  // Each client of A, told to go, reconnects to B as the SDK given both nodes would (as a tab of the legacy route).
  const reconnected = onA.map((m) => m.client.closed.then(() => join(t, b.wsUrl(m.room), { token: token(m.claims) })));

  a.child.kill('SIGTERM');
  await until('a first session_left on B', () => rooms.some((room) => onB(room, 'session_left').length > 0));
  // Partway through the drain an observer on B speaks: the clients of A still waiting for their turn hear it over A's bus link.
  for (const room of rooms) observers.get(room)!.client.send({ type: 'asset_moved', payload: { mark: room } });

  for (const m of onA) assert.deepEqual(await m.client.closed, { code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON }, m.claims.userId);
  await until('a session_left on B for every session of A', heardAll('session_left'));
  const left = rooms.flatMap((room) => onB(room, 'session_left').filter((h) => onA.some((m) => m.claims.userId === h.frame.userId)));
  assert.equal(left.length, onA.length, 'one session_left per session of A, none twice');
  t.diagnostic(`session_left on B per slice: ${perSlice(left.map((h) => h.at)).join(' ')}`);
  // One by one, as each session closed; not all at once when the drain began.
  assertSpread(
    left.map((h) => h.at),
    "B's session_left",
  );
  const marked = onA.filter((m) => before.get(m)!.some((h) => h.frame.type === 'asset_moved'));
  assert.ok(marked.length > 0, `a client of A still waiting for its turn heard B's event sent during the drain (${marked.length} of ${onA.length})`);

  // The clients that moved joined their rooms on B normally: the observer is there.
  for (const [i, moved] of (await Promise.all(reconnected)).entries()) {
    const observer = observers.get(onA[i]!.room)!;
    assert.ok(
      (moved.joined.sessions as { userId: string }[]).some((s) => s.userId === observer.userId),
      `${onA[i]!.claims.userId} finds the observer in room_joined`,
    );
  }
  assert.deepEqual(await a.exited, { code: 0, signal: null });
  // A late joiner on B sees exactly the observer and the clients that moved there: no ghost of A.
  for (const room of rooms) {
    const { joined } = await join(t, b.wsUrl(room), { token: token(user('Late')) });
    const present = (joined.sessions as { userId: string }[]).map((s) => s.userId).sort();
    const expected = [observers.get(room)!.userId, ...onA.filter((m) => m.room === room).map((m) => m.claims.userId)].sort();
    assert.deepEqual(present, expected);
  }
});

/**
 * Run `then` the moment the server's close frame reaches `client`'s socket,
 * before `ws` reads it and answers with its own close frame: what `then`
 * sends goes out after the server's close and before the client's, as a
 * client's event does when it was written while the close was on its way.
 * Reads the server's (unmasked) frame headers off the raw stream.
 */
function atServerClose(client: TestClient, then: () => void): void {
  const socket = (client.ws as unknown as { _socket: Socket })._socket;
  let pending = Buffer.alloc(0);
  let skip = 0;
  const onData = (chunk: Buffer): void => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (skip > 0) {
        const n = Math.min(skip, pending.length);
        pending = pending.subarray(n);
        skip -= n;
        if (skip > 0) return;
      }
      if (pending.length < 2) return;
      if ((pending[0]! & 0x0f) === 0x8) {
        socket.off('data', onData);
        then();
        return;
      }
      const short = pending[1]! & 0x7f;
      const head = short === 126 ? 4 : short === 127 ? 10 : 2;
      if (pending.length < head) return;
      skip = short === 126 ? pending.readUInt16BE(2) : short === 127 ? Number(pending.readBigUInt64BE(2)) : short;
      pending = pending.subarray(head);
    }
  };
  socket.prependListener('data', onData);
}

test("an event a client sends after the drain's close frame, before its own, still reaches the room on both routes: a hand-over loses nothing", async (t) => {
  const nats = await startNats(t);
  const stub = await startPermissionStub(t);
  const node = (id: string, extra: string[] = []) =>
    startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--nats-url', nats.url, '--node-id', id, ...extra] });
  const a = await node(`late-a-${process.pid}`, ['--drain-spread', '200ms']);
  const b = await node(`late-b-${process.pid}`);
  await Promise.all([federated(a), federated(b)]);

  const room = desktop();
  const observer = (await join(t, b.wsUrl(room), { token: token(user('Obs')) })).client;
  const frames = heard(observer);
  const tab = (await join(t, a.wsUrl(room), { token: token(user('Tab')) })).client;
  const mux = await connectTopics(t, a, token(user('Mux')));
  await subscribe(mux, `desktop:${room}`);
  await until('the observer on B saw both sessions of A join', () => frames.filter((h) => h.frame.type === 'session_joined').length === 2);

  atServerClose(tab, () => tab.send({ type: 'asset_moved', payload: { late: 'tab' } }));
  atServerClose(mux, () => mux.send({ op: 'publish', topic: `desktop:${room}`, type: 'asset_moved', payload: { late: 'mux' } }));
  a.child.kill('SIGTERM');
  for (const client of [tab, mux]) assert.deepEqual(await client.closed, { code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON });

  const late = () => frames.filter((h) => h.frame.type === 'asset_moved').map((h) => (h.frame.payload as { late: string }).late);
  await until('both late events reached the observer on B', () => late().length === 2);
  assert.deepEqual(late().sort(), ['mux', 'tab']);
  for (const h of frames.filter((f) => f.frame.type === 'asset_moved')) assert.equal(typeof h.frame.offset, 'number', 'a late event is stamped like any other');
  assert.deepEqual(await a.exited, { code: 0, signal: null });
});
