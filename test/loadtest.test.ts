/**
 * `moodio-rt loadtest` against the real server: delivery, percentiles, the
 * JSON report's fields, the exit-status gates, the dev server's secret, the
 * server's rate limit named in plain words, the progress line, the
 * multiplexed route (`--route connection`, on two shards), and exact
 * histogram merging.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { formatReport } from '../src/loadtest/report.ts';
import { createHistogram, encodeHistogram, mergeHistograms, percentileDistribution, recordUs } from '../src/loadtest/histogram.ts';
import { Cleanup } from './helpers/scope.ts';
import { CLI, devSecretEnv, startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { token } from './helpers/tokens.ts';

const exec = promisify(execFile);
const cleanup = new Cleanup();
let server: ServerProcess;
const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-loadtest-'));
const devEnv = devSecretEnv();

before(async () => {
  // Dev mode: the token's permission claim decides, no permission API needed.
  server = await startServer(cleanup, { workers: 1, args: ['--dev', '--rate-limit', '0'], env: devEnv });
});
after(() => cleanup.run());

interface LoadtestRun {
  /** Another server than the file's. */
  port?: number;
  /** Replaces JWT_ACCESS_SECRET=TEST_SECRET (undefined: unset). */
  env?: Record<string, string | undefined>;
  progress?: boolean;
}

