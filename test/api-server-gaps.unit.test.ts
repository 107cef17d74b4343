/**
 * The server API on the primary in process, for what test/api-server.unit.test.ts
 * leaves to the real-server tests (the gaps its mutation run named, issue 19):
 * the per-desktop publish bound, a role change reaching the user's own shard,
 * when the API federates, the 256-connection refusal's answer and metric, the
 * handler's own refusals, and the connection's life: reads paused while a
 * request is answered (a pipelined flood is left in the kernel), the head-size
 * bound's edges, a slow head's deadline, the timers a connection holds, idle
 * connections closed at shutdown, and `closed` told once.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_API_CONNECTIONS } from '../src/primary/api-server.ts';
import { KEEP_ALIVE_IDLE_MS, type ApiConnection } from '../src/primary/api-connection.ts';
import type { ApiResult } from '../src/primary/shard-pool.ts';
import { parseRequestHead } from '../src/protocol/http.ts';
import { ApiMetric } from '../src/protocol/metrics.ts';
import { shardFor } from '../src/primary/router.ts';
import { type Client, D0, D1, FEDERATION_KEY, harness, type Harness, idOn, KEY, refusal, request, waitFor } from './helpers/api-harness.ts';

/** A request head as the primary parses it. */
function head(text: string) {
  const parsed = parseRequestHead(Buffer.from(text));
  assert.ok(parsed.ok);
  return parsed.head;
}

/** The connection's deadline (ApiConnection's private `timer`). */
const timerOf = (connection: ApiConnection) => (connection as unknown as { timer: NodeJS.Timeout | null }).timer;

