/**
 * The client SDK (src/client): backoff, states, the offline queue,
 * "retry now", its own role (`permission_changed`), roles in presence
 * (`session_updated`), 4003 as final and 4001 as reconnect-now, with a fake
 * clock and a fake socket; then against the real server: the token's two
 * ways in, presence, lifecycle and relayed events kept apart, a forced
 * reconnect, and no reconnect after 401/403. The server API's calls through
 * the SDK are test/client-grants.test.ts; the packed package, installed as
 * an app would, is test/client-package.test.ts.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { test } from 'node:test';
import WebSocket from 'ws';
import {
  CLIENT_EVENTS,
  ClientError,
  connect,
  type ClientState,
  type PermissionChange,
  type PresenceChange,
  type RelayedEvent,
  type Retry,
  type Revocation,
  type WebSocketConstructor,
} from '../src/client/index.ts';
import { join, rawRequest } from './helpers/client.ts';
import { grant, startPermissionStub } from './helpers/permission-stub.ts';
import { ErrorCode } from '../src/protocol/events.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WS = WebSocket as unknown as WebSocketConstructor;

class FakeSocket {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: string[] = [];
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  readonly url: string;
  readonly options: unknown;
  constructor(url: string, options?: unknown) {
    this.url = url;
    this.options = options;
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(data);
  }
  close() {}
  /** The server refuses or drops it before it opens. */
  fail() {
    this.onclose?.({ code: 1006, reason: '' });
  }
  join(sessionId: string, sessions: unknown[] = []) {
    this.readyState = 1;
    this.onopen?.({});
    this.onmessage?.({ data: JSON.stringify({ type: 'room_joined', sessionId, sessions }) });
  }
  drop(code: number, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** A frame from the server. */
  receive(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

function fakeClock() {
  const timers: { fn: () => void; ms: number }[] = [];
  let time = 0;
  return {
    delays: () => timers.map((t) => t.ms),
    setTimeout: (fn: () => void, ms: number) => timers.push({ fn, ms }),
    clearTimeout: () => {},
    /** Fire the latest scheduled timer. */
    fire: () => timers.at(-1)!.fn(),
    now: () => time,
    /** Let `ms` pass (for `stableAfterMs`; timers fire only by fire()). */
    advance: (ms: number) => void (time += ms),
  };
}

/** The client's default `stableAfterMs`: a session that stayed joined this long resets the backoff. */
const STABLE_MS = 5_000;

test('backoff: jittered doubling to the cap, a distinct failing state, quick retry on 1001/1012 after a stable session, reconnect after 4008', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const states: ClientState[] = [];
  const client = connect({
    url: 'ws://example.invalid/',
    desktopId: 'd 1',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    minDelayMs: 100,
    maxDelayMs: 1000,
    failingAfter: 3,
    random: () => 0.999,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
  });
  client.on('state', (s) => states.push(s));
  assert.equal(FakeSocket.all[0]!.url, 'ws://example.invalid/ws/desktop/d%201');
  for (let i = 0; i < 6; i++) {
    FakeSocket.all.at(-1)!.fail();
    assert.equal(client.nextRetryInMs, clock.delays().at(-1));
    clock.fire();
  }
  assert.deepEqual(clock.delays(), [99, 199, 399, 799, 999, 999], 'jittered ceilings 100, 200, 400, 800, then capped at 1000');
  assert.deepEqual(states, ['failing'], 'connecting until the third failed open, then failing');

  // Sends while away are queued and flushed in order on join.
  client.send('asset_moved', { id: 'asset-1', n: 1 });
  client.send('asset_moved', { id: 'asset-1', n: 2 });
  FakeSocket.all.at(-1)!.join('session_a');
  assert.equal(client.state, 'open');
  assert.deepEqual(
    FakeSocket.all.at(-1)!.sent.map((s) => JSON.parse(s).payload.n),
    [1, 2],
  );

  clock.advance(STABLE_MS);
  FakeSocket.all.at(-1)!.drop(1012);
  assert.equal(client.state, 'reconnecting');
  assert.equal(clock.delays().at(-1), 99, 'server restart after a stable session: a short jittered wait (≤ minDelay), not the backed-off one');
  clock.fire();
  FakeSocket.all.at(-1)!.join('session_b');
  clock.advance(STABLE_MS - 1);
  FakeSocket.all.at(-1)!.drop(1012);
  assert.equal(clock.delays().at(-1), 199, 'a restart again before the session was stable: the backoff goes on');
  clock.fire();
  FakeSocket.all.at(-1)!.join('session_c');
  FakeSocket.all.at(-1)!.drop(4008);
  assert.equal(clock.delays().at(-1), 399, 'so does a slow consumer cut at once');
  assert.equal(client.state, 'reconnecting', 'a slow consumer reconnects and resyncs');
  const before = FakeSocket.all.length;
  clock.fire();
  assert.equal(FakeSocket.all.length, before + 1);
  client.close();
  assert.equal(client.state, 'closed');
  assert.throws(() => client.send('x'), { code: 'ERR_CLOSED' });
});

test('the default backoff is capped at 4 s, so a returning server is found within a few seconds', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, random: () => 0.9999, ...clock });
  for (let i = 0; i < 7; i++) {
    FakeSocket.all.at(-1)!.fail();
    clock.fire();
  }
  assert.deepEqual(clock.delays(), [499, 999, 1999, 3999, 3999, 3999, 3999]);
  client.close();
});

