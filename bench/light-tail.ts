/**
 * What makes the light-load tail (issue 23, part 1): `loadtest --preset
 * light` (or another preset) against a fresh `serve --workers 1` per run,
 * pinned to core 0 with the generator on core 1, for each of several server
 * variants, interleaved (A B C, B C A, C A B, …) so that an hour's noise
 * falls on every variant alike. A variant is a set of flags for Node (V8)
 * and for `serve`. Each server runs with `--trace-gc`, so every run also
 * reports the shard's and the primary's collections: how many, and their
 * pauses, beside the tail they may explain.
 *
 *   npx node bench/light-tail.ts [--preset light] [--repeat 3] [--generator node|go]
 *     [--variant 'name=node:--flag,serve:--flag …'] …
 *
 * Without `--variant`: `shipped` (the bin's `--max-semi-space-size=4`),
 * and the same with `--single-threaded-gc` and with a 16 MiB semi-space.
 * Writes bench/results/light-tail-<date>-<commit>.{json,md}.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET } from '../test/helpers/server.ts';
import { generatorOption, loadGenerator } from './generator.ts';
import { BENCH_SERVE_FLAGS, loadAverage, median } from './sitting.ts';

const argv = process.argv.slice(2);
const value = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const PRESET = value('--preset') ?? 'light';
const REPEAT = Number(value('--repeat') ?? 3);
if (!Number.isInteger(REPEAT) || REPEAT < 1) throw new Error(`--repeat must be a positive integer, got ${value('--repeat')}`);

interface Variant {
  name: string;
  node: string[];
  serve: string[];
}

/** `name=node:--a,serve:--b x,…`: a `serve:` part may carry a value after a space. */
function parseVariant(text: string): Variant {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new Error(`--variant must be name=parts, got ${text}`);
  const variant: Variant = { name: text.slice(0, eq), node: [], serve: [] };
  for (const part of text
    .slice(eq + 1)
    .split(',')
    .filter((p) => p !== '')) {
    const [kind, ...rest] = part.split(':');
    const flag = rest.join(':');
    if (kind === 'node') variant.node.push(flag);
    else if (kind === 'serve') variant.serve.push(...flag.split(' '));
    else throw new Error(`a variant's part is node:FLAG or serve:FLAG, got ${part}`);
  }
  return variant;
}

const SHIPPED = '--max-semi-space-size=4';
const variants: Variant[] = argv.flatMap((a, i) => (a === '--variant' ? [parseVariant(argv[i + 1]!)] : []));
if (variants.length === 0) {
  variants.push(
    { name: 'shipped', node: [SHIPPED], serve: [] },
    { name: 'single-threaded-gc', node: [SHIPPED, '--single-threaded-gc'], serve: [] },
    { name: 'semi-16', node: ['--max-semi-space-size=16'], serve: [] },
  );
}

const pinned = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const generator = loadGenerator(generatorOption(argv), pinned ? ['taskset', '-c', '1'] : [], TEST_SECRET);

/** The collections `--trace-gc` printed: `… ms: Scavenge 3.1 (4.2) -> 2.0 (5.2) MB, pooled: 0 MB, 0.41 / 0.00 ms …`. */
export function gcStats(trace: string): { scavenges: number; scavengeMs: number; markCompacts: number; markMs: number; maxPauseMs: number } {
  const stats = { scavenges: 0, scavengeMs: 0, markCompacts: 0, markMs: 0, maxPauseMs: 0 };
  for (const line of trace.split('\n')) {
    const kind = /: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Sweep)\b/.exec(line)?.[1];
    if (kind === undefined) continue;
    const pause = Number(/MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \//.exec(line)?.[1] ?? Number.NaN);
    if (!Number.isFinite(pause)) continue;
    if (kind === 'Scavenge' || kind === 'Minor Mark-Sweep') {
      stats.scavenges++;
      stats.scavengeMs += pause;
    } else {
      stats.markCompacts++;
      stats.markMs += pause;
    }
    stats.maxPauseMs = Math.max(stats.maxPauseMs, pause);
  }
  return stats;
}

