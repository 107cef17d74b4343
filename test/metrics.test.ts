/**
 * GET /metrics (Prometheus text, from the primary, summed over shards): every
 * outcome driven below shows up as an exact count.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCode } from '../src/protocol/events.ts';
import { connect, HandshakeRejected, join, rawRequest } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const METRICS_TOKEN = 'metrics-token-0123456789';

test('every handshake outcome, relay, drop and permission call is counted exactly', async (t) => {
  const stub = await startPermissionStub(t, (req, res) => {
    const id = req.userId ?? '';
    if (id.startsWith('denied')) {
      res.statusCode = 403;
      res.end('{}');
    } else if (id.startsWith('down')) {
      res.statusCode = 500;
      res.end('boom');
    } else {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ permission: id.startsWith('viewer') ? 'viewer' : 'editor' }));
    }
  });
  const server = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--metrics-token', METRICS_TOKEN, '--rate-limit', '5', '--rate-limit-burst', '3'],
  });

  assert.equal((await scrape(server.port)).status, 401, 'the token is required');
  assert.equal((await scrape(server.port, 'wrong')).status, 401);
  const fresh = await scrape(server.port, METRICS_TOKEN);
  assert.equal(fresh.status, 200);
  assert.match(fresh.text, /# TYPE moodio_rt_handshakes_total counter/);
  assert.equal(sumOf(fresh.metrics, 'moodio_rt_handshakes_total'), 0);

  const room = desktop();
  const { client: editor } = await join(t, server.wsUrl(room), { token: token(user('Eve')) });
  const { client: viewer } = await join(t, server.wsUrl(room), { token: token(user('Vic', { userId: 'viewer-vic-0001' })) });
  await editor.expect('session_joined');
  const { client: flooder } = await join(t, server.wsUrl(desktop()), { token: token(user('Flo')) });
  for (const [claims, status] of [
    [user('Den', { userId: 'denied-0001' }), 403],
    [user('Dow', { userId: 'down-0001' }), 503],
  ] as const) {
    const err = await connect(t, server.wsUrl(desktop()), { token: token(claims) }).then(
      () => assert.fail('admitted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof HandshakeRejected && err.status === status);
  }
  const unauth = await connect(t, server.wsUrl(desktop()), { token: 'garbage' }).then(
    () => assert.fail('admitted'),
    (e: unknown) => e,
  );
  assert.ok(unauth instanceof HandshakeRejected && unauth.status === 401);
  assert.equal((await rawRequest(server.port, ['GET /nope HTTP/1.1\r\n\r\n'])).status, 404, 'not a handshake: not counted');
  assert.equal((await rawRequest(server.port, ['GET /ws/desktop/bad.id HTTP/1.1\r\nUpgrade: websocket\r\n\r\n'])).status, 400);

  editor.send({ type: 'asset_moved', payload: { n: 1 } });
  editor.send({ type: 'asset_moved', payload: { n: 2 } });
  await viewer.expect('asset_moved');
  await viewer.expect('asset_moved');
  viewer.send({ type: 'asset_removed', payload: {} }); // dropped: viewer
  viewer.send('not json'); // dropped: invalid, answered
  assert.equal((await viewer.next()).code, ErrorCode.INVALID_MESSAGE);
  // In one TCP write, so that the server reads all ten at once: frames read
  // after the rate-limit pause would find a token refilled meanwhile.
  const flooderSocket = (flooder.ws as unknown as { _socket: import('node:net').Socket })._socket;
  flooderSocket.cork();
  for (let i = 0; i < 10; i++) flooder.send({ type: 'asset_dragging', payload: { i } }); // 3 pass (alone: no recipients), 7 dropped
  flooderSocket.uncork();
  assert.equal((await flooder.next()).code, ErrorCode.RATE_LIMITED);

  const { metrics: m } = await scrape(server.port, METRICS_TOKEN);
  const expect = (key: string, value: number) => assert.equal(m.get(key), value, key);
  expect('moodio_rt_handshakes_total{outcome="ok"}', 3);
  expect('moodio_rt_handshakes_total{outcome="401"}', 1);
  expect('moodio_rt_handshakes_total{outcome="403"}', 1);
  expect('moodio_rt_handshakes_total{outcome="503"}', 1);
  expect('moodio_rt_handshakes_total{outcome="4xx"}', 1); // the bad desktop id; scrapes and the 404 are not handshakes
  assert.equal(sumOf(m, 'moodio_rt_connections'), 3);
  assert.equal(sumOf(m, 'moodio_rt_rooms'), 2);
  expect('moodio_rt_messages_received_total', 2 + 2 + 10);
  expect('moodio_rt_messages_relayed_total', 2);
  expect('moodio_rt_messages_dropped_total{reason="viewer"}', 1);
  expect('moodio_rt_messages_dropped_total{reason="invalid"}', 1);
  expect('moodio_rt_messages_dropped_total{reason="rate_limit"}', 7);
  // room_joined ×3, session_joined ×1, asset_moved ×2, invalid_message ×1, rate_limited ×1
  expect('moodio_rt_deliveries_total', 8);
  assert.ok(m.get('moodio_rt_outbound_bytes_total')! > 8 * 50);
  // Every delivery went out in some write, and none was paced on a quiet server.
  const writes = sumOf(m, 'moodio_rt_outbound_writes_total');
  assert.ok(writes >= 1 && writes <= 8, `${writes} writes`);
  expect('moodio_rt_outbound_writes_total{when="paced"}', 0);
  for (const shard of ['0', '1']) assert.equal(m.get(`moodio_rt_pace_interval_seconds{shard="${shard}"}`), 0, shard);
  expect('moodio_rt_permission_request_duration_seconds_count', 5);
  expect('moodio_rt_permission_request_duration_seconds_bucket{le="+Inf"}', 5);
  assert.ok(m.get('moodio_rt_permission_request_duration_seconds_sum')! > 0);
  expect('moodio_rt_permission_errors_total{kind="denied"}', 1);
  expect('moodio_rt_permission_errors_total{kind="unavailable"}', 1);
  expect('moodio_rt_shard_restarts_total', 0);
  for (const shard of ['0', '1', 'primary']) {
    assert.ok(m.has(`moodio_rt_event_loop_lag_p99_seconds{shard="${shard}"}`), shard);
    assert.ok(m.get(`moodio_rt_heap_used_bytes{shard="${shard}"}`)! > 1e6, shard);
  }
  assert.ok(m.get('moodio_rt_process_resident_memory_bytes')! > 10e6);

  // Gauges follow sessions out.
  await Promise.all([editor.close(), viewer.close(), flooder.close()]);
  let connections = -1;
  for (let i = 0; i < 100 && connections !== 0; i++) {
    connections = sumOf((await scrape(server.port, METRICS_TOKEN)).metrics, 'moodio_rt_connections');
  }
  assert.equal(connections, 0);
});
