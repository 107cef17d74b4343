/**
 * The permission API: asked once per handshake with URL-encoded ids and the
 * browser's cookies; only `200 {"permission":"editor"|"viewer"}` admits.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, test, type TestContext } from 'node:test';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { connect, HandshakeRejected, join, rawRequest } from './helpers/client.ts';
import { grant, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

before(async () => {
  stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--permission-timeout', '500ms'] });
});
after(() => cleanup.run());

async function expectStatus(t: TestContext, status: number, url = server.wsUrl(desktop())): Promise<HandshakeRejected> {
  const err = await connect(t, url, { token: token(user('Pam')) }).then(
    () => assert.fail('expected the handshake to be refused'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof HandshakeRejected, String(err));
  assert.equal(err.status, status);
  return err;
}

test('asks GET /api/desktop/{id}/permission?userId= with encoded ids and the forwarded cookie', async (t) => {
  stub.handle(grant('editor'));
  const claims = user('Ann', { userId: 'user a/b?c&d=é' });
  const room = desktop();
  const jwt = token(claims);
  const before = stub.requests.length;
  const client = await connect(t, server.wsUrl(room), { headers: { cookie: `theme=dark; ${ACCESS_TOKEN_COOKIE}=${jwt}` } });
  await client.expect('room_joined');
  assert.equal(stub.requests.length, before + 1, 'exactly one permission request per handshake');
  const req = stub.requests.at(-1)!;
  assert.equal(req.method, 'GET');
  assert.equal(req.url, `/api/desktop/${room}/permission?userId=${encodeURIComponent(claims.userId)}`);
  assert.equal(req.userId, claims.userId);
  assert.equal(req.desktopId, room);
  assert.equal(req.cookie, `theme=dark; ${ACCESS_TOKEN_COOKIE}=${jwt}`);
});

test('viewer and editor answers set the session permission', async (t) => {
  const room = desktop();
  stub.handle(grant('viewer'));
  const { client: viewer, joined } = await join(t, server.wsUrl(room), { token: token(user('Vic')) });
  stub.handle(grant('editor'));
  const { joined: editorJoined } = await join(t, server.wsUrl(room), { token: token(user('Eve')) });
  assert.equal(editorJoined.sessions[0].permission, 'viewer');
  assert.equal(editorJoined.sessions[0].sessionId, joined.sessionId);
  assert.equal((await viewer.expect('session_joined')).payload.permission, 'editor');
});

test('403 from the API → 403', async (t) => {
  stub.handle((_req, res) => {
    res.statusCode = 403;
    res.end('{"error":"no access"}');
  });
  await expectStatus(t, 403);
});

test('an explicit 403 or 404 from the API → 403; a 5xx is an outage → 503 with Retry-After', async (t) => {
  stub.handle((_req, res) => {
    res.statusCode = 404;
    res.end('{"error":"no such desktop"}');
  });
  await expectStatus(t, 403);
  for (const status of [500, 502, 503]) {
    stub.handle((_req, res) => {
      res.statusCode = status;
      res.end('boom');
    });
    const err = await expectStatus(t, 503);
    assert.equal(err.headers['retry-after'], '2');
    assert.equal(err.body, 'permission service unavailable\n');
  }
});

test('a garbage body, a non-object, or a missing field → 403', async (t) => {
  for (const body of ['not json', '[]', 'null', '{}', '{"permission":null}', '{"role":"editor"}']) {
    stub.handle((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(body);
    });
    await expectStatus(t, 403);
  }
});

test('an unknown role → 403', async (t) => {
  for (const role of ['owner', 'admin', 'Editor', '']) {
    stub.handle(grant(role));
    await expectStatus(t, 403);
  }
});

test('an API that never answers → 503 after --permission-timeout (fails fast, clients retry)', async (t) => {
  stub.handle(() => 'hang');
  const asked = stub.requests.length;
  const started = Date.now();
  const err = await expectStatus(t, 503);
  const elapsed = Date.now() - started;
  assert.equal(err.headers['retry-after'], '2');
  assert.equal(stub.requests.length, asked + 1, 'the API was asked');
  assert.ok(elapsed >= 450, `waited for the 500 ms timeout (${elapsed} ms), not refused at once`);
  assert.ok(elapsed < 3000, `answered after the 500 ms timeout, not the 5 s default (${elapsed} ms)`);
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'permission_unavailable' && l.code === 'ERR_PERMISSION_UNAVAILABLE');
});

test('an oversized answer → 403', async (t) => {
  stub.handle((_req, res) => {
    res.end(JSON.stringify({ permission: 'editor', pad: 'x'.repeat(64 * 1024) }));
  });
  await expectStatus(t, 403);
});

test('the API down (connection refused) → 503, and the server keeps serving', async (t) => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as { port: number }).port;
  await new Promise((resolve) => closed.close(resolve));
  const downServer = await startServer(t, { workers: 1, permissionApiBase: `http://127.0.0.1:${port}` });
  await expectStatus(t, 503, downServer.wsUrl(desktop()));
  // The server whose API is down keeps serving: it answers the next handshake the same way, and its health check.
  await expectStatus(t, 503, downServer.wsUrl(desktop()));
  assert.equal((await rawRequest(downServer.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'])).status, 200);
  assert.equal(downServer.child.exitCode, null);
  assert.ok(!downServer.logs.some((l) => l.event === 'shard_exit' || l.event === 'shard_error'), 'no shard died');
});

test('a base URL with a path prefix is respected', async (t) => {
  stub.handle(grant('editor'));
  const prefixed = await startServer(t, { workers: 1, permissionApiBase: `${stub.base}/app/` });
  const room = desktop();
  await expectStatus(t, 403, prefixed.wsUrl(room));
  assert.ok(stub.requests.at(-1)!.url.startsWith(`/app/api/desktop/${room}/permission?userId=`));
});
