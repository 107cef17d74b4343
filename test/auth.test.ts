/**
 * Handshake authentication: every bad token is a 401 before the permission
 * API is asked; a good one is accepted from Sec-WebSocket-Protocol, the
 * cookie or a Bearer header, in that order, and a protocol token is never
 * echoed nor logged.
 * verifyAccessToken's own checks (crit, time claims, well-formed identity
 * claims) are also asserted directly, by error code.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { verifyAccessToken } from '../src/auth/token.ts';
import { AuthErrorCode, type AuthErrorCodeValue } from '../src/errors.ts';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { connect, HandshakeRejected, join, rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { noneToken, nowSeconds, rawToken, token, user } from './helpers/tokens.ts';

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

/** No log line, stdout or stderr of the server holds `secret`. */
function assertNotLogged(secret: string): void {
  const output = JSON.stringify(server.logs) + server.stdout + server.stderr;
  assert.ok(!output.includes(secret), 'a token reached the server log');
}

test('a token in Sec-WebSocket-Protocol beside moodio.v1 is accepted; the answer is moodio.v1, never the token, and it is not logged', async (t) => {
  const claims = valid();
  const jwt = token(claims);
  // Offered first: ws's default would answer the first offered protocol, the token.
  const res = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${desktop()}`, { 'Sec-WebSocket-Protocol': `moodio.token.${jwt}, moodio.v1` })], {
    until: untilJoined,
  });
  assert.equal(res.status, 101, res.head);
  assert.equal(res.headers['sec-websocket-protocol'], 'moodio.v1');
  assert.ok(!res.raw.includes(jwt), 'the token is not echoed');
  assert.equal(stub.requests.at(-1)!.userId, claims.userId);

  // A real client accepts that answer (ws refuses a handshake whose protocol it did not offer).
  const { client } = await join(t, server.wsUrl(desktop()), { token: jwt, via: 'protocol' });
  assert.equal(client.ws.protocol, 'moodio.v1');

  const forged = token(valid(), 'wrong-secret-wrong-secret-wrong-secret');
  await expect401(t, { 'sec-websocket-protocol': `moodio.v1, moodio.token.${forged}` });
  assertNotLogged(jwt);
  assertNotLogged(forged);
});

test('the protocol token wins over the cookie; without moodio.v1 beside it, it is no credential', async (t) => {
  const claims = valid();
  const client = await connect(t, server.wsUrl(desktop()), { token: token(claims), via: 'protocol', headers: cookie(token(valid())) });
  await client.expect('room_joined');
  assert.equal(stub.requests.at(-1)!.userId, claims.userId);

  await expect401(t, { 'sec-websocket-protocol': `moodio.token.${token(valid())}` });
});

test('a cookie client offering other protocols gets no protocol answered', async () => {
  const res = await rawRequest(
    server.port,
    [upgradeHead(`/ws/desktop/${desktop()}`, { ...cookie(token(valid())), 'Sec-WebSocket-Protocol': 'chat, superchat' })],
    { until: untilJoined },
  );
  assert.equal(res.status, 101, res.head);
  assert.equal(res.headers['sec-websocket-protocol'], undefined);
});

/** verifyAccessToken refuses `jwt` with `code`. */
function refused(jwt: string, code: AuthErrorCodeValue, message?: string): void {
  assert.throws(() => verifyAccessToken(jwt, TEST_SECRET), { code }, message);
}

const inTenMinutes = () => nowSeconds() + 600;

test('unit: a crit header is refused, whatever it lists (no JWS extension is understood)', () => {
  for (const crit of [['exp'], ['b64'], [], 'x']) {
    refused(rawToken({ alg: 'HS256', typ: 'JWT', crit }, { ...valid(), exp: inTenMinutes() }), AuthErrorCode.INVALID_TOKEN, JSON.stringify(crit));
  }
  assert.doesNotThrow(() => verifyAccessToken(rawToken({ alg: 'HS256', typ: 'JWT' }, { ...valid(), exp: inTenMinutes() }), TEST_SECRET));
});

test('unit: exp, iat and nbf must be finite numbers when present', () => {
  const user = JSON.stringify(valid()).slice(1, -1);
  const exp = inTenMinutes();
  // Not checked by jsonwebtoken: a string iat, and numbers JSON reads as ±Infinity.
  refused(rawToken({ alg: 'HS256' }, { ...valid(), iat: String(nowSeconds()), exp }), AuthErrorCode.BAD_CLAIMS, 'string iat');
  refused(rawToken({ alg: 'HS256' }, { ...valid(), iat: [nowSeconds()], exp }), AuthErrorCode.BAD_CLAIMS, 'array iat');
  refused(rawToken({ alg: 'HS256' }, `{${user},"exp":1e400}`), AuthErrorCode.BAD_CLAIMS, 'exp = Infinity never expires');
  refused(rawToken({ alg: 'HS256' }, `{${user},"exp":${exp},"iat":-1e400}`), AuthErrorCode.BAD_CLAIMS, 'iat = -Infinity');
  refused(rawToken({ alg: 'HS256' }, `{${user},"exp":${exp},"nbf":-1e400}`), AuthErrorCode.BAD_CLAIMS, 'nbf = -Infinity');
  // Refused by jsonwebtoken itself before our checks: a wrong type of exp or nbf.
  refused(rawToken({ alg: 'HS256' }, { ...valid(), exp: String(exp) }), AuthErrorCode.INVALID_TOKEN, 'string exp');
  refused(rawToken({ alg: 'HS256' }, { ...valid(), exp, nbf: '0' }), AuthErrorCode.INVALID_TOKEN, 'string nbf');
  assert.doesNotThrow(() => verifyAccessToken(rawToken({ alg: 'HS256' }, { ...valid(), iat: nowSeconds(), nbf: nowSeconds() - 1, exp }), TEST_SECRET));
});

test('unit: userId, firstName and email must be well-formed Unicode', () => {
  const exp = inTenMinutes();
  for (const claim of ['userId', 'firstName', 'email']) {
    for (const lone of ['\ud800', '\udfff', 'x\ud83dy']) {
      refused(rawToken({ alg: 'HS256' }, { ...valid(), [claim]: `user-${lone}-0001`, exp }), AuthErrorCode.BAD_CLAIMS, `${claim} with ${JSON.stringify(lone)}`);
    }
  }
  const identity = verifyAccessToken(rawToken({ alg: 'HS256' }, { ...valid(), userId: 'user-\u{1f600}-0001', firstName: 'Zoë \u{1f600}', exp }), TEST_SECRET);
  assert.deepEqual([identity.userId, identity.firstName], ['user-\u{1f600}-0001', 'Zoë \u{1f600}'], 'surrogate pairs are fine');
});

test('a crit header → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256', typ: 'JWT', crit: ['exp'] }, { ...valid(), exp: inTenMinutes() })));
});

test('a string iat, or an exp of 1e400 (Infinity) → 401', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { ...valid(), iat: String(nowSeconds()), exp: inTenMinutes() })));
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, `{${JSON.stringify(valid()).slice(1, -1)},"exp":1e400}`)));
});

test('an identity claim with a lone surrogate → 401, not 500', async (t) => {
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { ...valid(), userId: 'user-\ud800-0001', exp: inTenMinutes() })));
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { ...valid(), firstName: 'Ann\udc00', exp: inTenMinutes() })));
  await expect401(t, cookie(rawToken({ alg: 'HS256' }, { ...valid(), email: '\ud83d@example.com', exp: inTenMinutes() })));
});

test('an identity claim that is small in characters but large once JSON-encoded (control characters) is refused with 401', async (t) => {
  const escaped = '\u0001'.repeat(200); // 200 characters, 1,200 once encoded: stamped on every event
  assert.throws(() => verifyAccessToken(token(user('Esc', { firstName: escaped })), TEST_SECRET), { code: AuthErrorCode.BAD_CLAIMS });
  assert.throws(() => verifyAccessToken(token({ userId: 'u'.repeat(10) + '\u0002'.repeat(100) }), TEST_SECRET), { code: AuthErrorCode.BAD_CLAIMS });
  assert.equal(verifyAccessToken(token(user('Ok', { firstName: 'é'.repeat(256) })), TEST_SECRET).firstName.length, 256, 'non-ASCII is not escaped: allowed');
  void t;
});
