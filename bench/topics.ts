/**
 * The multiplexed route's extra hop (issue 20): one probe room's events, as
 * a legacy socket, a multiplexed subscriber on the room's own shard, and a
 * multiplexed subscriber on the other shard (through the in-process link)
 * receive them, under the loadtest's light and medium pressure on the same
 * server (--workers 2). The probe sender is a legacy socket sending 100
 * events/s with its send time (performance.now() of this process, where
 * every receiver runs too) in the payload.
 *
 * Then the memory of a multiplexed connection holding 5 topics: the
 * server's RSS growth per connection while N of them sit idle, each
 * subscribed to 5 desktops spread over both shards, beside the same figure
 * for N legacy sessions.
 *
 * On a machine with ≥ 2 cores the server is pinned to core 0, the loadtest
 * and this probe to core 1.
 *
 *   node bench/topics.ts [--presets light,medium] [--seconds 8] [--connections 2000]
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { desktopOnShard } from '../test/helpers/api.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { CLI, devSecretEnv, startServer, TEST_SECRET, type ServerProcess } from '../test/helpers/server.ts';
import { token, user } from '../test/helpers/tokens.ts';
import { BENCH_SERVE_FLAGS } from './sitting.ts';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const presets = (arg('--presets') ?? 'light,medium').split(',');
const seconds = Number(arg('--seconds') ?? '8');
const connections = Number(arg('--connections') ?? '2000');
const WORKERS = 2;
const ADMIN = 'bench-admin-token-0123456789abcdef';
const pin = availableParallelism() >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
// Read before this process is pinned to one core.
const machine = { info: machineInfo(), text: describeMachine() };
if (pin) spawnSync('taskset', ['-cp', '1', String(process.pid)]);
const log = (line: string) => process.stderr.write(line + '\n');
const SERVER_ARGS = [...BENCH_SERVE_FLAGS, '--connect-rate', '0', '--admin-token', ADMIN, '--max-connections-per-user', '0'];

function userOnShard(shard: number): ReturnType<typeof user> {
  for (;;) {
    const claims = user('Probe');
    if (fnv1a32(claims.userId) % WORKERS === shard) return claims;
  }
}

function open(url: string, jwt: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { cookie: `moodio_access_token=${jwt}` }, perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** Send `frame` and resolve with the first message that `done` accepts. */
function ask(ws: WebSocket, frame: unknown, done: (m: Record<string, unknown>) => boolean): Promise<void> {
  return new Promise((resolve) => {
    const on = (data: Buffer) => {
      if (!done(JSON.parse(data.toString()) as Record<string, unknown>)) return;
      ws.off('message', on);
      resolve();
    };
    ws.on('message', on);
    ws.send(JSON.stringify(frame));
  });
}

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

interface ProbeRow {
  preset: string;
  receiver: string;
  received: number;
  p50: number;
  p99: number;
}