test('no draw of the jitter makes a tight loop: each delay is at least half its ceiling', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, random: () => 0, ...clock });
  for (let i = 0; i < 6; i++) {
    FakeSocket.all.at(-1)!.fail();
    clock.fire();
  }
  assert.deepEqual(clock.delays(), [250, 500, 1000, 2000, 2000, 2000], 'at the 4 s cap, an attempt at most every 2 s');
  client.close();
});

test('while away, a transient type keeps only its newest event per asset, behind what was sent since; other types queue in order', () => {
  FakeSocket.all = [];
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, maxQueue: 4, ...fakeClock() });
  // A long drag of two cards while offline: hundreds of sends, never ERR_QUEUE_FULL.
  for (let i = 1; i <= 300; i++) {
    client.send('asset_dragging', { id: 'asset-1', x: i });
    client.send('asset_dragging', { id: 'asset-2', x: i });
  }
  assert.equal(client.queued, 2);
  client.send('asset_moved', { id: 'asset-1', x: 300 });
  client.send('asset_dragging', { id: 'asset-2', x: 301 });
  client.send('asset_moved', { id: 'asset-1', x: 301 });
  assert.equal(client.queued, 4, 'asset_moved is not transient: both stay');
  assert.throws(() => client.send('asset_added', { id: 'asset-9' }), { code: 'ERR_QUEUE_FULL' });
  client.send('asset_dragging', { id: 'asset-1', x: 302 });
  assert.equal(client.queued, 4, 'a transient event replacing a queued one fits a full queue');
  FakeSocket.all[0]!.join('me');
  const sent = FakeSocket.all[0]!.sent.map((text) => JSON.parse(text) as { type: string; payload: { id: string; x: number } });
  assert.deepEqual(
    sent.map((e) => `${e.type} ${e.payload.id} ${e.payload.x}`),
    ['asset_moved asset-1 300', 'asset_dragging asset-2 301', 'asset_moved asset-1 301', 'asset_dragging asset-1 302'],
  );
  assert.equal(client.queued, 0);
  client.close();
});

test('transientTypes is configurable; a transient event without an asset id is keyed by its type alone', () => {
  FakeSocket.all = [];
  const client = connect({
    url: 'ws://x',
    desktopId: 'd',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    transientTypes: ['cursor', 'asset_moved'],
    ...fakeClock(),
  });
  client.send('cursor', { x: 1 });
  client.send('asset_dragging', { id: 'a', x: 1 });
  client.send('asset_dragging', { id: 'a', x: 2 });
  client.send('asset_moved', { id: 'a', x: 2 });
  client.send('cursor', { x: 2 });
  client.send('asset_moved', { id: 'a', x: 3 });
  FakeSocket.all[0]!.join('me');
  assert.deepEqual(
    FakeSocket.all[0]!.sent.map((text) => {
      const e = JSON.parse(text);
      return `${e.type} ${e.payload.x}`;
    }),
    ['asset_dragging 1', 'asset_dragging 2', 'cursor 2', 'asset_moved 3'],
  );
  client.close();
});

test('retryNow() opens at once while a retry waits, restarts the backoff, and does nothing while an attempt is in flight', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const retries: Retry[] = [];
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, random: () => 0.999, ...clock });
  client.on('retry', (r) => retries.push(r));
  FakeSocket.all[0]!.fail();
  clock.fire();
  FakeSocket.all[1]!.fail();
  assert.equal(client.nextRetryInMs, 999);
  client.retryNow();
  assert.equal(FakeSocket.all.length, 3, 'a new attempt at once');
  assert.equal(client.nextRetryInMs, null);
  client.retryNow();
  assert.equal(FakeSocket.all.length, 3, 'not while that attempt is in flight');
  FakeSocket.all[2]!.fail();
  assert.equal(client.nextRetryInMs, 499, 'the backoff starts again from its floor');
  assert.deepEqual(retries, [
    { inMs: 499, attempt: 1, url: 'ws://x', code: 1006 },
    { inMs: 999, attempt: 2, url: 'ws://x', code: 1006 },
    { inMs: 0, attempt: 2, url: 'ws://x', code: null },
    { inMs: 499, attempt: 3, url: 'ws://x', code: 1006 },
  ]);
  clock.fire();
  FakeSocket.all[3]!.join('me');
  client.retryNow();
  assert.equal(FakeSocket.all.length, 4, 'nothing while open');
  client.close();
  assert.throws(() => client.retryNow(), { code: 'ERR_CLOSED' });
});

