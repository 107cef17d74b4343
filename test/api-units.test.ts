/**
 * The server API's pure pieces on their own: endpoint matching and body
 * validation into request objects, the ids a shard remembers, bus subjects,
 * the options; and the permission recheck's schedule (staggered, bounded,
 * what each answer does) on mocked timers with stand-in sessions.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { PermissionSource } from '../src/auth/permission-client.ts';
import { MIN_API_KEY_LENGTH, MIN_API_PUBLISH_BURST, resolveServeConfig } from '../src/config.ts';
import { PermissionError, PermissionErrorCode } from '../src/errors.ts';
import { KeyedBuckets } from '../src/keyed-buckets.ts';
import { createLogger } from '../src/log.ts';
import { isReservedApiType, isUserId, matchEndpoint, parseRequest } from '../src/primary/api-request.ts';
import { apiSubject, MAX_API_BODY_BYTES, type ApiRequest } from '../src/protocol/api.ts';
import { ApiMetric, createMetricsBuffer, MetricsSlot } from '../src/protocol/metrics.ts';
import { PermissionRecheck, tickMs } from '../src/shard/permission-recheck.ts';
import { RecentIds } from '../src/shard/recent-ids.ts';
import type { Session } from '../src/shard/session.ts';
import type { SessionControl } from '../src/shard/session-control.ts';

const ok = <T>(m: { ok: true; value: T } | { ok: false }): T => {
  assert.ok(m.ok, JSON.stringify(m));
  return m.value;
};
const code = (m: { ok: boolean; failure?: { refusal: { code: string } } }) => (m.ok ? 'ok' : m.failure!.refusal.code);

describe('matchEndpoint', () => {
  test('every endpoint, with its ids decoded', () => {
    assert.deepEqual(ok(matchEndpoint('POST', '/api/v1/desktops/d-1/events')), { name: 'publish', desktopId: 'd-1' });
    assert.deepEqual(ok(matchEndpoint('PUT', '/api/v1/desktops/d_1/permissions/a%2Fb%20%C3%A9')), {
      name: 'set_permission',
      desktopId: 'd_1',
      userId: 'a/b é',
    });
    assert.deepEqual(ok(matchEndpoint('GET', '/api/v1/desktops/D/presence')), { name: 'presence', desktopId: 'D' });
    assert.deepEqual(ok(matchEndpoint('POST', '/api/v1/users/u1/events')), { name: 'user_event', userId: 'u1' });
    assert.deepEqual(ok(matchEndpoint('POST', '/api/v1/users/u1/disconnect')), { name: 'disconnect', userId: 'u1' });
    assert.deepEqual(ok(matchEndpoint('GET', '/api/v1/users/u1/sessions')), { name: 'user_sessions', userId: 'u1' });
    assert.deepEqual(ok(matchEndpoint('POST', '/api/v1/broadcast')), { name: 'broadcast' });
  });

  test('404, 405 with Allow, 400 for ids', () => {
    assert.equal(code(matchEndpoint('POST', '/api/v2/broadcast')), 'not_found');
    assert.equal(code(matchEndpoint('POST', '/api/v1/broadcast/x')), 'not_found');
    assert.equal(code(matchEndpoint('POST', '/api/v1/desktops/d/events/')), 'not_found');
    const wrong = matchEndpoint('DELETE', '/api/v1/desktops/d/permissions/u');
    assert.ok(!wrong.ok);
    assert.deepEqual([wrong.failure.refusal.status, wrong.failure.headers], [405, { Allow: 'PUT' }]);
    assert.equal(code(matchEndpoint('POST', '/api/v1/desktops/a.b/events')), 'invalid_id');
    assert.equal(code(matchEndpoint('POST', '/api/v1/desktops//events')), 'invalid_id');
    assert.equal(code(matchEndpoint('POST', '/api/v1/users//events')), 'invalid_id');
    assert.equal(code(matchEndpoint('POST', '/api/v1/users/%zz/events')), 'invalid_id');
    assert.equal(code(matchEndpoint('POST', `/api/v1/users/${'u'.repeat(256)}/events`)), 'ok');
    assert.equal(code(matchEndpoint('POST', `/api/v1/users/${'u'.repeat(257)}/events`)), 'invalid_id');
  });

  test('user ids follow the token rules: length, encoded length, well-formed', () => {
    assert.ok(isUserId('u'));
    assert.ok(!isUserId(''));
    assert.ok(!isUserId('\ud800'));
    assert.ok(isUserId('\u0001'.repeat(64)), '64 control characters encode to 384');
    assert.ok(!isUserId('\u0001'.repeat(65)));
  });
});

describe('parseRequest', () => {
  const NOW = 1_700_000_000_000;
  const parse = (endpoint: Parameters<typeof parseRequest>[0], text: string) => parseRequest(endpoint, text, 'id-1', NOW);

  test('a publish carries its finished event: the server stamp, and the payload as sent, not re-serialized', () => {
    const request = ok(parse({ name: 'publish', desktopId: 'd' }, '{"payload": [1e20, {"a" : 1}],"type":"t","exceptUserId":"u"}'));
    assert.deepEqual(request, {
      kind: 'publish',
      id: 'id-1',
      desktopId: 'd',
      type: 't',
      exceptUserId: 'u',
      event: `{"type":"t","sessionId":"server","userId":"server","timestamp":${NOW},"payload":[1e20, {"a" : 1}]}`,
    });
    const bare = ok(parse({ name: 'broadcast' }, '{"type":"maintenance"}')) as Extract<ApiRequest, { kind: 'broadcast' }>;
    assert.equal(bare.event, `{"type":"maintenance","sessionId":"server","userId":"server","timestamp":${NOW}}`);
    assert.equal(
      (ok(parse({ name: 'user_event', userId: 'u' }, '{"type":"a\\"b","payload":null}')) as { event: string }).event,
      `{"type":"a\\"b","sessionId":"server","userId":"server","timestamp":${NOW},"payload":null}`,
    );
  });

  test('refusals by code', () => {
    const pub = { name: 'publish', desktopId: 'd' } as const;
    assert.equal(code(parse(pub, '')), 'invalid_json');
    assert.equal(code(parse(pub, '{"type":"x"} x')), 'invalid_json');
    assert.equal(code(parse(pub, '[]')), 'invalid_body');
    assert.equal(code(parse(pub, '{"type":"x","exceptUserId":null}')), 'invalid_body');
    assert.equal(code(parse(pub, `{"type":"${'x'.repeat(65)}"}`)), 'invalid_type');
    assert.equal(code(parse(pub, `{"type":"${'x'.repeat(64)}"}`)), 'ok');
    assert.equal(code(parse(pub, '{"type":"session_joined"}')), 'reserved_type');
    assert.equal(code(parse(pub, '{"__proto__":{"type":"x"}}')), 'invalid_type');
    const perm = { name: 'set_permission', desktopId: 'd', userId: 'u' } as const;
    assert.equal(code(parse(perm, '{"permission":"none"}')), 'ok');
    assert.equal(code(parse(perm, '{"permission":"admin"}')), 'invalid_permission');
    assert.equal(code(parse(perm, '{"permission":["viewer"]}')), 'invalid_body');
    const bye = { name: 'disconnect', userId: 'u' } as const;
    assert.deepEqual(ok(parse(bye, '  ')), { kind: 'disconnect', id: 'id-1', userId: 'u', reason: 'disconnected' });
    assert.deepEqual(ok(parse(bye, '{}')), { kind: 'disconnect', id: 'id-1', userId: 'u', reason: 'disconnected' });
    assert.equal(code(parse(bye, JSON.stringify({ reason: 'x'.repeat(123) }))), 'ok');
    assert.equal(code(parse(bye, JSON.stringify({ reason: 'x'.repeat(124) }))), 'invalid_body');
  });

  test("reserved types: the server's events and anything named session_", () => {
    for (const type of ['room_joined', 'session_joined', 'session_left', 'session_updated', 'session_x', 'error', 'permission_changed'])
      assert.ok(isReservedApiType(type), type);
    for (const type of ['asset_moved', 'sessions', 'errors', 'my_session_x']) assert.ok(!isReservedApiType(type), type);
  });
});

test('bus subjects: desktop calls on api.desktop.<id>, user-wide ones on api.users, never room.*', () => {
  assert.equal(apiSubject({ kind: 'publish', id: 'i', desktopId: 'd1', type: 't', event: '{}' }), 'api.desktop.d1');
  assert.equal(apiSubject({ kind: 'set_permission', id: 'i', desktopId: 'd1', userId: 'u.*>', permission: 'none' }), 'api.desktop.d1');
  assert.equal(apiSubject({ kind: 'presence', id: 'i', desktopId: 'd1' }), 'api.desktop.d1');
  assert.equal(apiSubject({ kind: 'user_event', id: 'i', userId: 'u.*>', type: 't', event: '{}' }), 'api.users');
  assert.equal(apiSubject({ kind: 'broadcast', id: 'i', type: 't', event: '{}' }), 'api.users');
});

test('RecentIds: an id is new once, and the oldest are forgotten past the capacity', () => {
  const ids = new RecentIds(3);
  assert.deepEqual(
    ['a', 'b', 'a', 'c', 'b'].map((id) => ids.add(id)),
    [true, true, false, true, false],
  );
  assert.equal(ids.add('d'), true);
  assert.equal(ids.add('a'), true, 'a was the oldest of a, b, c and went when d came');
  assert.equal(ids.add('c'), false);
});

test('options: the API is off by default, 1 broadcast/s, recheck off, expiry not enforced; the key is checked', () => {
  const base = { jwtSecret: 's'.repeat(32) };
  const config = resolveServeConfig(base);
  assert.deepEqual([config.apiKey, config.apiBroadcastRate, config.permissionRecheckMs, config.enforceTokenExpiry], ['', 1, 0, false]);
  assert.equal(resolveServeConfig({ ...base, permissionRecheckMs: '5m' }).permissionRecheckMs, 300_000);
  assert.equal(resolveServeConfig({ ...base, apiBroadcastRate: '0.5' }).apiBroadcastRate, 0.5);
  assert.equal(resolveServeConfig({ ...base, enforceTokenExpiry: true }).enforceTokenExpiry, true);
  assert.throws(() => resolveServeConfig({ ...base, apiKey: 'k'.repeat(MIN_API_KEY_LENGTH - 1) }), { option: '--api-key' });
  assert.equal(resolveServeConfig({ ...base, apiKey: 'k'.repeat(MIN_API_KEY_LENGTH) }).apiKey.length, MIN_API_KEY_LENGTH);
  assert.throws(() => resolveServeConfig({ ...base, apiKey: 'k'.repeat(20), adminToken: 'k'.repeat(20) }), { option: '--api-key' });
  assert.throws(() => resolveServeConfig({ ...base, apiBroadcastRate: '-1' }), { option: '--api-broadcast-rate' });
  assert.throws(() => resolveServeConfig({ ...base, permissionRecheckMs: 'soon' }), { option: '--permission-recheck' });
});

test('options: a desktop may be sent 256 KiB/s of API publishes after a burst of 1 MiB; the burst holds two of the largest', () => {
  const base = { jwtSecret: 's'.repeat(32) };
  const config = resolveServeConfig(base);
  assert.deepEqual([config.apiPublishRate, config.apiPublishBurst], [256 * 1024, 1024 * 1024]);
  assert.equal(MIN_API_PUBLISH_BURST, 2 * MAX_API_BODY_BYTES);
  assert.equal(resolveServeConfig({ ...base, apiPublishRate: '0' }).apiPublishRate, 0);
  assert.equal(resolveServeConfig({ ...base, apiPublishBurst: String(MIN_API_PUBLISH_BURST) }).apiPublishBurst, MIN_API_PUBLISH_BURST);
  assert.throws(() => resolveServeConfig({ ...base, apiPublishBurst: String(MIN_API_PUBLISH_BURST - 1) }), { option: '--api-publish-burst' });
  assert.throws(() => resolveServeConfig({ ...base, apiPublishRate: '-1' }), { option: '--api-publish-rate' });
  assert.throws(() => resolveServeConfig({ ...base, apiPublishRate: '1.5' }), { option: '--api-publish-rate' });
});

test('KeyedBuckets: a take may cost many tokens; one that does not fit takes nothing and says how long until it would', () => {
  const bytes = new KeyedBuckets(1000, 5000); // 1,000 a second, 5,000 at once
  assert.equal(bytes.take('d1', 0, 3000), 0);
  assert.equal(bytes.take('d1', 0, 2000), 0);
  assert.equal(bytes.take('d1', 0, 1500), 1500, '1,500 short at 1 a ms');
  assert.equal(bytes.take('d1', 1000, 1), 0, 'the refused take took nothing: 1,000 back after 1 s');
  assert.equal(bytes.take('d2', 1000, 5000), 0, 'each key has its own');
  assert.equal(bytes.take('d1', 1000, 1000), 1, 'one short');
  assert.equal(new KeyedBuckets(0, 1).take('d', 0, 1e9), 0, 'rate 0: no limit');
});

describe('PermissionRecheck', () => {
  /** What the recheck reads of a session. */
  interface Fake {
    open: boolean;
    desktopId: string;
    permission: string;
  }
  interface Harness {
    sessions: Fake[];
    asked: { desktopId: string; resolve: (p: 'editor' | 'viewer') => void; reject: (e: unknown) => void }[];
    changed: [Fake, string][];
    ended: Fake[];
    metrics: MetricsSlot;
    logs: string[];
    recheck: PermissionRecheck;
  }

  /** `n` stand-in sessions on a recheck of `intervalMs` whose API answers only when told. */
  function harness(n: number, intervalMs: number, concurrency: number): Harness {
    const h = { asked: [], changed: [], ended: [], logs: [] } as unknown as Harness;
    h.sessions = Array.from({ length: n }, (_, i) => ({ open: true, desktopId: `d${i}`, permission: 'editor' }));
    const source: PermissionSource = {
      check: (desktopId) => new Promise((resolve, reject) => h.asked.push({ desktopId, resolve, reject })),
      close: async () => {},
    };
    const control = {
      setPermission: (s: Fake, p: string) => {
        if (s.permission === p) return false;
        s.permission = p;
        h.changed.push([s, p]);
        return true;
      },
      end: (s: Fake) => {
        s.open = false;
        h.ended.push(s);
        return true;
      },
    } as unknown as SessionControl;
    h.metrics = new MetricsSlot(createMetricsBuffer(1), 0);
    const log = createLogger({ level: 'info', format: 'json', worker: 0, write: (line) => h.logs.push(line) });
    h.recheck = new PermissionRecheck({ intervalMs, concurrency, source, control, metrics: h.metrics, log });
    const identity = { userId: 'u', firstName: '', email: '', permissionClaim: undefined, expiresAt: 0 };
    for (const s of h.sessions) h.recheck.track(s as unknown as Session, identity, 'c=1');
    return h;
  }

  const settle = () => new Promise<void>((resolve) => setImmediate(resolve));
  /** Advance the mocked clock one 100 ms tick at a time (one big tick would show every firing the final time). */
  const advance = (t: { mock: { timers: { tick(ms: number): void } } }, ms: number) => {
    for (let done = 0; done < ms; done += 100) t.mock.timers.tick(100);
  };

  test('a round starts one interval after the last, and spreads its checks over the interval', (t) => {
    t.mock.timers.enable({ apis: ['setInterval', 'Date'], now: 0 });
    const h = harness(10, 1000, 64);
    t.after(() => h.recheck.stop());
    assert.equal(tickMs(1000), 100);
    advance(t, 900);
    assert.equal(h.asked.length, 0, 'sessions were just checked by their handshake');
    const started: number[] = [];
    for (let ms = 1000; ms <= 2000; ms += 100) {
      t.mock.timers.tick(100);
      started.push(h.asked.length);
    }
    // One check per tick (10 sessions over 10 ticks), never a burst.
    assert.deepEqual(started, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(
      h.asked.map((a) => a.desktopId),
      h.sessions.map((s) => s.desktopId),
    );
  });

  test('at most --permission-concurrency checks are in flight; the rest wait for a free one', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval', 'Date'], now: 0 });
    const h = harness(10, 1000, 3);
    t.after(() => h.recheck.stop());
    advance(t, 2100);
    assert.equal(h.asked.length, 3);
    for (const a of h.asked.splice(0, 2)) a.resolve('editor');
    await settle();
    advance(t, 100);
    assert.equal(h.asked.length, 3, 'two finished, two more started');
    assert.equal(h.metrics.values[ApiMetric.RECHECK_UNCHANGED], 2);
  });

  test('a new role is applied, a 403 or 404 revokes, an outage or a 401 changes nothing and is counted, logged once a round', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval', 'Date'], now: 0 });
    const h = harness(6, 1000, 64);
    t.after(() => h.recheck.stop());
    advance(t, 2000);
    assert.equal(h.asked.length, 6);
    const denied = (status: number) => new PermissionError(PermissionErrorCode.DENIED, `permission API answered ${status}`, { status });
    h.asked[0]!.resolve('viewer');
    h.asked[1]!.reject(denied(403));
    h.asked[2]!.reject(denied(404));
    h.asked[3]!.reject(denied(401));
    h.asked[4]!.reject(new PermissionError(PermissionErrorCode.UNAVAILABLE, 'permission API answered 503'));
    h.asked[5]!.reject(new PermissionError(PermissionErrorCode.BAD_RESPONSE, 'nonsense'));
    await settle();
    assert.deepEqual(h.changed, [[h.sessions[0], 'viewer']]);
    assert.deepEqual(h.ended, [h.sessions[1], h.sessions[2]]);
    const m = h.metrics.values;
    assert.deepEqual([m[ApiMetric.RECHECK_CHANGED], m[ApiMetric.RECHECK_REVOKED], m[ApiMetric.RECHECK_FAILED]], [1, 2, 3]);
    assert.equal(h.logs.length, 0, 'failures are logged when the round ends');
    advance(t, 1000);
    // They came in during the round that started as the first ended: it logs them as it ends.
    const lines = h.logs.map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.event, l.failed]),
      [['permission_recheck_failed', 3]],
    );
    // The next round, which ran meanwhile, asked the sessions still open again (the revoked ones were closed).
    assert.deepEqual(
      h.asked.slice(6).map((a) => a.desktopId),
      ['d0', 'd3', 'd4', 'd5'],
    );
  });

  test('an answer for a session whose permission changed meanwhile, or that closed, is dropped', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval', 'Date'], now: 0 });
    const h = harness(3, 1000, 64);
    t.after(() => h.recheck.stop());
    advance(t, 2000);
    h.sessions[0]!.permission = 'viewer';
    h.recheck.untrack(h.sessions[1] as unknown as Session);
    h.sessions[2]!.open = false;
    for (const a of h.asked) a.reject(new PermissionError(PermissionErrorCode.DENIED, 'no', { status: 403 }));
    h.asked[0]!.resolve('editor');
    await settle();
    assert.deepEqual([h.changed, h.ended], [[], []]);
  });
});