interface Run {
  variant: string;
  round: number;
  load: string;
  p50: number;
  p99: number;
  p999: number;
  max: number;
  delivered: number;
  gc: ReturnType<typeof gcStats>;
}

async function once(variant: Variant, round: number): Promise<Run> {
  const cleanup = new Cleanup();
  try {
    const server = await startServer(cleanup, {
      workers: 1,
      args: [...BENCH_SERVE_FLAGS, ...variant.serve],
      env: devSecretEnv(TEST_SECRET),
      prefix: pinned ? ['taskset', '-c', '0'] : [],
      nodeArgs: [...variant.node, '--trace-gc'],
    });
    const load = loadAverage();
    const report = generator.run(server.port, ['--preset', PRESET]);
    const { latencyMs } = report;
    return {
      variant: variant.name,
      round,
      load,
      p50: latencyMs.p50,
      p99: latencyMs.p99,
      p999: latencyMs.p999,
      max: latencyMs.max,
      delivered: report.deliveryRatio,
      gc: gcStats(server.stdout),
    };
  } finally {
    await cleanup.run();
  }
}

const runs: Run[] = [];
for (let round = 0; round < REPEAT; round++) {
  // Rotate the order each round: every variant goes first once in a while.
  for (let k = 0; k < variants.length; k++) {
    const variant = variants[(k + round) % variants.length]!;
    const run = await once(variant, round + 1);
    runs.push(run);
    process.stderr.write(
      `# ${variant.name} round ${round + 1}: p99 ${run.p99} ms, p99.9 ${run.p999} ms, scavenges ${run.gc.scavenges} (${run.gc.scavengeMs.toFixed(1)} ms), load ${run.load}\n`,
    );
  }
}

const info = machineInfo();
const lines = [
  `# The light-load tail: server variants — ${new Date().toISOString()}`,
  '',
  `Machine: ${describeMachine(info)}. Pinned: ${pinned ? 'server core 0, generator core 1' : 'no (taskset missing)'}. Generator: ${generator.name}. Command: \`node bench/light-tail.ts ${argv.join(' ')}\``,
  '',
  '| variant | round | load (1/5/15 min) | delivered | p50 ms | p99 ms | p99.9 ms | max ms | scavenges (ms in all) | mark-compacts (ms) | longest pause ms |',
  '|---|---|---|---|---|---|---|---|---|---|---|',
  ...runs.map(
    (r) =>
      `| ${r.variant} | ${r.round} | ${r.load} | ${(r.delivered * 100).toFixed(2)}% | ${r.p50} | ${r.p99} | ${r.p999} | ${r.max} | ${r.gc.scavenges} (${r.gc.scavengeMs.toFixed(1)}) | ${r.gc.markCompacts} (${r.gc.markMs.toFixed(1)}) | ${r.gc.maxPauseMs} |`,
  ),
  '',
  '| variant | node flags | serve flags | median p99 ms | p99 of each run | median p99.9 ms |',
  '|---|---|---|---|---|---|',
  ...variants.map((v) => {
    const mine = runs.filter((r) => r.variant === v.name);
    return `| ${v.name} | ${v.node.join(' ') || '—'} | ${v.serve.join(' ') || '—'} | ${median(mine.map((r) => r.p99))} | ${mine.map((r) => r.p99).join(' / ')} | ${median(mine.map((r) => r.p999))} |`;
  }),
  '',
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const base = `${dir}light-tail-${new Date().toISOString().slice(0, 10)}-${info.commit}-${PRESET}-${generator.name}`;
writeFileSync(`${base}.json`, JSON.stringify({ machine: info, preset: PRESET, variants, runs }, null, 2));
writeFileSync(`${base}.md`, lines.join('\n'));
process.stdout.write(lines.join('\n'));
process.stderr.write(`# wrote ${base}.{json,md}\n`);