/** A connection that has been answered once and is kept alive, idle. */
async function keptAlive(h: Harness): Promise<Client> {
  const c = h.client();
  c.send(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.equal((await c.response()).headers.connection, 'keep-alive');
  return c;
}

test('publishes over --api-publish-rate bytes a second to one desktop: 429 naming the bound and the size, Retry-After in whole seconds, reaching no shard', async (t) => {
  // Date stands still: the bucket does not refill between calls, so the wait is exact.
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const h = await harness(t, { config: { apiPublishRate: '10000', apiPublishBurst: '131072' } });
  const body = JSON.stringify({ type: 'big', payload: 'p'.repeat(60_000) });
  const publish = (desktop: string) => h.call(request('POST', `/api/v1/desktops/${desktop}/events`, body));
  assert.equal((await publish(D0)).status, 202);
  assert.equal((await publish(D0)).status, 202);
  const bytes = Buffer.byteLength((h.pool.calls[0]!.request as { event: string }).event);
  assert.ok(bytes > 60_000 && 3 * bytes > 131_072 && 2 * bytes <= 131_072, `${bytes} bytes an event: two fit the burst, a third does not`);
  const refused = await publish(D0);
  assert.deepEqual(refusal(refused), [
    429,
    'desktop_rate_limited',
    `desktop ${D0} may be sent 10000 bytes a second by the API (131072 at once); this event is ${bytes} bytes`,
  ]);
  // The bytes missing (3 × bytes − burst) at 10 bytes a millisecond, rounded up to whole seconds.
  const waitS = Math.ceil(Math.ceil((3 * bytes - 131_072) / 10) / 1000);
  assert.ok(waitS > 1);
  assert.equal(refused.headers['retry-after'], String(waitS));
  assert.equal(refused.headers.connection, 'keep-alive', 'a refusal after the body was read keeps the connection');
  assert.equal(h.pool.calls.length, 2, 'the refused publish reached no shard');
  assert.equal(h.pool.metric(ApiMetric.REFUSED_429), 1);
  assert.equal(h.pool.metric(ApiMetric.PUBLISH), 2);
  assert.equal((await publish(D1)).status, 202, 'another desktop has its own bound');
  t.mock.timers.tick(waitS * 1000 - 1000);
  assert.equal((await publish(D0)).status, 429, 'a second before Retry-After');
  t.mock.timers.tick(1000);
  assert.equal((await publish(D0)).status, 202, 'after Retry-After');
});

test("a role change reaches the desktop's shard and the user's own (their multiplexed connections), once each", async (t) => {
  const h = await harness(t);
  const elsewhere = idOn(1, 'user');
  const home = idOn(0, 'user');
  assert.equal(shardFor(D0, 2), 0);
  const res = await h.call(request('PUT', `/api/v1/desktops/${D0}/permissions/${elsewhere}`, '{"permission":"viewer"}'));
  assert.deepEqual(
    h.pool.calls.map((c) => [c.shard, c.request.kind, c.request.id]),
    [
      [0, 'set_permission', res.json.id],
      [1, 'set_permission', res.json.id],
    ],
  );
  assert.deepEqual(res.json, { id: res.json.id, sessions: 3, changed: 1 }, 'what both shards did');
  await h.call(request('PUT', `/api/v1/desktops/${D0}/permissions/${home}`, '{"permission":"viewer"}'));
  assert.deepEqual(
    h.pool.calls.slice(2).map((c) => c.shard),
    [0],
    'the same shard is asked once',
  );
  await h.call(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'));
  assert.deepEqual(
    h.pool.calls.slice(3).map((c) => c.shard),
    [0],
    "a publish does not reach a user's shard",
  );
});

test('a federation key without a NATS URL does not federate: a shard without the bus still takes commands', async (t) => {
  const h = await harness(t, { config: { federationKey: FEDERATION_KEY } });
  h.pool.connected = [false, false];
  assert.equal((await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'))).status, 202);
  assert.equal((await h.call(request('PUT', `/api/v1/desktops/${D1}/permissions/u`, '{"permission":"viewer"}'))).status, 202);
});

test("shards' answers: a presence without sessions counts none; every late shard is named", async (t) => {
  const h = await harness(t);
  h.pool.answer = () => ({ duplicate: false, reached: 0, changed: 0 });
  const res = await h.call(request('GET', `/api/v1/desktops/${D0}/presence`));
  assert.deepEqual([res.status, res.json], [200, { desktopId: D0, sessions: [] }]);
  h.pool.answer = () => 'timeout';
  const late = await h.call(request('POST', '/api/v1/users/u/events', '{"type":"x"}'));
  assert.deepEqual(refusal(late).slice(0, 2), [504, 'shard_timeout']);
  assert.match(late.json.message, /^shard 0, 1 did not answer within /);
});

test('the handler on its own: screen refuses a bodiless endpoint sent chunked, respond an unknown endpoint', async (t) => {
  const h = await harness(t);
  const auth = `Authorization: Bearer ${KEY}\r\n`;
  assert.equal(h.api.screen(head(`GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\n${auth}\r\n`)), null);
  const chunked = h.api.screen(head(`GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\n${auth}Transfer-Encoding: chunked\r\n\r\n`));
  assert.deepEqual([chunked?.status, JSON.parse(chunked!.body)], [400, { code: 'bad_request', message: 'GET takes no body' }]);
  const unknown = await h.api.respond(head(`POST /api/v1/nothing HTTP/1.1\r\n${auth}\r\n`), Buffer.alloc(0));
  assert.deepEqual([unknown.status, JSON.parse(unknown.body).code], [404, 'not_found']);
  assert.equal(h.pool.calls.length, 0);
});

test(`the ${MAX_API_CONNECTIONS}-connection refusal is a JSON answer with its newline, and counted`, async (t) => {
  const h = await harness(t);
  const path = `/api/v1/desktops/${D0}/events`;
  for (let i = 0; i < MAX_API_CONNECTIONS; i++) h.client().send(request('POST', path, '', { 'Content-Length': '12' }) + '{"type"');
  await waitFor(() => h.pool.metric(ApiMetric.CONNECTIONS) === MAX_API_CONNECTIONS, `${MAX_API_CONNECTIONS} connections`);
  const res = await h.call(request('POST', path, '{"type":"x"}'));
  assert.equal(res.status, 503);
  assert.equal(res.headers['content-type'], 'application/json');
  assert.equal(res.body, `${JSON.stringify({ code: 'busy', message: `${MAX_API_CONNECTIONS} API connections are busy` })}\n`);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_503), 1);
  assert.equal((await h.call(request('POST', path, '{"type":"x"}', {}, null))).status, 401);
  assert.equal(h.pool.metric(ApiMetric.REFUSED_401), 1);
});

test('shutdown closes idle connections there and then, not at their idle deadline', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const h = await harness(t);
  const idle = await keptAlive(h);
  let release: (result: ApiResult) => void = () => {};
  h.pool.answer = () => new Promise((resolve) => (release = resolve));
  const busy = h.client();
  busy.send(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'));
  await h.pool.callsReach(2);
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 2);
  h.api.shutdown();
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 1, 'the idle one is gone at once; the busy one stays');
  await idle.waitClosed();
  release({ duplicate: false, reached: 1, changed: 0 });
  assert.equal((await busy.response()).headers.connection, 'close');
  await busy.waitClosed();
});