test('the token is offered as moodio.v1 + moodio.token.<token>, or sent as Bearer when asked; without one nothing is offered; a token function is asked per attempt', () => {
  FakeSocket.all = [];
  const make = (extra: object) =>
    connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, ...fakeClock(), ...extra });
  make({ token: 'a.b.c' }).close();
  make({ token: 'a.b.c', tokenVia: 'bearer' }).close();
  make({}).close();
  assert.deepEqual(
    FakeSocket.all.map((socket) => socket.options),
    [['moodio.v1', 'moodio.token.a.b.c'], { headers: { Authorization: 'Bearer a.b.c' } }, undefined],
  );
  // A function is asked again before every attempt: a reconnect carries the freshest token.
  FakeSocket.all = [];
  const clock = fakeClock();
  let current = 'first';
  const client = make({ token: () => current, ...clock });
  FakeSocket.all[0]!.fail();
  current = 'second';
  clock.fire();
  assert.deepEqual(
    FakeSocket.all.map((socket) => (socket.options as string[])[1]),
    ['moodio.token.first', 'moodio.token.second'],
  );
  client.close();
  assert.throws(() => make({ token: 'a.b.c', tokenVia: 'cookie' }), { code: 'ERR_INVALID_OPTION', message: /options\.tokenVia/ });
});

test('a token function may answer with a Promise: the attempt waits for it, and each attempt (a 4001 too) asks again', async () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  let calls = 0;
  const client = connect({
    url: 'ws://x',
    desktopId: 'd',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    random: () => 0.999,
    ...clock,
    token: async () => `tok${++calls}`,
  });
  assert.equal(FakeSocket.all.length, 0, 'no socket before the token is known');
  await until(() => FakeSocket.all.length === 1);
  assert.deepEqual(FakeSocket.all[0]!.options, ['moodio.v1', 'moodio.token.tok1']);
  FakeSocket.all[0]!.join('me');
  FakeSocket.all[0]!.drop(4001);
  assert.equal(clock.delays().at(-1), 0, 'logged out: at once');
  clock.fire();
  await until(() => FakeSocket.all.length === 2);
  assert.deepEqual(FakeSocket.all[1]!.options, ['moodio.v1', 'moodio.token.tok2'], 'the token function was asked again');
  // Closed while the token is pending: its answer opens nothing.
  FakeSocket.all[1]!.fail();
  let settle!: (token: string) => void;
  const pending = connect({
    url: 'ws://x',
    desktopId: 'd',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    ...fakeClock(),
    token: () => new Promise<string>((resolve) => (settle = resolve)),
  });
  pending.close();
  settle('late');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(FakeSocket.all.length, 2);
  client.close();
});

test('a token function that throws, rejects or answers no token: an error event ERR_TOKEN, then the backoff, never an unhandled rejection', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));
  const refresh = new Error('refresh failed');
  const answers: (() => unknown)[] = [
    () => {
      throw refresh;
    },
    () => Promise.reject(refresh),
    () => Promise.resolve(42),
    () => 'not a token',
    () => Promise.resolve('good.token'),
  ];
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = connect({
    url: 'ws://x',
    desktopId: 'd',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    random: () => 0.999,
    ...clock,
    token: () => answers.shift()!() as string,
  });
  const events: string[] = [];
  client.on('error', (e) => events.push(e instanceof ClientError ? `${e.code} ${e.cause === refresh}` : `server ${e.code}`));
  client.on('retry', (r) => events.push(`retry ${r.inMs}`));
  for (let i = 0; i < 4; i++) {
    await until(() => events.length === 2 * (i + 1));
    clock.fire();
  }
  await until(() => FakeSocket.all.length === 1);
  assert.deepEqual(events, ['ERR_TOKEN true', 'retry 499', 'ERR_TOKEN true', 'retry 999', 'ERR_TOKEN false', 'retry 1999', 'ERR_TOKEN false', 'retry 3998']);
  assert.equal(client.state, 'connecting', 'still trying; no attempt reached a socket until the good token');
  assert.deepEqual(FakeSocket.all[0]!.options, ['moodio.v1', 'moodio.token.good.token']);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(unhandled, []);
  client.close();
  // A static token is checked once, at connect().
  assert.throws(() => connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, token: 'a b' }), {
    code: 'ERR_INVALID_OPTION',
    message: /options\.token/,
  });
  assert.throws(() => connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, token: 7 as unknown as string }), {
    code: 'ERR_INVALID_OPTION',
    message: /options\.token/,
  });
});

