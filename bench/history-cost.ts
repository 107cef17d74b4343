/**
 * What history costs (issue 21): the same server with history on (the
 * defaults) and off (`--history-age 0`), measured in one sitting.
 *
 *  1. latency: `loadtest --preset light` and `medium`, in on/off pairs whose
 *     order alternates (on-off, off-on, …), each against a fresh
 *     `--workers 1` server pinned to core 0, the generator on core 1 (`moodio-rt
 *     loadtest`, or the neutral Go one with `--generator go`; with
 *     `--generator node,go` both, in turn, beside every run). The issue's bar:
 *     history may move p99 by no more than 10%.
 *  2. throughput: 50 rooms × 10, 2 senders per room at `--rate` (1110/s:
 *     about 1M deliveries/s), in the same pairs. The bar: 100% delivered,
 *     p99 ≤ 50 ms, with history on.
 *  3. memory: `--desktops` desktops (1,000) of one session each, each sending
 *     `--events` (2,000: the default count bound) events of about 200 bytes,
 *     on a fresh `--workers 1` server per mode; then every session leaves,
 *     the shard runs its memory-reducing GC (memory-release.ts). The history
 *     is off the heap (event-ring.ts): the RSS growth while full, on less
 *     off, is compared with what the history counts against
 *     `--history-memory` (history.ts: each log and its ring's buffers,
 *     computed here by a History fed the same events).
 *
 * The machine is shared: each run records the load average, and the tables
 * compare ratios within a pair rather than absolute figures.
 *
 *   node bench/history-cost.ts [--only latency,throughput,memory] [--presets light,medium] [--pairs 3] [--rate 1110] [--desktops 1000] [--events 2000] [--generator node|go|node,go] [--gc-threads auto|single|parallel]
 *
 * Writes bench/results/history-cost-<date>-<commit>[-<generators>][-<parts>][-rate<N>].{json,md}
 * (the generators named unless node alone, the rate when --rate is given).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { signAccessToken } from '../src/auth/token.ts';
import type { LoadtestReport } from '../src/loadtest/runner.ts';
import { encodeClientText, RawWebSocket } from '../src/loadtest/ws-client.ts';
import { rawRequest } from '../test/helpers/client.ts';
import { scrape, sumOf } from '../test/helpers/metrics.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET, type ServerProcess } from '../test/helpers/server.ts';
import { rssOf } from './connections.ts';
import { History } from '../src/shard/history.ts';
import { generatorsOption, loadGenerator, type GeneratorName } from './generator.ts';
import { BENCH_SERVE_FLAGS, loadAverage, median } from './sitting.ts';

const argv = process.argv.slice(2);
const arg = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  const value = i >= 0 ? Number(argv[i + 1]) : fallback;
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got ${argv[i + 1]}`);
  return value;
};
const only = (() => {
  const i = argv.indexOf('--only');
  return i >= 0 ? new Set(argv[i + 1]!.split(',')) : null;
})();
const want = (part: string) => only === null || only.has(part);
const PAIRS = arg('--pairs', 3);
const RATE = arg('--rate', 1110);
const DESKTOPS = arg('--desktops', 1000);
const EVENTS = arg('--events', 2000);
const PRESETS = (() => {
  const i = argv.indexOf('--presets');
  return i >= 0 ? argv[i + 1]!.split(',') : ['light', 'medium'];
})();
const ADMIN = 'history-cost-admin-token-0123456789';
const MiB = 2 ** 20;

const pinned = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const serverPin = pinned ? ['taskset', '-c', '0'] : [];
const generatorPin = pinned ? ['taskset', '-c', '1'] : [];
/** `--gc-threads <mode>`, passed to every server (unset: the server's default). */
const GC_THREADS = (() => {
  const i = argv.indexOf('--gc-threads');
  return i >= 0 ? ['--gc-threads', argv[i + 1]!] : [];
})();
const BENCH_FLAGS = [...BENCH_SERVE_FLAGS, '--admin-token', ADMIN, ...GC_THREADS];
const MODES = { on: [] as string[], off: ['--history-age', '0'] };
type Mode = keyof typeof MODES;

