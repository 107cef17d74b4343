/**
 * `--v8-helper-nice` values side by side (process-setup.ts): the same load
 * against a fresh server per run, the values' order alternating by round,
 * the server pinned to core 0 and the Go generator to core 1.
 *
 * `--neighbour` puts a process that spins on core 0 beside the server for
 * the run (it ends by itself after 40 s):
 * - `none`: the server has its core to itself;
 * - `session`: the spinner is in the server's session, so in its scheduling
 *   group (with the kernel's autogroups, one per session; without them, or
 *   in one container's cgroup, the same holds for any process): niceness
 *   weighs the helpers against it;
 * - `setsid`: the spinner has a session of its own: the kernel shares the
 *   core between the two groups first, and the helpers compete only with
 *   the server's own threads.
 *
 *   node bench/helper-nice.ts [--preset light] [--workers 1] [--pairs 2] [--nice 0,19] [--neighbour none|session|setsid]
 *   node bench/helper-nice.ts --throughput [--rate 1110] …   (history-cost.ts's ~1M deliveries/s load instead of a preset)
 *
 * Writes bench/results/helper-nice-<date>-<commit>-<preset or rate>-w<workers>-<neighbour>.{json,md}.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET } from '../test/helpers/server.ts';
import { loadGenerator } from './generator.ts';
import { BENCH_SERVE_FLAGS, loadAverage } from './sitting.ts';

const argv = process.argv.slice(2);
const option = (name: string, fallback: string): string => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1]! : fallback;
};
const PRESET = option('--preset', 'light');
const WORKERS = Number(option('--workers', '1'));
const PAIRS = Number(option('--pairs', '2'));
const NICES = option('--nice', '0,19').split(',');
const NEIGHBOUR = option('--neighbour', 'none');
const RATE = argv.includes('--throughput') ? Number(option('--rate', '1110')) : null;
// history-cost.ts's throughput load: 50 rooms × 10, 2 senders per room at RATE (1,110/s: ~1M deliveries/s).
const LOAD =
  RATE === null
    ? ['--preset', PRESET, '--warmup', '1s']
    : ['--rooms', '50', '--users-per-room', '10', '--senders-per-room', '2', '--rate', String(RATE), '--duration', '5s', '--warmup', '2s'];
const WORKLOAD = RATE === null ? PRESET : `rate${RATE}`;
if (!['none', 'session', 'setsid'].includes(NEIGHBOUR)) throw new Error(`--neighbour must be none, session or setsid, got ${NEIGHBOUR}`);
if (NICES.some((n) => !/^\d+$/.test(n) || Number(n) > 19)) throw new Error(`--nice takes values from 0 to 19, got ${NICES.join(',')}`);
if (!Number.isInteger(WORKERS) || WORKERS < 1 || !Number.isInteger(PAIRS) || PAIRS < 1) throw new Error('--workers and --pairs must be positive integers');

const pinned = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const go = loadGenerator('go', pinned ? ['taskset', '-c', '1'] : [], TEST_SECRET);
const SPIN = 'const end = Date.now() + 40000; while (Date.now() < end);';

interface Run {
  round: number;
  nice: number;
  lowered: number;
  load: string;
  delivered: number;
  p50: number;
  p99: number;
  p999: number;
}

const runs: Run[] = [];
for (let round = 1; round <= PAIRS; round++) {
  for (const nice of round % 2 === 1 ? NICES : [...NICES].reverse()) {
    const cleanup = new Cleanup();
    try {
      const server = await startServer(cleanup, {
        workers: WORKERS,
        args: [...BENCH_SERVE_FLAGS],
        env: { ...devSecretEnv(TEST_SECRET), MOODIO_RT_V8_HELPER_NICE: nice },
        prefix: pinned ? ['taskset', '-c', '0'] : [],
        nodeArgs: ['--max-semi-space-size=4'],
      });
      const spinner = [...(pinned ? ['taskset', '-c', '0'] : []), process.execPath, '-e', SPIN];
      const neighbour =
        NEIGHBOUR === 'none'
          ? null
          : spawn(NEIGHBOUR === 'setsid' ? 'setsid' : spinner[0]!, NEIGHBOUR === 'setsid' ? spinner : spinner.slice(1), { stdio: 'ignore' });
      cleanup.after(() => neighbour?.kill());
      const load = loadAverage();
      const report = go.run(server.port, LOAD);
      const run: Run = {
        round,
        nice: Number(nice),
        lowered: Number(server.logs.find((l) => l.event === 'listening')?.v8HelpersLowered),
        load,
        delivered: report.deliveryRatio,
        p50: report.latencyMs.p50,
        p99: report.latencyMs.p99,
        p999: report.latencyMs.p999,
      };
      runs.push(run);
      process.stderr.write(`# round ${round}, nice ${nice}: p99 ${run.p99} ms\n`);
    } finally {
      await cleanup.run();
    }
  }
}

const machine = machineInfo();
const command = `node bench/helper-nice.ts ${argv.join(' ')}`.trim();
const md = [
  `# --v8-helper-nice — ${new Date().toISOString()}`,
  '',
  `Machine: ${describeMachine(machine)}. ${pinned ? 'Pinned: server core 0, generator core 1.' : 'Not pinned.'} ${RATE === null ? `Preset ${PRESET}` : `50 rooms × 10, 2 senders per room at ${RATE}/s`}, \`--workers ${WORKERS}\`, neighbour: ${NEIGHBOUR}. Command: \`${command}\``,
  '',
  '| round | nice | helpers set | load (1/5/15 min) | delivered | p50 ms | p99 ms | p99.9 ms |',
  '|---|---|---|---|---|---|---|---|',
  ...runs.map((r) => `| ${r.round} | ${r.nice} | ${r.lowered} | ${r.load} | ${(r.delivered * 100).toFixed(2)}% | ${r.p50} | ${r.p99} | ${r.p999} |`),
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const name = `helper-nice-${new Date().toISOString().slice(0, 10)}-${machine.commit}-${WORKLOAD}-w${WORKERS}-${NEIGHBOUR}`;
writeFileSync(`${dir}${name}.json`, JSON.stringify({ machine, command, load: LOAD, workers: WORKERS, neighbour: NEIGHBOUR, runs }, null, 2) + '\n');
writeFileSync(`${dir}${name}.md`, md.join('\n') + '\n');
process.stdout.write(md.join('\n') + '\n');
process.stderr.write(`# wrote bench/results/${name}.{json,md}\n`);