/** Wait until `ok()` holds, one macrotask at a time (the token's promise settles in between); bounded. */
async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !ok(); i++) await new Promise((resolve) => setImmediate(resolve));
  assert.ok(ok(), 'condition not reached');
}

test('the queue is bounded', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, maxQueue: 2, ...clock });
  client.send('a');
  client.send('b');
  assert.throws(() => client.send('c'), { code: 'ERR_QUEUE_FULL' });
  client.close();
});

test('presence is kept through joins and leaves; relayed events arrive typed and stamped', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base });
  const room = desktop();
  const ann = user('Ann');
  const client = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: room, token: token(ann), WebSocket: WS });
  t.after(() => client.close());
  const changes: PresenceChange[] = [];
  client.on('presence', (c) => changes.push(c));
  while (client.state !== 'open') await new Promise((resolve) => client.on('state', resolve));
  assert.deepEqual([...client.sessions.keys()], []);

  const bob = user('Bob');
  const { client: b } = await join(t, server.wsUrl(room), { token: token(bob) });
  const { client: c, joined: cJoined } = await join(t, server.wsUrl(room), { token: token(user('Cat')) });
  await b.expect('session_joined');
  const moved = new Promise((resolve) => client.onEvent('asset_moved', resolve));
  c.send({ type: 'asset_moved', payload: { id: 'asset-1', x: 3 } });
  const event = (await moved) as { userId: string; payload: unknown; sessionId: string };
  assert.deepEqual([event.sessionId, event.payload], [cJoined.sessionId, { id: 'asset-1', x: 3 }]);
  await b.close();
  while (client.sessions.size !== 1) await new Promise((resolve) => client.on('presence', resolve));
  assert.deepEqual(
    [...client.sessions.values()].map((s) => s.firstName),
    ['Cat'],
  );
  assert.deepEqual(
    changes.map((ch) => [ch.joined.map((s) => s.firstName), ch.left.map((s) => s.firstName)]),
    [
      [['Bob'], []],
      [['Cat'], []],
      [[], ['Bob']],
    ],
  );
  assert.equal((await c.expect('session_left')).firstName, 'Bob');
  client.send('asset_resized', { id: 'asset-1', w: 2 });
  assert.deepEqual((await c.expect('asset_resized')).payload, { id: 'asset-1', w: 2 });
});

test('on() takes lifecycle names only: a relayed type there throws at once, pointing to onEvent', () => {
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, ...fakeClock() });
  assert.throws(() => client.on('asset_moved' as 'state', () => {}), { code: 'ERR_UNKNOWN_CLIENT_EVENT', message: /onEvent/ });
  assert.throws(() => client.on('event' as 'state', () => {}), { code: 'ERR_UNKNOWN_CLIENT_EVENT' });
  client.close();
});

test('a peer sending the lifecycle names as event types reaches onEvent, never the lifecycle handlers', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base });
  const room = desktop();
  const client = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: room, token: token(user('Ann')), WebSocket: WS });
  t.after(() => client.close());
  while (client.state !== 'open') await new Promise((resolve) => client.on('state', resolve));
  const { client: peer, joined: peerJoined } = await join(t, server.wsUrl(room), { token: token(user('Mal')) });
  while (client.sessions.size !== 1) await new Promise((resolve) => client.on('presence', resolve));

  // Handlers written as the docs show them: a relayed frame here would throw (the TypeError of the finding).
  const lifecycle: string[] = [];
  client.on('state', (s) => lifecycle.push(`state:${s.toUpperCase()}`));
  client.on('presence', ({ joined, left }) => lifecycle.push(`presence:${joined.length}/${left.length}`));
  client.on('error', (e) => lifecycle.push(`error:${e.code.toUpperCase()}`));
  client.on('rejected', ({ status }) => lifecycle.push(`rejected:${status.toFixed()}`));
  const byType: string[] = [];
  const any: RelayedEvent[] = [];
  const names = [...CLIENT_EVENTS, 'event'];
  for (const name of names) client.onEvent(name, (e) => byType.push(e.type));
  client.onAnyEvent((e) => any.push(e));
  const last = new Promise<RelayedEvent>((resolve) => client.onEvent('asset_moved', resolve));

  for (const name of names) peer.send({ type: name, payload: { joined: 'x', code: 7, status: 'y' } });
  peer.send({ type: 'asset_moved', payload: { id: 'asset-1' } });
  // Frames arrive in order: once asset_moved is in, every frame before it was handled.
  await last;
  assert.deepEqual((await peer.expect('error')).code, ErrorCode.RESERVED_TYPE, '"error" is reserved: the relay refuses it from clients');
  const relayedNames = names.filter((n) => n !== 'error');
  assert.deepEqual(byType, relayedNames, 'each lifecycle name arrived as a relayed event, on onEvent');
  assert.deepEqual(
    any.map((e) => e.type),
    [...relayedNames, 'asset_moved'],
  );
  assert.ok(
    any.every((e) => e.sessionId === peerJoined.sessionId),
    'stamped with the sender',
  );
  assert.deepEqual(lifecycle, [], 'no lifecycle handler saw a relayed frame');
  assert.equal(client.state, 'open');
  assert.equal(client.sessions.size, 1);
});

