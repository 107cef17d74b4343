/**
 * Handshake authentication: every bad token is a 401 before the permission
 * API is asked; a good one is accepted from the cookie or a Bearer header.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { connect, HandshakeRejected, join } from './helpers/client.ts';
import { startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { noneToken, nowSeconds, rawToken, token } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

before(async () => {
  stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base });
});
after(() => cleanup.run());

const valid = () => ({ userId: `user-${Math.random().toString(36).slice(2, 10)}`, firstName: 'Ann', email: 'ann@example.com' });

async function expectRejected(promise: Promise<unknown>, status: number): Promise<HandshakeRejected> {
  const err = await promise.then(
    () => assert.fail(`expected a ${status} rejection, but the upgrade succeeded`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof HandshakeRejected, `expected an HTTP rejection, got ${String(err)}`);
  assert.equal(err.status, status, err.message);
  return err;
}

/** The handshake is refused with 401 and the permission API is never asked. */
async function expect401(t: TestContext, headers: Record<string, string>): Promise<HandshakeRejected> {
  const asked = stub.requests.length;
  const err = await expectRejected(connect(t, server.wsUrl(desktop()), { headers }), 401);
  assert.equal(stub.requests.length, asked, 'permission API must not be called for an unauthenticated handshake');
  assert.equal(err.body, 'unauthorized\n');
  assert.match(String(err.headers['x-moodio-shard']), /^[01]$/);
  return err;
}

const cookie = (jwt: string) => ({ cookie: `${ACCESS_TOKEN_COOKIE}=${jwt}` });

test('no cookie and no Authorization header → 401', async (t) => {
  await expect401(t, {});
  await expect401(t, { cookie: 'other=1; session=abc' });
});

test('a token signed with another secret → 401', async (t) => {
  await expect401(t, cookie(token(valid(), 'not-the-server-secret-0123456789abcdef')));
});

test('alg none → 401', async (t) => {
  await expect401(t, cookie(noneToken({ ...valid(), exp: nowSeconds() + 600 })));
});

test('HS/RS confusion: a token labelled RS256 but HMAC-signed with the secret → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'RS256', typ: 'JWT' }, { ...valid(), exp: nowSeconds() + 600 })));
  await expect401(t, cookie(rawToken({ alg: 'HS512', typ: 'JWT' }, { ...valid(), exp: nowSeconds() + 600 })));
});

test('expired token → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256', typ: 'JWT' }, { ...valid(), iat: nowSeconds() - 7200, exp: nowSeconds() - 3600 })));
});

test('a token without exp never expires, so it is refused → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256', typ: 'JWT' }, { ...valid() })));
});

test('missing or empty userId → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { firstName: 'Ann', exp: nowSeconds() + 600 })));
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { userId: '', exp: nowSeconds() + 600 })));
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { userId: 12345678, exp: nowSeconds() + 600 })));
});

test('tampered payload, missing signature, garbage → 401', async (t) => {
  const good = token(valid());
  const [h, , s] = good.split('.');
  const forged = Buffer.from(JSON.stringify({ userId: 'admin-0000', exp: nowSeconds() + 600 })).toString('base64url');
  await expect401(t, cookie(`${h}.${forged}.${s}`));
  await expect401(t, cookie(good.split('.').slice(0, 2).join('.') + '.'));
  await expect401(t, cookie('not-a-jwt'));
});

test('a token issued far in the future → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { ...valid(), iat: nowSeconds() + 86_400, exp: nowSeconds() + 90_000 })));
});

test('a bad Bearer token → 401, a good one is accepted', async (t) => {
  await expect401(t, { authorization: `Bearer ${token(valid(), 'wrong-secret-wrong-secret-wrong-secret')}` });
  const claims = valid();
  const { joined } = await join(t, server.wsUrl(desktop()), { token: token(claims), via: 'bearer' });
  assert.equal(joined.type, 'room_joined');
  assert.equal(stub.requests.at(-1)!.userId, claims.userId);
});

test('the token cookie is found among other cookies, and takes precedence over Bearer', async (t) => {
  const claims = valid();
  const client = await connect(t, server.wsUrl(desktop()), {
    headers: {
      cookie: `theme=dark; ${ACCESS_TOKEN_COOKIE}=${token(claims)}; other=x`,
      authorization: `Bearer ${token(valid(), 'wrong-secret-wrong-secret-wrong-secret')}`,
    },
  });
  await client.expect('room_joined');
  assert.equal(stub.requests.at(-1)!.userId, claims.userId);
});

