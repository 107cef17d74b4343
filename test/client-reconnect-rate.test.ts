/**
 * The SDK's reconnect rate against servers that keep turning it away, with
 * its default delays (500 ms floor, 4 s cap). Each fake server is a real
 * HTTP/WebSocket server on loopback that notes when each attempt arrives:
 * - one accepts, sends `room_joined`, and closes at once with 4001, 1012 or
 *   4008 (a session that closes soon after it opens must not reset the backoff);
 * - one answers the handshake `429`/`503` with `Retry-After`, which the SDK
 *   sees in Node with `ws` and honours;
 * - the same refusal seen as a browser sees it (Node's own WebSocket: no status).
 * Every case waits for a number of attempts (bounded), then checks the gaps
 * between the server's arrival times: at most 5 attempts in the first 3 s,
 * and then no more than one a second. The SDK's old loop made ~150 a second
 * after 4001.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { describe, it, type TestContext } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { connect, type ConnectOptions, type MoodioClient, type WebSocketConstructor } from '../src/client/index.ts';
import { retryAfterMs } from '../src/client/backoff.ts';
import { CloseCode } from '../src/protocol/events.ts';

const WS = WebSocket as unknown as WebSocketConstructor;

interface FakeServer {
  url: string;
  /** When each attempt's upgrade request arrived (performance.now(), ms). */
  arrivals: number[];
  /** Resolves once `count` attempts have arrived; rejects after `boundMs`. */
  reached(count: number, boundMs: number): Promise<void>;
}

/** A loopback server that hands every upgrade request to `answer`, noting when it arrived. */
async function fakeServer(t: TestContext, answer: (req: IncomingMessage, socket: Socket, head: Buffer) => void): Promise<FakeServer> {
  const arrivals: number[] = [];
  const waiters = new Set<{ count: number; done: () => void }>();
  const sockets = new Set<Socket>();
  const http = createServer((_req, res) => res.writeHead(404).end());
  http.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    arrivals.push(performance.now());
    for (const waiter of waiters) if (arrivals.length >= waiter.count) waiter.done();
    socket.on('error', () => {});
    answer(req, socket, head);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    http.close();
  });
  const { port } = http.address() as { port: number };
  return {
    url: `ws://127.0.0.1:${port}`,
    arrivals,
    reached: (count, boundMs) =>
      new Promise((resolve, reject) => {
        if (arrivals.length >= count) return resolve();
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`${arrivals.length} attempts within ${boundMs} ms, expected ${count}`));
        }, boundMs);
        const waiter = {
          count,
          done: () => {
            clearTimeout(timer);
            waiters.delete(waiter);
            resolve();
          },
        };
        waiters.add(waiter);
      }),
  };
}

/** Accepts, says room_joined (as the real server does at once), and closes with `code`. */
async function closingServer(t: TestContext, code: number): Promise<FakeServer> {
  const wss = new WebSocketServer({ noServer: true });
  t.after(() => wss.close());
  let sessions = 0;
  return fakeServer(t, (req, socket, head) =>
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(JSON.stringify({ type: 'room_joined', sessionId: `s${++sessions}`, sessions: [] }));
      ws.close(code, 'go away');
    }),
  );
}