test('after a forced reconnect, presence is rebuilt and the app hears who left and who came', async (t) => {
  const stub = await startPermissionStub(t);
  const admin = 'admin-token-client-0123456789';
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--admin-token', admin] });
  const room = desktop();
  // The client's retry timer is the test's to fire: the newcomer joins while
  // the client is away, whatever the restart takes on a loaded machine.
  const retries: (() => void)[] = [];
  const client = connect({
    url: `ws://127.0.0.1:${server.port}`,
    desktopId: room,
    token: token(user('Ann')),
    WebSocket: WS,
    setTimeout: (fn: () => void) => retries.push(fn),
    clearTimeout: () => {},
  });
  t.after(() => client.close());
  while (client.state !== 'open') await new Promise((resolve) => client.on('state', resolve));
  const { client: bob } = await join(t, server.wsUrl(room), { token: token(user('Bob')) });
  while (client.sessions.size !== 1) await new Promise((resolve) => client.on('presence', resolve));
  const firstSession = client.sessionId;

  const reconnected = new Promise<PresenceChange>((resolve) => client.on('presence', (c) => c.reconnected && resolve(c)));
  assert.equal((await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${admin}\r\n\r\n`])).status, 202);
  await bob.closed; // Bob went down with the shard and does not come back
  await server.waitForLog((l) => l.event === 'shard_ready' && l.restarts === 1);
  assert.equal(client.state, 'reconnecting');
  await join(t, server.wsUrl(room), { token: token(user('Cat')) });
  assert.equal(retries.length, 1, 'one retry scheduled');
  retries[0]!();

  const change = await reconnected;
  assert.deepEqual(
    change.left.map((s) => s.firstName),
    ['Bob'],
  );
  assert.deepEqual(
    change.joined.map((s) => s.firstName),
    ['Cat'],
  );
  assert.equal(client.state, 'open');
  assert.notEqual(client.sessionId, firstSession);
  assert.deepEqual(
    [...client.sessions.values()].map((s) => s.firstName),
    ['Cat'],
  );
});

test('against the real server, the token is accepted from the protocol (answered moodio.v1) and from Bearer', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base });
  const sockets: WebSocket[] = [];
  class Recorded extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      sockets.push(this);
    }
  }
  for (const [name, tokenVia] of [
    ['Pat', 'protocol'],
    ['Bea', 'bearer'],
  ] as const) {
    const claims = user(name);
    const client = connect({
      url: `ws://127.0.0.1:${server.port}`,
      desktopId: desktop(),
      token: token(claims),
      tokenVia,
      WebSocket: Recorded as unknown as WebSocketConstructor,
    });
    t.after(() => client.close());
    while (client.state !== 'open') await new Promise((resolve) => client.on('state', resolve));
    assert.equal(stub.requests.at(-1)!.userId, claims.userId);
    assert.equal(sockets.at(-1)!.protocol, tokenVia === 'protocol' ? 'moodio.v1' : '');
  }
});

test('in Node, a 401 or 403 handshake ends the client instead of retrying', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base });
  for (const [jwt, status] of [
    ['not-a-token', 401],
    [token(user('Den')), 403],
  ] as const) {
    if (status === 403) {
      stub.handle((_req, res) => {
        res.statusCode = 403;
        res.end('{}');
      });
    }
    const client = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: desktop(), token: jwt, WebSocket: WS });
    const [rejected] = (await once(asEmitter(client), 'rejected')) as [{ status: number }];
    assert.equal(rejected.status, status);
    assert.equal(client.state, 'closed');
    assert.equal(client.nextRetryInMs, null, 'no reconnect scheduled');
    assert.throws(() => client.send('x'), { code: 'ERR_CLOSED' });
  }
  stub.handle(grant('editor'));
});