const log = (line: string) => process.stderr.write(line + '\n');
const GENERATORS = generatorsOption(argv);
const generators = GENERATORS.map((name) => loadGenerator(name, generatorPin, TEST_SECRET));

function startBenchServer(cleanup: Cleanup, mode: Mode, workers = 1): Promise<ServerProcess> {
  return startServer(cleanup, {
    workers,
    args: [...BENCH_FLAGS, ...MODES[mode]],
    env: devSecretEnv(TEST_SECRET),
    prefix: serverPin,
    // The bin's shebang flag: run the server as `npx moodio-rt` would.
    nodeArgs: ['--max-semi-space-size=4'],
  });
}

interface Run {
  mode: Mode;
  pair: number;
  generator: GeneratorName;
  load: string;
  p50: number;
  p99: number;
  p999: number;
  delivered: number;
  deliveriesPerSecond: number;
  /** The server's CPU time (every thread, user + system) over the run, per 1,000 deliveries: what the shared machine's stalls hardly move. */
  cpuMsPer1k: number;
  /** The server's CPU time over the generator's run (connects included), % of wall time: near 100 on one pinned core, the server is the limit. */
  serverCpuPercent: number;
  /** Its shard thread's time on the core, and waiting for it (the server's other threads, V8's GC helpers among them, or another process), % of wall time. */
  shardRunPercent: number;
  shardWaitPercent: number;
  /** The generator's CPU time and busy time (sending, reading), % of its core, as it reports them. */
  generatorCpuPercent: number;
  generatorBusyPercent: number;
  /** The Go generator's polling without work near a send (CPU time, not load); null from the Node generator, which does not tell. */
  generatorSpinPercent: number | null;
  /** The Go generator's loop waiting for its core while another task held it; null from the Node generator. */
  generatorWaitPercent: number | null;
  sendLagP99: number;
  saturated: boolean;
}

/**
 * The shard threads' time on their core and waiting for it (ns, Linux
 * schedstat), summed over the server's `moodio-rt shard` threads: a shard
 * on its core all the time is the limit; one waiting shared its core.
 */
function shardSched(pid: number): { runNs: number; waitNs: number } {
  let runNs = 0;
  let waitNs = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      if (readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() !== 'moodio-rt shard') continue;
      const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
      runNs += run!;
      waitNs += wait!;
    } catch {
      // A thread that ended meanwhile.
    }
  }
  return { runNs, waitNs };
}

/** CPU time a process has used, every thread, user + system (ms; Linux clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/**
 * `PAIRS` on/off pairs of one workload, alternating which mode goes first.
 * Each run has a fresh server: a run that overloads one must not leave it a
 * backlog that the next run (or the other server, on the same core) pays for.
 */
async function pairs(
  label: string,
  args: string[],
  pick: (r: LoadtestReport) => { p50: number; p99: number; p999: number; delivered: number },
): Promise<Run[]> {
  const runs: Run[] = [];
  for (let pair = 1; pair <= PAIRS; pair++) {
    const order: Mode[] = pair % 2 === 1 ? ['on', 'off'] : ['off', 'on'];
    // With several generators, each runs beside each mode, and their order alternates too.
    const turn = pair % 2 === 1 ? generators : [...generators].reverse();
    for (const mode of order) {
      for (const generator of turn) {
        const cleanup = new Cleanup();
        try {
          const server = await startBenchServer(cleanup, mode);
          const load = loadAverage();
          log(`# ${label}, pair ${pair}/${PAIRS}, history ${mode}, ${generator.name} generator (load ${load})`);
          const cpuBefore = cpuMs(server.child.pid!);
          const schedBefore = shardSched(server.child.pid!);
          const started = performance.now();
          const report = generator.run(server.port, args);
          const wallMs = performance.now() - started;
          const cpu = cpuMs(server.child.pid!) - cpuBefore;
          const sched = shardSched(server.child.pid!);
          const ofWall = (ns: number) => Math.round(ns / 1e4 / wallMs);
          runs.push({
            mode,
            pair,
            generator: generator.name,
            load,
            ...pick(report),
            deliveriesPerSecond: report.deliveriesPerSecond,
            // Every delivery of the run, warm-up and connects included: the same work in both modes.
            cpuMsPer1k: (cpu / Math.max(1, report.generator.framesReceived)) * 1000,
            serverCpuPercent: Math.round((cpu / wallMs) * 100),
            shardRunPercent: ofWall(sched.runNs - schedBefore.runNs),
            shardWaitPercent: ofWall(sched.waitNs - schedBefore.waitNs),
            generatorCpuPercent: Math.max(...report.generator.cpuPercent),
            generatorBusyPercent: Math.max(...report.generator.busyPercent),
            generatorSpinPercent: (report.generator as { spinPercent?: number }).spinPercent ?? null,
            generatorWaitPercent: (report.generator as { waitPercent?: number }).waitPercent ?? null,
            sendLagP99: report.generator.sendLagMs.p99,
            saturated: report.generator.saturated,
          });
        } finally {
          await cleanup.run();
        }
      }
    }
  }
  return runs;
}

