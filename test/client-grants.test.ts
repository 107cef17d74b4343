/**
 * The server API's hand on live sessions, as the client SDK sees it, against
 * the real server (`--api-key`) and a real permission stub: a viewer turned
 * editor by `PUT …/permissions/{userId}` learns its role (`permission`), the
 * room sees it (`presence` with `updated`), and its next move is relayed; a
 * revocation (`none`) ends the client (`revoked`, `closed`, no new
 * handshake); a user disconnect (`4001`) brings the client back at once,
 * asking its token function again.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import {
  ClientError,
  connect,
  isServerEvent,
  type ClientEvents,
  type MoodioClient,
  type RelayedEvent,
  type WebSocketConstructor,
} from '../src/client/index.ts';
import { CloseCode } from '../src/protocol/events.ts';
import { api, API_KEY } from './helpers/api.ts';
import { rolesByUser, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WS = WebSocket as unknown as WebSocketConstructor;
const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;
/** Roles the stub answers, by userId; each test adds its users. */
const roles: Record<string, string> = {};

before(async () => {
  stub = await startPermissionStub(cleanup, rolesByUser(roles));
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base, args: ['--api-key', API_KEY] });
});
after(() => cleanup.run());

/** The next `name` event of `client` for which `accept` holds. */
function next<K extends keyof ClientEvents>(client: MoodioClient, name: K, accept: (value: ClientEvents[K]) => boolean = () => true): Promise<ClientEvents[K]> {
  return new Promise((resolve) => {
    const off = client.on(name, (value) => {
      if (!accept(value)) return;
      off();
      resolve(value);
    });
  });
}

/** An SDK client of `name` with `role` on `desk`, open; `tokens` counts the token function's calls. */
async function member(t: Scope, desk: string, name: string, role: string) {
  const claims = user(name);
  roles[claims.userId] = role;
  const counter = { tokens: 0 };
  const client = connect({
    url: `ws://127.0.0.1:${server.port}`,
    desktopId: desk,
    token: () => {
      counter.tokens++;
      return token(claims);
    },
    WebSocket: WS,
  });
  t.after(() => client.close());
  if (client.state !== 'open') await next(client, 'state', (s) => s === 'open');
  return { client, userId: claims.userId, counter };
}

/** Wait until `client`'s presence map satisfies `ok`. */
async function presenceUntil(client: MoodioClient, ok: () => boolean): Promise<void> {
  while (!ok()) await next(client, 'presence');
}

const permissionPath = (desk: string, userId: string) => `desktops/${desk}/permissions/${encodeURIComponent(userId)}`;