/** Refuses every handshake with `status` and `Retry-After: retryAfterS`. */
function refusingServer(t: TestContext, status: 429 | 503, retryAfterS: number): Promise<FakeServer> {
  const text = status === 429 ? 'Too Many Requests' : 'Service Unavailable';
  return fakeServer(t, (_req, socket) => {
    socket.end(`HTTP/1.1 ${status} ${text}\r\nRetry-After: ${retryAfterS}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  });
}

function client(t: TestContext, server: FakeServer, options: Partial<ConnectOptions> = {}): MoodioClient {
  const c = connect({ url: server.url, desktopId: 'd', WebSocket: WS, ...options });
  t.after(() => c.close());
  return c;
}

/** Gaps between consecutive arrivals, ms. */
function gaps(arrivals: number[]): number[] {
  return arrivals.slice(1).map((at, i) => Math.round(at - arrivals[i]!));
}

/** At most 5 attempts in the first 3 s, then at least `sustainedGapMs` between the last ones. */
function assertRate(arrivals: number[], lastGaps: number, sustainedGapMs = 1000): void {
  const seen = gaps(arrivals);
  assert.ok(arrivals[5]! - arrivals[0]! >= 3000, `6 attempts within ${Math.round(arrivals[5]! - arrivals[0]!)} ms (gaps ${seen.join(', ')} ms)`);
  for (const gap of seen.slice(-lastGaps)) assert.ok(gap >= sustainedGapMs, `gaps ${seen.join(', ')} ms: one under ${sustainedGapMs} ms`);
}

describe('the reconnect rate against a server that keeps turning the client away', { concurrency: true }, () => {
  it('4001 after every join: one immediate retry asking the token again, then the backoff grows', async (t) => {
    const server = await closingServer(t, CloseCode.DISCONNECTED);
    let asked = 0;
    const c = client(t, server, { token: () => `t${++asked}` });
    const delays: number[] = [];
    c.on('retry', ({ inMs }) => delays.push(inMs));
    await server.reached(7, 30_000);
    assertRate(server.arrivals, 2);
    assert.equal(delays[0], 0, 'the first 4001 retries at once');
    assert.ok(
      delays.slice(1).every((ms) => ms > 0),
      `a repeated 4001 backs off: ${delays.join(', ')}`,
    );
    assert.ok(asked >= 7, 'the token function is asked for every attempt');
  });

  for (const code of [CloseCode.SERVICE_RESTART, CloseCode.SLOW_CONSUMER]) {
    it(`${code} after every join: a session that closes at once does not reset the backoff`, async (t) => {
      const server = await closingServer(t, code);
      client(t, server);
      await server.reached(7, 30_000);
      assertRate(server.arrivals, 2);
    });
  }

  it('429 and 503 with Retry-After (Node, ws): no attempt before the server said', async (t) => {
    const [tooMany, unavailable] = await Promise.all([refusingServer(t, 429, 1), refusingServer(t, 503, 2)]);
    const rejected: number[] = [];
    client(t, tooMany).on('rejected', ({ status }) => rejected.push(status));
    client(t, unavailable).on('rejected', ({ status }) => rejected.push(status));
    await Promise.all([tooMany.reached(4, 20_000), unavailable.reached(4, 20_000)]);
    for (const [server, seconds] of [
      [tooMany, 1],
      [unavailable, 2],
    ] as const) {
      const seen = gaps(server.arrivals.slice(0, 4));
      assert.ok(
        seen.every((gap) => gap >= seconds * 1000),
        `Retry-After: ${seconds}, gaps ${seen.join(', ')} ms`,
      );
    }
    assert.ok(rejected.includes(429) && rejected.includes(503));
  });

  it("a refusal seen as a browser sees it (Node's WebSocket: no status): the backoff alone keeps the rate", async (t) => {
    const server = await refusingServer(t, 503, 1);
    client(t, server, { WebSocket: (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket });
    await server.reached(7, 30_000);
    assertRate(server.arrivals, 2);
  });
});

it('Retry-After is read as seconds or as an HTTP date, capped at a minute; anything else is ignored', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(retryAfterMs('2', now), 2000);
  assert.equal(retryAfterMs(' 0 ', now), 0);
  assert.equal(retryAfterMs('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
  assert.equal(retryAfterMs('Wed, 31 Dec 2025 23:59:00 GMT', now), 0, 'a date in the past: no wait');
  assert.equal(retryAfterMs('86400', now), 60_000, 'capped at a minute');
  for (const bad of [undefined, '', '-1', '1.5', 'soon', ['1', '2']]) assert.equal(retryAfterMs(bad, now), null, JSON.stringify(bad));
});
