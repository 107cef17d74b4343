/**
 * A permission change through the server API is not undone by
 * reconnecting (issue 19): the shard's permission cache holds the answer
 * that admitted a session for 30 s, and the API's word replaces it, so a
 * client that reconnects at once with the same token gets exactly the new
 * role. Real server (primary + 2 shards, the cache at its default TTL),
 * real permission stub, whose answers the test changes first, as the app
 * does before it calls the API. Absence is proven by a marker that must
 * come next.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { ClientEvent, CloseCode } from '../src/protocol/events.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { connect, HandshakeRejected, join } from './helpers/client.ts';
import { startPermissionStub, type PermissionRequest, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;
/** The app's answers: `${userId} ${desktopId}` → a role, or `none` (403). Everyone else edits. */
const roles = new Map<string, string>();

before(async () => {
  stub = await startPermissionStub(cleanup, (req, res) => {
    const role = roles.get(`${req.userId} ${req.desktopId}`) ?? 'editor';
    if (role === 'none') {
      res.statusCode = 403;
      res.end('{"error":"forbidden"}');
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ permission: role }));
  });
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--rate-limit', '0'] });
});
after(() => cleanup.run());

const setPermission = (desktopId: string, userId: string, permission: string) =>
  api(server, 'PUT', `desktops/${desktopId}/permissions/${encodeURIComponent(userId)}`, { permission });
const asked = (userId: string, desktopId?: string) =>
  stub.requests.filter((r: PermissionRequest) => r.userId === userId && (desktopId === undefined || r.desktopId === desktopId)).length;

async function refused(t: TestContext, desktopId: string, jwt: string): Promise<number> {
  const err = await connect(t, server.wsUrl(desktopId), { token: jwt }).then(
    () => assert.fail('the handshake was accepted'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof HandshakeRejected, String(err));
  return err.status;
}

test("none, then a reconnect at once with the same token (each of the user's cookies): 403; the user's other desktop is untouched", async (t) => {
  const ann = user('Ann');
  const [jwt1, jwt2] = [token(ann), token(ann, undefined, 7200)];
  assert.notEqual(jwt1, jwt2, 'two cookies');
  const d0 = desktopOnShard(0);
  const d1 = desktopOnShard(1);
  const { client: tab1 } = await join(t, server.wsUrl(d0), { token: jwt1 });
  const { client: tab2 } = await join(t, server.wsUrl(d0), { token: jwt2 });
  const { client: other, joined: otherJoined } = await join(t, server.wsUrl(d1), { token: jwt1 });
  assert.equal(otherJoined.permission, 'editor');
  assert.equal(asked(ann.userId, d0), 2, 'each cookie was asked about once, and is now cached');

  roles.set(`${ann.userId} ${d0}`, 'none');
  const res = await setPermission(d0, ann.userId, 'none');
  assert.deepEqual([res.status, res.body.sessions, res.body.changed], [202, 2, 2]);
  for (const tab of [tab1, tab2]) assert.equal((await tab.closed).code, CloseCode.PERMISSION_REVOKED);
  for (const jwt of [jwt1, jwt2]) assert.equal(await refused(t, d0, jwt), 403);
  assert.equal(asked(ann.userId, d0), 2, 'refused from the revocation itself, not from a new question');

  // The same user on the other shard's desktop: still an editor, from the cache as before.
  await other.close();
  const { joined } = await join(t, server.wsUrl(d1), { token: jwt1 });
  assert.equal(joined.permission, 'editor');
  assert.equal(asked(ann.userId, d1), 1);
});

test('viewer, then a reconnect at once: the session joins as a viewer and its mutations are dropped', async (t) => {
  const ann = user('Ann');
  const jwt = token(ann);
  const d1 = desktopOnShard(1);
  const { client: first } = await join(t, server.wsUrl(d1), { token: jwt });
  const { client: ben } = await join(t, server.wsUrl(d1), { token: token(user('Ben')) });
  await first.expect('session_joined');

  roles.set(`${ann.userId} ${d1}`, 'viewer');
  assert.equal((await setPermission(d1, ann.userId, 'viewer')).body.changed, 1);
  assert.deepEqual(await first.next(), { type: 'permission_changed', permission: 'viewer' });
  assert.equal((await ben.expect('session_updated')).permission, 'viewer');
  await first.close();
  await ben.expect('session_left');

  const { client: again, joined } = await join(t, server.wsUrl(d1), { token: jwt });
  assert.equal(joined.permission, 'viewer', 'room_joined gives the new role');
  assert.equal((await ben.expect('session_joined')).payload.permission, 'viewer');
  assert.equal(asked(ann.userId, d1), 1, 'the role came from the API call, which replaced the cached answer');
  again.send({ type: ClientEvent.ASSET_MOVED, payload: { x: 1 } });
  again.send({ type: 'marker' });
  const next = await ben.next();
  assert.deepEqual([next.type, next.sessionId], ['marker', joined.sessionId], "the viewer's mutation was dropped");
});

test("a user disconnect drops the user's cached answers on every shard: a reconnect at once asks the app again", async (t) => {
  const ann = user('Ann');
  const jwt = token(ann);
  const d0 = desktopOnShard(0);
  const d1 = desktopOnShard(1);
  const { client: s0 } = await join(t, server.wsUrl(d0), { token: jwt });
  const { client: s1 } = await join(t, server.wsUrl(d1), { token: jwt });
  assert.deepEqual([asked(ann.userId, d0), asked(ann.userId, d1)], [1, 1]);

  // Logged out in the app: it no longer admits her anywhere.
  roles.set(`${ann.userId} ${d0}`, 'none');
  roles.set(`${ann.userId} ${d1}`, 'none');
  const res = await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/disconnect`, { reason: 'logged out' });
  assert.deepEqual([res.status, res.body.disconnected], [202, 2]);
  for (const s of [s0, s1]) assert.equal((await s.closed).code, CloseCode.DISCONNECTED);
  assert.equal(await refused(t, d0, jwt), 403);
  assert.equal(await refused(t, d1, jwt), 403);
  assert.deepEqual([asked(ann.userId, d0), asked(ann.userId, d1)], [2, 2], 'each shard asked the app again');
});