test('attack: a client pipelining a flood while its request is answered is not read: the primary holds a bounded part, the kernel the rest', async (t) => {
  const h = await harness(t);
  let release: (result: ApiResult) => void = () => {};
  h.pool.answer = () => new Promise((resolve) => (release = resolve));
  const c = h.client();
  const first = request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}');
  c.send(first);
  await h.pool.callsReach(1);
  const flood = Buffer.alloc(16 * 1024 * 1024, 'X');
  c.send(flood);
  const end = h.serverEnd(c)!;
  const connection = h.connections()[0]!;
  const held = () => (connection as unknown as { buffered: Buffer }).buffered.length + end.readableLength;
  // Either reading stopped (paused, its stream buffer full, so Node stopped reading the kernel), or the flood is being read in.
  await waitFor(
    () => (end.readableFlowing === false && end.readableLength >= end.readableHighWaterMark) || end.bytesRead > 4 * 1024 * 1024,
    'reading stops or the flood is read',
  );
  const pulled = end.bytesRead - Buffer.byteLength(first);
  t.diagnostic(`of a ${flood.length}-byte flood, the primary read ${pulled} and holds ${held()} bytes`);
  assert.equal(end.readableFlowing, false, 'reads are paused while the request is answered');
  assert.ok(pulled <= 512 * 1024, `${pulled} bytes of the flood read while the request was answered`);
  assert.ok(held() <= 512 * 1024, `${held()} bytes held`);
  assert.equal(h.pool.calls.length, 1);
  release({ duplicate: false, reached: 1, changed: 0 });
  assert.equal((await c.response()).status, 202);
  // Then it reads on: the flood is no request head, and is refused as too large.
  assert.deepEqual(refusal(await c.response()).slice(0, 2), [431, 'head_too_large']);
});

test("the head-size bound's edges on a kept-alive connection: exactly --max-head-size is read, one byte more is 431", async (t) => {
  const h = await harness(t, { config: { maxHeadBytes: 1024 } });
  const start = `GET /api/v1/desktops/${D0}/presence HTTP/1.1\r\nAuthorization: Bearer ${KEY}\r\nX-Pad: `;
  const whole = (size: number) => `${start}${'a'.repeat(size - start.length - 4)}\r\n\r\n`;
  assert.equal(whole(1024).length, 1024);

  let c = await keptAlive(h);
  c.send(whole(1024));
  assert.equal((await c.response()).status, 200, 'a whole head of exactly the limit');
  c.send(whole(1025));
  assert.deepEqual(refusal(await c.response()), [431, 'head_too_large', 'the request head is too large']);
  await c.waitClosed();

  c = await keptAlive(h);
  const partial = whole(1028).slice(0, 1024);
  assert.equal(partial.indexOf('\r\n\r\n'), -1);
  c.send(partial);
  await h.allRead(c);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual([c.unread, c.ended, h.pool.metric(ApiMetric.REFUSED_OTHER)], ['', false, 1], 'a partial head of exactly the limit waits for more');
  c.send('a');
  assert.deepEqual(refusal(await c.response()), [431, 'head_too_large', 'the request head is too large']);
  await c.waitClosed();
});

test("a slow next head keeps its first byte's deadline, however it trickles in", async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const h = await harness(t, { config: { handshakeTimeoutMs: '2s' } });
  const c = await keptAlive(h);
  const text = request('GET', `/api/v1/desktops/${D0}/presence`);
  let sent = 0;
  for (const piece of [text.slice(0, 10), text.slice(10, 20), text.slice(20, 30)]) {
    c.send(piece);
    sent += 1;
    await h.allRead(c);
    t.mock.timers.tick(sent < 3 ? 900 : 199);
  }
  assert.equal(h.pool.metric(ApiMetric.REFUSED_OTHER), 0, '1999 ms after the first byte');
  t.mock.timers.tick(1);
  await waitFor(() => h.pool.metric(ApiMetric.REFUSED_OTHER) === 1, '408 at 2000 ms from the first byte');
  assert.deepEqual(refusal(await c.response()).slice(0, 2), [408, 'body_timeout']);
});

