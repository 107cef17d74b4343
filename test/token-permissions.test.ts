/**
 * `--permissions-from-token`: the token's `desktops` claim (or its flat
 * `permission`) decides each session's role, and the permission API is never
 * asked. Against the real server with two shards, a stub standing by to
 * prove no request reaches it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClaimPermissionSource, MAX_DESKTOPS_CLAIM_ENTRIES } from '../src/auth/permission-client.ts';
import { PermissionError } from '../src/errors.ts';
import { api, API_KEY } from './helpers/api.ts';
import { connect, HandshakeRejected, join } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

async function refusedWith(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof HandshakeRejected) return err.status;
    throw err;
  }
  assert.fail('the handshake was accepted');
}

test('--permissions-from-token: the desktops claim gives each desktop its role, "*" any other, and the permission API is never asked', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--permissions-from-token'] });
  const [seen, other, unnamed] = [desktop(), desktop(), desktop()];

  const viewerHere = token(user('Vera', { desktops: { [seen]: 'viewer', '*': 'editor' } }));
  const { joined: asViewer } = await join(t, server.wsUrl(seen), { token: viewerHere });
  assert.equal(asViewer.permission, 'viewer');
  const { joined: elsewhere } = await join(t, server.wsUrl(other), { token: viewerHere });
  assert.equal(elsewhere.permission, 'editor', '"*" covers a desktop the claim does not name');

  const onlyOne = token(user('Olga', { desktops: { [seen]: 'editor' } }));
  assert.equal(await refusedWith(connect(t, server.wsUrl(unnamed), { token: onlyOne })), 403, 'a desktop the claim does not name, without "*"');
  const { joined: named } = await join(t, server.wsUrl(seen), { token: onlyOne });
  assert.equal(named.permission, 'editor');

  assert.equal(await refusedWith(connect(t, server.wsUrl(seen), { token: token(user('Nora')) })), 403, 'a token with neither claim');
  assert.equal(await refusedWith(connect(t, server.wsUrl(seen), { token: token(user('Odin', { desktops: { [seen]: 'owner' } })) })), 403, 'an unknown role');
  assert.equal(
    await refusedWith(connect(t, server.wsUrl(seen), { token: token(user('Arry', { desktops: ['editor'] as never })) })),
    403,
    'a claim of the wrong shape',
  );

  const flat = token(user('Fay', { permission: 'viewer' }));
  const { joined: flatJoined } = await join(t, server.wsUrl(unnamed), { token: flat });
  assert.equal(flatJoined.permission, 'viewer', 'the flat permission claim applies to every desktop');

  assert.equal(stub.requests.length, 0, 'no request reached the permission API');
});

test('--permissions-from-token: a revocation through the server API is not undone by reconnecting with the same token', async (t) => {
  const server = await startServer(t, { workers: 2, args: ['--permissions-from-token', '--api-key', API_KEY] });
  const room = desktop();
  const claims = user('Rene', { desktops: { '*': 'editor' } });
  const held = token(claims);
  const { client } = await join(t, server.wsUrl(room), { token: held });
  const res = await api(server, 'PUT', `desktops/${room}/permissions/${encodeURIComponent(claims.userId)}`, { permission: 'none' });
  assert.equal(res.status, 202);
  assert.equal((await client.closed).code, 4003);
  assert.equal(await refusedWith(connect(t, server.wsUrl(room), { token: held })), 403, 'the token still says editor; the API said none');
});

test('ClaimPermissionSource: own properties only, a bounded claim, the fallback', async () => {
  const identity = (claims: { desktops?: unknown; permission?: string }) => ({
    userId: 'u-0001',
    firstName: '',
    email: '',
    permissionClaim: claims.permission,
    expiresAt: 0,
    desktopsClaim: claims.desktops,
  });
  const strict = new ClaimPermissionSource(null);
  await assert.rejects(strict.check('toString', identity({ desktops: {} })), PermissionError, 'Object.prototype is not searched');
  await assert.rejects(strict.check('constructor', identity({ desktops: { d1: 'editor' } })), PermissionError, 'nor its constructor');
  assert.equal(
    await strict.check('__proto__', identity({ desktops: JSON.parse('{"__proto__":"viewer"}') })),
    'viewer',
    'a JSON key __proto__ is an own property',
  );
  const huge = Object.fromEntries(Array.from({ length: MAX_DESKTOPS_CLAIM_ENTRIES + 1 }, (_, i) => [`d${i}`, 'editor']));
  await assert.rejects(strict.check('d1', identity({ desktops: huge })), PermissionError, 'a claim over the bound is refused whole');
  await assert.rejects(strict.check('d1', { ...identity({}), desktopsClaim: undefined }), PermissionError, 'no claim and no fallback');
  assert.equal(await new ClaimPermissionSource('editor').check('d1', identity({})), 'editor', 'dev mode: editor by default');
  assert.equal(await strict.check('d1', identity({ desktops: { d1: 'viewer' }, permission: 'editor' })), 'viewer', 'desktops wins over permission');
});
