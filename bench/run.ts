/**
 * The benchmark suite (`npm run bench`), separate from the tests:
 *  1. micro: the seed's three benchmarks for the shard relay, with a naive baseline;
 *  2. presets: light/medium/heavy/extreme against moodio-rt with --workers 1,
 *     with --workers = cores, and against the naive single-thread baseline;
 *  3. sweep: raise --rate until delivery < 100% or p99 > 50 ms (500 sessions,
 *     50 rooms of 10, every room sending) and keep the best sustained rate;
 *  4. connections: idle memory per session and handshakes per second;
 *  5. loopback: what one loopback TCP write costs this machine (the floor).
 * Where the machine has ≥ 2 cores, single-core servers are pinned to core 0
 * and the generator to core 1 (taskset). The generator is `moodio-rt
 * loadtest`, or with `--generator go` the neutral Go one (bench/go-loadgen).
 * Results: bench/results/<date>-<commit>[-go].{json,md}.
 *
 * This machine is shared and noisy: one run's p99 is the third-worst of 300
 * samples, and one 4 ms hiccup on either core sets it. So the single-core
 * presets and every sweep step run --repeat times (default 3) and report the
 * median, with each run's p99 beside it.
 *
 *   node bench/run.ts [--only micro,presets,sweep,connections,loopback] [--quick] [--repeat N] [--generator node|go]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { LoadtestReport } from '../src/loadtest/runner.ts';
import { machineInfo, describeMachine } from '../scripts/machine-info.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET, type ServerOptions } from '../test/helpers/server.ts';
import { connectRate, idleMemory } from './connections.ts';
import { generatorOption, loadGenerator } from './generator.ts';
import { BENCH_SERVE_FLAGS } from './sitting.ts';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));
const only = (() => {
  const i = process.argv.indexOf('--only');
  return i > 0 ? new Set(process.argv[i + 1]!.split(',')) : null;
})();
const quick = process.argv.includes('--quick');
const repeat = (() => {
  const i = process.argv.indexOf('--repeat');
  const n = i > 0 ? Number(process.argv[i + 1]) : quick ? 1 : 3;
  if (!Number.isInteger(n) || n < 1) throw new Error(`--repeat must be a positive integer, got ${process.argv[i + 1]}`);
  return n;
})();
const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : Math.round(((sorted[mid - 1]! + sorted[mid]!) / 2) * 1000) / 1000;
};
const want = (section: string) => only === null || only.has(section);

const cores = availableParallelism();
const hasTaskset = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const pin = cores >= 2 && hasTaskset;
const serverPin = pin ? ['taskset', '-c', '0'] : [];
const generatorPin = pin ? ['taskset', '-c', '1'] : [];
const secret = TEST_SECRET;
const generator = loadGenerator(generatorOption(process.argv), generatorPin, secret);

interface PresetRow {
  server: string;
  preset: string;
  sessions: number;
  rooms: number;
  delivered: string;
  deliveryRatio: number;
  pressureDeliveryRatio: number;
  p50: number;
  p95: number;
  p99: number;
  p999: number;
  max: number;
  pressureDeliveriesPerSecond: number;
  /** Per delivery in the pressure rooms (medians over runs). */
  pressureP50: number;
  pressureP99: number;
  generatorSaturated: boolean;
  sendLagP99: number;
  /** Runs behind this row; latency and rate columns are their medians. */
  runs: number;
  /** Each run's p99, in run order. */
  p99Runs: number[];
}

const results: Record<string, unknown> = {
  machine: machineInfo(),
  date: new Date().toISOString(),
  pinned: pin,
  generator: generator.name,
  command: `node bench/run.ts ${process.argv.slice(2).join(' ')}`.trim(),
};
const log = (line: string) => process.stderr.write(line + '\n');

/** `times` loadtest runs against `port`, each logged as `label` (with its run number when there are several). */
function loadtestRuns(port: number, times: number, label: string, args: string[]): LoadtestReport[] {
  const reports: LoadtestReport[] = [];
  for (let run = 1; run <= times; run++) {
    log(`# ${label}${times > 1 ? ` (run ${run}/${times})` : ''}`);
    reports.push(generator.run(port, args));
  }
  return reports;
}

