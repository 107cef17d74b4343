/**
 * The neutral Go load generator (bench/go-loadgen, built by
 * scripts/go-loadgen) against the real server: it speaks the legacy route
 * as `moodio-rt loadtest` does, counts what the server relays, reports a
 * preset's target room, writes the JSON fields the bench scripts read, and
 * names a refused handshake and a bad option. Skipped only when Go is
 * missing and cannot be installed here (the script's exit status 69).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { scrape, sumOf, untilMetrics } from './helpers/metrics.ts';
import { Cleanup } from './helpers/scope.ts';
import { devSecretEnv, startServer, type ServerProcess } from './helpers/server.ts';

const exec = promisify(execFile);
const SCRIPT = fileURLToPath(new URL('../scripts/go-loadgen', import.meta.url));
/** scripts/go-loadgen's status for "no Go, and it cannot be installed from here". */
const GO_UNAVAILABLE = 69;

const cleanup = new Cleanup();
const devEnv = devSecretEnv();
let server: ServerProcess;
let binary = '';
let unavailable: string | false = false;

before(async () => {
  try {
    // The first build of a fresh checkout, and apt-get when Go is missing: allow for both.
    binary = (await exec('bash', [SCRIPT, '--build'], { timeout: 300_000 })).stdout.trim();
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    if (e.code !== GO_UNAVAILABLE) throw err;
    unavailable = `Go is missing and cannot be installed here: ${e.stderr?.trim()}`;
    return;
  }
  server = await startServer(cleanup, { workers: 1, args: ['--dev', '--rate-limit', '0'], env: devEnv });
});
after(() => cleanup.run());

