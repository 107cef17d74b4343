/**
 * The primary's routing decision on its own: `route()` for every kind of
 * request, with the exact Route each gets (rejection, Allow header, whether
 * it counts as a refused handshake), the origin check with origins parsed
 * as `--allowed-origins` parses them, and the admin and metrics tokens.
 * test/routing.test.ts and test/origins.test.ts check the same answers
 * through the real server.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveServeConfig } from '../src/config.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { parseRequestHead, type RequestHead } from '../src/protocol/http.ts';
import { Rejections } from '../src/protocol/rejections.ts';
import { route, shardFor, type Route, type RouterOptions } from '../src/primary/router.ts';

function head(method: string, path: string, headers: Record<string, string> = {}): RequestHead {
  const text = `${method} ${path} HTTP/1.1\r\nHost: x\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;
  const parsed = parseRequestHead(Buffer.from(text, 'latin1'));
  assert.ok(parsed.ok, text);
  return parsed.head;
}

const UPGRADE = { Upgrade: 'websocket', Connection: 'Upgrade' };
const OPTIONS: RouterOptions = { workers: 20, adminToken: 'admin-secret', allowedOrigins: [], metricsToken: '', dev: false };
const reject = (rejection: (typeof Rejections)[keyof typeof Rejections], handshake: boolean, headers?: Record<string, string>): Route =>
  headers === undefined ? { kind: 'reject', rejection, handshake } : { kind: 'reject', rejection, headers, handshake };
const toShard = (desktopId: string, workers = OPTIONS.workers): Route => ({ kind: 'shard', desktopId, shard: fnv1a32(desktopId) % workers });

test('shardFor is fnv1a32 of the id modulo the workers', () => {
  assert.equal(shardFor('foobar', 7), 0xbf9cf968 % 7);
  assert.equal(shardFor('foobar', 1), 0);
  assert.equal(shardFor('desk-42', 20), fnv1a32('desk-42') % 20);
});

test('the WebSocket path: a GET upgrade goes to its shard; a body, another method, or no upgrade is refused as a handshake', () => {
  const cases: [RequestHead, Route][] = [
    [head('GET', '/ws/desktop/desk-42', UPGRADE), toShard('desk-42')],
    [head('GET', '/ws/desktop/desk-42', { Upgrade: 'WebSocket', Connection: 'keep-alive, Upgrade' }), toShard('desk-42')],
    [head('GET', '/ws/desktop/desk-42', { ...UPGRADE, 'Content-Length': '0' }), toShard('desk-42')],
    [head('POST', '/ws/desktop/desk-42', UPGRADE), reject(Rejections.METHOD_NOT_ALLOWED, true, { Allow: 'GET' })],
    [head('GET', '/ws/desktop/desk-42', { ...UPGRADE, 'Content-Length': '5' }), reject(Rejections.BODY_NOT_ALLOWED, true)],
    [head('GET', '/ws/desktop/desk-42', { ...UPGRADE, 'Transfer-Encoding': 'chunked' }), reject(Rejections.BODY_NOT_ALLOWED, true)],
    [head('GET', '/ws/desktop/desk-42'), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('GET', '/ws/desktop/desk-42', { Upgrade: 'websocket' }), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('GET', '/ws/desktop/desk-42', { Connection: 'Upgrade' }), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('GET', '/ws/desktop/desk-42', { Upgrade: 'h2c', Connection: 'Upgrade' }), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('GET', '/ws/desktop/a.b', UPGRADE), reject(Rejections.INVALID_DESKTOP_ID, true)],
    [head('GET', '/ws/desktop/', UPGRADE), reject(Rejections.INVALID_DESKTOP_ID, true)],
  ];
  for (const [h, expected] of cases) assert.deepEqual(route(h, OPTIONS), expected, `${h.method} ${h.path} ${JSON.stringify(h.headers)}`);
});

test('the production-table route goes to the shard of its room key; the multiplexed route to the shard of its user, read from the token unverified', () => {
  const jwt = (claims: unknown) => `${Buffer.from('{"alg":"HS256"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;
  const userShard = (userId: string): Route => ({ kind: 'shard', desktopId: '', shard: fnv1a32(userId) % OPTIONS.workers });
  const cases: [RequestHead, Route][] = [
    [head('GET', '/ws/production-table/tab-7', UPGRADE), toShard('production-table:tab-7')],
    [head('GET', '/ws/production-table/a.b', UPGRADE), reject(Rejections.INVALID_DESKTOP_ID, true)],
    [head('GET', '/ws/production-table/tab-7/x', UPGRADE), reject(Rejections.NOT_FOUND, false)],
    [head('POST', '/ws/production-table/tab-7', UPGRADE), reject(Rejections.METHOD_NOT_ALLOWED, true, { Allow: 'GET' })],
    [head('GET', '/ws/connection', { ...UPGRADE, Cookie: `moodio_access_token=${jwt({ userId: 'user-ann-0001' })}` }), userShard('user-ann-0001')],
    [head('GET', '/ws/connection', { ...UPGRADE, Authorization: `Bearer ${jwt({ userId: 'user-bob-0002' })}` }), userShard('user-bob-0002')],
    [
      head('GET', '/ws/connection', { ...UPGRADE, 'Sec-WebSocket-Protocol': `moodio.token.${jwt({ userId: 'user-cid-0003' })}, moodio.v1` }),
      userShard('user-cid-0003'),
    ],
    // No token, or none readable: shard 0, which answers 401.
    [head('GET', '/ws/connection', UPGRADE), { kind: 'shard', desktopId: '', shard: 0 }],
    [head('GET', '/ws/connection', { ...UPGRADE, Cookie: 'moodio_access_token=not-a-jwt' }), { kind: 'shard', desktopId: '', shard: 0 }],
    [head('GET', '/ws/connection', { ...UPGRADE, Cookie: `moodio_access_token=${jwt({ userId: 7 })}` }), { kind: 'shard', desktopId: '', shard: 0 }],
    [head('GET', '/ws/connection'), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('PUT', '/ws/connection', UPGRADE), reject(Rejections.METHOD_NOT_ALLOWED, true, { Allow: 'GET' })],
    [head('GET', '/ws/connection/x', UPGRADE), reject(Rejections.NOT_FOUND, false)],
  ];
  for (const [h, expected] of cases) assert.deepEqual(route(h, OPTIONS), expected, `${h.method} ${h.path} ${JSON.stringify(h.headers)}`);
});

test('origin check: with --allowed-origins, a browser from a listed origin (any case) passes, any other is refused; no Origin is no browser', () => {
  const { allowedOrigins } = resolveServeConfig({ jwtSecret: 's', allowedOrigins: 'https://Moodio.example.com, http://localhost:3000' });
  const options = { ...OPTIONS, allowedOrigins };
  const upgrade = (origin?: string) => head('GET', '/ws/desktop/desk-1', origin === undefined ? UPGRADE : { ...UPGRADE, Origin: origin });
  for (const origin of ['https://moodio.example.com', 'HTTPS://MOODIO.EXAMPLE.COM', 'http://localhost:3000', undefined]) {
    assert.deepEqual(route(upgrade(origin), options), toShard('desk-1'), String(origin));
  }
  for (const origin of [
    'https://evil.example',
    'https://moodio.example.com.evil.example',
    'http://moodio.example.com',
    'https://moodio.example.com:443',
    'null',
    '',
  ]) {
    assert.deepEqual(route(upgrade(origin), options), reject(Rejections.ORIGIN_NOT_ALLOWED, true), origin);
  }
  // Without the option, any origin may connect.
  assert.deepEqual(route(upgrade('https://evil.example'), OPTIONS), toShard('desk-1'));
  // The origin check comes after the upgrade check: a plain GET from a bad origin is still a 426.
  assert.deepEqual(route(head('GET', '/ws/desktop/desk-1', { Origin: 'https://evil.example' }), options), reject(Rejections.UPGRADE_REQUIRED, true));
});

test('/health: GET and HEAD; anything else is 405 with Allow, not a handshake', () => {
  assert.deepEqual(route(head('GET', '/health'), OPTIONS), { kind: 'health' });
  assert.deepEqual(route(head('HEAD', '/health'), OPTIONS), { kind: 'health' });
  assert.deepEqual(route(head('POST', '/health'), OPTIONS), reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'GET, HEAD' }));
  assert.deepEqual(route(head('GET', '/health/'), OPTIONS), reject(Rejections.NOT_FOUND, false));
});

test('/demo only in dev mode, GET only, for /demo and what is under it', () => {
  const dev = { ...OPTIONS, dev: true };
  assert.deepEqual(route(head('GET', '/demo'), dev), { kind: 'demo' });
  assert.deepEqual(route(head('GET', '/demo/app.js'), dev), { kind: 'demo' });
  assert.deepEqual(route(head('POST', '/demo'), dev), reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'GET' }));
  assert.deepEqual(route(head('GET', '/demonstration'), dev), reject(Rejections.NOT_FOUND, false));
  assert.deepEqual(route(head('GET', '/demo'), OPTIONS), reject(Rejections.NOT_FOUND, false));
  assert.deepEqual(route(head('GET', '/demo/app.js'), { ...OPTIONS, dev: undefined }), reject(Rejections.NOT_FOUND, false));
});

test('/metrics: open without a token; with one, only the exact bearer token', () => {
  assert.deepEqual(route(head('GET', '/metrics'), OPTIONS), { kind: 'metrics' });
  assert.deepEqual(route(head('POST', '/metrics'), OPTIONS), reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'GET' }));
  const options = { ...OPTIONS, metricsToken: 'metrics-secret' };
  assert.deepEqual(route(head('GET', '/metrics', { Authorization: 'Bearer metrics-secret' }), options), { kind: 'metrics' });
  assert.deepEqual(route(head('GET', '/metrics', { Authorization: 'bearer metrics-secret' }), options), { kind: 'metrics' });
  for (const authorization of [undefined, 'Bearer metrics-secreT', 'Bearer metrics-secret2', 'Bearer metrics', 'Bearer admin-secret', 'Basic metrics-secret']) {
    const h = head('GET', '/metrics', authorization === undefined ? {} : { Authorization: authorization });
    assert.deepEqual(route(h, options), reject(Rejections.METRICS_UNAUTHORIZED, false), String(authorization));
  }
});

test('/stats: only with an admin token configured, GET, and the exact bearer token', () => {
  const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
  assert.deepEqual(route(head('GET', '/stats', bearer('admin-secret')), OPTIONS), { kind: 'stats' });
  assert.deepEqual(route(head('GET', '/stats', bearer('admin-secreT')), OPTIONS), reject(Rejections.ADMIN_UNAUTHORIZED, false));
  assert.deepEqual(route(head('GET', '/stats'), OPTIONS), reject(Rejections.ADMIN_UNAUTHORIZED, false));
  assert.deepEqual(route(head('POST', '/stats', bearer('admin-secret')), OPTIONS), reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'GET' }));
  assert.deepEqual(route(head('GET', '/stats', bearer('')), { ...OPTIONS, adminToken: '' }), reject(Rejections.NOT_FOUND, false));
});

test('admin terminate: POST /admin/shards/<0-999>/terminate with the admin token, for a shard that exists', () => {
  const post = (path: string, token = 'admin-secret') => head('POST', path, { Authorization: `Bearer ${token}` });
  assert.deepEqual(route(post('/admin/shards/0/terminate'), OPTIONS), { kind: 'terminate-shard', shard: 0 });
  assert.deepEqual(route(post('/admin/shards/19/terminate'), OPTIONS), { kind: 'terminate-shard', shard: 19 });
  assert.deepEqual(route(post('/admin/shards/123/terminate'), { ...OPTIONS, workers: 124 }), { kind: 'terminate-shard', shard: 123 });
  assert.deepEqual(route(post('/admin/shards/20/terminate'), OPTIONS), reject(Rejections.NO_SUCH_SHARD, false));
  assert.deepEqual(route(post('/admin/shards/19/terminate', 'admin-secreT'), OPTIONS), reject(Rejections.ADMIN_UNAUTHORIZED, false));
  assert.deepEqual(route(post('/admin/shards/19/terminate', 'admin'), OPTIONS), reject(Rejections.ADMIN_UNAUTHORIZED, false));
  assert.deepEqual(route(head('POST', '/admin/shards/19/terminate'), OPTIONS), reject(Rejections.ADMIN_UNAUTHORIZED, false));
  assert.deepEqual(
    route(head('GET', '/admin/shards/1/terminate', { Authorization: 'Bearer admin-secret' }), OPTIONS),
    reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'POST' }),
  );
  for (const path of [
    '/admin/shards/1234/terminate',
    '/admin/shards//terminate',
    '/admin/shards/x/terminate',
    '/admin/shards/1/terminate/',
    '/x/admin/shards/1/terminate',
    '/admin/shards/1/terminatex',
  ]) {
    assert.deepEqual(route(post(path), { ...OPTIONS, workers: 2000 }), reject(Rejections.NOT_FOUND, false), path);
  }
  assert.deepEqual(route(post('/admin/shards/1/terminate', ''), { ...OPTIONS, adminToken: '' }), reject(Rejections.NOT_FOUND, false));
});

test('/api/v1/ is the server API only with --api-key, whatever the method; without it, and for any other path, 404', () => {
  const api = { ...OPTIONS, api: true };
  for (const method of ['GET', 'POST', 'PUT', 'DELETE']) {
    assert.deepEqual(route(head(method, '/api/v1/desktops/d1/events'), api), { kind: 'api' }, method);
    assert.deepEqual(route(head(method, '/api/v1/desktops/d1/events'), OPTIONS), reject(Rejections.NOT_FOUND, false), `${method} without --api-key`);
  }
  assert.deepEqual(route(head('POST', '/api/v1/'), api), { kind: 'api' });
  for (const path of ['/api/v1', '/api/v2/x', '/x/api/v1/', '/nope', '/']) {
    assert.deepEqual(route(head('POST', path), api), reject(Rejections.NOT_FOUND, false), path);
  }
  // The other routes keep their answers with the API on.
  assert.deepEqual(route(head('GET', '/health'), api), { kind: 'health' });
  assert.deepEqual(route(head('POST', '/admin/shards/1/terminate', { Authorization: 'Bearer admin-secret' }), api), { kind: 'terminate-shard', shard: 1 });
});

test('anything else is 404, not a handshake', () => {
  for (const path of ['/', '/nope', '/ws', '/ws/desktop/a/b', '/ws/desktopx/a']) {
    assert.deepEqual(route(head('GET', path, UPGRADE), OPTIONS), reject(Rejections.NOT_FOUND, false), path);
  }
});

test('/ws/ping: the same upgrade checks as every WebSocket route (origin included), then the primary picks the shard', () => {
  const withOrigins: RouterOptions = {
    ...OPTIONS,
    allowedOrigins: resolveServeConfig({ jwtSecret: 's', allowedOrigins: 'https://app.example' }).allowedOrigins,
  };
  const cases: [RequestHead, Route, RouterOptions?][] = [
    [head('GET', '/ws/ping', UPGRADE), { kind: 'ping' }],
    [head('GET', '/ws/ping?x=1', UPGRADE), { kind: 'ping' }],
    [head('POST', '/ws/ping', UPGRADE), reject(Rejections.METHOD_NOT_ALLOWED, true, { Allow: 'GET' })],
    [head('GET', '/ws/ping'), reject(Rejections.UPGRADE_REQUIRED, true)],
    [head('GET', '/ws/ping', { ...UPGRADE, 'Content-Length': '3' }), reject(Rejections.BODY_NOT_ALLOWED, true)],
    [head('GET', '/ws/ping', { ...UPGRADE, Origin: 'https://evil.example' }), reject(Rejections.ORIGIN_NOT_ALLOWED, true), withOrigins],
    [head('GET', '/ws/ping', { ...UPGRADE, Origin: 'https://app.example' }), { kind: 'ping' }, withOrigins],
    [head('GET', '/ws/ping/x', UPGRADE), reject(Rejections.NOT_FOUND, false)],
  ];
  for (const [h, expected, options] of cases) assert.deepEqual(route(h, options ?? OPTIONS), expected, `${h.method} ${h.url}`);
});

test('/check: GET and OPTIONS are answered with CORS headers, the Origin reflected; other methods 405 with them', () => {
  const cors = {
    'Access-Control-Allow-Origin': 'https://any.example',
    'Access-Control-Allow-Methods': 'GET, OPTIONS',
    'Access-Control-Allow-Headers': 'Content-Type',
    Vary: 'Origin',
  };
  const origin = { Origin: 'https://any.example' };
  const withOrigins: RouterOptions = { ...OPTIONS, allowedOrigins: ['https://app.example'] };
  assert.deepEqual(
    route(head('GET', '/check', origin), withOrigins),
    { kind: 'check', preflight: false, headers: cors },
    '--allowed-origins is for WebSocket routes',
  );
  assert.deepEqual(route(head('OPTIONS', '/check', origin), OPTIONS), { kind: 'check', preflight: true, headers: cors });
  assert.deepEqual(route(head('DELETE', '/check', origin), OPTIONS), reject(Rejections.METHOD_NOT_ALLOWED, false, { Allow: 'GET, OPTIONS', ...cors }));
  const { 'Access-Control-Allow-Origin': _, ...withoutOrigin } = cors;
  assert.deepEqual(route(head('GET', '/check'), OPTIONS), { kind: 'check', preflight: false, headers: withoutOrigin });
  assert.deepEqual(route(head('GET', '/check/'), OPTIONS), reject(Rejections.NOT_FOUND, false));
});

test('resume parameters on a legacy route: a position goes to the shard; a bad one is 400 invalid_resume naming the rule broken, after the upgrade’s own refusals', () => {
  assert.deepEqual(route(head('GET', '/ws/desktop/desk-42?epoch=mxd.1&offset=0', UPGRADE), OPTIONS), toShard('desk-42'));
  assert.deepEqual(route(head('GET', '/ws/desktop/desk-42?x=1', UPGRADE), OPTIONS), toShard('desk-42'), 'other members are ignored');
  assert.deepEqual(route(head('GET', '/ws/production-table/t-1?epoch=e&offset=9007199254740991', UPGRADE), OPTIONS), toShard('production-table:t-1'));
  const bad: [string, RegExp][] = [
    ['?epoch=e&offset=-1', /offset must be an integer/],
    ['?epoch=e&offset=9007199254740992', /offset must be an integer/],
    ['?epoch=e', /go together/],
    ['?offset=1', /go together/],
    [`?epoch=${'e'.repeat(65)}&offset=1`, /epoch must be 1 to 64/],
    ['?epoch=e&offset=1&offset=2', /offset given twice/],
  ];
  for (const [query, detail] of bad) {
    const decision = route(head('GET', `/ws/desktop/desk-42${query}`, UPGRADE), OPTIONS);
    assert.equal(decision.kind, 'reject', query);
    assert.equal(decision.kind === 'reject' && decision.rejection, Rejections.INVALID_RESUME, query);
    assert.equal(decision.kind === 'reject' && decision.handshake, true);
    assert.match(decision.kind === 'reject' ? (decision.detail ?? '') : '', detail, query);
  }
  // The upgrade's own refusals come first: a POST is 405 whatever its query.
  assert.equal((route(head('POST', '/ws/desktop/desk-42?epoch=e', UPGRADE), OPTIONS) as { rejection: unknown }).rejection, Rejections.METHOD_NOT_ALLOWED);
  // The multiplexed route takes its positions per subscribe: its query is not read.
  assert.equal(route(head('GET', '/ws/connection?epoch=e', UPGRADE), OPTIONS).kind, 'shard');
});