test('a connection holds a deadline only while it waits for bytes: none while its request is answered, none once closed, and it keeps no process alive', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const h = await harness(t, { config: { maxHeadBytes: 1024 } });
  let release: (result: ApiResult) => void = () => {};
  h.pool.answer = () => new Promise((resolve) => (release = resolve));
  const c = h.client();
  c.send(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'));
  await h.pool.callsReach(1);
  const connection = h.connections()[0]!;
  assert.equal(timerOf(connection), null, 'no deadline while the request is answered');
  release({ duplicate: false, reached: 1, changed: 0 });
  assert.equal((await c.response()).status, 202);
  assert.notEqual(timerOf(connection), null, 'the idle deadline');
  h.pool.answer = () => ({ duplicate: false, reached: 0, changed: 0, sessions: [] });
  // The idle deadline closes it there and then.
  t.mock.timers.tick(KEEP_ALIVE_IDLE_MS);
  assert.equal(h.pool.metric(ApiMetric.CONNECTIONS), 0, 'gone at its idle deadline');
  await c.waitClosed();

  // A client that leaves while idle; one refused for its next head; one whose next request is not the API's.
  for (const end of [
    (k: Client) => k.socket.end(),
    (k: Client) => k.send(`ET /api/v1/ HTTP/1.1\r\nX: ${'a'.repeat(1100)}`),
    (k: Client) => k.send('ET /health HTTP/1.1\r\n\r\n'),
  ]) {
    const k = await keptAlive(h);
    const kept = h.connections()[0]!;
    k.send('G');
    await h.allRead(k);
    assert.notEqual(timerOf(kept), null, "the next request's deadline");
    end(k);
    await waitFor(() => h.connections().length === 0, 'the connection is gone');
    assert.equal(timerOf(kept), null, 'no deadline left behind');
  }
  assert.equal(h.elsewhere.length, 1);
  assert.equal(h.elsewhere[0]!.dataListeners, 0, "a socket handed back to the primary carries none of the API's listeners");
});

test('the deadline timer does not keep the process alive', async (t) => {
  const h = await harness(t);
  await keptAlive(h);
  const timer = timerOf(h.connections()[0]!);
  assert.ok(timer !== null);
  assert.equal(timer.hasRef(), false);
});

test('every way a connection ends tells the server once; an answer for a client that left is neither written nor counted', async (t) => {
  const h = await harness(t, { config: { maxHeadBytes: 1024 } });
  const closed = new Map<ApiConnection, number>();
  const answered: number[] = [];
  const api = h.api;
  const closedBefore = api.closed.bind(api);
  const answeredBefore = api.answered.bind(api);
  api.closed = (connection) => {
    closed.set(connection, (closed.get(connection) ?? 0) + 1);
    closedBefore(connection);
  };
  api.answered = (status) => {
    answered.push(status);
    answeredBefore(status);
  };
  const ended: Client[] = [];
  // Refused for its first request, then for its next head; closed by its client; closed at shutdown (below).
  const refused = h.client();
  refused.send(request('GET', `/api/v1/desktops/${D0}/presence`, '', {}, null));
  assert.equal((await refused.response()).status, 401);
  await refused.waitClosed();
  ended.push(refused);
  const next = await keptAlive(h);
  next.send('bad head\r\n\r\n');
  await next.response();
  await next.waitClosed();
  ended.push(next);
  const left = await keptAlive(h);
  left.socket.end();
  ended.push(left);
  // One that leaves while its request is answered.
  let release: (result: ApiResult) => void = () => {};
  h.pool.answer = () => new Promise((resolve) => (release = resolve));
  const gone = h.client();
  gone.send(request('POST', `/api/v1/desktops/${D0}/events`, '{"type":"x"}'));
  await h.pool.callsReach(3);
  gone.socket.destroy();
  ended.push(gone);
  h.pool.answer = (shard) => ({ duplicate: false, reached: shard, changed: 0, sessions: [] });
  const idle = await keptAlive(h);
  h.api.shutdown();
  ended.push(idle);
  await waitFor(() => ended.every((c) => c.ended && h.serverEnd(c)?.closed === true), 'every socket closed');
  await waitFor(() => h.connections().length === 0, 'no connection left');
  const answersBefore = answered.length;
  release('timeout');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(answered.length, answersBefore, 'the 504 for the client that left is not counted');
  assert.equal(h.pool.metric(ApiMetric.REFUSED_504), 0);
  assert.equal(closed.size, 5, 'five connections');
  assert.deepEqual([...closed.values()], [1, 1, 1, 1, 1], 'each told once');
});
