/**
 * The authorize call of the multiplexed route against a real HTTP stub of
 * the app: the request (path, escaped topic, the minted JWT's exact claims
 * and signature), the answers table, the 30 s cache per (user, topic) that
 * really hits, refusals never cached, and the server API's eviction.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import jwt from 'jsonwebtoken';
import { TopicErrorCode } from '../src/protocol/topics.ts';
import { api, API_KEY } from './helpers/api.ts';
import { bearerClaims, startPermissionStub, type PermissionHandler, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { nowSeconds, token, user } from './helpers/tokens.ts';
import { connectTopics, expectOp, subscribe } from './helpers/topics.ts';
import { join } from './helpers/client.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

/** Answers by topic: `answers[topic]` decides, editor otherwise. */
const answers = new Map<string, PermissionHandler>();
const byTopic: PermissionHandler = (req, res) => {
  const handler = answers.get(req.topic ?? '');
  if (handler !== undefined) return handler(req, res);
  res.setHeader('content-type', 'application/json');
  res.end('{"permission":"editor"}');
};

before(async () => {
  stub = await startPermissionStub(cleanup, byTopic);
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--permission-timeout', '300ms'] });
});
after(() => cleanup.run());

const authorizeCalls = (topic: string) => stub.requests.filter((r) => r.endpoint === 'authorize' && r.topic === topic);
const status =
  (code: number, body = ''): PermissionHandler =>
  (_req, res) => {
    res.statusCode = code;
    res.end(body);
  };
const body =
  (text: string): PermissionHandler =>
  (_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(text);
  };