test('a viewer turned editor learns its role, the room sees it, and its next move is relayed', async (t) => {
  const desk = desktop('grant');
  const ed = await member(t, desk, 'Ed', 'editor');
  const vi = await member(t, desk, 'Vi', 'viewer');
  await presenceUntil(ed.client, () => ed.client.sessions.has(vi.client.sessionId!));
  assert.equal(ed.client.sessions.get(vi.client.sessionId!)!.permission, 'viewer');
  assert.deepEqual([ed.client.permission, vi.client.permission], ['editor', 'viewer'], "room_joined names each joiner's own role");

  // As a viewer, Vi's move is refused by the SDK itself (the server would drop it without a word), and never queued:
  // the marker after it is the next event Ed gets.
  const firstFromVi = new Promise<string>((resolve) => ed.client.onAnyEvent((e) => e.sessionId === vi.client.sessionId && resolve(e.type)));
  assert.throws(() => vi.client.send('asset_moved', { id: 'asset-1', x: 1, y: 1 }), { name: 'ClientError', code: 'ERR_VIEWER_MUTATION' });
  assert.equal(vi.client.queued, 0);
  vi.client.send('marker', {});
  assert.equal(await firstFromVi, 'marker');

  const changed = next(vi.client, 'permission');
  const updated = next(ed.client, 'presence', (c) => c.updated.length > 0);
  const res = await api(server, 'PUT', permissionPath(desk, vi.userId), { permission: 'editor' });
  assert.equal(res.status, 202);
  assert.deepEqual(await changed, { permission: 'editor', previous: 'viewer' }, 'room_joined told the client its role');
  assert.equal(vi.client.permission, 'editor');
  const change = await updated;
  assert.deepEqual(
    change.updated.map((s) => [s.sessionId, s.permission]),
    [[vi.client.sessionId, 'editor']],
  );
  assert.deepEqual([change.joined, change.left], [[], []]);
  assert.equal(ed.client.sessions.get(vi.client.sessionId!)!.permission, 'editor');

  // The role applies from Vi's next frame.
  const moved = new Promise<unknown>((resolve) => ed.client.onEvent('asset_moved', (e) => e.sessionId === vi.client.sessionId && resolve(e.payload)));
  vi.client.send('asset_moved', { id: 'asset-1', x: 40, y: 50 });
  assert.deepEqual(await moved, { id: 'asset-1', x: 40, y: 50 });

  // And back: Ed and Vi both see the viewer again.
  const back = next(vi.client, 'permission');
  const backInRoom = next(ed.client, 'presence', (c) => c.updated.length > 0);
  assert.equal((await api(server, 'PUT', permissionPath(desk, vi.userId), { permission: 'viewer' })).status, 202);
  assert.deepEqual(await back, { permission: 'viewer', previous: 'editor' });
  assert.equal((await backInRoom).updated[0]!.permission, 'viewer');
});

test('a revocation ends the client: revoked with 4003, then closed, and no new handshake', async (t) => {
  const desk = desktop('revoke');
  const ed = await member(t, desk, 'Eve', 'editor');
  const gone = await member(t, desk, 'Gus', 'editor');
  await presenceUntil(ed.client, () => ed.client.sessions.has(gone.client.sessionId!));
  const sessionId = gone.client.sessionId!;
  const order: string[] = [];
  gone.client.on('revoked', (r) => order.push(`revoked ${r.code} ${r.reason}`));
  gone.client.on('state', (s) => order.push(s));
  gone.client.on('retry', () => order.push('retry'));
  const closed = next(gone.client, 'state', (s) => s === 'closed');
  const left = next(ed.client, 'presence', (c) => c.left.some((s) => s.sessionId === sessionId));
  const handshakes = stub.requests.length;

  assert.equal((await api(server, 'PUT', permissionPath(desk, gone.userId), { permission: 'none' })).status, 202);
  await closed;
  await left;
  assert.deepEqual(order, [`revoked ${CloseCode.PERMISSION_REVOKED} permission revoked`, 'closed']);
  assert.equal(gone.client.permission, null);
  assert.equal(gone.client.nextRetryInMs, null, 'no reconnect scheduled');
  assert.equal(gone.counter.tokens, 1, 'the token was never asked for again');
  assert.equal(stub.requests.length, handshakes, 'no handshake reached the server');
  assert.throws(() => gone.client.send('asset_moved', { id: 'asset-1' }), { code: 'ERR_CLOSED' });
  assert.equal(ed.client.sessions.has(sessionId), false);
});

test('a user disconnect (4001) brings the client back at once, with the token asked for again', async (t) => {
  const desk = desktop('logout');
  const ed = await member(t, desk, 'Ida', 'editor');
  const out = await member(t, desk, 'Oz', 'editor');
  const firstSession = out.client.sessionId!;
  await presenceUntil(ed.client, () => ed.client.sessions.has(firstSession));
  const retry = next(out.client, 'retry');
  const reopened = next(out.client, 'state', (s) => s === 'open');

  const res = await api(server, 'POST', `users/${encodeURIComponent(out.userId)}/disconnect`, { reason: 'password changed' });
  assert.deepEqual([res.status, res.body.disconnected], [202, 1]);
  assert.deepEqual(await retry, { inMs: 0, attempt: 1, url: `ws://127.0.0.1:${server.port}`, code: 4001 }, 'no backoff wait');
  await reopened;
  assert.notEqual(out.client.sessionId, firstSession, 'a new session');
  assert.equal(out.counter.tokens, 2, 'the token function was asked for the new handshake');
  // The room saw the old session leave and the new one join.
  await presenceUntil(ed.client, () => !ed.client.sessions.has(firstSession) && ed.client.sessions.has(out.client.sessionId!));
});

