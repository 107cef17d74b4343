/**
 * `GET /ws/ping` (issue 20) against the real server: an unauthenticated
 * echo of text frames, closed with 1009 over 512 bytes, and bounded like
 * every route (pending heads and handshake rate per address) plus its own
 * bounds: ping sockets per address and per process, a frame rate, and the
 * liveness ping. Each client address is its own 127.0.0.x.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { CloseCode, PING_FRAME_BURST, PING_MAX_MESSAGE_BYTES, SHARD_HEADER } from '../src/protocol/events.ts';
import { PING_PATH } from '../src/protocol/paths.ts';
import { PENDING_SLOW_AFTER_MS } from '../src/primary/primary.ts';
import { REASON_HEADER } from '../src/protocol/rejections.ts';
import { rawRequest, upgradeHead } from './helpers/client.ts';
import { Crowd } from './helpers/idle.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { Cleanup, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';

interface Ping {
  ws: WebSocket;
  shard: number;
  /** Text frames received, in order. */
  received: string[];
  closed: Promise<{ code: number; reason: string }>;
}

/** Open a ping socket (no token, no cookie); rejects with the refusal's status and reason. */
function openPing(t: Scope, port: number, options: WebSocket.ClientOptions = {}): Promise<Ping> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${PING_PATH}`, { perMessageDeflate: false, ...options });
  t.after(() => ws.terminate());
  const received: string[] = [];
  ws.on('message', (data, isBinary) => received.push(isBinary ? '<binary>' : data.toString()));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  return new Promise((resolve, reject) => {
    let shard = -1;
    ws.once('upgrade', (res) => {
      shard = Number(res.headers[SHARD_HEADER]);
    });
    ws.once('open', () => resolve({ ws, shard, received, closed }));
    ws.once('unexpected-response', (_req, res) => {
      reject(
        Object.assign(new Error(`refused with ${res.statusCode}`), {
          status: res.statusCode,
          reason: res.headers[REASON_HEADER.toLowerCase()],
          retryAfter: res.headers['retry-after'],
        }),
      );
      res.resume();
    });
    ws.once('error', reject);
  });
}

/** Wait until `ping` has received `count` frames (bounded). */
async function received(ping: Ping, count: number, timeoutMs = 5000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  while (ping.received.length < count) {
    if (Date.now() > deadline) throw new Error(`${ping.received.length} of ${count} echoes within ${timeoutMs} ms`);
    await new Promise((r) => ping.ws.once('message', r).once('close', r));
    if (ping.ws.readyState === WebSocket.CLOSED && ping.received.length < count) throw new Error(`closed after ${ping.received.length} of ${count} echoes`);
  }
  return ping.received;
}

describe('echo', () => {
  const cleanup = new Cleanup();
  let server: ServerProcess;
  before(async () => {
    // No permission API at all: nothing on this route may ask it.
    server = await startServer(cleanup, { workers: 2, permissionApiBase: 'http://127.0.0.1:9', args: ['--ping-interval', '200ms'] });
  });
  after(() => cleanup.run());

  test('without any token, text frames come back in order, as text, 512 bytes included', async (t) => {
    const ping = await openPing(t, server.port);
    assert.ok(ping.shard === 0 || ping.shard === 1, 'a shard answered the upgrade');
    const frames = ['hello', '{"t":1709000000000}', 'ünïcødé ✓', 'x'.repeat(PING_MAX_MESSAGE_BYTES)];
    for (const frame of frames) ping.ws.send(frame);
    assert.deepEqual(await received(ping, frames.length), frames);
    assert.equal(ping.ws.readyState, WebSocket.OPEN);
  });

  test('a frame over 512 bytes closes with 1009; nothing is echoed after it', async (t) => {
    const ping = await openPing(t, server.port);
    ping.ws.send('before');
    ping.ws.send('x'.repeat(PING_MAX_MESSAGE_BYTES + 1));
    ping.ws.send('after');
    assert.equal((await ping.closed).code, CloseCode.MESSAGE_TOO_BIG);
    assert.deepEqual(ping.received, ['before']);
  });

  test('a binary frame closes with 1003', async (t) => {
    const ping = await openPing(t, server.port);
    ping.ws.send(Buffer.from([1, 2, 3]));
    assert.deepEqual(await ping.closed, { code: CloseCode.UNSUPPORTED_DATA, reason: 'text frames only' });
    assert.deepEqual(ping.received, []);
  });

  test(`faster than ${PING_FRAME_BURST} frames at once then 10/s closes with 1008 after the burst`, async (t) => {
    const ping = await openPing(t, server.port);
    for (let i = 0; i < 200; i++) ping.ws.send(String(i));
    assert.deepEqual(await ping.closed, { code: CloseCode.POLICY_VIOLATION, reason: 'rate limit exceeded' });
    // The burst came back (a token or two may have refilled meanwhile), then nothing.
    assert.ok(ping.received.length >= PING_FRAME_BURST && ping.received.length <= PING_FRAME_BURST + 2, `${ping.received.length} echoes`);
    assert.deepEqual(
      ping.received,
      ping.received.map((_, i) => String(i)),
    );
  });

  test('liveness: a socket that answers pings stays, one that does not is terminated', async (t) => {
    const live = await openPing(t, server.port);
    const mute = await openPing(t, server.port, { autoPong: false });
    let pings = 0;
    const threePings = new Promise<void>((resolve) => live.ws.on('ping', () => ++pings === 3 && resolve()));
    // The mute one is cut after one unanswered interval (200 ms): no close frame, so 1006 here.
    assert.equal((await mute.closed).code, 1006);
    await threePings;
    assert.equal(live.ws.readyState, WebSocket.OPEN, 'three pings later, the answering socket is still open');
    live.ws.send('still here');
    assert.deepEqual(await received(live, 1), ['still here']);
  });

  test('only GET with an upgrade: a plain GET is 426, a POST 405', async () => {
    const plain = await rawRequest(server.port, [`GET ${PING_PATH} HTTP/1.1\r\nHost: x\r\n\r\n`]);
    assert.equal(plain.status, 426);
    const post = await rawRequest(server.port, [`POST ${PING_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`]);
    assert.deepEqual([post.status, post.headers.allow], [405, 'GET']);
  });
});

describe('bounds', () => {
  const cleanup = new Cleanup();
  let server: ServerProcess;
  before(async () => {
    server = await startServer(cleanup, {
      workers: 2,
      permissionApiBase: 'http://127.0.0.1:9',
      args: ['--max-ping-sockets', '3', '--max-ping-per-address', '2', '--handshake-rate-per-address', '1', '--max-pending-per-address', '1'],
    });
  });
  after(() => cleanup.run());

  test('per address, then per process: 429 too_many_pings_from_address, then 503 ping_full, until one closes', async (t) => {
    const a1 = await openPing(t, server.port, { localAddress: '127.0.0.21' });
    await openPing(t, server.port, { localAddress: '127.0.0.21' });
    await assert.rejects(openPing(t, server.port, { localAddress: '127.0.0.21' }), { status: 429, reason: 'too_many_pings_from_address', retryAfter: '5' });
    // Another address may still open one: the process holds 3.
    await openPing(t, server.port, { localAddress: '127.0.0.22' });
    await assert.rejects(openPing(t, server.port, { localAddress: '127.0.0.23' }), { status: 503, reason: 'ping_full', retryAfter: '5' });

    a1.ws.close();
    await a1.closed;
    // The server counts it gone once its side of the close has run: retry until then (bounded).
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        const ping = await openPing(t, server.port, { localAddress: '127.0.0.23' });
        ping.ws.send('in');
        assert.deepEqual(await received(ping, 1), ['in']);
        break;
      } catch (err) {
        if ((err as { reason?: string }).reason !== 'ping_full' || Date.now() > deadline) throw err;
      }
    }
    const { metrics } = await scrape(server.port);
    assert.equal(metrics.get('moodio_rt_ping_refused_total{limit="address"}'), 1);
    assert.ok(metrics.get('moodio_rt_ping_refused_total{limit="process"}')! >= 1);
    assert.equal(sumOf(metrics, 'moodio_rt_ping_sockets'), 3);
  });

  test('the handshake rate per address applies: the 6th handshake within a second is 429 from the primary', async (t) => {
    // --handshake-rate-per-address 1 lets an address start 5 at once; each attempt counts, admitted or not.
    const outcomes: (string | number)[] = [];
    for (let i = 0; i < 6; i++) {
      try {
        const ping = await openPing(t, server.port, { localAddress: '127.0.0.31' });
        outcomes.push(101);
        ping.ws.terminate();
      } catch (err) {
        outcomes.push((err as { reason: string }).reason);
      }
    }
    assert.equal(outcomes[5], 'too_many_handshakes_from_address', JSON.stringify(outcomes));
    assert.ok(!outcomes.slice(0, 5).includes('too_many_handshakes_from_address'), JSON.stringify(outcomes));
  });

  test('pending heads per address apply: with one silent connection pending, a ping from that address is 503', async (t) => {
    const crowd = new Crowd(t);
    await crowd.open(server.port, 1, { localAddress: '127.0.0.41' });
    // A head counts against its address once it is slow: pending over PENDING_SLOW_AFTER_MS, a time the rule itself names.
    await new Promise((resolve) => setTimeout(resolve, PENDING_SLOW_AFTER_MS));
    const deadline = Date.now() + 5000;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 100));
      // Done at the end of the answer's head: a 101's socket would otherwise stay open until the server's ping closed it,
      // and the next attempt would come only after the silent connection's own head deadline.
      const answer = await rawRequest(server.port, [upgradeHead(PING_PATH)], { localAddress: '127.0.0.41', until: (raw) => raw.includes('\r\n\r\n') });
      if (answer.status === 503) {
        assert.equal(answer.headers[REASON_HEADER.toLowerCase()], 'too_many_pending_from_address');
        break;
      }
      assert.equal(answer.status, 101, 'before it is slow, the silent connection does not count: the ping is admitted');
      assert.ok(Date.now() < deadline, 'the silent connection never counted against its address');
    }
  });
});

test('on shutdown, ping sockets are closed with 1012 like sessions', async (t) => {
  const server = await startServer(t, { workers: 2, permissionApiBase: 'http://127.0.0.1:9' });
  const pings = await Promise.all(['127.0.0.51', '127.0.0.52', '127.0.0.53'].map((localAddress) => openPing(t, server.port, { localAddress })));
  const stopped = server.stop();
  for (const ping of pings) assert.equal((await ping.closed).code, CloseCode.SERVICE_RESTART);
  await stopped;
  assert.equal((await server.exited).code, 0);
});
