/**
 * Runs the real server (CLI → primary → shard worker threads) as a child
 * process on port 0 and reads its JSON log lines.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Scope } from './scope.ts';

export const CLI = fileURLToPath(new URL('../../cli/moodio-rt.ts', import.meta.url));
export const TEST_SECRET = 'test-secret-0123456789-abcdefghijklmnop';

/**
 * Environment for a `--dev` server that accepts tokens signed with `secret`:
 * dev mode refuses JWT_ACCESS_SECRET, so the secret goes in a fresh dev
 * secret file (mode 0600) instead.
 */
export function devSecretEnv(secret = TEST_SECRET): Record<string, string | undefined> {
  const file = join(mkdtempSync(join(tmpdir(), 'moodio-rt-dev-')), 'secret');
  writeFileSync(file, secret + '\n', { mode: 0o600, flag: 'wx' });
  return { JWT_ACCESS_SECRET: undefined, MOODIO_RT_DEV_SECRET_FILE: file };
}

export interface LogLine {
  level: string;
  event: string;
  worker: string | number;
  [key: string]: unknown;
}

export interface ServerOptions {
  workers?: number;
  permissionApiBase?: string;
  /** Extra CLI flags. */
  args?: string[];
  /** Extra environment; JWT_ACCESS_SECRET defaults to {@link TEST_SECRET}. */
  env?: Record<string, string | undefined>;
  /** Run another server script instead of `moodio-rt serve` (it must log the same `listening` line). */
  script?: string[];
  /** Command to run Node under, e.g. `['taskset', '-c', '0']`. */
  prefix?: string[];
  /** Flags for Node itself, e.g. the bin's `--max-semi-space-size=4`. */
  nodeArgs?: string[];
}

type Waiter = { predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void };

export class ServerProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  /** The lines of stdout that are not JSON, as written: `--log-format pretty` logs. */
  stdout = '';
  stderr = '';
  port = 0;
  private waiters: Waiter[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(child: ChildProcess) {
    this.child = child;
    this.exited = once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
    let buffered = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const text = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!text.startsWith('{')) {
          this.stdout += text + '\n';
          continue;
        }
        const line = JSON.parse(text) as LogLine;
        this.logs.push(line);
        this.waiters = this.waiters.filter((w) => {
          if (!w.predicate(line)) return true;
          w.resolve(line);
          return false;
        });
      }
      // Once per chunk, not per line: a waiter sees every line of one write at once.
      this.stdoutWaiters = this.stdoutWaiters.filter((w) => {
        if (!w.pattern.test(this.stdout)) return true;
        w.resolve(this.stdout);
        return false;
      });
    });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
      this.stderrWaiters = this.stderrWaiters.filter((w) => {
        if (!w.pattern.test(this.stderr)) return true;
        w.resolve(this.stderr);
        return false;
      });
    });
  }

  private stderrWaiters: { pattern: RegExp; resolve: (text: string) => void }[] = [];
  private stdoutWaiters: { pattern: RegExp; resolve: (text: string) => void }[] = [];

  /** Resolves with {@link stdout} once it matches `pattern` (for pretty logs). */
  waitForStdout(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return this.waitForText('stdout', this.stdoutWaiters, pattern, timeoutMs);
  }

  /** Resolves with everything written to stderr once it matches `pattern`. */
  waitForStderr(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return this.waitForText('stderr', this.stderrWaiters, pattern, timeoutMs);
  }

  private waitForText(
    stream: 'stdout' | 'stderr',
    waiters: { pattern: RegExp; resolve: (text: string) => void }[],
    pattern: RegExp,
    timeoutMs: number,
  ): Promise<string> {
    if (pattern.test(this[stream])) return Promise.resolve(this[stream]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${stream} did not match ${pattern} within ${timeoutMs} ms:\n${this[stream]}`)), timeoutMs);
      waiters.push({
        pattern,
        resolve: (text) => {
          clearTimeout(timer);
          resolve(text);
        },
      });
    });
  }

  /** The first log line (past or future) matching `predicate`. */
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const seen = this.logs.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no matching log line within ${timeoutMs} ms; last lines:\n${this.logs
              .slice(-10)
              .map((l) => JSON.stringify(l))
              .join('\n')}\nstderr: ${this.stderr}`,
          ),
        );
      }, timeoutMs);
      this.waiters.push({
        predicate,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
    });
  }

  wsUrl(desktopId: string): string {
    return `ws://127.0.0.1:${this.port}/ws/desktop/${desktopId}`;
  }

  /** Stop: SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 12_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

const PRETTY_LISTENING = /\[primary\] listening .*\bport=(\d+)/;

/** Spawn `moodio-rt serve` on 127.0.0.1:0 and wait until it listens; stopped after the test. */
export async function startServer(t: Scope, options: ServerOptions = {}): Promise<ServerProcess> {
  const args = options.script ? [...options.script] : [CLI, 'serve', '--host', '127.0.0.1', '--port', '0', '--workers', String(options.workers ?? 2)];
  if (options.permissionApiBase) args.push('--permission-api-base', options.permissionApiBase);
  args.push(...(options.args ?? []));
  const env: Record<string, string | undefined> = { ...process.env, JWT_ACCESS_SECRET: TEST_SECRET, NODE_OPTIONS: undefined, ...options.env };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  const [command, ...prefixArgs] = [...(options.prefix ?? []), process.execPath];
  const child = spawn(command!, [...prefixArgs, ...(options.nodeArgs ?? []), ...args], { env: env as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const server = new ServerProcess(child);
  t.after(() => server.stop());
  const early = server.exited.then(({ code }) => {
    throw new Error(`server exited with code ${code} before listening:\n${server.stderr}`);
  });
  const pretty = args.includes('pretty') || options.env?.MOODIO_RT_LOG_FORMAT === 'pretty';
  const listening = pretty
    ? server.waitForStdout(PRETTY_LISTENING, 20_000).then((text) => Number(PRETTY_LISTENING.exec(text)![1]))
    : server.waitForLog((l) => l.event === 'listening', 20_000).then((line) => line.port as number);
  server.port = await Promise.race([listening, early]);
  return server;
}
