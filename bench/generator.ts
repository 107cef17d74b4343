/**
 * Which load generator a bench drives, and how: `moodio-rt loadtest` (Node,
 * the default) or the neutral Go generator (bench/go-loadgen, built by
 * scripts/go-loadgen). Both speak the legacy route and print the same JSON
 * report fields, so the benches read either. The generator runs on core 1
 * when the machine allows, the server under test on core 0.
 *
 *   --generator node|go          (bench/run.ts)
 *   --generator node|go|node,go  (bench/history-cost.ts: each in turn, for every run)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadtestReport } from '../src/loadtest/runner.ts';
import { CLI } from '../test/helpers/server.ts';

export const GENERATORS = ['node', 'go'] as const;
export type GeneratorName = (typeof GENERATORS)[number];

const SCRIPT = fileURLToPath(new URL('../scripts/go-loadgen', import.meta.url));

/** `--generator` from `argv`: one or more generators, comma-separated (default node); anything else is refused, naming the option. */
export function generatorsOption(argv: readonly string[]): GeneratorName[] {
  const i = argv.indexOf('--generator');
  if (i < 0) return ['node'];
  const names = (argv[i + 1] ?? '').split(',');
  const known = GENERATORS as readonly string[];
  if (names.some((name) => !known.includes(name)) || new Set(names).size !== names.length) {
    throw new Error(`--generator must be ${GENERATORS.join(' or ')} (or both, comma-separated), got ${argv[i + 1]}`);
  }
  return names as GeneratorName[];
}

/** `--generator` from `argv` where one generator runs (default node). */
export function generatorOption(argv: readonly string[]): GeneratorName {
  const names = generatorsOption(argv);
  if (names.length > 1) throw new Error(`--generator takes one generator here (${GENERATORS.join(' or ')}), got ${names.join(',')}`);
  return names[0]!;
}

export interface Generator {
  name: GeneratorName;
  /** One run against `port`: the generator's JSON report (any delivery ratio; the bench judges it). */
  run(port: number, args: string[]): LoadtestReport;
}

/**
 * The generator, ready to run: the Go one is built (or found up to date)
 * here, before any measurement, and not pinned while it builds.
 * @param pin the command prefix that pins the generator (`taskset -c 1`), or none.
 * @param secret the HS256 secret its tokens are signed with.
 */
export function loadGenerator(name: GeneratorName, pin: readonly string[], secret: string): Generator {
  const env: NodeJS.ProcessEnv = { ...process.env, JWT_ACCESS_SECRET: secret };
  delete env.NODE_OPTIONS;
  const command =
    name === 'go'
      ? [execFileSync('bash', [SCRIPT, '--build'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim()]
      : [process.execPath, CLI, 'loadtest'];
  return {
    name,
    run(port, args) {
      const [program, ...rest] = [...pin, ...command];
      const out = spawnSync(
        program!,
        [...rest, '--url', `ws://127.0.0.1:${port}`, '--threads', '1', '--no-progress', '--json', '--min-delivery', '0', ...args],
        { env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
      );
      if (out.status !== 0 && out.status !== 1) throw new Error(`${name} generator failed (${out.status}): ${out.stderr}`);
      return JSON.parse(out.stdout) as LoadtestReport;
    },
  };
}
