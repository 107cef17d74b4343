/**
 * Sessions that outlive their grant, against the real server (primary + 2
 * shards, sessions on both) and a real permission stub:
 * `--permission-recheck` applies what the stub now answers (a revocation, a
 * new role) and changes nothing during an outage; `--enforce-token-expiry`
 * closes a session with 4001 once its token's `exp` has passed.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { signAccessToken } from '../src/auth/token.ts';
import { ClientEvent, CloseCode } from '../src/protocol/events.ts';
import { desktopOnShard, fill, type Member } from './helpers/api.ts';
import { connect, HandshakeRejected, join } from './helpers/client.ts';
import { grant, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;
/** What the stub answers, by userId: a role, or a status. */
const answers = new Map<string, string | number>();

before(async () => {
  stub = await startPermissionStub(cleanup, (req, res) => {
    const answer = answers.get(req.userId ?? '') ?? 'editor';
    if (typeof answer === 'number') {
      res.statusCode = answer;
      res.end('{"error":"no"}');
      return;
    }
    grant(answer)(req, res);
  });
  server = await startServer(cleanup, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--permission-recheck', '300ms', '--enforce-token-expiry', '--rate-limit', '0'],
  });
});
after(() => cleanup.run());

/** `from` sends a marker; it must be the next frame of `to`. */
async function markerIsNext(from: Member, to: Member): Promise<void> {
  from.client.send({ type: 'marker' });
  const got = await to.client.next();
  assert.deepEqual([got.type, got.sessionId], ['marker', from.sessionId], JSON.stringify(got));
}

test('a recheck applies a revocation made in the app: 4003 and session_left; other users and desktops stay', async (t) => {
  const ann = user('Ann');
  const [a, b] = await fill(t, server, desktopOnShard(0), [ann, user('Ben')]);
  const [c, d] = await fill(t, server, desktopOnShard(1), [user('Cat'), user('Dan')]);
  answers.set(ann.userId, 403);
  assert.deepEqual(await a!.client.closed, { code: CloseCode.PERMISSION_REVOKED, reason: 'permission revoked' });
  assert.equal((await b!.client.expect('session_left')).sessionId, a!.sessionId);
  await markerIsNext(c!, d!);
  await markerIsNext(d!, c!);
  assert.ok(
    stub.requests.some((r) => r.userId === ann.userId && r.cookie?.includes('moodio_access_token=')),
    'the recheck forwarded the cookie',
  );
});

test('a revocation a recheck found is not undone by reconnecting with the same cookie (the handshake cache holds the new word)', async (t) => {
  const gil = user('Gil');
  const held = token(gil);
  const room = desktopOnShard(1);
  const { client } = await join(t, server.wsUrl(room), { token: held });
  answers.set(gil.userId, 403);
  assert.equal((await client.closed).code, CloseCode.PERMISSION_REVOKED);
  // The handshake cached "editor" for this cookie moments ago, for 30 s; the app now says 403 and the recheck learnt it.
  await assert.rejects(connect(t, server.wsUrl(room), { token: held }), (err: unknown) => err instanceof HandshakeRejected && err.status === 403);
});

test('a recheck applies a new role: permission_changed, session_updated, and the next mutation is judged by it', async (t) => {
  const ben = user('Ben');
  const [a, b] = await fill(t, server, desktopOnShard(1), [user('Ann'), ben]);
  answers.set(ben.userId, 'viewer');
  assert.deepEqual(await b!.client.next(), { type: 'permission_changed', permission: 'viewer' });
  const updated = await a!.client.expect('session_updated');
  assert.deepEqual([updated.sessionId, updated.permission, updated.payload.permission], [b!.sessionId, 'viewer', 'viewer']);
  b!.client.send({ type: ClientEvent.ASSET_MOVED, payload: {} });
  await markerIsNext(b!, a!);
});

test('an outage changes nothing: failed rechecks are logged and counted, and sessions stay as they were', async (t) => {
  const eve = user('Eve');
  const fay = user('Fay');
  const [e, f] = await fill(t, server, desktopOnShard(0), [eve, fay]);
  // 503 for Eve (an outage) and 401 for Fay (her cookie's token expired: no revocation).
  answers.set(eve.userId, 503);
  answers.set(fay.userId, 401);
  const asked = stub.requests.length;
  await server.waitForLog((l) => l.event === 'permission_recheck_failed' && Number(l.failed) >= 2 && stub.requests.length > asked);
  e!.client.send({ type: ClientEvent.ASSET_MOVED, payload: { still: 'editor' } });
  assert.deepEqual((await f!.client.next()).payload, { still: 'editor' });
  f!.client.send({ type: ClientEvent.ASSET_MOVED, payload: { still: 'editor' } });
  assert.deepEqual((await e!.client.next()).payload, { still: 'editor' });
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  assert.ok(Number(/^moodio_rt_permission_rechecks_total\{outcome="failed"\} (\d+)$/m.exec(text)?.[1]) >= 2);
  assert.ok(Number(/^moodio_rt_permission_rechecks_total\{outcome="revoked"\} (\d+)$/m.exec(text)?.[1]) >= 1);
  answers.delete(eve.userId);
  answers.delete(fay.userId);
});

test('--enforce-token-expiry: a session closes with 4001 "token expired" once its exp has passed; the room sees session_left', async (t) => {
  const room = desktopOnShard(1);
  const [long] = await fill(t, server, room, [user('Lon')]);
  const shortLived = signAccessToken(user('Sho'), TEST_SECRET, 2);
  const exp = (JSON.parse(Buffer.from(shortLived.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp;
  const { client: short, joined } = await join(t, server.wsUrl(room), { token: shortLived });
  await long!.client.expect('session_joined');
  const closed = await short.closed;
  const at = Date.now();
  assert.deepEqual(closed, { code: CloseCode.DISCONNECTED, reason: 'token expired' });
  assert.ok(at >= exp * 1000, `closed at ${at}, before exp ${exp * 1000}`);
  assert.equal((await long!.client.expect('session_left')).sessionId, joined.sessionId);
  const [other] = await fill(t, server, room, [user('Oth')]);
  await long!.client.expect('session_joined');
  await markerIsNext(other!, long!);
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  assert.ok(Number(/^moodio_rt_server_closes_total\{reason="token_expired"\} (\d+)$/m.exec(text)?.[1]) >= 1);
});