const results: Record<string, unknown> = {
  machine: machineInfo(),
  date: new Date().toISOString(),
  pinned,
  generators: GENERATORS,
  command: `node bench/history-cost.ts ${argv.join(' ')}`.trim(),
};

if (want('latency')) {
  const latency: Record<string, Run[]> = {};
  for (const preset of PRESETS) {
    latency[preset] = await pairs(`preset ${preset}`, ['--preset', preset, '--warmup', '1s'], (r) => ({
      p50: r.latencyMs.p50,
      p99: r.latencyMs.p99,
      p999: r.latencyMs.p999,
      delivered: Math.min(r.deliveryRatio, r.pressure!.expectedDeliveries ? r.pressure!.deliveries / r.pressure!.expectedDeliveries : 1),
    }));
  }
  results.latency = latency;
}
if (want('throughput')) {
  const args = ['--rooms', '50', '--users-per-room', '10', '--senders-per-room', '2', '--rate', String(RATE), '--duration', '5s', '--warmup', '2s'];
  results.throughput = {
    rate: RATE,
    runs: await pairs(`throughput ${RATE}/s per sender`, args, (r) => ({
      p50: r.latencyMs.p50,
      p99: r.latencyMs.p99,
      p999: r.latencyMs.p999,
      delivered: r.deliveryRatio,
    })),
  };
}

interface Heap {
  heapUsed: number;
  heapTotal: number;
}

interface MemorySample {
  rss: number;
  shardHeapUsed: number;
  shardHeapTotal: number;
}

async function sample(server: ServerProcess): Promise<MemorySample> {
  const res = await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  const stats = JSON.parse(res.body) as { shards: { memory: Heap | null }[] };
  const shard = stats.shards[0]!.memory!;
  return { rss: rssOf(server.child.pid!), shardHeapUsed: shard.heapUsed, shardHeapTotal: shard.heapTotal };
}

/** Open one session in each of `count` desktops; each answer's `room_joined` epoch is kept. */
async function openDesktops(port: number, count: number, runId: string): Promise<RawWebSocket[]> {
  const clients: RawWebSocket[] = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const token = signAccessToken({ userId: `hist-${runId}-${i}`, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
      let joined!: () => void;
      const ready = new Promise<void>((resolve) => (joined = resolve));
      const client = await RawWebSocket.connect({
        meter: { busyUs: 0 },
        host: '127.0.0.1',
        port,
        path: `/ws/desktop/hist-${runId}-${i}`,
        headers: { Cookie: `moodio_access_token=${token}` },
        onText: (buf, start) => {
          if (buf.toString('latin1', start, start + 20) === '{"type":"room_joined') joined();
        },
        onClose: () => {},
      });
      await ready;
      clients.push(client);
    }
  };
  await Promise.all(Array.from({ length: 50 }, worker));
  return clients;
}

/** The server's count of client messages received, summed over shards. */
async function received(port: number): Promise<number> {
  return sumOf((await scrape(port)).metrics, 'moodio_rt_messages_received_total');
}

