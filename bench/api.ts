/**
 * Server API benchmark (issue 13): publishes into a 10-session room through
 * POST /api/v1/desktops/{id}/events, against the real server (`--workers
 * 2`, a real permission stub), with the app's side played by an undici pool
 * (keep-alive, as the Next.js app's fetch would be).
 *
 *   node bench/api.ts [--seconds 5] [--concurrency 1,16]
 *
 * For each concurrency (calls in flight at once, closed loop): API
 * publishes per second, and the latency from the start of the HTTP call to
 * the moment the last of the 10 sessions has the event, p50 and p99 (and
 * the 202's own round trip). Prints a Markdown table with the machine and
 * the command.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import WebSocket from 'ws';
import { signAccessToken } from '../src/auth/token.ts';
import { createHistogram, recordUs, summarize, type Histogram } from '../src/loadtest/histogram.ts';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { describeMachine } from '../scripts/machine-info.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { startServer, TEST_SECRET } from '../test/helpers/server.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1]! : fallback;
};
const SECONDS = Number(arg('--seconds', '5'));
const CONCURRENCY = arg('--concurrency', '1,16').split(',').map(Number);
const ROOM_SIZE = 10;
const WARMUP_S = 1;
const KEY = 'bench-api-key-0123456789abcdef';
const DESKTOP = 'bench-api-room';

const cleanup = new Cleanup();

/** Open the room's sessions; each counts, per event seq, how many have it and when the last one got it. */
async function openRoom(url: string) {
  const arrivals = new Map<number, { count: number; started: number }>();
  let onComplete: (seq: number, started: number) => void = () => {};
  const sockets: WebSocket[] = [];
  for (let i = 0; i < ROOM_SIZE; i++) {
    const token = signAccessToken({ userId: `bench-api-${i}`, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
    const ws = new WebSocket(url, { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${token}` }, perMessageDeflate: false });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      if (!text.startsWith('{"type":"bench"')) return;
      const seq = Number(/"seq":(\d+)/.exec(text)![1]);
      const entry = arrivals.get(seq);
      if (entry === undefined) return;
      if (++entry.count === ROOM_SIZE) {
        arrivals.delete(seq);
        onComplete(seq, entry.started);
      }
    });
    sockets.push(ws);
  }
  return {
    expect(seq: number, started: number) {
      arrivals.set(seq, { count: 0, started });
    },
    onComplete(fn: (seq: number, started: number) => void) {
      onComplete = fn;
    },
    close() {
      for (const ws of sockets) ws.terminate();
    },
  };
}

interface Row {
  concurrency: number;
  publishes: number;
  perSecond: number;
  delivered: number;
  lastRecipient: ReturnType<typeof summarize>;
  http: ReturnType<typeof summarize>;
}

async function run(port: number, room: Awaited<ReturnType<typeof openRoom>>, concurrency: number): Promise<Row> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: concurrency, pipelining: 1 });
  let lastRecipient: Histogram = createHistogram();
  let http: Histogram = createHistogram();
  let seq = 0;
  let measuring = false;
  let completed = 0;
  let delivered = 0;
  room.onComplete((_seq, started) => {
    if (!measuring) return;
    recordUs(lastRecipient, (performance.now() - started) * 1000);
    completed++;
  });
  const deadline = performance.now() + (WARMUP_S + SECONDS) * 1000;
  const measureFrom = performance.now() + WARMUP_S * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      if (!measuring && performance.now() >= measureFrom) {
        measuring = true;
        lastRecipient = createHistogram();
        http = createHistogram();
      }
      const n = seq++;
      const started = performance.now();
      room.expect(n, started);
      const res = await pool.request({
        method: 'POST',
        path: `/api/v1/desktops/${DESKTOP}/events`,
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body: `{"type":"bench","payload":{"seq":${n}}}`,
      });
      const body = (await res.body.json()) as { delivered: number };
      if (res.statusCode !== 202) throw new Error(`publish answered ${res.statusCode}`);
      if (measuring) {
        recordUs(http, (performance.now() - started) * 1000);
        delivered += body.delivered;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  // Let the last events land before the pool closes.
  await sleep(200);
  measuring = false;
  await pool.close();
  return {
    concurrency,
    publishes: completed,
    perSecond: Math.round(completed / SECONDS),
    delivered,
    lastRecipient: summarize(lastRecipient),
    http: summarize(http),
  };
}

try {
  const stub = await startPermissionStub(cleanup);
  const server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--api-key', KEY] });
  const room = await openRoom(server.wsUrl(DESKTOP));
  cleanup.after(() => room.close());
  const rows: Row[] = [];
  for (const concurrency of CONCURRENCY) rows.push(await run(server.port, room, concurrency));
  const f = (x: number) => `${x.toFixed(2)} ms`;
  const out = [
    `Server API publishes into a ${ROOM_SIZE}-session room, \`--workers 2\`, ${SECONDS} s per row after ${WARMUP_S} s of warm-up.`,
    `Machine: ${describeMachine()}.`,
    `Command: \`npx node bench/api.ts --seconds ${SECONDS} --concurrency ${CONCURRENCY.join(',')}\``,
    '',
    '| Calls in flight | Publishes/s | Deliveries/s | Call → last recipient p50 | p99 | 202 round trip p50 | p99 |',
    '|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.concurrency} | ${r.perSecond.toLocaleString('en-US')} | ${Math.round(r.delivered / SECONDS).toLocaleString('en-US')} | ${f(r.lastRecipient.p50)} | ${f(r.lastRecipient.p99)} | ${f(r.http.p50)} | ${f(r.http.p99)} |`,
    ),
  ];
  console.log(out.join('\n'));
} finally {
  await cleanup.run();
}
