/**
 * Abuse benchmarks (issue 11): what one user can make the server hold or
 * spend, against a real server with its default limits (`--workers 2`, a
 * real permission stub), and what a bystander room on the same shard sees.
 *
 *   node bench/abuse.ts memory [--seconds 60] [--no-rate-limit]
 *                                               one user at the per-user cap, half its sessions never reading,
 *                                               max-size frames of a non-mutation type within the rate limit
 *                                               (--no-rate-limit: a server run with --rate-limit 0, so that only
 *                                               the outbound caps stand between the attack and the memory)
 *   node bench/abuse.ts flood [--seconds 10]    4 sessions of one user sending 2-byte frames as fast as they can
 *   node bench/abuse.ts storm [--sessions 5000] 5,000 sessions over 500 desktops reconnecting at once, against a
 *                                               stub answering in 20 ms, 32 at once; cache on and off, same run
 *
 * Prints a Markdown table (machine and command included) to stdout.
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { signAccessToken } from '../src/auth/token.ts';
import { createHistogram, recordUs, summarize, type LatencySummary } from '../src/loadtest/histogram.ts';
import { shardFor } from '../src/primary/router.ts';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { describeMachine } from '../scripts/machine-info.ts';
import { rssOf } from './connections.ts';
import { scrape } from '../test/helpers/metrics.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from '../test/helpers/server.ts';

const scenario = process.argv[2] ?? 'memory';
const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const WORKERS = 2;
const MiB = 1024 * 1024;
const cleanup = new Cleanup();

const tokens = new Map<string, string>();
/** One token per user, as a browser keeps its cookie across reconnects. */
function tokenFor(userId: string): string {
  let token = tokens.get(userId);
  if (token === undefined) tokens.set(userId, (token = signAccessToken({ userId, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600)));
  return token;
}

/** Open a session; on 429/503 wait as told and try again. */
async function open(url: string, userId: string): Promise<WebSocket> {
  for (;;) {
    const ws = new WebSocket(url, { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${tokenFor(userId)}` }, perMessageDeflate: false });
    const outcome = await new Promise<WebSocket | number>((resolve, reject) => {
      ws.once('open', () => resolve(ws));
      ws.once('unexpected-response', (_req, res) => resolve(Number(res.headers['retry-after'] ?? 1) * 1000));
      ws.once('error', reject);
    });
    if (typeof outcome !== 'number') return outcome;
    await sleep(outcome);
  }
}

/** A desktop id whose room lives on `shard`. */
function desktopOn(shard: number, prefix: string): string {
  for (let i = 0; ; i++) if (shardFor(`${prefix}-${i}`, WORKERS) === shard) return `${prefix}-${i}`;
}

/** A bystander room: a sender at `rate`/s and a receiver measuring the latency of each event. */
async function bystander(server: ServerProcess, desktopId: string, rate: number) {
  const url = server.wsUrl(desktopId);
  const receiver = await open(url, 'bystander-receiver');
  const sender = await open(url, 'bystander-sender');
  let histogram = createHistogram();
  let received = 0;
  receiver.on('message', (data: Buffer) => {
    const text = data.toString();
    if (!text.startsWith('{"type":"probe"')) return;
    const sent = Number(/"t":([\d.]+)/.exec(text)![1]);
    recordUs(histogram, (performance.now() - sent) * 1000);
    received++;
  });
  const timer = setInterval(() => sender.send(`{"type":"probe","payload":{"t":${performance.now()}}}`), 1000 / rate);
  return {
    /** Start a fresh measurement window. */
    reset() {
      histogram = createHistogram();
      received = 0;
    },
    summary(): LatencySummary & { received: number } {
      return { ...summarize(histogram), received };
    },
    stop() {
      clearInterval(timer);
      receiver.terminate();
      sender.terminate();
    },
  };
}

const fmt = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const ms = (s: LatencySummary, key: 'p50' | 'p99' | 'max') => `${s[key].toFixed(2)} ms`;

async function memory(): Promise<string[]> {
  const seconds = arg('--seconds', 60);
  const noRateLimit = process.argv.includes('--no-rate-limit');
  const stub = await startPermissionStub(cleanup);
  const server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: noRateLimit ? ['--rate-limit', '0'] : [] });
  const pid = server.child.pid!;
  const attackRoom = desktopOn(0, 'attack');
  const probe = await bystander(server, desktopOn(0, 'bystander'), 20);
  await sleep(3000);
  const baseline = rssOf(pid);
  probe.reset();
  // One user at the per-user cap (50): 25 senders and 25 sessions that never read.
  const attacker = 'attacker-0001';
  const openReader = async () => {
    const ws = await open(server.wsUrl(attackRoom), attacker);
    (ws as unknown as { _socket: Socket })._socket.pause();
    return ws;
  };
  const readers: WebSocket[] = [];
  for (let i = 0; i < 25; i++) readers.push(await openReader());
  const senders: WebSocket[] = [];
  for (let i = 0; i < 25; i++) senders.push(await open(server.wsUrl(attackRoom), attacker));
  // Max-size frames (4096 bytes) whose payload re-serializes large, of a type a viewer may send.
  const numbers = Array.from({ length: 800 }, () => '1e20').join(',');
  const frame = `{"type":"cursor","payload":[${numbers}]}`.padEnd(4096, ' ');
  const cutsOf = (m: Map<string, number>) =>
    ['backlog_cap', 'memory_cap', 'slow_consumer'].reduce((n, r) => n + m.get(`moodio_rt_protective_closes_total{reason="${r}"}`)!, 0);
  let peak = baseline;
  let cut = 0;
  let reopened = 0;
  const started = Date.now();
  // Within the rate limit as the review did: a burst of 200, then 100/s per sender (the server counts them per user).
  for (const ws of senders) for (let i = 0; i < 200; i++) ws.send(frame);
  const pump = setInterval(() => {
    for (const ws of senders) if (ws.readyState === WebSocket.OPEN) ws.send(frame);
  }, 10);
  let lastTopUp = Date.now();
  while (Date.now() - started < seconds * 1000) {
    await sleep(250);
    peak = Math.max(peak, rssOf(pid));
    if (Date.now() - lastTopUp >= 1000) {
      lastTopUp = Date.now();
      // A non-reader cannot see its own cut: the attacker learns it as we do, and reconnects as many.
      const now = cutsOf((await scrape(server.port)).metrics);
      for (; cut < now; cut++) {
        readers.push(await openReader());
        reopened++;
      }
    }
  }
  clearInterval(pump);
  const during = probe.summary();
  for (const ws of [...senders, ...readers]) ws.terminate();
  await sleep(30_000);
  const retained = rssOf(pid);
  const { metrics } = await scrape(server.port);
  probe.stop();
  const heap = ['0', '1', 'primary'].reduce((n, s) => n + metrics.get(`moodio_rt_heap_used_bytes{shard="${s}"}`)!, 0);
  return [
    `Server: \`serve --workers ${WORKERS}\`${noRateLimit ? ' `--rate-limit 0`' : ''}, every other option at its default.`,
    '',
    `| what | value | target |`,
    `|---|---|---|`,
    `| baseline RSS | ${fmt(baseline)} | |`,
    `| peak RSS over baseline | ${fmt(peak - baseline)} | ≤ 256 MiB |`,
    `| retained 30 s after | ${fmt(retained - baseline)} (V8 heap in use then, all threads: ${fmt(heap)}) | ≤ 64 MiB |`,
    `| bystander room p50 / p99 / max (same shard) | ${ms(during, 'p50')} / ${ms(during, 'p99')} / ${ms(during, 'max')} (${during.received} events) | p99 < 10 ms |`,
    `| non-readers cut, and reopened by the attacker | ${cut} / ${reopened} | |`,
    `| closes: backlog_cap / memory_cap / slow_consumer | ${metrics.get('moodio_rt_protective_closes_total{reason="backlog_cap"}')} / ${metrics.get('moodio_rt_protective_closes_total{reason="memory_cap"}')} / ${metrics.get('moodio_rt_protective_closes_total{reason="slow_consumer"}')} | |`,
    `| frames dropped by the rate limit | ${metrics.get('moodio_rt_messages_dropped_total{reason="rate_limit"}')} | |`,
  ];
}

async function flood(): Promise<string[]> {
  const seconds = arg('--seconds', 10);
  const stub = await startPermissionStub(cleanup);
  const server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: [] });
  const probe = await bystander(server, desktopOn(0, 'bystander'), 50);
  await sleep(2000);
  probe.reset();
  await sleep(seconds * 1000);
  const quiet = probe.summary();
  const before = (await scrape(server.port)).metrics;
  // The flooders run in a process of their own, so that their sending does not delay the bystander's clocks here.
  const urls = Array.from({ length: 4 }, (_, i) => server.wsUrl(desktopOn(0, `flood-${i}`)));
  const child = fork(fileURLToPath(import.meta.url), ['flood-client', String(seconds), ...urls], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await once(child, 'message'); // connected
  probe.reset();
  const [sent] = (await once(child, 'message')) as [number];
  const flooded = probe.summary();
  const after = (await scrape(server.port)).metrics;
  const read = after.get('moodio_rt_messages_received_total')! - before.get('moodio_rt_messages_received_total')!;
  probe.stop();
  return [
    `| window (${seconds} s each) | bystander p50 | p99 | max | events |`,
    `|---|---|---|---|---|`,
    `| quiet | ${ms(quiet, 'p50')} | ${ms(quiet, 'p99')} | ${ms(quiet, 'max')} | ${quiet.received} |`,
    `| 4 flooding sessions | ${ms(flooded, 'p50')} | ${ms(flooded, 'p99')} | ${ms(flooded, 'max')} | ${flooded.received} |`,
    ``,
    `Frames the flooders handed to their sockets: ${sent.toLocaleString('en')}; frames the server read: ${read.toLocaleString('en')}; pauses: ${after.get('moodio_rt_rate_limit_pauses_total')}; closes for the rate limit: ${after.get('moodio_rt_protective_closes_total{reason="rate_limit"}')}.`,
  ];
}

/** A permission stub that behaves like a small app: 20 ms per answer, at most 32 answered at once. */
async function slowStub(): Promise<{ base: string; calls: () => number }> {
  let calls = 0;
  let busy = 0;
  const waiting: (() => void)[] = [];
  const server = createServer((_req: IncomingMessage, res: ServerResponse) => {
    calls++;
    const answer = () => {
      busy++;
      setTimeout(() => {
        res.setHeader('content-type', 'application/json');
        res.end('{"permission":"editor"}');
        busy--;
        waiting.shift()?.();
      }, 20);
    };
    if (busy < 32) answer();
    else waiting.push(answer);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, calls: () => calls };
}

async function storm(): Promise<string[]> {
  const sessions = arg('--sessions', 5000);
  const desktops = sessions / 10;
  // Each desktop: 5 users with 2 tabs each, so 2 sessions share every (user, desktop) pair.
  const plan = Array.from({ length: sessions }, (_, i) => ({ desktop: `storm-${Math.floor(i / 10)}`, user: `storm-user-${Math.floor(i / 10) * 5 + (i % 5)}` }));
  const pairs = new Set(plan.map((p) => `${p.user}/${p.desktop}`)).size;
  const rows = [
    `| permission cache | API calls, first connect | API calls, reconnect storm | storm: all back in their rooms | 429/503 retried |`,
    `|---|---|---|---|---|`,
  ];
  for (const ttl of ['30s', '0']) {
    const stub = await slowStub();
    const scope = new Cleanup();
    const server = await startServer(scope, {
      workers: WORKERS,
      permissionApiBase: stub.base,
      args: ['--permission-cache-ttl', ttl, '--max-pending-per-address', '0', '--handshake-rate-per-address', '0'],
    });
    let retries = 0;
    const joinAll = async (): Promise<WebSocket[]> =>
      Promise.all(
        plan.map(async (p) => {
          for (;;) {
            const ws = new WebSocket(server.wsUrl(p.desktop), { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${tokenFor(p.user)}` }, perMessageDeflate: false });
            const ok = await new Promise<boolean | number>((resolve) => {
              ws.once('message', () => resolve(true)); // room_joined
              ws.once('unexpected-response', (_req, res) => resolve(Number(res.headers['retry-after'] ?? 1) * 1000));
              ws.once('error', () => resolve(1000));
            });
            if (ok === true) return ws;
            retries++;
            await sleep(ok as number);
          }
        }),
      );
    const first = await joinAll();
    const firstCalls = stub.calls();
    for (const ws of first) ws.terminate();
    while (
      (await scrape(server.port)).metrics.get('moodio_rt_connections{shard="0"}')! +
        (await scrape(server.port)).metrics.get('moodio_rt_connections{shard="1"}')! >
      0
    )
      await sleep(50);
    retries = 0;
    const started = performance.now();
    const again = await joinAll();
    const took = performance.now() - started;
    rows.push(
      `| ${ttl === '0' ? 'off (`--permission-cache-ttl 0`)' : `on (${ttl})`} | ${firstCalls} | ${stub.calls() - firstCalls} | ${(took / 1000).toFixed(2)} s | ${retries} |`,
    );
    for (const ws of again) ws.terminate();
    await scope.run();
  }
  rows.push('', `${sessions} sessions, ${desktops} desktops, ${pairs} distinct (user, desktop) pairs: the target is calls ≤ ${pairs}.`);
  return rows;
}

/** The flood's sending side, in a child process: connect, report, flood for `seconds`, report the frames sent. */
async function floodClient(): Promise<void> {
  const [seconds, ...urls] = process.argv.slice(3);
  const flooders: WebSocket[] = [];
  for (const url of urls) flooders.push(await open(url, 'flooder-0001'));
  process.send!('connected');
  let sent = 0;
  const started = Date.now();
  while (Date.now() - started < Number(seconds) * 1000) {
    for (const ws of flooders) {
      // Keep each socket's send buffer topped up, a slice per turn.
      for (let k = 0; k < 5000 && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 1 * MiB; k++) {
        ws.send('{}');
        sent++;
      }
    }
    await sleep(1);
  }
  process.send!(sent);
  for (const ws of flooders) ws.terminate();
  process.disconnect?.();
}

if (scenario === 'flood-client') {
  await floodClient();
  process.exit(0);
}

const runners: Record<string, () => Promise<string[]>> = { memory, flood, storm };
const run = runners[scenario];
if (run === undefined) {
  process.stderr.write(`usage: node bench/abuse.ts memory|flood|storm\n`);
  process.exit(2);
}
try {
  const lines = await run();
  process.stdout.write(
    `### ${scenario}\n\n\`node bench/abuse.ts ${process.argv.slice(2).join(' ')}\` on ${describeMachine()}, commit ${process.env.GIT_COMMIT ?? 'working tree'}\n\n${lines.join('\n')}\n`,
  );
} finally {
  await cleanup.run();
}