/** A typical event: an `asset_moved` of about 200 bytes as the history keeps it (the sender's identity and a timestamp added). */
function eventFrame(n: number): Buffer {
  return encodeClientText(
    `{"type":"asset_moved","payload":{"assetId":"asset-${String(n).padStart(6, '0')}","x":${(n * 7) % 1920}.5,"y":${(n * 13) % 1080}.25}}`,
  );
}

/** Resume one desktop from offset 0 and count the replayed events and their bytes (the legacy text the history keeps, with its offset). */
async function replayOf(port: number, desktopId: string, epoch: string): Promise<{ recovered: boolean; events: number; bytes: number }> {
  const token = signAccessToken({ userId: `hist-check-${desktopId}`, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
  const state = { recovered: false, events: 0, bytes: 0 };
  let idle: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve, reject) => {
    let client: RawWebSocket | undefined;
    const done = () => {
      client?.close();
      resolve();
    };
    RawWebSocket.connect({
      meter: { busyUs: 0 },
      host: '127.0.0.1',
      port,
      path: `/ws/desktop/${desktopId}?epoch=${epoch}&offset=0`,
      headers: { Cookie: `moodio_access_token=${token}` },
      onText: (buf, start, end) => {
        const text = buf.toString('utf8', start, end);
        if (text.startsWith('{"type":"room_joined"')) state.recovered = text.includes('"recovered":true');
        else if (text.startsWith('{"type":"asset_moved"')) {
          state.events++;
          state.bytes += end - start;
        }
        clearTimeout(idle);
        idle = setTimeout(done, 500);
      },
      onClose: () => resolve(),
    }).then((c) => (client = c), reject);
  });
  return state;
}

interface MemoryRun {
  mode: Mode;
  load: string;
  fillSeconds: number;
  empty: MemorySample;
  full: MemorySample;
  left: MemorySample;
  released: boolean;
  check: { recovered: boolean; events: number; bytes: number };
}

async function memoryRun(mode: Mode): Promise<MemoryRun> {
  const cleanup = new Cleanup();
  try {
    const server = await startBenchServer(cleanup, mode);
    const runId = Math.random().toString(36).slice(2, 8);
    const load = loadAverage();
    log(`# memory, history ${mode}: ${DESKTOPS} desktops (load ${load})`);
    const clients = await openDesktops(server.port, DESKTOPS, runId);
    await sleep(3000);
    const empty = await sample(server);
    // The events go out in rounds of 100 per desktop, one write each, and the next round only once the server has read this one.
    const started = performance.now();
    const base = await received(server.port);
    for (let sent = 0; sent < EVENTS; ) {
      const batch = Math.min(100, EVENTS - sent);
      for (const client of clients) client.sendFrame(Buffer.concat(Array.from({ length: batch }, (_, k) => eventFrame(sent + k + 1))));
      sent += batch;
      const deadline = Date.now() + 60_000;
      while ((await received(server.port)) - base < sent * clients.length) {
        if (Date.now() > deadline) throw new Error(`the server read fewer than ${sent * clients.length} events within 60 s`);
        await sleep(20);
      }
    }
    const fillSeconds = (performance.now() - started) / 1000;
    await sleep(3000);
    const full = await sample(server);
    // Every session leaves: the shard's crowd has gone, and it runs one memory-reducing GC 3 s later (memory-release.ts).
    const releasedBefore = server.logs.filter((l) => l.event === 'memory_released').length;
    for (const client of clients) client.close();
    let released = true;
    await server
      .waitForLog((l) => l.event === 'memory_released' && server.logs.filter((x) => x.event === 'memory_released').length > releasedBefore, 30_000)
      .catch(() => (released = false));
    await sleep(1000);
    const left = await sample(server);
    // Is the history whole? One desktop resumed from its start.
    const epoch = await epochOf(server.port, `hist-${runId}-0`);
    const check = await replayOf(server.port, `hist-${runId}-0`, epoch);
    return { mode, load, fillSeconds, empty, full, left, released, check };
  } finally {
    await cleanup.run();
  }
}