/** One probe run beside the loadtest's `preset`. */
async function probe(server: ServerProcess, preset: string): Promise<ProbeRow[]> {
  const id = desktopOnShard(0, WORKERS, 'probe');
  const topic = `desktop:${id}`;
  const legacyUrl = server.wsUrl(id);
  const connUrl = `ws://127.0.0.1:${server.port}/ws/connection`;
  const sender = await open(legacyUrl, token(user('Sender')));
  const receivers: Record<string, WebSocket> = {
    'legacy socket (owner shard)': await open(legacyUrl, token(user('Legacy'))),
    'subscriber, owner shard': await open(connUrl, token(userOnShard(0))),
    'subscriber, other shard (link)': await open(connUrl, token(userOnShard(1))),
  };
  for (const ws of Object.values(receivers).slice(1)) await ask(ws, { op: 'subscribe', topic }, (m) => m.op === 'subscribed');
  const latencies: Record<string, number[]> = {};
  for (const [name, ws] of Object.entries(receivers)) {
    const got: number[] = (latencies[name] = []);
    ws.on('message', (data: Buffer) => {
      const now = performance.now();
      const m = JSON.parse(data.toString()) as { type?: string; payload?: { t?: number } };
      if (m.type === 'probe' && typeof m.payload?.t === 'number') got.push(now - m.payload.t);
    });
  }
  const env: NodeJS.ProcessEnv = { ...process.env, JWT_ACCESS_SECRET: TEST_SECRET };
  delete env.NODE_OPTIONS;
  const [command, ...prefix] = [...(pin ? ['taskset', '-c', '1'] : []), process.execPath];
  const loadtest = spawn(
    command!,
    [
      ...prefix,
      CLI,
      'loadtest',
      '--url',
      `ws://127.0.0.1:${server.port}`,
      '--threads',
      '1',
      '--no-progress',
      '--json',
      '--min-delivery',
      '0',
      '--preset',
      preset,
      '--warmup',
      '1s',
      '--duration',
      `${seconds + 3}s`,
    ],
    { env, stdio: ['ignore', 'ignore', 'ignore'] },
  );
  const exited = new Promise((resolve) => loadtest.once('exit', resolve));
  // The loadtest connects its sessions, then warms up: probe while it sends.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    sender.send(JSON.stringify({ type: 'probe', payload: { t: performance.now() } }));
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  await exited;
  for (const ws of [sender, ...Object.values(receivers)]) ws.terminate();
  return Object.entries(latencies).map(([receiver, values]) => {
    const sorted = values.sort((a, b) => a - b);
    return { preset, receiver, received: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
  });
}

const rss = (server: ServerProcess): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.child.pid}/status`, 'utf8'))![1]) * 1024;
const settle = (): Promise<unknown> => new Promise((resolve) => setTimeout(resolve, Number(process.env.SETTLE_MS ?? 12_000)));

/** Open `count` sockets made by `make`, 50 at a time. */
async function openMany(count: number, make: (i: number) => Promise<WebSocket>): Promise<WebSocket[]> {
  const sockets: WebSocket[] = [];
  for (let i = 0; i < count; i += 50) sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, k) => make(i + k)))));
  return sockets;
}

/**
 * RSS growth per socket while `connections` of them sit idle on a fresh
 * server, read once it has settled (as bench/connections.ts measures a
 * legacy session): `multiplexed`, connections holding 5 topics each
 * (desktops spread over both shards, 10 subscribers a room), or `legacy`,
 * sessions in rooms of 10. Each kind gets its own server: on a shared one
 * the second kind reused the heap the first had grown.
 */
async function memory(server: ServerProcess, kind: 'multiplexed' | 'legacy'): Promise<number> {
  const connUrl = `ws://127.0.0.1:${server.port}/ws/connection`;
  const desktops = Array.from({ length: Math.ceil((connections * 5) / 10) }, (_, i) => desktopOnShard(i % WORKERS, WORKERS, 'mem'));
  const multiplexed = async (i: number): Promise<WebSocket> => {
    const ws = await open(connUrl, token(user('Mem')));
    for (let k = 0; k < 5; k++) await ask(ws, { op: 'subscribe', topic: `desktop:${desktops[(i * 5 + k) % desktops.length]}` }, (m) => m.op === 'subscribed');
    return ws;
  };
  const legacy = (i: number): Promise<WebSocket> => open(server.wsUrl(desktops[Math.floor(i / 10)]!), token(user('Leg')));
  const make = kind === 'multiplexed' ? multiplexed : legacy;
  // Warm the code paths so that start-up allocations do not count.
  for (const ws of await openMany(200, make)) ws.terminate();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const before = rss(server);
  const sockets = await openMany(connections, make);
  await settle();
  const grown = rss(server) - before;
  for (const ws of sockets) ws.terminate();
  return grown / connections;
}

const cleanup = new Cleanup();
const rows: ProbeRow[] = [];
let mem: { multiplexed: number; legacy: number };
try {
  const env = devSecretEnv(TEST_SECRET);
  for (const preset of presets) {
    const run = new Cleanup();
    const server = await startServer(run, { workers: WORKERS, args: SERVER_ARGS, env, prefix: pin ? ['taskset', '-c', '0'] : [] });
    log(`# ${preset}`);
    rows.push(...(await probe(server, preset)));
    await run.run();
  }
  const measured: Record<string, number> = {};
  for (const kind of ['multiplexed', 'legacy'] as const) {
    const run = new Cleanup();
    const server = await startServer(run, { workers: WORKERS, args: SERVER_ARGS, env, prefix: pin ? ['taskset', '-c', '0'] : [] });
    log(`# memory, ${connections} ${kind} sockets`);
    measured[kind] = await memory(server, kind);
    await run.run();
  }
  mem = { multiplexed: measured.multiplexed!, legacy: measured.legacy! };
} finally {
  await cleanup.run();
}

const date = new Date().toISOString();
const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
const md = [
  `# Multiplexed route benchmark — ${date}`,
  '',
  `Machine: ${machine.text}. Pinned: ${pin ? 'server core 0, loadtest and probe core 1' : 'no'}. --workers ${WORKERS}.`,
  `Command: \`node bench/topics.ts ${process.argv.slice(2).join(' ')}\``.replace(/ `$/, '`'),
  '',
  'Probe room: a legacy sender at 100 events/s, beside `moodio-rt loadtest --preset <level>` on the same server.',
  '',
  '| Level | Receiver | Received | p50 | p99 |',
  '|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.preset} | ${r.receiver} | ${r.received} | ${r.p50.toFixed(3)} ms | ${r.p99.toFixed(3)} ms |`),
  '',
  `Memory (RSS growth per socket, ${connections} idle sockets, read after it settled): a multiplexed connection holding 5 topics ${(mem!.multiplexed / 1024).toFixed(1)} KiB; a legacy session ${(mem!.legacy / 1024).toFixed(1)} KiB.`,
  '',
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const base = `${dir}topics-${date.slice(0, 10)}-${commit}`;
writeFileSync(`${base}.json`, JSON.stringify({ date, commit, machine: machine.info, pinned: pin, rows, memory: mem! }, null, 2) + '\n');
writeFileSync(`${base}.md`, md.join('\n'));
process.stdout.write(md.join('\n'));
log(`# wrote ${base}.json and .md`);