async function goLoadgen(args: string[], env: Record<string, string | undefined> = devEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const merged: Record<string, string | undefined> = { ...process.env, JWT_ACCESS_SECRET: undefined, ...env };
  for (const key of Object.keys(merged)) if (merged[key] === undefined) delete merged[key];
  try {
    const { stdout, stderr } = await exec(binary, ['--url', `ws://127.0.0.1:${server.port}`, '--no-progress', ...args], {
      env: merged as NodeJS.ProcessEnv,
      timeout: 60_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

test('a small throughput run: every message the server relayed is counted once, 100% delivered', async (t) => {
  if (unavailable) return t.skip(unavailable);
  const before = sumOf((await scrape(server.port)).metrics, 'moodio_rt_messages_relayed_total');
  // 2 rooms × 3 users, 2 senders each at 50/s: a send every 20 ms, so the 200 ms warm-up holds exactly 10 per sender and the 1 s window exactly 50.
  const { code, stdout, stderr } = await goLoadgen([
    '--rooms',
    '2',
    '--users-per-room',
    '3',
    '--senders-per-room',
    '2',
    '--rate',
    '50',
    '--duration',
    '1s',
    '--warmup',
    '200ms',
    '--json',
  ]);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.equal(report.generator.name, 'go');
  assert.deepEqual(report.workload, {
    route: 'desktop',
    topicsPerConnection: 1,
    rooms: 2,
    usersPerRoom: 3,
    sendersPerRoom: 2,
    rate: 50,
    durationMs: 1000,
    warmupMs: 200,
    messageType: 'asset_moved',
    payloadBytes: 64,
  });
  assert.deepEqual([report.sessions, report.connections, report.connected, report.connectFailed], [6, 6, 6, 0]);
  assert.equal(report.sends, 2 * 2 * 50);
  // Each message reaches the room's 2 other members.
  assert.equal(report.expectedDeliveries, 400);
  assert.equal(report.deliveries, 400);
  assert.equal(report.deliveryRatio, 1);
  assert.deepEqual(report.errors, {});
  assert.equal(report.latencyMs.count, 400);
  const l = report.latencyMs;
  assert.ok(l.p50 > 0 && l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, JSON.stringify(l));
  assert.equal(report.target, null);
  assert.equal(report.pressure, null);
  assert.equal(report.gates.passed, true);
  // The server's side of it: 40 warm-up and 200 measured messages received and relayed.
  const metrics = await untilMetrics(server.port, (m) => sumOf(m, 'moodio_rt_messages_relayed_total') - before >= 240, 5000, 'the run relayed by the server');
  assert.equal(sumOf(metrics, 'moodio_rt_messages_relayed_total') - before, 240);
});

test('a preset run reports its target room: 300 messages, each reaching its 9 receivers, and the pressure rooms', async (t) => {
  if (unavailable) return t.skip(unavailable);
  const { code, stdout, stderr } = await goLoadgen(['--preset', 'light', '--warmup', '200ms', '--json']);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.equal(report.preset, 'light');
  assert.deepEqual([report.workload.rooms, report.workload.usersPerRoom, report.workload.durationMs], [5, 10, 3500]);
  assert.equal(report.sessions, 50);
  assert.deepEqual([report.target.messages, report.target.complete, report.target.expectedDeliveries, report.target.deliveries], [300, 300, 2700, 2700]);
  assert.equal(report.target.latencyMs.count, 300);
  assert.deepEqual(report.latencyMs, report.target.latencyMs, 'the gated latency is the target message’s');
  // 4 pressure senders at 500/s for 3.5 s, each message to 9 receivers.
  assert.equal(report.pressure.sends, 4 * 500 * 3.5);
  assert.equal(report.pressure.expectedDeliveries, report.pressure.sends * 9);
  assert.equal(report.pressure.deliveries, report.pressure.expectedDeliveries);
  assert.equal(report.deliveryRatio, 1);
  // Every field the bench scripts read (bench/run.ts, bench/history-cost.ts).
  for (const key of ['p50', 'p95', 'p99', 'p999', 'max']) assert.equal(typeof report.latencyMs[key], 'number', key);
  for (const key of ['p50', 'p99']) assert.equal(typeof report.deliveryLatencyMs[key], 'number', key);
  assert.equal(typeof report.pressure.deliveriesPerSecond, 'number');
  assert.equal(typeof report.deliveriesPerSecond, 'number');
  assert.equal(report.generator.cpuPercent.length, 1);
  assert.equal(typeof report.generator.cpuPercent[0], 'number');
  assert.equal(typeof report.generator.saturated, 'boolean');
  const { busyPercent, spinPercent, waitPercent } = report.generator;
  assert.ok(busyPercent[0] > 0 && spinPercent >= 0 && busyPercent[0] + spinPercent <= 100, JSON.stringify(report.generator));
  // Linux's schedstat is there on this machine: the share of the run the loop waited for its core.
  assert.ok(waitPercent >= 0 && waitPercent <= 100, `waitPercent ${waitPercent}`);
  assert.equal(typeof report.generator.sendLagMs.p99, 'number');
  assert.ok(report.generator.framesReceived >= report.deliveries, 'frames received include every delivery');
});

test('a refused handshake is counted by status and reason, and fails the run', async (t) => {
  if (unavailable) return t.skip(unavailable);
  const { code, stdout } = await goLoadgen(['--rooms', '1', '--users-per-room', '2', '--duration', '100ms', '--warmup', '100ms', '--json'], {
    JWT_ACCESS_SECRET: 'not-the-servers-secret-0123456789',
  });
  assert.equal(code, 1);
  const report = JSON.parse(stdout);
  assert.deepEqual([report.connected, report.connectFailed], [0, 2]);
  assert.equal(report.errors.connect_401, 2, JSON.stringify(report.errors));
  assert.deepEqual(report.gates.failures, ['2 of 2 sessions failed to connect']);
});

test('a bad option exits 2 naming it; only the legacy route and one thread', async (t) => {
  if (unavailable) return t.skip(unavailable);
  for (const [args, message] of [
    [['--rooms', '0'], /^go-loadgen: --rooms: must be an integer from 1 to 100000, got "0"$/m],
    [['--duration', '5x'], /^go-loadgen: --duration: expected a duration such as 500ms, 10s or 1h, got "5x"$/m],
    [['--senders-per-room', '4', '--users-per-room', '3'], /^go-loadgen: --senders-per-room: cannot exceed --users-per-room$/m],
    [['--route', 'connection'], /^go-loadgen: --route: the Go generator speaks only the legacy route/m],
    [['--threads', '2'], /^go-loadgen: --threads: must be 1/m],
    [['--url', 'wss://127.0.0.1:1'], /^go-loadgen: --url: must be a ws:\/\/ URL/m],
  ] as const) {
    const { code, stderr } = await goLoadgen([...args]);
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    assert.match(stderr, message);
  }
});

test('without Go, and no way to install it: the script exits 69 (what this file skips on) with the one command to run', async (t) => {
  // A copy of the script beside a source and no binary, so that it must build; a PATH with no go, no sudo, not root.
  const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-go-loadgen-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'scripts'));
  mkdirSync(join(dir, 'bench', 'go-loadgen'), { recursive: true });
  copyFileSync(SCRIPT, join(dir, 'scripts', 'go-loadgen'));
  writeFileSync(join(dir, 'bench', 'go-loadgen', 'main.go'), 'package main\n\nfunc main() {}\n');
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'id'), '#!/bin/sh\necho 1000\n');
  chmodSync(join(bin, 'id'), 0o755);
  for (const tool of ['dirname', 'readlink']) symlinkSync(`/usr/bin/${tool}`, join(bin, tool));
  const failed = await exec('/bin/bash', [join(dir, 'scripts', 'go-loadgen'), '--build'], { env: { PATH: bin } }).then(
    () => null,
    (err: { code: number; stderr: string }) => err,
  );
  assert.ok(failed, 'the script must fail without Go');
  assert.equal(failed.code, GO_UNAVAILABLE, failed.stderr);
  assert.match(failed.stderr, /^go-loadgen: needs Go \(the Debian package golang-go\), and it cannot be installed from here/m);
  assert.match(failed.stderr, /^ {2}sudo apt-get update && sudo apt-get install -y golang-go$/m);
});
