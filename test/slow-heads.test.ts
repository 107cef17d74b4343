/**
 * A request head has to keep arriving: one dribbled a few bytes at a time is
 * cut by the minimum head rate, long before --handshake-timeout, while a
 * head sent in a few ordinary fragments is read and upgraded.
 */
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { after, before, test } from 'node:test';
import { HEAD_RATE_GRACE_MS } from '../src/primary/head-reader.ts';
import { rawRequest, untilJoined, upgradeHead } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
/** The default --handshake-timeout (src/config.ts). */
const HANDSHAKE_TIMEOUT_MS = 10_000;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base });
});
after(() => cleanup.run());

const authHeader = () => ({ Cookie: `moodio_access_token=${token(user('Sly'))}` });

test('a head dribbled at 20 B/s is closed by the minimum rate, long before --handshake-timeout', async (t) => {
  const head = Buffer.from(upgradeHead(`/ws/desktop/${desktop()}`, authHeader()));
  assert.ok(head.length > 400, 'at 20 B/s the head would take longer than the handshake timeout');
  const socket = netConnect(server.port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.on('error', () => {});
  let received = '';
  socket.setEncoding('latin1').on('data', (c: string) => (received += c));
  await new Promise((resolve) => socket.once('connect', resolve));
  const started = performance.now();
  let sent = 0;
  const dribble = setInterval(() => {
    if (sent < head.length) socket.write(head.subarray(sent, ++sent));
  }, 50);
  t.after(() => clearInterval(dribble));
  // Bounded: the old reader kept reading until the handshake timeout (or the whole head).
  const closed = await Promise.race([
    new Promise<number>((resolve) => socket.once('close', () => resolve(performance.now() - started))),
    new Promise<number>((resolve) => setTimeout(() => resolve(-1), HEAD_RATE_GRACE_MS + 2000).unref()),
  ]);
  clearInterval(dribble);
  assert.notEqual(closed, -1, `still open ${HEAD_RATE_GRACE_MS + 2000} ms after its first byte (${sent} bytes sent)`);
  assert.ok(closed >= HEAD_RATE_GRACE_MS - 100 && closed < HANDSHAKE_TIMEOUT_MS / 2, `closed after ${Math.round(closed)} ms`);
  assert.equal(received, '', 'closed like a timeout, without an answer');
  assert.ok(sent < head.length);
  await server.waitForLog((l) => l.event === 'handshake_rejected' && l.reason === 'head_too_slow');
});

test('a head sent in a few fragments over half a second is read and upgraded', async () => {
  const head = upgradeHead(`/ws/desktop/${desktop()}`, authHeader());
  const quarter = Math.ceil(head.length / 4);
  const pieces = [0, 1, 2, 3].map((i) => head.slice(i * quarter, (i + 1) * quarter));
  const res = await rawRequest(server.port, pieces, { gapMs: 150, until: untilJoined });
  assert.equal(res.status, 101);
  assert.match(res.raw, /"type":"room_joined"/);
});