test('an async token function against the real server: a failed refresh is ERR_TOKEN and a retry, then it joins; a user disconnect (4001) asks it again', async (t) => {
  const desk = desktop('async-token');
  const claims = user('Ava');
  roles[claims.userId] = 'editor';
  const asked: string[] = [];
  let refuse = true;
  const client = connect({
    url: `ws://127.0.0.1:${server.port}`,
    desktopId: desk,
    // A refresh call: the first one fails, the next ones answer a fresh token a turn later.
    token: async () => {
      await new Promise((resolve) => setImmediate(resolve));
      asked.push(refuse ? 'refused' : 'token');
      if (refuse) {
        refuse = false;
        throw new Error('refresh endpoint down');
      }
      return token(claims);
    },
    WebSocket: WS,
    minDelayMs: 50,
  });
  t.after(() => client.close());
  const errors: unknown[] = [];
  client.on('error', (e) => errors.push(e));
  const opened = next(client, 'state', (s) => s === 'open');
  const retry = await next(client, 'retry');
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof ClientError);
  assert.equal(errors[0].code, 'ERR_TOKEN');
  assert.equal((errors[0].cause as Error).message, 'refresh endpoint down');
  assert.ok(retry.inMs >= 25, `the backoff's delay, not a tight loop (${retry.inMs} ms)`);
  await opened;
  assert.equal(client.permission, 'editor');
  const firstSession = client.sessionId;

  const reopened = next(client, 'state', (s) => s === 'open');
  const res = await api(server, 'POST', `users/${encodeURIComponent(claims.userId)}/disconnect`, { reason: 'token rotated' });
  assert.deepEqual([res.status, res.body.disconnected], [202, 1]);
  await reopened;
  assert.notEqual(client.sessionId, firstSession);
  assert.deepEqual(asked, ['refused', 'token', 'token']);
  assert.equal(errors.length, 1);
});

test("a server API publish reaches onEvent as the server's own event: sessionId and userId 'server', no firstName or email; a peer's is stamped", async (t) => {
  const desk = desktop('server-event');
  const ann = await member(t, desk, 'Ann', 'editor');
  const bob = await member(t, desk, 'Bob', 'editor');
  await presenceUntil(ann.client, () => ann.client.sessions.has(bob.client.sessionId!));
  const got: RelayedEvent<'table_generated', { rows: number }>[] = [];
  const typed = ann.client as unknown as MoodioClient<{ table_generated: { rows: number } }>;
  const both = new Promise<void>((resolve) => typed.onEvent('table_generated', (e) => got.push(e) === 2 && resolve()));
  const res = await api(server, 'POST', `desktops/${desk}/events`, { type: 'table_generated', payload: { rows: 3 } });
  assert.equal(res.status, 202);
  bob.client.send('table_generated', { rows: 4 });
  await both;
  const [fromServer, fromPeer] = got;
  assert.ok(isServerEvent(fromServer!));
  assert.deepEqual(Object.keys(fromServer!).sort(), ['offset', 'payload', 'sessionId', 'timestamp', 'type', 'userId']);
  assert.deepEqual([fromServer!.sessionId, fromServer!.userId, fromServer!.payload.rows], ['server', 'server', 3]);
  assert.ok(!isServerEvent(fromPeer!));
  assert.deepEqual([fromPeer.firstName, fromPeer.sessionId, fromPeer.payload.rows], ['Bob', bob.client.sessionId, 4]);
});
