/**
 * Every refusal of the server API, against the real server (primary + 2
 * shards) with hand-written requests where the bytes matter: each answers
 * its status with a `{code, message}` body, and none reaches a session
 * (proven by a marker that must come next). Also: the API is off without a
 * key, the key is not the admin token, and kept-alive connections.
 */
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { after, before, test } from 'node:test';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { MAX_API_BODY_BYTES } from '../src/protocol/api.ts';
import { api, API_KEY, desktopOnShard, fill } from './helpers/api.ts';
import { rawRequest, upgradeHead } from './helpers/client.ts';
import { startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ADMIN = 'admin-token-for-api-tests-0123456789';
const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

before(async () => {
  stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--admin-token', ADMIN, '--handshake-timeout', '1s'],
  });
});
after(() => cleanup.run());

/** A raw HTTP/1.1 request to `path` with the API key (unless `auth` says otherwise) and `body`. */
function raw(method: string, path: string, body = '', headers: Record<string, string> = {}, auth: string | null = `Bearer ${API_KEY}`): string {
  const all: Record<string, string> = { Host: 'x', ...(auth === null ? {} : { Authorization: auth }), ...headers };
  if (body !== '' && all['Content-Length'] === undefined && all['Transfer-Encoding'] === undefined) all['Content-Length'] = String(Buffer.byteLength(body));
  return `${method} ${path} HTTP/1.1\r\n${Object.entries(all)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n${body}`;
}

/** Send one request on a fresh connection and parse the JSON body; `Connection: close` is added, so that the server closes after its answer. */
async function call(request: string): Promise<{ status: number; headers: Record<string, string>; body: any }> {
  const res = await rawRequest(server.port, [request.replace('\r\n', '\r\nConnection: close\r\n')]);
  return { status: res.status, headers: res.headers, body: res.body === '' ? undefined : JSON.parse(res.body) };
}