async function withServer<T>(options: ServerOptions, fn: (port: number, pid: number) => Promise<T>): Promise<T> {
  const cleanup = new Cleanup();
  try {
    const server = await startServer(cleanup, { ...options, env: { JWT_ACCESS_SECRET: secret, ...options.env } });
    return await fn(server.port, server.child.pid!);
  } finally {
    await cleanup.run();
  }
}

// The bin's shebang flag (see cli/moodio-rt.mjs): run the server as `npx moodio-rt` would.
const BIN_NODE_ARGS = ['--max-semi-space-size=4'];

const SERVERS: { name: string; options: ServerOptions }[] = [
  {
    name: 'moodio-rt --workers 1',
    options: {
      workers: 1,
      args: [...BENCH_SERVE_FLAGS],
      env: devSecretEnv(secret),
      prefix: serverPin,
      nodeArgs: BIN_NODE_ARGS,
    },
  },
  {
    name: `moodio-rt --workers ${cores}`,
    options: {
      workers: cores,
      args: [...BENCH_SERVE_FLAGS],
      env: devSecretEnv(secret),
      nodeArgs: BIN_NODE_ARGS,
    },
  },
  { name: 'naive baseline (1 thread)', options: { script: [here('./naive-server.ts')], prefix: serverPin } },
];

