/**
 * Federation benchmark (issue 12): the seed's four pressure levels against
 * one node, then against two nodes joined by one nats-server, in the same
 * run, every server with --workers 1. With two nodes the load generator
 * spreads each room's sessions round-robin over both (`loadtest --url A
 * --url B`), so about half of every room's deliveries cross NATS.
 *
 * Reported per level: target delivery, target p50/p99 (time until every
 * receiver of a target message has it), pressure p50/p99 (per delivery),
 * and the bus bytes per delivered event: payload bytes published and
 * received on the bus (moodio_rt_federation_bytes_total) over frames
 * delivered to sessions (moodio_rt_deliveries_total), both summed over the
 * nodes over the same window.
 *
 * On a machine with ≥ 2 cores, the servers (node(s) and nats-server) are
 * pinned to core 0 and the generator to core 1: the two-node row therefore
 * runs two nodes and nats-server on the core that one node had to itself.
 *
 * With `--route connection` the load connects as today's app does, one
 * socket per user on /ws/connection holding `--topics-per-connection` rooms
 * (5 by default), so the rooms federate as topics (loadtest's own option).
 *
 * With `--setups` including `stream`, a third setup: the two nodes with
 * `--history-stream` on a `nats-server -js` (issue 21), every relayed event
 * delivered from the stream's consumers with its sequence as offset, the
 * origin's too: the federated path's added latency is this row against
 * the `fleet` row.
 *
 *   node bench/federation.ts [--repeat N] [--presets light,medium] [--route connection [--topics-per-connection 5]] [--setups single,fleet,stream]
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { LoadtestReport } from '../src/loadtest/runner.ts';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { scrape, sumOf } from '../test/helpers/metrics.ts';
import { startNats } from '../test/helpers/nats.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { CLI, devSecretEnv, startServer, TEST_SECRET, type ServerProcess } from '../test/helpers/server.ts';
import { BENCH_SERVE_FLAGS, median } from './sitting.ts';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const repeat = Number(arg('--repeat') ?? '1');
const presets = (arg('--presets') ?? 'light,medium,heavy,extreme').split(',');
const setups = new Set((arg('--setups') ?? 'single,fleet,stream').split(','));
const route = arg('--route') ?? 'desktop';
if (route !== 'desktop' && route !== 'connection') throw new Error('--route must be desktop or connection');
const topicsPerConnection = arg('--topics-per-connection') ?? '5';
const routeArgs = route === 'connection' ? ['--route', 'connection', '--topics-per-connection', topicsPerConnection] : [];
const pin = availableParallelism() >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const serverPin = pin ? ['taskset', '-c', '0'] : [];
const generatorPin = pin ? ['taskset', '-c', '1'] : [];
const log = (line: string) => process.stderr.write(line + '\n');

const SERVER_ARGS = [...BENCH_SERVE_FLAGS, '--connect-rate', '0'];

function loadtest(urls: string[], preset: string): LoadtestReport {
  const [command, ...prefix] = [...generatorPin, process.execPath];
  const env: NodeJS.ProcessEnv = { ...process.env, JWT_ACCESS_SECRET: TEST_SECRET };
  delete env.NODE_OPTIONS;
  const out = spawnSync(
    command!,
    [
      ...prefix,
      CLI,
      'loadtest',
      ...urls.flatMap((u) => ['--url', u]),
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
      ...routeArgs,
    ],
    { env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
  );
  if (out.status !== 0 && out.status !== 1) throw new Error(`loadtest failed (${out.status}): ${out.stderr}`);
  return JSON.parse(out.stdout) as LoadtestReport;
}

/** Bus payload bytes (published + received) and frames queued to sessions, summed over `nodes`. */
async function counters(nodes: ServerProcess[]): Promise<{ bytes: number; deliveries: number }> {
  let bytes = 0;
  let deliveries = 0;
  for (const node of nodes) {
    const { metrics } = await scrape(node.port);
    bytes += sumOf(metrics, 'moodio_rt_federation_bytes_total');
    deliveries += sumOf(metrics, 'moodio_rt_deliveries_total');
  }
  return { bytes, deliveries };
}

interface Row {
  setup: string;
  preset: string;
  delivered: string;
  deliveryRatio: number;
  targetP50: number;
  targetP99: number;
  pressureP50: number;
  pressureP99: number;
  deliveriesPerSecond: number;
  busBytesPerDelivery: number | null;
  generatorSaturated: boolean;
  p99Runs: number[];
}