async function loadtest(args: string[], run: LoadtestRun = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: Record<string, string | undefined> = { ...process.env, NODE_OPTIONS: undefined, ...(run.env ?? { JWT_ACCESS_SECRET: TEST_SECRET }) };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  const flags = ['--url', `ws://127.0.0.1:${run.port ?? server.port}`, '--threads', '2', ...(run.progress ? [] : ['--no-progress'])];
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, 'loadtest', ...flags, ...args], {
      env: env as NodeJS.ProcessEnv,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const SMALL = ['--rooms', '4', '--users-per-room', '3', '--senders-per-room', '2', '--rate', '50', '--duration', '1s', '--warmup', '200ms'];

test('a small uniform run delivers everything, with sane percentiles, in JSON with every documented field', async () => {
  const hgrm = join(dir, 'latency.hgrm');
  const { code, stdout, stderr } = await loadtest([...SMALL, '--json', '--hgrm', hgrm]);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  for (const key of [
    'url',
    'preset',
    'threads',
    'workload',
    'sessions',
    'connections',
    'connected',
    'connectFailed',
    'connectMs',
    'sends',
    'sendsPerSecond',
    'expectedDeliveries',
    'deliveries',
    'deliveryRatio',
    'deliveriesPerSecond',
    'latencyMs',
    'deliveryLatencyMs',
    'target',
    'pressure',
    'errors',
    'generator',
    'gates',
  ]) {
    assert.ok(key in report, `missing ${key}`);
  }
  for (const key of ['count', 'p50', 'p90', 'p95', 'p99', 'p999', 'max', 'mean']) assert.equal(typeof report.latencyMs[key], 'number', key);
  for (const key of ['cpuPercent', 'busyPercent', 'saturated', 'sendsLate', 'framesReceived', 'sendLagMs']) assert.ok(key in report.generator, key);
  assert.deepEqual(report.workload, {
    route: 'desktop',
    topicsPerConnection: 1,
    rooms: 4,
    usersPerRoom: 3,
    sendersPerRoom: 2,
    rate: 50,
    durationMs: 1000,
    warmupMs: 200,
    messageType: 'asset_moved',
    payloadBytes: 64,
  });
  assert.equal(report.sessions, 12);
  assert.equal(report.connections, 12, 'a socket per session');
  assert.equal(report.connected, 12);
  assert.equal(report.threads, 2);
  // 4 rooms × 2 senders × 50/s × ~1 s, each delivered to the 2 other members.
  assert.ok(report.sends >= 350 && report.sends <= 450, `sends ${report.sends}`);
  assert.equal(report.expectedDeliveries, report.sends * 2);
  assert.equal(report.deliveries, report.expectedDeliveries);
  assert.equal(report.deliveryRatio, 1);
  assert.deepEqual(report.errors, {});
  const l = report.latencyMs;
  assert.equal(l.count, report.deliveries);
  assert.ok(l.p50 > 0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, JSON.stringify(l));
  assert.ok(l.max < 5000, 'loopback deliveries take well under 5 s');
  assert.equal(report.gates.passed, true);
  const text = readFileSync(hgrm, 'utf8');
  assert.match(text, /Value\s+Percentile\s+TotalCount/);
  assert.match(text, new RegExp(`Total count\\s*=\\s*${report.deliveries}\\]`));
});

test('the light preset reports the target room and the pressure rooms', async () => {
  const { code, stdout, stderr } = await loadtest(['--preset', 'light', '--warmup', '500ms', '--json']);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.equal(report.sessions, 50);
  assert.deepEqual([report.target.messages, report.target.complete], [300, 300]);
  assert.equal(report.target.deliveries, 2700);
  assert.equal(report.target.expectedDeliveries, 2700);
  assert.equal(report.latencyMs.count, 300, 'one latency per target message');
  assert.equal(report.pressure.deliveries, report.pressure.expectedDeliveries);
  // The rate is the deliveries over the measured window (throughput figures belong to bench/, not to a test on a shared machine).
  assert.ok(report.pressure.deliveries > 0);
  const perSecond = report.pressure.deliveries / (report.workload.durationMs / 1000);
  assert.ok(Math.abs(report.pressure.deliveriesPerSecond - perSecond) <= 0.05 * perSecond, `${report.pressure.deliveriesPerSecond}/s for ${perSecond}/s`);
});

test('human output has the latency table and the verdict', async () => {
  const { code, stdout } = await loadtest(SMALL);
  assert.equal(code, 0);
  assert.match(stdout, /latency \(ms\)\s+p50\s+p90\s+p99\s+p99\.9\s+max/);
  assert.match(stdout, /deliveries: [\d,]+\/[\d,]+ \(100\.00%\)/);
  assert.match(stdout, /result: PASS/);
});

test('exit status follows --max-p99', async () => {
  const { code, stdout } = await loadtest([...SMALL, '--max-p99', '0.001']);
  assert.equal(code, 1);
  assert.match(stdout, /result: FAIL — p99 [\d.]+ ms > --max-p99 0\.001 ms/);
});

test("exit status follows --min-delivery (viewers' mutations are dropped, so nothing is delivered)", async () => {
  const tokens = join(dir, 'viewers.txt');
  writeFileSync(tokens, Array.from({ length: 6 }, (_, i) => token({ userId: `viewer-${i}-0000`, permission: 'viewer' })).join('\n'));
  const args = ['--token-file', tokens, '--rooms', '2', '--users-per-room', '3', '--rate', '20', '--duration', '500ms', '--warmup', '100ms', '--json'];
  const strict = await loadtest(args);
  assert.equal(strict.code, 1);
  const report = JSON.parse(strict.stdout);
  assert.equal(report.deliveries, 0);
  assert.ok(report.expectedDeliveries > 0);
  assert.match(report.gates.failures[0], /delivery 0\.00% < --min-delivery 100\.00%/);
  const lenient = await loadtest([...args, '--min-delivery', '0']);
  assert.equal(lenient.code, 0);
});

test('invalid options fail with exit 2 naming the option', async () => {
  const bad = await loadtest(['--rooms', '0']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--rooms: must be an integer from 1/);
  const url = await loadtest(['--url', 'http://x']);
  assert.match(url.stderr, /--url: must be a ws:\/\/ URL/);
  const route = await loadtest(['--route', 'room']);
  assert.equal(route.code, 2);
  assert.match(route.stderr, /--route: /);
  const topics = await loadtest(['--topics-per-connection', '3']);
  assert.equal(topics.code, 2);
  assert.match(topics.stderr, /--topics-per-connection: needs --route connection/);
  const many = await loadtest(['--route', 'connection', '--topics-per-connection', '21']);
  assert.equal(many.code, 2);
  assert.match(many.stderr, /--topics-per-connection: must be an integer from 1 to 20/);
});

test("--route connection drives /ws/connection: each user holds --topics-per-connection rooms on one socket, on both shards, and every delivery is measured like the legacy route's", async (t) => {
  // Two shards, so that a connection's topics are owned by both (the in-process link carries half of them); dev mode authorizes topics from the token's claims.
  const env = devSecretEnv();
  const sharded = await startServer(t, { workers: 2, args: ['--dev', '--rate-limit', '0'], env });
  const args = [
    '--route',
    'connection',
    '--topics-per-connection',
    '3',
    '--rooms',
    '6',
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
  ];
  const { code, stdout, stderr } = await loadtest([...args, '--json'], { port: sharded.port, env });
  assert.equal(code, 0, stderr + stdout);
  const report = JSON.parse(stdout);
  assert.deepEqual([report.workload.route, report.workload.topicsPerConnection], ['connection', 3]);
  // 6 rooms × 3 users = 18 sessions, held by 2 groups × 3 users = 6 sockets.
  assert.deepEqual([report.sessions, report.connected, report.connectFailed, report.connections], [18, 18, 0, 6]);
  assert.deepEqual(report.errors, {});
  // 6 rooms × 2 senders × 50/s × ~1 s, each delivered to the 2 other members of its room, and counted by its room.
  assert.ok(report.sends >= 500 && report.sends <= 700, `sends ${report.sends}`);
  assert.equal(report.expectedDeliveries, report.sends * 2);
  assert.equal(report.deliveries, report.expectedDeliveries);
  assert.equal(report.latencyMs.count, report.deliveries, 'a latency per delivery, read from the frame');
  assert.ok(report.latencyMs.p50 > 0 && report.latencyMs.p50 <= report.latencyMs.p99 && Number.isFinite(report.latencyMs.max));
  assert.equal(report.connectMs.count, 6, 'one connect time per socket: until every topic is subscribed');

  const human = await loadtest(args, { port: sharded.port, env });
  assert.equal(human.code, 0);
  assert.match(human.stdout, /sessions: 18\/18 connected, over 6 connections on \/ws\/connection \(3 topic\(s\) each\)/);
  assert.match(human.stdout, /connect \(to subscribed\)/);
});

test("with no secret given, it signs with the dev server's secret file, as `token` does", async () => {
  const { code, stdout, stderr } = await loadtest([...SMALL, '--json'], { env: { ...devEnv, JWT_ACCESS_SECRET: undefined } });
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.equal(report.connected, 12);
  assert.equal(report.deliveryRatio, 1);

  const missing = await loadtest(SMALL, { env: { JWT_ACCESS_SECRET: undefined, MOODIO_RT_DEV_SECRET_FILE: join(dir, 'no-such-secret') } });
  assert.equal(missing.code, 2);
  assert.match(
    missing.stderr,
    /--secret: a --secret \(or JWT_ACCESS_SECRET\) or a --token-file is required; against a `moodio-rt serve --dev` server, start it first/,
  );
});

test("a server's rate limit is named in plain words, with how to run the server for a benchmark", async (t) => {
  // The defaults a user's server has: --rate-limit 100/s after a burst of 200.
  const limited = await startServer(t, { workers: 1, args: ['--dev'], env: devEnv });
  const args = ['--rooms', '1', '--users-per-room', '2', '--senders-per-room', '1', '--rate', '500', '--duration', '1s', '--warmup', '200ms'];
  const human = await loadtest(args, { port: limited.port });
  assert.equal(human.code, 1, 'delivery below 100% fails the run');
  assert.match(human.stdout, /errors: .*server_rate_limited ×\d+/);
  assert.match(
    human.stdout,
    /SERVER LIMIT: The server rate-limited the generator \(\d+ rate_limited errors?.*\): its --rate-limit \(100 messages\/s per user by default.*each sender here sends 500\/s/,
  );
  assert.match(
    human.stdout,
    /For a benchmark, run the server under test with `moodio-rt serve --rate-limit 0 --max-pending-per-address 0 --handshake-rate-per-address 0`/,
  );
  assert.match(human.stdout, /result: FAIL — delivery [\d.]+% < --min-delivery 100\.00% \(the server's --rate-limit dropped messages, see above\)/);

  const json = JSON.parse((await loadtest([...args, '--json'], { port: limited.port })).stdout);
  assert.deepEqual(
    json.serverLimits.map((n: { options: string[] }) => n.options[0]),
    ['--rate-limit'],
  );
  assert.ok(json.serverLimits[0].count >= json.errors.server_rate_limited);

  // The file's server runs with --rate-limit 0: no note.
  const free = await loadtest([...args, '--json']);
  assert.equal(free.code, 0, free.stderr);
  assert.deepEqual(JSON.parse(free.stdout).serverLimits, []);
});

test('an unreachable permission API is named as such, not as a full room; a run where nothing connected measures no delivery', async (t) => {
  // A production server (no --dev) whose permission API is a closed port: every connect is refused 503 permission_unavailable.
  const closed = await new Promise<number>((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
  const down = await startServer(t, { workers: 1, permissionApiBase: `http://127.0.0.1:${closed}`, args: ['--permission-timeout', '500ms'] });
  const args = ['--rooms', '1', '--users-per-room', '2', '--rate', '10', '--duration', '300ms', '--warmup', '100ms'];
  const human = await loadtest(args, { port: down.port });
  assert.equal(human.code, 1);
  assert.match(human.stdout, /errors: .*connect_503 ×2.*refused_permission_unavailable ×2/);
  assert.match(
    human.stdout,
    /SERVER LIMIT: The server could not ask its permission API \(2 connections refused with 503 permission_unavailable or permission_busy/,
  );
  assert.doesNotMatch(human.stdout, /full room or worker/, 'the 503s are all explained');
  assert.match(human.stdout, /deliveries: none measured \(no session connected\)/);
  assert.match(human.stdout, /latency: none measured \(no session connected\)/);
  assert.doesNotMatch(human.stdout, /pressure: deliveries|p99\.9/, 'no table of zeros');
  assert.doesNotMatch(human.stdout, /For a benchmark/, 'the benchmark flags would not help');
  assert.doesNotMatch(human.stdout, /0\/0 \(100\.00%\)/);
  assert.match(human.stdout, /result: FAIL — 2 of 2 sessions failed to connect/);
  const json = JSON.parse((await loadtest([...args, '--json'], { port: down.port })).stdout);
  assert.deepEqual(
    json.serverLimits.map((n: { options: string[] }) => n.options[0]),
    ['--permission-api-base'],
  );
  assert.equal(json.serverLimits[0].count, 2);
});

test('`token --count N --users K` writes a --token-file: N tokens of K users, which loadtest uses', async () => {
  const env = { ...process.env, NODE_OPTIONS: undefined, JWT_ACCESS_SECRET: undefined, ...devEnv } as Record<string, string | undefined>;
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  const { stdout } = await exec(process.execPath, [CLI, 'token', '--count', '6', '--users', '3', '--permission', 'editor'], { env: env as NodeJS.ProcessEnv });
  const tokens = stdout.trim().split('\n');
  assert.equal(tokens.length, 6);
  const users = tokens.map((tok) => JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()).userId as string);
  assert.deepEqual(users, ['load-0001', 'load-0002', 'load-0003', 'load-0001', 'load-0002', 'load-0003']);
  const file = join(dir, 'tokens.txt');
  writeFileSync(file, stdout);
  const run = await loadtest(
    ['--token-file', file, '--rooms', '2', '--users-per-room', '3', '--rate', '20', '--duration', '500ms', '--warmup', '100ms', '--json'],
    { env: devEnv },
  );
  assert.equal(run.code, 0, run.stdout + run.stderr);
  assert.equal(JSON.parse(run.stdout).connected, 6);
});

test("the progress line counts measured sends only, and its last line is the report's", async () => {
  // Ticks at 1 s (warm-up) and 2 s (0.5 s into the window, 2 s of sending): a count that
  // included the warm-up would pass the report's 1 s of measured sends there.
  const args = ['--rooms', '2', '--users-per-room', '2', '--rate', '200', '--warmup', '1500ms', '--duration', '1s', '--json'];
  const { code, stdout, stderr } = await loadtest(args, { progress: true });
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  const lines = stderr.split('\n').filter((l) => /^\[\d+s\] /.test(l));
  assert.match(lines[0]!, /^\[\d+s\] warm-up \(not measured\)$/);
  const counts = lines.map((l) => /measured sends (\d+), deliveries (\d+)/.exec(l)).filter((m) => m !== null);
  assert.ok(counts.length >= 2, stderr);
  for (const m of counts) assert.ok(Number(m[1]) <= report.sends, `progress ${m[0]} > report ${report.sends}`);
  assert.match(lines.at(-1)!, new RegExp(`^\\[\\d+s\\] measured sends ${report.sends}, deliveries ${report.deliveries} \\(done\\)$`));
});

test('the saturation warning says which sign fired: a busy thread, or late sends while the threads idled', async () => {
  const { code, stdout } = await loadtest([...SMALL, '--json']);
  assert.equal(code, 0);
  const report = JSON.parse(stdout);
  const lag = { ...report.generator.sendLagMs, p99: 7.5 };
  const idle = formatReport({ ...report, generator: { ...report.generator, busyPercent: [9.9, 4], saturated: false, sendsLate: true, sendLagMs: lag } });
  assert.match(idle, /WARNING: the generator's sends ran late \(send lag p99 7\.5 ms > 2 ms\) though its threads were at most 9\.9% busy/);
  assert.doesNotMatch(idle, /is saturated/);
  const busy = formatReport({ ...report, generator: { ...report.generator, busyPercent: [95, 40], saturated: true } });
  assert.match(busy, /WARNING: the generator is saturated \(a thread 95% busy, ≥ 90%\)/);
  assert.doesNotMatch(
    formatReport({ ...report, generator: { ...report.generator, saturated: false, sendsLate: false } }),
    /WARNING/,
    'an unsaturated run warns of nothing',
  );
});

test('--threads help names its default once', async () => {
  const { stdout } = await exec(process.execPath, [CLI, 'loadtest', '--help'], { env: { ...process.env, NODE_OPTIONS: '' } });
  const entry = /--threads <n>([\s\S]*?)\n\s+--/.exec(stdout)![1]!;
  assert.equal(entry.match(/default/g)?.length, 1, entry);
});

test('merging per-thread histograms equals one histogram of all the samples', () => {
  const single = createHistogram();
  const parts = [createHistogram(), createHistogram(), createHistogram()];
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 30_000; i++) {
    const us = Math.floor(random() ** 3 * 5_000_000) + 1;
    recordUs(single, us);
    recordUs(parts[i % 3]!, us);
  }
  // A single-thread run goes through the same encode → merge path as a multi-thread one.
  const merged = mergeHistograms(parts.map(encodeHistogram));
  const alone = mergeHistograms([encodeHistogram(single)]);
  assert.equal(merged.totalCount, 30_000);
  assert.equal(merged.totalCount, alone.totalCount);
  assert.equal(merged.maxValue, alone.maxValue);
  assert.equal(merged.mean, alone.mean);
  for (const p of [50, 90, 99, 99.9, 99.99, 100]) {
    assert.equal(merged.getValueAtPercentile(p), alone.getValueAtPercentile(p), `p${p}`);
    assert.equal(merged.getValueAtPercentile(p), single.getValueAtPercentile(p), `p${p} against the raw histogram`);
  }
  assert.equal(percentileDistribution(merged), percentileDistribution(alone));
});