describe('the call', () => {
  test('GET /api/realtime/authorize?topic=<escaped> with a minted HS256 JWT of exactly {userId, aud, iat, exp: iat+60}', async (t) => {
    const topic = `production-table:${desktop()}`;
    const ann = user('Ann');
    const conn = await connectTopics(t, server, token(ann));
    const before = nowSeconds();
    await subscribe(conn, topic);
    const [call] = authorizeCalls(topic);
    assert.ok(call);
    assert.equal(call.method, 'GET');
    assert.equal(call.url, `/api/realtime/authorize?topic=${encodeURIComponent(topic)}`);
    assert.match(call.url, /topic=production-table%3A/);
    assert.match(call.authorization ?? '', /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
    const bearer = call.authorization!.slice('Bearer '.length);
    // Signed with the access-token secret, HS256 only.
    const verified = jwt.verify(bearer, TEST_SECRET, { algorithms: ['HS256'], audience: 'realtime-internal' }) as Record<string, unknown>;
    assert.deepEqual(Object.keys(verified).sort(), ['aud', 'exp', 'iat', 'userId']);
    assert.equal(verified.userId, ann.userId);
    assert.equal(verified.aud, 'realtime-internal');
    assert.equal(verified.exp, (verified.iat as number) + 60);
    assert.ok((verified.iat as number) >= before && (verified.iat as number) <= nowSeconds());
    assert.deepEqual(JSON.parse(Buffer.from(bearer.split('.')[0]!, 'base64url').toString()), { alg: 'HS256', typ: 'JWT' });
    assert.deepEqual(bearerClaims(call.authorization), verified);
    assert.equal(call.cookie, undefined, 'the browser cookie is not forwarded');
  });
});

describe('the answers', () => {
  const cases: [string, PermissionHandler, string][] = [
    ['400', status(400), TopicErrorCode.BAD_REQUEST],
    ['401', status(401), TopicErrorCode.FORBIDDEN],
    ['403', status(403), TopicErrorCode.FORBIDDEN],
    ['404', status(404), TopicErrorCode.NOT_FOUND],
    ['500', status(500), TopicErrorCode.INTERNAL],
    ['302', status(302), TopicErrorCode.INTERNAL],
    ['a body that is not JSON', body('{"permission":'), TopicErrorCode.INTERNAL],
    ['no permission', body('{}'), TopicErrorCode.INTERNAL],
    ['an unknown permission', body('{"permission":"admin"}'), TopicErrorCode.INTERNAL],
    ['a permission of another type', body('{"permission":1}'), TopicErrorCode.INTERNAL],
    ['no answer within the timeout', () => 'hang', TopicErrorCode.INTERNAL],
  ];
  for (const [name, handler, code] of cases) {
    test(`${name} → ${code}, with the topic and the ref; the connection goes on`, async (t) => {
      const topic = `desktop:${desktop()}`;
      answers.set(topic, handler);
      const conn = await connectTopics(t, server, token(user('Ann')));
      conn.send({ op: 'subscribe', topic, ref: 'r' });
      const error = await expectOp(conn, 'error', { code, topic, ref: 'r' });
      assert.equal(typeof error.message, 'string');
      // Still usable.
      await subscribe(conn, `desktop:${desktop()}`);
    });
  }

  for (const [answer, role] of [
    ['owner', 'editor'],
    ['editor', 'editor'],
    ['viewer', 'viewer'],
  ]) {
    test(`200 {"permission":"${answer}"} → subscribed as ${role}`, async (t) => {
      const topic = `desktop:${desktop()}`;
      answers.set(topic, body(JSON.stringify({ permission: answer })));
      const conn = await connectTopics(t, server, token(user('Ann')));
      assert.equal((await subscribe(conn, topic)).permission, role);
    });
  }
});

describe('the cache', () => {
  test('two subscribes of one user within 30 s make one call; another user makes its own', async (t) => {
    const topic = `desktop:${desktop()}`;
    const ann = user('Ann');
    const first = await connectTopics(t, server, token(ann));
    await subscribe(first, topic);
    const second = await connectTopics(t, server, token(ann));
    await subscribe(second, topic);
    await expectOp(first, 'event', { type: 'session_joined' });
    // Unsubscribing does not clear it (the upstream's cache did, per session).
    first.send({ op: 'unsubscribe', topic });
    await expectOp(first, 'unsubscribed');
    await subscribe(first, topic);
    assert.equal(authorizeCalls(topic).length, 1);
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(bob, topic);
    assert.equal(authorizeCalls(topic).length, 2);
  });

  test('a refusal is never cached: the next subscribe asks again', async (t) => {
    const topic = `desktop:${desktop()}`;
    answers.set(topic, status(403));
    const conn = await connectTopics(t, server, token(user('Ann')));
    conn.send({ op: 'subscribe', topic });
    await expectOp(conn, 'error', { code: TopicErrorCode.FORBIDDEN, topic });
    answers.delete(topic);
    await subscribe(conn, topic);
    assert.equal(authorizeCalls(topic).length, 2);
  });

  test('a permission change through the server API evicts the answer, and applies to the live subscription', async (t) => {
    const id = desktop();
    const topic = `desktop:${id}`;
    const ann = user('Ann');
    const conn = await connectTopics(t, server, token(ann));
    const bob = await connectTopics(t, server, token(user('Bob')));
    await subscribe(conn, topic);
    await subscribe(bob, topic);
    await expectOp(conn, 'event', { type: 'session_joined' });
    const changed = await api(server, 'PUT', `desktops/${id}/permissions/${ann.userId}`, { permission: 'viewer' });
    assert.equal(changed.status, 202);
    await expectOp(conn, 'event', { topic, type: 'permission_changed', permission: 'viewer' });
    await expectOp(bob, 'event', { topic, type: 'session_updated', permission: 'viewer' });
    // The live subscription is a viewer from now on: its mutation is dropped, the next event relayed.
    conn.send({ op: 'publish', topic, type: 'asset_moved', payload: {} });
    conn.send({ op: 'publish', topic, type: 'after', payload: {} });
    await expectOp(bob, 'event', { type: 'after' });
    // A new connection asks the app again.
    const again = await connectTopics(t, server, token(ann));
    await subscribe(again, topic);
    assert.equal(authorizeCalls(topic).filter((r) => r.userId === ann.userId).length, 2);
    await expectOp(conn, 'event', { type: 'session_joined' });
    await expectOp(bob, 'event', { type: 'session_joined' });
    // Revoked: both of the user's subscriptions end with forbidden, the others hear them leave.
    await api(server, 'PUT', `desktops/${id}/permissions/${ann.userId}`, { permission: 'none' });
    await expectOp(conn, 'error', { code: TopicErrorCode.FORBIDDEN, topic });
    // The other connection may hear the first one leave before its own end.
    const seen = [await again.next()];
    if (seen[0]!.op !== 'error') seen.push(await again.next());
    assert.deepEqual(seen.at(-1), { op: 'error', topic, code: TopicErrorCode.FORBIDDEN, message: 'permission revoked through the server API' });
    const lefts = [await bob.next(), await bob.next()];
    assert.deepEqual(
      lefts.map((f) => f.type),
      ['session_left', 'session_left'],
    );
  });

  test("a logout through the server API closes the user's connections with 4001 and evicts their answers; a user event reaches them in the topic framing", async (t) => {
    const topic = `desktop:${desktop()}`;
    const ann = user('Ann');
    const conn = await connectTopics(t, server, token(ann));
    await subscribe(conn, topic);
    const delivered = await api(server, 'POST', `users/${ann.userId}/events`, { type: 'export_ready' });
    assert.deepEqual([delivered.status, delivered.body.delivered], [202, 1]);
    await expectOp(conn, 'event', { type: 'export_ready', sessionId: 'server' });
    const out = await api(server, 'POST', `users/${ann.userId}/disconnect`, {});
    assert.deepEqual([out.status, out.body.disconnected], [202, 1]);
    assert.equal((await conn.closed).code, 4001);
    assert.equal(conn.pending, 0, 'no legacy frame before the close');
    const again = await connectTopics(t, server, token(ann));
    await subscribe(again, topic);
    assert.equal(authorizeCalls(topic).length, 2);
  });

  test("a legacy session's role change reaches the room's subscribers as session_updated, in their framing", async (t) => {
    const id = desktop();
    const topic = `desktop:${id}`;
    const leo = user('Leo');
    const { client: legacy, joined } = await join(t, server.wsUrl(id), { token: token(leo) });
    const conn = await connectTopics(t, server, token(user('Sue')));
    await subscribe(conn, topic);
    await legacy.expect('session_joined');
    assert.equal((await api(server, 'PUT', `desktops/${id}/permissions/${leo.userId}`, { permission: 'viewer' })).status, 202);
    await legacy.expect('permission_changed');
    const updated = await expectOp(conn, 'event', { topic, type: 'session_updated', sessionId: joined.sessionId, permission: 'viewer' });
    assert.deepEqual(updated.payload, { sessionId: joined.sessionId, userId: leo.userId, firstName: 'Leo', email: 'leo@example.com', permission: 'viewer' });
  });
});