if (want('micro')) {
  log('# micro');
  const out = execFileSync(process.execPath, [here('./broadcast.bench.ts'), '--json', '--iterations', quick ? '50000' : '200000'], { encoding: 'utf8' });
  results.micro = out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

if (want('presets')) {
  const rows: PresetRow[] = [];
  for (const [index, server] of SERVERS.entries()) {
    // Only the single-core server (the issue's targets) is repeated; the others are context.
    const runs = index === 0 ? repeat : 1;
    await withServer(server.options, async (port) => {
      for (const preset of quick ? ['light', 'heavy'] : ['light', 'medium', 'heavy', 'extreme']) {
        const reports = loadtestRuns(port, runs, `preset ${preset} → ${server.name}`, ['--preset', preset, '--warmup', '1s']);
        const of = (pick: (r: LoadtestReport) => number) => median(reports.map(pick));
        const worst = reports.reduce((a, b) => (b.deliveryRatio < a.deliveryRatio ? b : a));
        rows.push({
          server: server.name,
          preset,
          sessions: worst.sessions,
          rooms: worst.workload.rooms,
          delivered: `${worst.target!.deliveries}/${worst.target!.expectedDeliveries}`,
          deliveryRatio: worst.deliveryRatio,
          pressureDeliveryRatio: Math.min(
            ...reports.map((r) => (r.pressure!.expectedDeliveries ? r.pressure!.deliveries / r.pressure!.expectedDeliveries : 1)),
          ),
          p50: of((r) => r.latencyMs.p50),
          p95: of((r) => r.latencyMs.p95),
          p99: of((r) => r.latencyMs.p99),
          p999: of((r) => r.latencyMs.p999),
          max: of((r) => r.latencyMs.max),
          pressureDeliveriesPerSecond: of((r) => r.pressure!.deliveriesPerSecond),
          pressureP50: of((r) => r.deliveryLatencyMs.p50),
          pressureP99: of((r) => r.deliveryLatencyMs.p99),
          generatorSaturated: reports.some((r) => r.generator.saturated),
          sendLagP99: of((r) => r.generator.sendLagMs.p99),
          runs,
          p99Runs: reports.map((r) => r.latencyMs.p99),
        });
      }
    });
  }
  results.presets = rows;
}

if (want('sweep')) {
  const steps: {
    rate: number;
    deliveriesPerSecond: number;
    deliveryRatio: number;
    p99: number;
    p99Runs: number[];
    generatorSaturated: boolean;
    /** The generator's CPU and busy time, % of its core (medians over the runs). */
    generatorCpuPercent: number;
    generatorBusyPercent: number;
  }[] = [];
  await withServer(SERVERS[0]!.options, async (port) => {
    for (const rate of quick ? [200, 600] : [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200]) {
      const reports = loadtestRuns(port, repeat, `sweep rate ${rate}/s per sender`, [
        '--rooms',
        '50',
        '--users-per-room',
        '10',
        '--senders-per-room',
        '2',
        '--rate',
        String(rate),
        '--duration',
        quick ? '3s' : '5s',
        '--warmup',
        '2s',
      ]);
      // A step is sustained when every run delivers everything and the median p99 is within 50 ms.
      const step = {
        rate,
        deliveriesPerSecond: median(reports.map((r) => r.deliveriesPerSecond)),
        deliveryRatio: Math.min(...reports.map((r) => r.deliveryRatio)),
        p99: median(reports.map((r) => r.latencyMs.p99)),
        p99Runs: reports.map((r) => r.latencyMs.p99),
        generatorSaturated: reports.some((r) => r.generator.saturated),
        generatorCpuPercent: median(reports.map((r) => Math.max(...r.generator.cpuPercent))),
        generatorBusyPercent: median(reports.map((r) => Math.max(...r.generator.busyPercent))),
      };
      steps.push(step);
      if (step.deliveryRatio < 1 || step.p99 > 50) break;
    }
  });
  const sustained = steps.filter((s) => s.deliveryRatio === 1 && s.p99 <= 50);
  results.sweep = {
    workload: '500 sessions, 50 rooms of 10, 2 senders per room',
    runsPerStep: repeat,
    steps,
    bestSustainedDeliveriesPerSecond: Math.max(0, ...sustained.map((s) => s.deliveriesPerSecond)),
  };
}

if (want('connections')) {
  log('# idle memory');
  results.idleMemory = await withServer(SERVERS[0]!.options, (port, pid) => idleMemory(port, pid, secret, quick ? 2000 : 10_000));
  log('# connect rate (JWT + permission API stub)');
  const cleanup = new Cleanup();
  try {
    const stub = await startPermissionStub(cleanup);
    results.connectRate = await withServer({ workers: 1, permissionApiBase: stub.base, prefix: serverPin, nodeArgs: BIN_NODE_ARGS }, (port) =>
      connectRate(port, secret, quick ? 1000 : 3000),
    );
  } finally {
    await cleanup.run();
  }
}

if (want('loopback')) {
  log('# loopback write cost');
  results.loopback = JSON.parse(execFileSync(process.execPath, [here('./loopback.ts'), '--json'], { encoding: 'utf8' }));
}

// Output: JSON for machines, markdown for docs/performance.md.
const md: string[] = [
  `# moodio-rt benchmarks — ${results.date as string}`,
  '',
  `Machine: ${describeMachine()}. Pinned: ${pin ? 'server core 0, generator core 1' : 'no'}. Generator: ${generator.name === 'go' ? 'the Go one (bench/go-loadgen)' : '`moodio-rt loadtest`'}.`,
  `Command: \`${results.command as string}\``,
  '',
];
if (results.micro) {
  md.push('## Micro (relay only, sockets stubbed)', '', '| benchmark | ns/op | deliveries/op |', '|---|---|---|');
  for (const m of results.micro as { name: string; nsPerOp: number; deliveriesPerOp: number }[]) md.push(`| ${m.name} | ${m.nsPerOp} | ${m.deliveriesPerOp} |`);
  md.push('');
}
if (results.presets) {
  md.push('## Latency under pressure (ms; latency of a target message = until all 9 receivers have it)', '');
  md.push(`Where runs > 1, latency and rate columns are medians over the runs and "p99 of each run" lists them; delivery columns show the worst run.`, '');
  md.push('The pressure p50/p99 columns are per delivery in the other rooms (each receiver, each message).', '');
  md.push(
    '| server | level | runs | sessions | rooms | target delivered | pressure delivered | p50 | p95 | p99 | p99 of each run | p99.9 | max | pressure p50 | pressure p99 | pressure deliveries/s | generator send-lag p99 |',
  );
  md.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results.presets as PresetRow[]) {
    md.push(
      `| ${r.server} | ${r.preset} | ${r.runs} | ${r.sessions} | ${r.rooms} | ${r.delivered} | ${(r.pressureDeliveryRatio * 100).toFixed(2)}% | ${r.p50} | ${r.p95} | ${r.p99} | ${r.p99Runs.join(' / ')} | ${r.p999} | ${r.max} | ${r.pressureP50} | ${r.pressureP99} | ${r.pressureDeliveriesPerSecond.toLocaleString('en-US')} | ${r.sendLagP99}${r.generatorSaturated ? ' (saturated)' : ''} |`,
    );
  }
  md.push('');
}
if (results.sweep) {
  const s = results.sweep as {
    workload: string;
    runsPerStep: number;
    steps: {
      rate: number;
      deliveriesPerSecond: number;
      deliveryRatio: number;
      p99: number;
      p99Runs: number[];
      generatorCpuPercent: number;
      generatorBusyPercent: number;
      generatorSaturated: boolean;
    }[];
    bestSustainedDeliveriesPerSecond: number;
  };
  md.push(
    `## Throughput sweep (${s.workload}; moodio-rt --workers 1; ${s.runsPerStep} run(s) per step)`,
    '',
    '| rate/sender | deliveries/s (median) | delivered (worst run) | p99 ms (median) | p99 of each run | generator CPU / busy % |',
    '|---|---|---|---|---|---|',
  );
  for (const step of s.steps)
    md.push(
      `| ${step.rate} | ${step.deliveriesPerSecond.toLocaleString('en-US')} | ${(step.deliveryRatio * 100).toFixed(2)}% | ${step.p99} | ${step.p99Runs.join(' / ')} | ${step.generatorCpuPercent} / ${step.generatorBusyPercent}${step.generatorSaturated ? ' (saturated)' : ''} |`,
    );
  md.push(
    '',
    `Best sustained (100% delivered in every run, median p99 ≤ 50 ms): **${s.bestSustainedDeliveriesPerSecond.toLocaleString('en-US')} deliveries/s**`,
    '',
  );
}
if (results.idleMemory) {
  const m = results.idleMemory as { sessions: number; bytesPerSession: number; rssBeforeMiB: number; rssAfterMiB: number };
  md.push(
    '## Connections',
    '',
    `Idle memory: ${m.sessions.toLocaleString('en-US')} sessions took RSS from ${m.rssBeforeMiB} to ${m.rssAfterMiB} MiB: **${(m.bytesPerSession / 1024).toFixed(1)} KiB per session**.`,
  );
}
if (results.connectRate) {
  const c = results.connectRate as { handshakes: number; concurrency: number; perSecond: number; latencyMs: { p50: number; p99: number } };
  md.push(
    '',
    `Connect rate (TCP + upgrade + JWT + permission API stub + room_joined, ${c.concurrency} concurrent, ${c.handshakes} handshakes): **${c.perSecond.toLocaleString('en-US')} handshakes/s**, p50 ${c.latencyMs.p50} ms, p99 ${c.latencyMs.p99} ms.`,
  );
}
if (results.loopback) {
  const l = results.loopback as {
    sockets: number;
    frameBytes: number;
    rows: { framesPerWrite: number; writesPerSecond: number; framesPerSecond: number; cpuUsPerWrite: number; kernelShare: number }[];
  };
  md.push(
    '',
    `## Loopback floor (bench/loopback.ts: ${l.sockets} sockets, ${l.frameBytes}-byte frames, one core writing)`,
    '',
    '| frames per write | writes/s | frames/s | CPU µs per write | kernel share |',
    '|---|---|---|---|---|',
  );
  for (const r of l.rows)
    md.push(
      `| ${r.framesPerWrite} | ${r.writesPerSecond.toLocaleString('en-US')} | ${r.framesPerSecond.toLocaleString('en-US')} | ${r.cpuUsPerWrite} | ${Math.round(r.kernelShare * 100)}% |`,
    );
}
const dir = here('./results/');
mkdirSync(dir, { recursive: true });
// A partial run (--only, --quick) is named as such: it must not overwrite a full run's results.
const name = `${(results.date as string).slice(0, 10)}-${(results.machine as { commit: string }).commit}${generator.name === 'go' ? '-go' : ''}${quick ? '-quick' : ''}${only ? `-only-${[...only].join('-')}` : ''}`;
writeFileSync(`${dir}${name}.json`, JSON.stringify(results, null, 2) + '\n');
writeFileSync(`${dir}${name}.md`, md.join('\n') + '\n');
process.stdout.write(md.join('\n') + '\n');
log(`# wrote bench/results/${name}.{json,md}`);