/** A desktop's epoch, from a fresh session's `room_joined`. */
async function epochOf(port: number, desktopId: string): Promise<string> {
  const token = signAccessToken({ userId: `hist-epoch-${desktopId}`, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
  let epoch = '';
  let got!: () => void;
  const ready = new Promise<void>((resolve) => (got = resolve));
  const client = await RawWebSocket.connect({
    meter: { busyUs: 0 },
    host: '127.0.0.1',
    port,
    path: `/ws/desktop/${desktopId}`,
    headers: { Cookie: `moodio_access_token=${token}` },
    onText: (buf, start, end) => {
      const text = buf.toString('utf8', start, end);
      if (text.startsWith('{"type":"room_joined"')) {
        epoch = (JSON.parse(text) as { epoch: string }).epoch;
        got();
      }
    },
    onClose: () => {},
  });
  await ready;
  client.close();
  return epoch;
}

if (want('memory')) {
  const runs: MemoryRun[] = [];
  for (const mode of ['on', 'off'] as Mode[]) runs.push(await memoryRun(mode));
  results.memory = { desktops: DESKTOPS, events: EVENTS, runs };
}

// Output.
const GENERATOR_LABEL: Record<GeneratorName, string> = { node: '`moodio-rt loadtest`', go: 'the Go generator' };
const md: string[] = [
  `# What history costs — ${results.date as string}`,
  '',
  `Machine: ${describeMachine()}. Pinned: ${pinned ? 'server core 0, generator core 1' : 'no'}. Generator: ${GENERATORS.map((name) => GENERATOR_LABEL[name]).join(' and ')}${GENERATORS.length > 1 ? ', in turn beside every run' : ''}. Command: \`${results.command as string}\``,
  '',
];
const f = (n: number) => (Math.round(n * 1000) / 1000).toString();
/** One table per generator: its runs, and the on/off ratios within its pairs. */
function pairTable(title: string, all: Run[]): void {
  for (const name of GENERATORS) {
    const runs = all.filter((r) => r.generator === name);
    md.push(
      `## ${title}${GENERATORS.length > 1 || name !== 'node' ? `, ${GENERATOR_LABEL[name]}` : ''}`,
      '',
      '| pair | history | load (1/5/15 min) | delivered | p50 ms | p99 ms | p99.9 ms | deliveries/s | server CPU ms per 1k frames | server CPU % | shard on core / waiting % | generator CPU / busy / spin / waiting % | send lag p99 ms |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const r of runs)
      md.push(
        `| ${r.pair} | ${r.mode} | ${r.load} | ${(r.delivered * 100).toFixed(2)}% | ${f(r.p50)} | ${f(r.p99)} | ${f(r.p999)} | ${Math.round(r.deliveriesPerSecond).toLocaleString('en-US')} | ${r.cpuMsPer1k.toFixed(2)} | ${r.serverCpuPercent} | ${r.shardRunPercent} / ${r.shardWaitPercent} | ${r.generatorCpuPercent} / ${r.generatorBusyPercent} / ${r.generatorSpinPercent ?? '—'} / ${r.generatorWaitPercent ?? '—'}${r.saturated ? ' (saturated)' : ''} | ${f(r.sendLagP99)} |`,
      );
    const ratio = (pick: (r: Run) => number) =>
      Array.from({ length: PAIRS }, (_, i) => {
        const on = runs.find((r) => r.pair === i + 1 && r.mode === 'on')!;
        const off = runs.find((r) => r.pair === i + 1 && r.mode === 'off')!;
        return pick(on) / pick(off);
      });
    const p50 = ratio((r) => r.p50);
    const p99 = ratio((r) => r.p99);
    const cpu = ratio((r) => r.cpuMsPer1k);
    md.push(
      '',
      `On / off, per pair: p50 ${p50.map((x) => x.toFixed(2)).join(' / ')} (median ${median(p50).toFixed(2)}); p99 ${p99.map((x) => x.toFixed(2)).join(' / ')} (median ${median(p99).toFixed(2)}); server CPU per frame ${cpu.map((x) => x.toFixed(2)).join(' / ')} (median ${median(cpu).toFixed(2)}). Medians of the runs: p99 on ${f(median(runs.filter((r) => r.mode === 'on').map((r) => r.p99)))} ms, off ${f(median(runs.filter((r) => r.mode === 'off').map((r) => r.p99)))} ms.`,
      '',
    );
  }
}
if (results.latency) for (const [preset, runs] of Object.entries(results.latency as Record<string, Run[]>)) pairTable(`Preset ${preset}`, runs);
if (results.throughput) {
  const t = results.throughput as { rate: number; runs: Run[] };
  pairTable(`Throughput: 50 rooms × 10, 2 senders per room at ${t.rate}/s`, t.runs);
}
if (results.memory) {
  const m = results.memory as { desktops: number; events: number; runs: MemoryRun[] };
  const mib = (b: number) => (b / MiB).toFixed(1);
  md.push(
    `## Memory: ${m.desktops.toLocaleString('en-US')} desktops × ${m.events.toLocaleString('en-US')} events (one session each, \`--workers 1\`)`,
    '',
    '| history | load | fill | RSS empty → full → all left | shard heap used empty → full → all left | memory-reducing GC | one desktop resumed from 0 |',
    '|---|---|---|---|---|---|---|',
  );
  for (const r of m.runs)
    md.push(
      `| ${r.mode} | ${r.load} | ${r.fillSeconds.toFixed(1)} s | ${mib(r.empty.rss)} → ${mib(r.full.rss)} → ${mib(r.left.rss)} MiB | ${mib(r.empty.shardHeapUsed)} → ${mib(r.full.shardHeapUsed)} → ${mib(r.left.shardHeapUsed)} MiB | ${r.released ? 'yes' : 'no'} | recovered ${r.check.recovered}, ${r.check.events} events, ${r.check.bytes} bytes |`,
    );
  const on = m.runs.find((r) => r.mode === 'on');
  const off = m.runs.find((r) => r.mode === 'off');
  if (on && off && on.check.events > 0) {
    const events = m.desktops * m.events;
    const frame = on.check.bytes / on.check.events;
    // The history keeps the text without `,"offset":N`: about 11 bytes fewer than the replayed frame at 4-digit offsets.
    const text = frame - `,"offset":${m.events}`.length;
    // What one desktop's log counts: a History in this process fed the same events.
    const probe = new History({ maxAgeMs: 120_000, maxEvents: m.events, maxRoomBytes: 1 << 30, maxBytes: 2 ** 40, inUse: () => true });
    for (let i = 0; i < m.events; i++) probe.stamp('d', 'x'.repeat(Math.round(text)), false);
    const accounted = m.desktops * probe.bytes;
    probe.stop();
    const heap = on.left.shardHeapUsed - off.left.shardHeapUsed;
    const rss = on.full.rss - on.empty.rss - (off.full.rss - off.empty.rss);
    results.memorySummary = { textBytes: text, accounted, heap, rss };
    md.push(
      '',
      `Events of ${text.toFixed(0)} characters as kept (${frame.toFixed(0)} as replayed, with the offset). Accounted against \`--history-memory\`: ${mib(accounted)} MiB (${(accounted / m.desktops / 1024).toFixed(1)} KiB per desktop, ${(accounted / events).toFixed(0)} bytes per event).`,
      `Measured, history on less off: RSS growth while full +${mib(rss)} MiB, ${(rss / m.desktops / 1024).toFixed(1)} KiB per desktop, ${(rss / events).toFixed(0)} bytes per event (${(rss / accounted).toFixed(2)}× the accounting); shard heap once every session left +${mib(heap)} MiB (the events are off the heap).`,
      '',
    );
  }
}
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const generatorsPart = GENERATORS.length === 1 && GENERATORS[0] === 'node' ? '' : `-${GENERATORS.join('-')}`;
const ratePart = argv.includes('--rate') && want('throughput') ? `-rate${RATE}` : '';
const name = `history-cost-${(results.date as string).slice(0, 10)}-${(results.machine as { commit: string }).commit}${generatorsPart}${only ? `-${[...only].join('-')}` : ''}${ratePart}`;
writeFileSync(`${dir}${name}.json`, JSON.stringify(results, null, 2) + '\n');
writeFileSync(`${dir}${name}.md`, md.join('\n') + '\n');
process.stdout.write(md.join('\n') + '\n');
log(`# wrote bench/results/${name}.{json,md}`);