async function measure(setup: string, nodes: ServerProcess[], federated: boolean): Promise<Row[]> {
  const rows: Row[] = [];
  const urls = nodes.map((n) => `ws://127.0.0.1:${n.port}`);
  for (const preset of presets) {
    const reports: LoadtestReport[] = [];
    let bytes = 0;
    let deliveries = 0;
    for (let run = 1; run <= repeat; run++) {
      log(`# ${preset} → ${setup}${repeat > 1 ? ` (run ${run}/${repeat})` : ''}`);
      // Server-side counts over the same window (warm-up included on both sides).
      const before = await counters(nodes);
      reports.push(loadtest(urls, preset));
      const after = await counters(nodes);
      bytes += after.bytes - before.bytes;
      deliveries += after.deliveries - before.deliveries;
    }
    const worst = reports.reduce((x, y) => (y.deliveryRatio < x.deliveryRatio ? y : x));
    rows.push({
      setup,
      preset,
      delivered: `${worst.target!.deliveries}/${worst.target!.expectedDeliveries}`,
      deliveryRatio: worst.deliveryRatio,
      targetP50: median(reports.map((r) => r.latencyMs.p50)),
      targetP99: median(reports.map((r) => r.latencyMs.p99)),
      pressureP50: median(reports.map((r) => r.deliveryLatencyMs.p50)),
      pressureP99: median(reports.map((r) => r.deliveryLatencyMs.p99)),
      deliveriesPerSecond: median(reports.map((r) => r.deliveriesPerSecond)),
      busBytesPerDelivery: federated && deliveries > 0 ? Math.round(bytes / deliveries) : null,
      generatorSaturated: reports.some((r) => r.generator.saturated),
      p99Runs: reports.map((r) => r.latencyMs.p99),
    });
  }
  return rows;
}

const rows: Row[] = [];
const cleanup = new Cleanup();
try {
  const env = devSecretEnv(TEST_SECRET);
  if (setups.has('single')) {
    const single = new Cleanup();
    const one = await startServer(single, { workers: 1, args: SERVER_ARGS, env, prefix: serverPin });
    rows.push(...(await measure('1 node', [one], false)));
    await single.run();
  }
  for (const stream of [false, true]) {
    if (!setups.has(stream ? 'stream' : 'fleet')) continue;
    const fleet = new Cleanup();
    try {
      const nats = await startNats(fleet, { jetstream: stream });
      const extra = stream ? ['--history-stream', 'bench'] : [];
      const nodes = await Promise.all(
        ['bench-a', 'bench-b'].map((id) =>
          startServer(fleet, { workers: 1, args: [...SERVER_ARGS, '--nats-url', nats.url, '--node-id', id, ...extra], env, prefix: serverPin }),
        ),
      );
      for (const node of nodes) await node.waitForLog((l) => l.event === (stream ? 'history_stream_epoch' : 'federation_connected'));
      rows.push(...(await measure(stream ? '2 nodes + nats-server -js, --history-stream' : '2 nodes + nats-server', nodes, true)));
    } finally {
      await fleet.run();
    }
  }
} finally {
  await cleanup.run();
}

const date = new Date().toISOString();
const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
const md = [
  `# Federation benchmark${route === 'connection' ? `, /ws/connection with ${topicsPerConnection} topics per connection` : ''} — ${date}`,
  '',
  `Machine: ${describeMachine()}. Pinned: ${pin ? 'servers (nodes and nats-server) core 0, generator core 1' : 'no'}. Runs per row: ${repeat} (medians).`,
  `Command: \`node bench/federation.ts ${process.argv.slice(2).join(' ')}\``.replace(/ `$/, '`'),
  '',
  '| Setup | Level | Target delivered | Target p50 | Target p99 | Pressure p50 | Pressure p99 | Deliveries/s | Bus bytes / delivery | p99 of each run |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.setup} | ${r.preset} | ${r.delivered} (${(r.deliveryRatio * 100).toFixed(2)}%) | ${r.targetP50.toFixed(2)} ms | ${r.targetP99.toFixed(2)} ms | ${r.pressureP50.toFixed(2)} ms | ${r.pressureP99.toFixed(2)} ms | ${Math.round(r.deliveriesPerSecond).toLocaleString('en-US')} | ${r.busBytesPerDelivery ?? '—'} | ${r.p99Runs.map((p) => p.toFixed(2)).join(', ')}${r.generatorSaturated ? ' (generator saturated)' : ''} |`,
  ),
  '',
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const base = `${dir}federation-${route === 'connection' ? 'connection-' : ''}${date.slice(0, 10)}-${commit}`;
writeFileSync(`${base}.json`, JSON.stringify({ date, commit, machine: machineInfo(), pinned: pin, repeat, route, topicsPerConnection, rows }, null, 2) + '\n');
writeFileSync(`${base}.md`, md.join('\n'));
process.stdout.write(md.join('\n'));
log(`# wrote ${base}.json and .md`);
