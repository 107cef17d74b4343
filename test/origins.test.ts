/** --allowed-origins: a browser handshake from an unlisted origin is refused with 403. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect, HandshakeRejected } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

test('only listed origins (and non-browser clients without Origin) may connect', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--allowed-origins', 'https://moodio.example.com, http://localhost:3000'],
  });
  const open = (origin?: string) => connect(t, server.wsUrl(desktop()), { token: token(user('Ori')), ...(origin ? { wsOptions: { origin } } : {}) });

  for (const origin of ['https://moodio.example.com', 'http://localhost:3000', 'HTTPS://MOODIO.EXAMPLE.COM']) {
    assert.equal((await (await open(origin)).expect('room_joined')).type, 'room_joined', origin);
  }
  assert.equal((await (await open()).expect('room_joined')).type, 'room_joined', 'no Origin: not a browser');
  const asked = stub.requests.length;
  for (const origin of ['https://evil.example', 'https://moodio.example.com.evil.example', 'http://moodio.example.com', 'null']) {
    const err = await open(origin).then(
      () => assert.fail(`${origin} was admitted`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof HandshakeRejected);
    assert.equal(err.status, 403, origin);
  }
  assert.equal(stub.requests.length, asked, 'refused before the permission API is asked');
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'origin_not_allowed');
});

test('a malformed --allowed-origins fails at start naming the option', async (t) => {
  const err = await startServer(t, { workers: 1, args: ['--allowed-origins', 'moodio.example.com'] }).then(
    () => assert.fail('started'),
    (e: Error) => e,
  );
  assert.match(err.message, /--allowed-origins: "moodio\.example\.com" is not an origin/);
});
