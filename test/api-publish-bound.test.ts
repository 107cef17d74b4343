/**
 * The per-desktop bound on server API publishes (issue 19), against the real
 * server and a real permission stub: a desktop may be sent
 * `--api-publish-rate` bytes a second, `--api-publish-burst` at once; a
 * publish beyond that is answered 429 with Retry-After and a
 * `desktop_rate_limited` body, and reaches nobody (a marker published
 * afterwards comes next). Other desktops keep their own allowance.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ApiRefusals } from '../src/protocol/api.ts';
import { api, API_KEY, desktopOnShard, fill } from './helpers/api.ts';
import { scrape } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { startServer } from './helpers/server.ts';
import { user } from './helpers/tokens.ts';

const RATE = 1024;
const BURST = 128 * 1024;
/** A publish body of `bytes` bytes. */
const body = (n: number, bytes: number) => {
  const head = `{"type":"big","payload":{"n":${n},"pad":"`;
  return head + 'x'.repeat(bytes - head.length - 3) + '"}}';
};

test("a publish beyond the desktop's bound is answered 429 with Retry-After and desktop_rate_limited, and reaches nobody; other desktops keep theirs", async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--api-publish-rate', String(RATE), '--api-publish-burst', String(BURST)],
  });
  const desktopId = desktopOnShard(0);
  const other = desktopOnShard(1);
  const members = await fill(t, server, desktopId, [user('Ann'), user('Ben')]);
  const [elsewhere] = await fill(t, server, other, [user('Cat')]);
  // Two 60,000-byte publishes fit in the burst (each event is its body plus the server's ~60-byte stamp).
  for (const n of [0, 1]) {
    const res = await api(server, 'POST', `desktops/${desktopId}/events`, undefined, { raw: body(n, 60_000) });
    assert.deepEqual([res.status, res.body.delivered], [202, 2]);
  }
  for (const m of members) for (const n of [0, 1]) assert.equal((await m.client.expect('big')).payload.n, n);
  // A third does not: ~49 KB short at 1,024 bytes a second.
  const refused = await api(server, 'POST', `desktops/${desktopId}/events`, undefined, { raw: body(2, 60_000) });
  assert.equal(refused.status, 429);
  assert.equal(refused.body.code, ApiRefusals.DESKTOP_RATE_LIMITED.code);
  assert.equal(refused.body.code, 'desktop_rate_limited');
  assert.match(refused.body.message, new RegExp(`${desktopId}.*${RATE} bytes a second`));
  const retryAfter = Number(refused.headers.get('retry-after'));
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 40 && retryAfter <= 48, `Retry-After ${refused.headers.get('retry-after')}`);
  // A small one still fits in what is left; each member gets it next: the refused one reached nobody.
  const marker = await api(server, 'POST', `desktops/${desktopId}/events`, { type: 'marker' });
  assert.deepEqual([marker.status, marker.body.delivered], [202, 2]);
  for (const m of members) assert.equal((await m.client.next()).type, 'marker');
  // Another desktop (on the other shard) has its own allowance.
  for (const n of [0, 1]) assert.equal((await api(server, 'POST', `desktops/${other}/events`, undefined, { raw: body(n, 60_000) })).status, 202);
  for (const n of [0, 1]) assert.equal((await elsewhere!.client.expect('big')).payload.n, n);
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_api_refused_total{status="429"}'), 1);
});

test("with --api-publish-rate 0 a desktop's publishes are not bounded", async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--api-publish-rate', '0', '--api-publish-burst', String(BURST)],
  });
  const desktopId = desktopOnShard(0, 1);
  const [member] = await fill(t, server, desktopId, [user('Ann')]);
  for (let n = 0; n < 4; n++) assert.equal((await api(server, 'POST', `desktops/${desktopId}/events`, undefined, { raw: body(n, 60_000) })).status, 202);
  for (let n = 0; n < 4; n++) assert.equal((await member!.client.expect('big')).payload.n, n);
});
