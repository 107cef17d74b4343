#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * moodio-rt command line: `serve` runs the relay, `token` mints an access
 * token, `loadtest` loads a server. Flags come from the option tables in
 * src/config.ts and src/loadtest/options.ts.
 *
 * The `moodio-rt` binary is cli/moodio-rt.mjs, which checks the Node version
 * in plain JavaScript before loading this file; its shebang (the same as this
 * one's) is explained there. Run directly, this file checks the version too:
 * node-version.mjs is its first import, so it is evaluated before the others.
 */
import './node-version.mjs';
import { Command, Option } from 'commander';
import { signAccessToken } from '../src/auth/token.ts';
import { DEV_SECRET_FILE, parseDuration, resolveServeConfig, SERVE_OPTIONS, type ServeConfig } from '../src/config.ts';
import type { TableSpec } from '../src/option-parsers.ts';
import { ConfigError } from '../src/errors.ts';
import { ensureProcessSetup, profiled } from '../src/process-setup.ts';
import { readDevSecret } from '../src/auth/dev-secret.ts';
import { startServer } from '../src/server.ts';
import { writeFileSync } from 'node:fs';
import { LOADTEST_OPTIONS, resolveLoadtestOptions, type LoadtestOptions } from '../src/loadtest/options.ts';
import { formatReport } from '../src/loadtest/report.ts';
import { latencyHistogram, runLoadtest } from '../src/loadtest/runner.ts';
import { percentileDistribution } from '../src/loadtest/histogram.ts';

const EXIT_USAGE = 2;

function fail(message: string): never {
  process.stderr.write(`moodio-rt: ${message}\n`);
  process.exit(EXIT_USAGE);
}

const program = new Command('moodio-rt').description('Real-time collaboration relay for Moodio desktops').showHelpAfterError();

/**
 * Add an option table (src/config.ts, src/loadtest/options.ts) to a command.
 * Returns what maps the values the user gave (flag or environment) back to
 * the table's keys, as raw strings for the table's own validation. Defaults
 * are left out: commander shows them in --help, the table applies them, and
 * the table can tell an option given from one defaulted (`serve --dev` listens
 * on 127.0.0.1 unless --host is given).
 */
function addOptionTable<K extends string>(command: Command, specs: readonly TableSpec<K>[]) {
  const attributes = new Map<K, string>();
  for (const spec of specs) {
    const option = new Option(spec.flags, spec.description);
    if (spec.env) option.env(spec.env);
    if (spec.default !== undefined) option.default(spec.default);
    attributes.set(spec.key, option.attributeName());
    command.addOption(option);
  }
  return (opts: Record<string, string | boolean | undefined>): Partial<Record<K, string | boolean>> => {
    const raw: Partial<Record<K, string | boolean>> = {};
    for (const [key, attribute] of attributes) {
      const value = opts[attribute];
      if (value !== undefined && command.getOptionValueSource(attribute) !== 'default') raw[key] = value;
    }
    return raw;
  };
}

/** Validate with `resolve`; an invalid option exits 2 with its message. */
function resolveOrExit<T>(resolve: () => T): T {
  try {
    return resolve();
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

const serve = program.command('serve').description('run the WebSocket relay');
const serveOptions = addOptionTable(serve, SERVE_OPTIONS);
serve.action(async (opts: Record<string, string | boolean | undefined>) => {
  const config: ServeConfig = resolveOrExit(() => resolveServeConfig(serveOptions(opts)));
  // Before anything starts: the allocator and V8 read these settings at process start, so this may start the process again.
  const lacking = ensureProcessSetup(config.gcThreads, config.workers);
  let stopping = false;
  let exitCode = 0;
  const stop = (signal: string) => {
    if (stopping) {
      server.log.warn('forced_exit', { signal });
      process.exit(1);
    }
    stopping = true;
    server.log.info('signal', { signal });
    server.shutdown().then(
      () => process.exit(exitCode),
      (err: unknown) => {
        server.log.error('shutdown_failed', { err });
        process.exit(1);
      },
    );
  };
  const server = await startServer(config, (code) => {
    // A start-up error found after start (a duplicate node id): stop as a misconfigured start would.
    // Every shard may report it: the first report stops the server, the others are the same news.
    if (stopping) return;
    exitCode = EXIT_USAGE;
    stop(code);
  });
  // Under a profiler (or without execve) the process could not be started again with these: said once, then it runs as started.
  if (lacking.length > 0) server.log.warn('process_setup_incomplete', { lacking, reason: profiled() ? 'profiler' : 'no_execve' });
  if (config.dev) printDevBanner(server.address.address, server.address.port, server.config.jwtSecret);
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
});

/** True for an address only this machine can reach. */
function isLoopback(host: string): boolean {
  return host === '::1' || host.startsWith('127.') || host === 'localhost';
}

function printDevBanner(host: string, port: number, secret: string): void {
  const token = signAccessToken({ userId: 'dev-user-0001', firstName: 'Dev', email: 'dev@example.com', permission: 'editor' }, secret, 12 * 3600);
  const reachable = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  const url = `ws://${reachable}:${port}/ws/desktop/demo`;
  const hostPort = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const where = isLoopback(host)
    ? `moodio-rt dev mode, listening on ${hostPort}: this machine only (--host 0.0.0.0 opens it to the network).`
    : `moodio-rt dev mode, listening on ${hostPort}. WARNING: anyone who can reach it can mint a token at /demo/token; drop --host to listen on 127.0.0.1 only.`;
  process.stderr.write(
    [
      '',
      where,
      'No permission API: the token\'s "permission" claim decides (default editor).',
      `  connect:  websocat -H 'Cookie: moodio_access_token=${token}' ${url}   (if you have websocat)`,
      `       or:  npx wscat -c ${url} -H 'Authorization: Bearer ${token}'   (downloads wscat)`,
      `  then send: {"type":"asset_moved","payload":{"id":"asset-1","x":100,"y":200}}`,
      `  demo desktop: http://${reachable}:${port}/demo?name=Alice  (viewer: &as=viewer; open it in two windows)`,
      `  more tokens: npx moodio-rt token --user alice-0001 --name Alice --email alice@example.com [--permission viewer]`,
      '',
    ].join('\n'),
  );
}

program
  .command('token')
  .description('mint HS256 access tokens and print them on stdout, one per line')
  .option('--user <id>', 'userId claim (with --count: the prefix of the userIds)')
  .option('--name <firstName>', 'firstName claim', '')
  .option('--email <email>', 'email claim', '')
  .addOption(new Option('--permission <permission>', 'permission claim (dev mode, or serve --permissions-from-token)').choices(['editor', 'viewer']))
  .option('--desktops <json>', 'desktops claim, e.g. \'{"desk-1":"editor","*":"viewer"}\' (serve --permissions-from-token)')
  .option('--ttl <duration>', 'lifetime, e.g. 15m or 1h', '1h')
  .option('--count <n>', 'how many tokens, one per line (for loadtest --token-file)', '1')
  .option('--users <k>', 'with --count: distinct users among them, round-robin (default: one per token)')
  .addOption(new Option('--secret <secret>', 'signing secret').env('JWT_ACCESS_SECRET'))
  .addOption(new Option('--dev-secret-file <path>', 'dev-mode secret used when no secret is given').env('MOODIO_RT_DEV_SECRET_FILE').default(DEV_SECRET_FILE))
  .action(
    (opts: {
      user?: string;
      name: string;
      email: string;
      permission?: string;
      desktops?: string;
      ttl: string;
      count: string;
      users?: string;
      secret?: string;
      devSecretFile: string;
    }) => {
      let ttlMs: number;
      try {
        ttlMs = parseDuration(opts.ttl, '--ttl');
      } catch (err) {
        fail((err as Error).message);
      }
      const count = wholeNumber(opts.count, '--count', 1, 1_000_000);
      const users = opts.users === undefined ? count : wholeNumber(opts.users, '--users', 1, count);
      if (count === 1 && opts.user === undefined) fail("required option '--user <id>' not specified");
      let desktops: Record<string, string> | undefined;
      if (opts.desktops !== undefined) {
        try {
          desktops = JSON.parse(opts.desktops) as Record<string, string>;
        } catch {
          fail('--desktops must be a JSON object, e.g. \'{"desk-1":"editor","*":"viewer"}\'');
        }
        if (typeof desktops !== 'object' || desktops === null || Array.isArray(desktops))
          fail('--desktops must be a JSON object of desktop ids to editor or viewer');
      }
      const secret =
        opts.secret ||
        resolveOrExit(() => readDevSecret(opts.devSecretFile)) ||
        fail('JWT_ACCESS_SECRET is required (or --secret), or start `moodio-rt serve --dev` first to create the dev secret');
      const ttlSeconds = Math.max(1, Math.round(ttlMs / 1000));
      const lines: string[] = [];
      for (let i = 0; i < count; i++) {
        // One token: the claims as given. Several: user <prefix>-0001 … <prefix>-<users>, round-robin.
        const n = String((i % users) + 1).padStart(4, '0');
        const claims = {
          userId: count === 1 ? opts.user! : `${opts.user ?? 'load'}-${n}`,
          firstName: count === 1 || opts.name === '' ? opts.name || (count === 1 ? '' : `Load ${n}`) : `${opts.name} ${n}`,
          email: count === 1 || opts.email === '' ? opts.email : opts.email.replace('@', `+${n}@`),
          ...(opts.permission ? { permission: opts.permission } : {}),
          ...(desktops ? { desktops } : {}),
        };
        lines.push(signAccessToken(claims, secret, ttlSeconds));
      }
      process.stdout.write(lines.join('\n') + '\n');
    },
  );

/** A whole number in [min, max] given to `option`, or exit 2 naming it. */
function wholeNumber(raw: string, option: string, min: number, max: number): number {
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || value < min || value > max) fail(`${option} must be a whole number from ${min} to ${max}`);
  return value;
}

const loadtest = program.command('loadtest').description('load any Moodio desktop protocol server and report HDR latency percentiles');
const loadtestOptions = addOptionTable(loadtest, LOADTEST_OPTIONS);
loadtest.action(async (opts: Record<string, string | boolean | undefined>) => {
  const options: LoadtestOptions = resolveOrExit(() => resolveLoadtestOptions(loadtestOptions(opts)));
  const tty = process.stderr.isTTY;
  const report = await runLoadtest(options, {
    onProgress: options.progress ? (line) => process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`) : undefined,
  });
  if (options.progress && tty) process.stderr.write('\n');
  if (options.hgrm) writeFileSync(options.hgrm, percentileDistribution(latencyHistogram(report)));
  process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report) + '\n');
  process.exitCode = report.gates.passed ? 0 : 1;
});

await program.parseAsync(process.argv);