/** Adapt client.on to events.once. */
function asEmitter(client: ReturnType<typeof connect>): EventEmitter {
  const emitter = new EventEmitter();
  client.on('rejected', (v) => emitter.emit('rejected', v));
  return emitter;
}

test('after close(), nothing from the old socket reopens the client: a room_joined in flight is ignored and send() throws', () => {
  FakeSocket.all = [];
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, ...fakeClock() });
  const socket = FakeSocket.all[0]!;
  const inFlight = socket.onmessage!; // a frame the socket had already queued for this handler
  client.close();
  assert.equal(socket.onmessage, null, 'handlers are detached');
  assert.equal(socket.onopen, null);
  socket.readyState = 1;
  inFlight({ data: JSON.stringify({ type: 'room_joined', sessionId: 's1', sessions: [] }) });
  assert.equal(client.state, 'closed');
  assert.throws(() => client.send('asset_moved', { id: 'asset-1' }), { code: 'ERR_CLOSED' });
});

test('server frames of the wrong shape are dropped, not handed to the app', () => {
  FakeSocket.all = [];
  const client = connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, ...fakeClock() });
  const socket = FakeSocket.all[0]!;
  const ann = { sessionId: 'a', userId: 'u-a', firstName: 'Ann', email: 'a@x', permission: 'editor' };
  socket.join('me', [ann]);
  const presence: PresenceChange[] = [];
  const errors: unknown[] = [];
  client.on('presence', (p) => presence.push(p));
  client.on('error', (e) => errors.push(e));
  for (const frame of [
    { type: 'session_joined' },
    { type: 'session_joined', payload: null },
    { type: 'session_left', payload: { sessionId: 7 } },
    { type: 'session_joined', payload: { ...ann, sessionId: 'b', permission: 'owner' } },
    { type: 'room_joined', sessionId: 'me2', sessions: [{}] },
    { type: 'error', code: 5 },
    { type: 'session_updated', payload: { ...ann, permission: 'owner' } },
    { type: 'session_updated', permission: 'viewer' },
    { type: 'permission_changed' },
    { type: 'permission_changed', permission: 'owner' },
    { type: 'permission_changed', permission: ['editor'] },
    'not an object',
    null,
  ])
    socket.onmessage!({ data: JSON.stringify(frame) });
  assert.deepEqual(presence, []);
  assert.deepEqual(errors, []);
  assert.deepEqual([...client.sessions.keys()], ['a']);
  assert.equal(client.sessions.get('a')!.permission, 'editor');
  assert.equal(client.sessionId, 'me');
  assert.equal(client.permission, null);
  client.close();
});

const fakeClient = (extra: object = {}) =>
  connect({ url: 'ws://x', desktopId: 'd', WebSocket: FakeSocket as unknown as WebSocketConstructor, random: () => 0.999, ...fakeClock(), ...extra });

test('permission_changed sets client.permission and emits permission once per change; a join without a role makes it unknown again', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = fakeClient(clock);
  const changes: PermissionChange[] = [];
  client.on('permission', (c) => changes.push(c));
  const socket = FakeSocket.all[0]!;
  socket.join('me');
  assert.equal(client.permission, null, "room_joined does not name the joiner's role");
  socket.receive({ type: 'permission_changed', permission: 'editor' });
  socket.receive({ type: 'permission_changed', permission: 'editor' });
  assert.equal(client.permission, 'editor');
  socket.receive({ type: 'permission_changed', permission: 'viewer' });
  assert.equal(client.permission, 'viewer');
  assert.deepEqual(
    changes,
    [
      { permission: 'editor', previous: null },
      { permission: 'viewer', previous: 'editor' },
    ],
    'the same role twice is one change',
  );

  // A reconnect is a new session: its role is whatever its room_joined says.
  socket.drop(1006);
  clock.fire();
  FakeSocket.all[1]!.join('me2');
  assert.equal(client.permission, null);
  FakeSocket.all[1]!.drop(1006);
  clock.fire();
  FakeSocket.all[2]!.onopen?.({});
  FakeSocket.all[2]!.readyState = 1;
  FakeSocket.all[2]!.receive({ type: 'room_joined', sessionId: 'me3', sessions: [], permission: 'editor' });
  assert.equal(client.permission, 'editor', 'a room_joined that names the role sets it');
  assert.deepEqual(changes.at(-1), { permission: 'editor', previous: null });
  assert.equal(changes.length, 3);
  client.close();
});

