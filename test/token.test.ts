/**
 * verifyAccessToken on its own: the exact boundaries of every identity and
 * time rule, so that a limit off by one, or a check that stopped running,
 * fails here (test/auth.test.ts checks the same rules through the server).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  IAT_SKEW_SECONDS,
  MAX_CLAIM_LENGTH,
  MAX_ENCODED_CLAIM_LENGTH,
  secretKey,
  signInternalToken,
  unverifiedUserId,
  verifyAccessToken,
} from '../src/auth/token.ts';
import { AuthErrorCode } from '../src/errors.ts';
import { TEST_SECRET } from './helpers/server.ts';
import { rawToken } from './helpers/tokens.ts';

const NOW = 1_800_000_000_000;
const nowS = NOW / 1000;
const HS256 = { alg: 'HS256', typ: 'JWT' };
const verify = (payload: Record<string, unknown>) => verifyAccessToken(rawToken(HS256, { exp: nowS + 60, ...payload }), TEST_SECRET, NOW);
const refused = (payload: Record<string, unknown>, code: string) => assert.throws(() => verify(payload), { code }, JSON.stringify(payload).slice(0, 80));

test('optional claims: absent or null read as empty; anything but a string is refused', () => {
  const expiresAt = (nowS + 60) * 1000;
  assert.deepEqual(verify({ userId: 'u' }), { userId: 'u', firstName: '', email: '', permissionClaim: undefined, expiresAt });
  assert.deepEqual(verify({ userId: 'u', firstName: null, email: null }), { userId: 'u', firstName: '', email: '', permissionClaim: undefined, expiresAt });
  refused({ userId: 'u', firstName: 7 }, AuthErrorCode.BAD_CLAIMS);
  refused({ userId: 'u', email: {} }, AuthErrorCode.BAD_CLAIMS);
  assert.equal(verify({ userId: 'u', permission: 'viewer' }).permissionClaim, 'viewer');
  assert.equal(verify({ userId: 'u', permission: 3 }).permissionClaim, undefined);
});

test('claim lengths: exactly the limit passes, one more is refused, in characters and once encoded', () => {
  assert.equal(verify({ userId: 'u'.repeat(MAX_CLAIM_LENGTH) }).userId.length, MAX_CLAIM_LENGTH);
  refused({ userId: 'u'.repeat(MAX_CLAIM_LENGTH + 1) }, AuthErrorCode.BAD_CLAIMS);
  refused({ userId: '' }, AuthErrorCode.BAD_CLAIMS);
  assert.equal(verify({ userId: 'u', firstName: 'f'.repeat(MAX_CLAIM_LENGTH) }).firstName.length, MAX_CLAIM_LENGTH);
  refused({ userId: 'u', firstName: 'f'.repeat(MAX_CLAIM_LENGTH + 1) }, AuthErrorCode.BAD_CLAIMS);
  // "\n" encodes to 2 characters: 192 of them are exactly the encoded limit, 193 one more.
  const at = '\n'.repeat(MAX_ENCODED_CLAIM_LENGTH / 2);
  assert.equal(verify({ userId: 'u', email: at }).email, at);
  refused({ userId: 'u', email: at + '\n' }, AuthErrorCode.BAD_CLAIMS);
  refused({ userId: at + '\n' }, AuthErrorCode.BAD_CLAIMS);
  refused({ userId: 'u\ud800' }, AuthErrorCode.BAD_CLAIMS);
  refused({ userId: 'u', firstName: '\udc00x' }, AuthErrorCode.BAD_CLAIMS);
});

test('time claims: iat up to the skew ahead passes, a second more is refused; non-numbers are refused', () => {
  assert.equal(verify({ userId: 'u', iat: nowS + IAT_SKEW_SECONDS }).userId, 'u');
  refused({ userId: 'u', iat: nowS + IAT_SKEW_SECONDS + 1 }, AuthErrorCode.INVALID_TOKEN);
  refused({ userId: 'u', iat: '1' }, AuthErrorCode.BAD_CLAIMS);
});

test('an expired token is ERR_AUTH_EXPIRED; a bad signature or a payload that is not an object is invalid', () => {
  assert.throws(() => verifyAccessToken(rawToken(HS256, { userId: 'u', exp: nowS - 1 }), TEST_SECRET, NOW), { code: AuthErrorCode.EXPIRED });
  assert.throws(() => verifyAccessToken(rawToken(HS256, { userId: 'u', exp: nowS + 60 }, 'another-secret-0123456789-abcdefghijk'), TEST_SECRET, NOW), {
    code: AuthErrorCode.INVALID_TOKEN,
  });
  assert.throws(() => verifyAccessToken(rawToken({ ...HS256, crit: ['exp'] }, { userId: 'u', exp: nowS + 60 }), TEST_SECRET, NOW), {
    code: AuthErrorCode.INVALID_TOKEN,
  });
});

test('credentials: a protocol token wins, then the cookie, then a Bearer header; anything else is no token', async () => {
  const { extractCredentials } = await import('../src/auth/credentials.ts');
  const protocol = 'moodio.token.tok.p, moodio.v1';
  assert.deepEqual(extractCredentials({ 'sec-websocket-protocol': protocol, cookie: 'moodio_access_token=tok.c', authorization: 'Bearer tok.b' }), {
    token: 'tok.p',
    source: 'protocol',
  });
  assert.deepEqual(extractCredentials({ cookie: 'a=1; moodio_access_token=tok.c; b=2', authorization: 'Bearer tok.b' }), { token: 'tok.c', source: 'cookie' });
  assert.deepEqual(extractCredentials({ authorization: 'Bearer tok.b' }), { token: 'tok.b', source: 'bearer' });
  assert.deepEqual(extractCredentials({ cookie: 'other=1', authorization: 'bearer tok.b' }), { token: 'tok.b', source: 'bearer' });
  // A token protocol without moodio.v1 beside it does not count: the cookie is used.
  assert.deepEqual(extractCredentials({ 'sec-websocket-protocol': 'moodio.token.tok.p', cookie: 'moodio_access_token=tok.c' }), {
    token: 'tok.c',
    source: 'cookie',
  });
  assert.deepEqual(extractCredentials({ cookie: 'moodio_access_token=' }), null);
  assert.deepEqual(extractCredentials({ cookie: 'x=moodio_access_token' }), null);
  assert.deepEqual(extractCredentials({ authorization: 'Basic abc' }), null);
  assert.deepEqual(extractCredentials({}), null);
});

test('credentials: the protocol token is the first moodio.token.<jwt> offered with moodio.v1, in any order and header line', async () => {
  const { protocolToken, selectProtocol } = await import('../src/auth/credentials.ts');
  assert.equal(protocolToken('moodio.v1, moodio.token.a.b.c'), 'a.b.c');
  assert.equal(protocolToken('moodio.token.a.b.c,moodio.v1'), 'a.b.c');
  assert.equal(protocolToken('chat, moodio.token.first, moodio.token.second, moodio.v1'), 'first');
  assert.equal(protocolToken('moodio.v1, moodio.token., moodio.token.x'), 'x', 'an empty token is skipped');
  assert.equal(protocolToken('moodio.token.a.b.c'), null, 'without moodio.v1');
  assert.equal(protocolToken('moodio.v1'), null);
  assert.equal(protocolToken('moodio.v2, moodio.token.a'), null);
  assert.equal(protocolToken('moodio.v1x, moodio.token.a'), null);
  assert.equal(protocolToken(undefined), null);
  // The answer is moodio.v1 or nothing, never the token.
  assert.equal(selectProtocol(new Set(['moodio.token.a.b.c', 'moodio.v1'])), 'moodio.v1');
  assert.equal(selectProtocol(new Set(['moodio.token.a.b.c'])), false);
  assert.equal(selectProtocol(new Set(['chat'])), false);
});

test('the algorithm is pinned to HS256: tokens properly signed with HS384 or HS512 under the same secret, and alg none, are refused', async () => {
  const { default: jwt } = await import('jsonwebtoken');
  const claims = { userId: 'u', exp: nowS + 60 };
  assert.equal(verifyAccessToken(jwt.sign(claims, TEST_SECRET, { algorithm: 'HS256' }), TEST_SECRET, NOW).userId, 'u');
  for (const algorithm of ['HS384', 'HS512'] as const) {
    assert.throws(() => verifyAccessToken(jwt.sign(claims, TEST_SECRET, { algorithm }), TEST_SECRET, NOW), { code: AuthErrorCode.INVALID_TOKEN }, algorithm);
  }
  const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`;
  assert.throws(() => verifyAccessToken(none, TEST_SECRET, NOW), { code: AuthErrorCode.INVALID_TOKEN });
});

test('refusals say why, for the log line an operator reads (the client gets the same 401 whatever the detail)', async () => {
  const { default: jwt } = await import('jsonwebtoken');
  const message = (payload: Record<string, unknown>, text: string) => assert.throws(() => verify(payload), { message: text }, text);
  message({ userId: 'u', firstName: 7 }, `claim firstName must be a string of at most ${MAX_CLAIM_LENGTH} characters`);
  message({ userId: 'u\ud800' }, 'claim userId is not well-formed Unicode (lone surrogate)');
  message(
    { userId: 'u', email: '\n'.repeat(MAX_ENCODED_CLAIM_LENGTH / 2 + 1) },
    `claim email takes more than ${MAX_ENCODED_CLAIM_LENGTH} characters once JSON-encoded`,
  );
  message({ userId: 'u', iat: '1' }, 'claim iat must be a number of seconds');
  message({ userId: 'u', iat: nowS + IAT_SKEW_SECONDS + 1 }, 'token issued in the future');
  message({ userId: '' }, 'token has no valid userId claim');
  message({ userId: '\n'.repeat(MAX_ENCODED_CLAIM_LENGTH / 2 + 1) }, `claim userId takes more than ${MAX_ENCODED_CLAIM_LENGTH} characters once JSON-encoded`);
  assert.throws(() => verifyAccessToken(rawToken(HS256, { userId: 'u' }), TEST_SECRET, NOW), { message: 'token has no exp claim' });
  assert.throws(() => verifyAccessToken(rawToken({ ...HS256, crit: ['exp'] }, { userId: 'u', exp: nowS + 60 }), TEST_SECRET, NOW), {
    message: 'token header has crit: no JWS extension is supported',
  });
  // jsonwebtoken's own error is kept as the cause.
  const expired = (() => {
    try {
      verifyAccessToken(rawToken(HS256, { userId: 'u', exp: nowS - 1 }), TEST_SECRET, NOW);
    } catch (err) {
      return err as Error;
    }
    return null;
  })();
  assert.equal(expired?.message, 'token expired');
  assert.ok(expired?.cause instanceof jwt.TokenExpiredError);
  const forged = (() => {
    try {
      verifyAccessToken(rawToken(HS256, { userId: 'u', exp: nowS + 60 }, 'another-secret-0123456789-abcdefghijk'), TEST_SECRET, NOW);
    } catch (err) {
      return err as Error;
    }
    return null;
  })();
  assert.equal(forged?.message, 'invalid token: invalid signature');
  assert.ok(forged?.cause instanceof jwt.JsonWebTokenError);
});

test('the desktops claim is passed on as the token carries it, only when it has one', () => {
  assert.deepEqual(verify({ userId: 'u', desktops: { d1: 'editor' } }).desktopsClaim, { d1: 'editor' });
  assert.deepEqual(verify({ userId: 'u', desktops: 'nonsense' }).desktopsClaim, 'nonsense');
  assert.equal(Object.hasOwn(verify({ userId: 'u' }), 'desktopsClaim'), false);
});

test('unverifiedUserId: the userId of any token, signed or not (the primary only places by it); null when unreadable or its payload is over 8 KiB', () => {
  assert.equal(unverifiedUserId(rawToken(HS256, { userId: 'ann', exp: nowS + 60 })), 'ann');
  assert.equal(unverifiedUserId(rawToken(HS256, { userId: 'ann' }, 'another-secret-0123456789-abcdefghijk')), 'ann');
  assert.equal(unverifiedUserId(`x.${Buffer.from('{"userId":"bob"}').toString('base64url')}.`), 'bob');
  // Only the two dots matter: an empty header is read; a single dot is not (the payload cut short would still parse).
  assert.equal(unverifiedUserId(`.${Buffer.from('{"userId":"bob"}').toString('base64url')}.`), 'bob');
  assert.equal(unverifiedUserId(`x.${Buffer.from('{"userId":"bob"}  ').toString('base64url')}`), null);
  for (const tok of ['', 'abc', `x.${Buffer.from('{"userId":"bob"}').toString('base64url')}`, '.e30', 'x.!!!.y'])
    assert.equal(unverifiedUserId(tok), null, tok);
  for (const payload of ['null', '7', '{"userId":7}', '{"user":"ann"}', '{"userId":"ann"'])
    assert.equal(unverifiedUserId(rawToken(HS256, payload)), null, payload);
  // A payload segment of 8191 characters is read, one of 8192 is not (the JSON is 6143 and 6144 bytes).
  const padded = (bytes: number) => {
    const json = `{"userId":"ann","pad":"${'x'.repeat(bytes - 25)}"}`;
    assert.equal(json.length, bytes);
    return rawToken(HS256, json);
  };
  assert.equal(unverifiedUserId(padded(6143)), 'ann');
  assert.equal(unverifiedUserId(padded(6144)), null);
});

test("secretKey: the shard's key object verifies what the string secret verifies", () => {
  const tok = rawToken(HS256, { userId: 'u', exp: nowS + 60 });
  assert.deepEqual(verifyAccessToken(tok, secretKey(TEST_SECRET), NOW), verifyAccessToken(tok, TEST_SECRET, NOW));
  assert.throws(() => verifyAccessToken(tok, secretKey(`${TEST_SECRET}x`), NOW), { code: AuthErrorCode.INVALID_TOKEN });
});

test('signInternalToken: HS256 with exactly userId, aud, iat (the second of now) and exp = iat + ttl', async () => {
  const { default: jwt } = await import('jsonwebtoken');
  for (const secret of [TEST_SECRET, secretKey(TEST_SECRET)]) {
    const tok = signInternalToken('ann', 'moodio-authorize', 30, secret, NOW + 999);
    const { header, payload } = jwt.verify(tok, TEST_SECRET, { algorithms: ['HS256'], audience: 'moodio-authorize', clockTimestamp: nowS, complete: true });
    assert.deepEqual(header, { alg: 'HS256', typ: 'JWT' });
    assert.deepEqual(payload, { userId: 'ann', aud: 'moodio-authorize', iat: nowS, exp: nowS + 30 });
  }
});