/** One session on a desktop of each shard; `check` must leave their inboxes empty, proven by a marker. */
async function nothingDelivered(t: Parameters<typeof fill>[0], check: (desktops: string[], userId: string) => Promise<void>): Promise<void> {
  const ann = user('Ann');
  const members = [...(await fill(t, server, desktopOnShard(0), [ann])), ...(await fill(t, server, desktopOnShard(1), [ann]))];
  await check(
    members.map((m) => m.desktopId),
    ann.userId,
  );
  assert.equal((await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/events`, { type: 'marker' })).body.delivered, 2);
  for (const m of members) assert.equal((await m.client.next()).type, 'marker');
}

test('the API is off without --api-key: every /api/v1/ path is a plain 404', async (t) => {
  const off = await startServer(t, { workers: 2, permissionApiBase: stub.base });
  for (const request of [
    raw('POST', '/api/v1/broadcast', '{"type":"x"}'),
    raw('GET', `/api/v1/desktops/${desktopOnShard(0)}/presence`),
    raw('GET', '/api/v1/'),
  ]) {
    const res = await rawRequest(off.port, [request]);
    assert.equal(res.status, 404);
    assert.equal(res.body, 'not found\n');
  }
});

test('a missing or wrong key → 401 with WWW-Authenticate; the admin token is no API key, nor the API key an admin token', async (t) => {
  await nothingDelivered(t, async (desktops) => {
    const path = `/api/v1/desktops/${desktops[0]}/events`;
    const body = '{"type":"x"}';
    for (const auth of [null, 'Bearer nope', `Bearer ${API_KEY}x`, `Bearer ${API_KEY.slice(0, -1)}`, `Basic ${API_KEY}`, `Bearer ${ADMIN}`, API_KEY]) {
      const res = await call(raw('POST', path, body, {}, auth));
      assert.equal(res.status, 401, String(auth));
      assert.equal(res.headers['www-authenticate'], 'Bearer');
      assert.equal(res.body.code, 'unauthorized');
      assert.equal(typeof res.body.message, 'string');
    }
    // Checked before anything else: an unknown path without the key is 401 too, not 404.
    assert.equal((await call(raw('GET', '/api/v1/nothing', '', {}, null))).status, 401);
  });
  const stats = await rawRequest(server.port, [raw('GET', '/stats')]);
  assert.equal(stats.status, 401, 'the API key does not open /stats');
  const lowerScheme = await call(raw('GET', `/api/v1/desktops/${desktopOnShard(1)}/presence`, '', {}, `bearer ${API_KEY}`));
  assert.equal(lowerScheme.status, 200, 'the scheme is case-insensitive');
});

test('unknown endpoints → 404, a known one with another method → 405 with Allow', async () => {
  for (const path of [
    '/api/v1/',
    '/api/v1/desktops',
    '/api/v1/desktops/abc',
    '/api/v1/desktops/abc/nothing',
    '/api/v1/users/u/events/x',
    '/api/v1/broadcast/',
    '/api/v1/desktops/abc/events/',
  ]) {
    const res = await call(raw('POST', path, '{"type":"x"}'));
    assert.deepEqual([res.status, res.body.code], [404, 'not_found'], path);
  }
  const cases: [string, string, string][] = [
    ['GET', '/api/v1/broadcast', 'POST'],
    ['PUT', '/api/v1/desktops/abc/events', 'POST'],
    ['POST', '/api/v1/desktops/abc/permissions/u', 'PUT'],
    ['POST', '/api/v1/desktops/abc/presence', 'GET'],
    ['DELETE', '/api/v1/users/u/sessions', 'GET'],
    ['GET', '/api/v1/users/u/disconnect', 'POST'],
  ];
  for (const [method, path, allow] of cases) {
    const res = await call(raw(method, path, method === 'GET' || method === 'DELETE' ? '' : '{}'));
    assert.deepEqual([res.status, res.body.code, res.headers.allow], [405, 'method_not_allowed', allow], `${method} ${path}`);
  }
});

test('malformed bodies, wrong field types, unknown roles, bad types and bad ids → 400, and reach no one', async (t) => {
  await nothingDelivered(t, async ([d0], userId) => {
    const u = encodeURIComponent(userId);
    const cases: [string, string, string, string][] = [
      // [method, path, body, code]
      ['POST', `desktops/${d0}/events`, '{"type":"x",', 'invalid_json'],
      ['POST', `desktops/${d0}/events`, '', 'invalid_json'],
      ['POST', `desktops/${d0}/events`, '[{"type":"x"}]', 'invalid_body'],
      ['POST', `desktops/${d0}/events`, 'null', 'invalid_body'],
      ['POST', `desktops/${d0}/events`, '"x"', 'invalid_body'],
      ['POST', `desktops/${d0}/events`, '{"type":"x","exceptUserId":7}', 'invalid_body'],
      ['POST', `desktops/${d0}/events`, '{"type":"x","exceptUserId":""}', 'invalid_body'],
      ['POST', `desktops/${d0}/events`, '{"payload":1}', 'invalid_type'],
      ['POST', `desktops/${d0}/events`, '{"type":7}', 'invalid_type'],
      ['POST', `desktops/${d0}/events`, '{"type":""}', 'invalid_type'],
      ['POST', `desktops/${d0}/events`, JSON.stringify({ type: 'x'.repeat(65) }), 'invalid_type'],
      ['POST', `users/${u}/events`, '{"type":null}', 'invalid_type'],
      ['POST', 'broadcast', '{}', 'invalid_type'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"permission":"owner"}', 'invalid_permission'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"permission":"Editor"}', 'invalid_permission'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"permission":""}', 'invalid_permission'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"permission":1}', 'invalid_body'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"role":"viewer"}', 'invalid_body'],
      ['PUT', `desktops/${d0}/permissions/${u}`, '{"permission":"viewer"', 'invalid_json'],
      ['POST', `users/${u}/disconnect`, '{"reason":5}', 'invalid_body'],
      ['POST', `users/${u}/disconnect`, JSON.stringify({ reason: 'é'.repeat(62) }), 'invalid_body'],
      ['POST', `users/${u}/disconnect`, '[]', 'invalid_body'],
      ['POST', `users/${u}/disconnect`, 'nope', 'invalid_json'],
      ['POST', 'desktops/bad.id/events', '{"type":"x"}', 'invalid_id'],
      ['POST', `desktops/${'d'.repeat(129)}/events`, '{"type":"x"}', 'invalid_id'],
      ['GET', 'desktops/%2e%2e/presence', '', 'invalid_id'],
      ['PUT', `desktops/${d0}/permissions/%E0%A4%A`, '{"permission":"viewer"}', 'invalid_id'],
      ['POST', 'users/%ED%A0%80/events', '{"type":"x"}', 'invalid_id'],
      ['POST', `users/${'u'.repeat(257)}/events`, '{"type":"x"}', 'invalid_id'],
      ['POST', `users/${'%01'.repeat(200)}/events`, '{"type":"x"}', 'invalid_id'],
      ['GET', `users/${u}/sessions`, '{}', 'bad_request'],
    ];
    for (const [method, path, body, code] of cases) {
      const res = await call(raw(method, `/api/v1/${path}`, body));
      assert.deepEqual([res.status, res.body?.code], [400, code], `${method} ${path} ${body.slice(0, 40)}`);
      assert.ok(res.body.message.length > 0);
    }
  });
  // The limits themselves pass: a type of 64 characters, a user id of 256, a reason of 123 bytes.
  const [m] = await fill(t, server, desktopOnShard(1), [user('Lim')]);
  assert.equal((await api(server, 'POST', `desktops/${m!.desktopId}/events`, { type: 'y'.repeat(64) })).status, 202);
  await m!.client.expect('y'.repeat(64));
  assert.equal((await api(server, 'POST', `users/${'u'.repeat(256)}/events`, { type: 'y' })).status, 202);
  assert.equal((await api(server, 'POST', `users/${encodeURIComponent(user('Zed').userId)}/disconnect`, { reason: 'é'.repeat(61) + 'a' })).status, 202);
});

test("the server's own event types are refused: room_joined, session_*, error, permission_changed", async (t) => {
  await nothingDelivered(t, async ([d0], userId) => {
    for (const type of ['room_joined', 'session_joined', 'session_left', 'session_updated', 'session_anything', 'error', 'permission_changed']) {
      for (const path of [`desktops/${d0}/events`, `users/${encodeURIComponent(userId)}/events`, 'broadcast']) {
        const res = await api(server, 'POST', path, { type, payload: { spoof: true } });
        assert.deepEqual([res.status, res.body.code], [400, 'reserved_type'], `${type} to ${path}`);
      }
    }
  });
});

test('a body over 64 KiB → 413 without being read; exactly 64 KiB is accepted; chunked → 411', async (t) => {
  await nothingDelivered(t, async ([d0]) => {
    const path = `/api/v1/desktops/${d0}/events`;
    const over = await rawRequest(server.port, [raw('POST', path, '', { 'Content-Length': String(MAX_API_BODY_BYTES + 1) })]);
    assert.equal(over.status, 413);
    assert.equal(JSON.parse(over.body).code, 'body_too_large');
    const chunked = await rawRequest(server.port, [raw('POST', path, '5\r\n{"ty"\r\n0\r\n\r\n', { 'Transfer-Encoding': 'chunked' })]);
    assert.deepEqual([chunked.status, JSON.parse(chunked.body).code], [411, 'length_required']);
  });
  const [m] = await fill(t, server, desktopOnShard(1), [user('Big')]);
  const frame = { type: 'big', payload: '' };
  frame.payload = 'p'.repeat(MAX_API_BODY_BYTES - JSON.stringify(frame).length);
  assert.equal(JSON.stringify(frame).length, MAX_API_BODY_BYTES);
  const res = await api(server, 'POST', `desktops/${m!.desktopId}/events`, frame);
  assert.deepEqual([res.status, res.body.delivered], [202, 1]);
  assert.equal((await m!.client.expect('big')).payload.length, frame.payload.length);
});

test('a body that does not arrive in time → 408; a client that expects 100-continue gets it', async (t) => {
  const [m] = await fill(t, server, desktopOnShard(0), [user('Eve')]);
  const path = `/api/v1/desktops/${m!.desktopId}/events`;
  const slow = await rawRequest(server.port, [raw('POST', path, '{"type"', { 'Content-Length': '20' })]);
  assert.deepEqual([slow.status, JSON.parse(slow.body).code], [408, 'body_timeout']);
  const body = '{"type":"continued"}';
  const socket = netConnect({ port: server.port, host: '127.0.0.1' });
  t.after(() => socket.destroy());
  let received = '';
  socket.setEncoding('latin1');
  socket.write(raw('POST', path, '', { 'Content-Length': String(body.length), Expect: '100-continue' }));
  await new Promise<void>((resolve) => socket.on('data', (chunk: string) => ((received += chunk), received.includes('100 Continue') && resolve())));
  assert.ok(received.startsWith('HTTP/1.1 100 Continue\r\n\r\n'), received);
  socket.write(body);
  await m!.client.expect('continued');
});

test('a kept-alive connection answers request after request, pipelined too; anything else on it is answered and closes it', async (t) => {
  const [m] = await fill(t, server, desktopOnShard(1), [user('Kat')]);
  const publish = (type: string) => raw('POST', `/api/v1/desktops/${m!.desktopId}/events`, JSON.stringify({ type }));
  // Two requests in one write, then a plain GET /health after them: three answers, the last one closing.
  const res = await rawRequest(server.port, [publish('one') + publish('two'), 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  const statuses = [...res.raw.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((x) => Number(x[1]));
  assert.deepEqual(statuses, [202, 202, 200]);
  assert.equal((res.raw.match(/Connection: keep-alive/g) ?? []).length, 2);
  assert.ok(res.raw.endsWith('ok'), 'the health answer came last, then the close');
  await m!.client.expect('one');
  await m!.client.expect('two');
  // A WebSocket upgrade can only be a connection's first request: on a used one it is refused.
  const upgrade = upgradeHead(`/ws/desktop/${m!.desktopId}`, { Cookie: `${ACCESS_TOKEN_COOKIE}=${token(user('Upg'))}` });
  const refused = await rawRequest(server.port, [publish('three') + upgrade]);
  assert.deepEqual(
    [...refused.raw.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((x) => Number(x[1])),
    [202, 400],
  );
  await m!.client.expect('three');
  // Connection: close is honoured.
  const closing = await rawRequest(server.port, [raw('GET', `/api/v1/desktops/${m!.desktopId}/presence`, '', { Connection: 'close' })]);
  assert.equal(closing.headers.connection, 'close');
});

test('a shard that is restarting → 503 with Retry-After, for its desktops and for user-wide calls; nothing is half-applied', async (t) => {
  // A session on shard 0 that never answers the closing handshake keeps the shard down for the terminate's grace (1 s).
  const hung = netConnect({ port: server.port, host: '127.0.0.1' });
  t.after(() => hung.destroy());
  const d0 = desktopOnShard(0);
  hung.write(upgradeHead(`/ws/desktop/${d0}`, { Cookie: `${ACCESS_TOKEN_COOKIE}=${token(user('Hun'))}` }));
  let seen = '';
  await new Promise<void>((resolve) => hung.on('data', (c: Buffer) => ((seen += c.toString('latin1')), seen.includes('room_joined') && resolve())));
  const ann = user('Ann');
  const [a] = await fill(t, server, desktopOnShard(1), [ann]);

  const kill = await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  assert.equal(kill.status, 202);
  const calls: [string, string, unknown][] = [
    ['POST', `desktops/${d0}/events`, { type: 'x' }],
    ['PUT', `desktops/${d0}/permissions/u`, { permission: 'viewer' }],
    ['GET', `desktops/${d0}/presence`, undefined],
    ['POST', `users/${encodeURIComponent(ann.userId)}/events`, { type: 'half' }],
    ['POST', `users/${encodeURIComponent(ann.userId)}/disconnect`, undefined],
    ['GET', `users/${encodeURIComponent(ann.userId)}/sessions`, undefined],
    ['POST', 'broadcast', { type: 'half' }],
  ];
  for (const [method, path, body] of calls) {
    const res = await api(server, method, path, body);
    assert.deepEqual([res.status, res.body.code], [503, 'shard_unavailable'], `${method} ${path}`);
    assert.ok(Number(res.headers.get('retry-after')) >= 1);
  }
  // The other shard's desktops are served meanwhile.
  assert.equal((await api(server, 'POST', `desktops/${a!.desktopId}/events`, { type: 'served' })).status, 202);
  await a!.client.expect('served');
  // Once the shard is back, user-wide calls are too, and the first thing Ann gets is this one: the refused ones reached no shard.
  await server.waitForLog((l) => l.event === 'shard_ready' && l.shard === 0 && l.restarts === 1);
  assert.equal((await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/events`, { type: 'whole' })).body.delivered, 1);
  assert.equal((await a!.client.next()).type, 'whole');
});

test('refusals are counted by status in /metrics', async () => {
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
  for (const status of ['400', '401', '404', '405', '413', '503']) assert.ok(value(`moodio_rt_api_refused_total{status="${status}"}`) >= 1, status);
  assert.ok(value('moodio_rt_api_refused_total{status="other"}') >= 2, '408 and 411');
});