test("a viewer's mutation is refused by send() (ERR_VIEWER_MUTATION) and never queued; unknown role: sent, and queued ones are checked when the join names it", () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = fakeClient(clock);
  const errors: unknown[] = [];
  client.on('error', (e) => errors.push(e));
  const joinAs = (socket: FakeSocket, sessionId: string, permission?: string) => {
    socket.readyState = 1;
    socket.onopen?.({});
    socket.receive({ type: 'room_joined', sessionId, sessions: [], permission });
  };
  const sentTypes = (socket: FakeSocket) => socket.sent.map((text) => JSON.parse(text).type as string);

  // Joined as a viewer: every mutation type is refused at once; other types go.
  joinAs(FakeSocket.all[0]!, 'me', 'viewer');
  for (const type of ['asset_moved', 'asset_resized', 'asset_added', 'asset_removed', 'asset_dragging', 'asset_selected', 'asset_deselected']) {
    assert.throws(() => client.send(type as 'asset_moved', { id: 'a' }), { name: 'ClientError', code: 'ERR_VIEWER_MUTATION', message: new RegExp(type) });
  }
  client.send('cursor', { x: 1 });
  assert.deepEqual(sentTypes(FakeSocket.all[0]!), ['cursor']);
  // Made editor: mutations go.
  FakeSocket.all[0]!.receive({ type: 'permission_changed', permission: 'editor' });
  client.send('asset_moved', { id: 'a', x: 1 });
  assert.deepEqual(sentTypes(FakeSocket.all[0]!), ['cursor', 'asset_moved']);
  // Made viewer again, then away: refused, not queued.
  FakeSocket.all[0]!.receive({ type: 'permission_changed', permission: 'viewer' });
  FakeSocket.all[0]!.drop(1006);
  assert.throws(() => client.send('asset_moved', { id: 'a', x: 2 }), { code: 'ERR_VIEWER_MUTATION' });
  assert.equal(client.queued, 0);
  clock.fire();
  // Rejoined as editor (a new session's role), then away again: mutations queue while the last known role is editor.
  joinAs(FakeSocket.all[1]!, 'me2', 'editor');
  FakeSocket.all[1]!.drop(1006);
  client.send('asset_moved', { id: 'a', x: 3 });
  client.send('marker');
  client.send('asset_dragging', { id: 'a', x: 4 });
  assert.equal(client.queued, 3);
  clock.fire();
  // The new session is a viewer: the queued mutations are dropped, the rest is sent, and an error says so.
  joinAs(FakeSocket.all[2]!, 'me3', 'viewer');
  assert.deepEqual(sentTypes(FakeSocket.all[2]!), ['marker']);
  assert.equal(client.queued, 0);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof ClientError);
  assert.equal(errors[0].code, 'ERR_VIEWER_MUTATION');
  assert.match(errors[0].message, /2 queued .*asset_moved, asset_dragging/);
  client.close();

  // The role not known (a server whose room_joined does not name it): a mutation is sent; the server decides.
  FakeSocket.all = [];
  const unknown = fakeClient();
  unknown.send('asset_moved', { id: 'a', x: 5 });
  joinAs(FakeSocket.all[0]!, 'me');
  assert.equal(unknown.permission, null);
  unknown.send('asset_moved', { id: 'a', x: 6 });
  assert.deepEqual(
    FakeSocket.all[0]!.sent.map((text) => JSON.parse(text).payload.x),
    [5, 6],
  );
  unknown.close();
});

test('session_updated keeps presence current and emits presence with the updated session; unknown or unchanged sessions change nothing', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = fakeClient(clock);
  const ann = { sessionId: 'a', userId: 'u-a', firstName: 'Ann', email: 'a@x', permission: 'viewer' as const };
  const ben = { sessionId: 'b', userId: 'u-b', firstName: 'Ben', email: 'b@x', permission: 'editor' as const };
  const socket = FakeSocket.all[0]!;
  socket.join('me', [ann, ben]);
  const changes: PresenceChange[] = [];
  client.on('presence', (c) => changes.push(c));
  const stamp = { sessionId: 'a', userId: 'u-a', firstName: 'Ann', email: 'a@x', timestamp: 1 };
  socket.receive({ type: 'session_updated', ...stamp, permission: 'editor', payload: { ...ann, permission: 'editor' } });
  assert.equal(client.sessions.get('a')!.permission, 'editor');
  socket.receive({ type: 'session_updated', ...stamp, permission: 'editor', payload: { ...ann, permission: 'editor' } });
  socket.receive({ type: 'session_updated', ...stamp, sessionId: 'gone', permission: 'editor', payload: { ...ann, sessionId: 'gone', permission: 'editor' } });
  assert.equal(client.sessions.has('gone'), false, 'a session that is not known (it left) is not brought back');
  assert.deepEqual(changes, [{ joined: [], left: [], updated: [{ ...ann, permission: 'editor' }], reconnected: false }]);
  assert.equal(client.permission, null, "another session's update is not this client's role");

  // A role changed while away shows as updated in the reconnect's change.
  socket.drop(1006);
  clock.fire();
  FakeSocket.all[1]!.join('me2', [{ ...ann, permission: 'viewer' }, ben]);
  assert.deepEqual(changes.at(-1), { joined: [], left: [], updated: [{ ...ann, permission: 'viewer' }], reconnected: true });
  client.close();
});

test('4003 is final: revoked, then closed, with no retry; send and retryNow throw', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = fakeClient(clock);
  const seen: string[] = [];
  let revocation: Revocation | null = null;
  client.on('revoked', (r) => {
    revocation = r;
    seen.push(`revoked:${client.state}`);
  });
  client.on('state', (s) => seen.push(`state:${s}`));
  client.on('retry', () => seen.push('retry'));
  FakeSocket.all[0]!.join('me');
  FakeSocket.all[0]!.receive({ type: 'permission_changed', permission: 'editor' });
  FakeSocket.all[0]!.drop(4003, 'permission revoked');
  assert.deepEqual(revocation, { code: 4003, reason: 'permission revoked' });
  assert.deepEqual(seen, ['state:open', 'revoked:open', 'state:closed'], 'revoked comes just before closed');
  assert.equal(client.state, 'closed');
  assert.equal(client.permission, null);
  assert.equal(client.nextRetryInMs, null);
  assert.deepEqual(clock.delays(), [], 'nothing scheduled');
  assert.equal(FakeSocket.all.length, 1);
  assert.throws(() => client.send('asset_moved', { id: 'a' }), { code: 'ERR_CLOSED' });
  assert.throws(() => client.retryNow(), { code: 'ERR_CLOSED' });
});

test('4001 after a stable session reconnects at once, asking the token function again; a repeated 4001 and other codes back off', () => {
  FakeSocket.all = [];
  const clock = fakeClock();
  let asked = 0;
  const client = fakeClient({ ...clock, token: () => `t${++asked}` });
  const retries: Retry[] = [];
  client.on('retry', (r) => retries.push(r));
  // Three failed opens grow the backoff...
  for (let i = 0; i < 3; i++) {
    FakeSocket.all.at(-1)!.fail();
    clock.fire();
  }
  FakeSocket.all.at(-1)!.join('me');
  clock.advance(STABLE_MS);
  FakeSocket.all.at(-1)!.drop(4008);
  assert.equal(clock.delays().at(-1), 499, 'a session that stayed joined for stableAfterMs resets the backoff');
  clock.fire();
  FakeSocket.all.at(-1)!.fail();
  assert.equal(clock.delays().at(-1), 999);
  clock.fire();
  FakeSocket.all.at(-1)!.join('me2');
  clock.advance(60 * 60_000);
  // ...then, after a long healthy session, the server logs the user out.
  FakeSocket.all.at(-1)!.drop(4001, 'disconnected');
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.nextRetryInMs, 0);
  assert.deepEqual(retries.at(-1), { inMs: 0, attempt: 1, url: 'ws://x', code: 4001 });
  const before = asked;
  clock.fire();
  assert.equal(asked, before + 1, 'the token function is asked for the new attempt');
  assert.deepEqual((FakeSocket.all.at(-1)!.options as string[])[1], `moodio.token.t${asked}`);
  FakeSocket.all.at(-1)!.fail();
  assert.equal(clock.delays().at(-1), 499, 'a failed attempt after it starts the backoff from its floor');
  // A 4001 on a socket that never opened is not the server's word: back off as usual.
  clock.fire();
  FakeSocket.all.at(-1)!.drop(4001);
  assert.equal(clock.delays().at(-1), 999);
  // The new credential gets in, and is logged out again at once: no second retry at once.
  clock.fire();
  FakeSocket.all.at(-1)!.join('me3');
  clock.advance(STABLE_MS - 1);
  FakeSocket.all.at(-1)!.drop(4001);
  assert.equal(clock.delays().at(-1), 1999, "a repeated 4001 takes the backoff's next delay");
  // Once a session is stable again, a 4001 is again retried at once.
  clock.fire();
  FakeSocket.all.at(-1)!.join('me4');
  clock.advance(STABLE_MS);
  FakeSocket.all.at(-1)!.drop(4001);
  assert.equal(clock.delays().at(-1), 0);
  client.close();
});
