/**
 * Memory per idle session (issue 23): the marginal RSS of N idle sessions
 * opened on top of a base of 2,000, on a fresh server each run.
 *
 *   node bench/idle-memory.ts [--sessions 5000] [--base 2000] [--repeat 3] [--workers 2,1] [--tree DIR]… [--natural] [--heap] [--heap-dir DIR] [--trace] [-- <serve flags>]
 *
 * Each run starts the real server as the supervised command does
 * (`--max-semi-space-size=4`, the allocator re-exec of src/process-setup.ts),
 * with JWTs and a real HTTP permission stub answering `editor` (not `--dev`).
 * The clients run in a process of their own (bench/idle-clients.ts), so that
 * the server alone counts against its descriptor limit: base + sessions must
 * fit in `ulimit -n` (20,000 here), so 19,500 in all is `--sessions 17500`.
 * It opens `--base` sessions (rooms of 10, a distinct user each), lets RSS
 * settle, reads it, opens `--sessions` more, settles, reads again:
 * (RSS after − RSS before) / sessions is the marginal cost of one idle
 * session.
 *
 * Settling. A connect burst leaves its garbage (heads, tokens, permission
 * requests) in the old generation, and V8 collects it, and gives its pages
 * back, only when its memory reducer finds the thread idle: seconds or
 * minutes later, a different time in each thread and run. Read before, the
 * base holds that garbage and the top reuses it: the same code read −3.6 to
 * +10 KiB per session. So once the sessions are open, every thread runs one
 * memory-reducing collection (V8's last-resort GC, as an idle thread's
 * memory reducer eventually does, through bench/heap-hook.ts, preloaded into
 * the server for this bench only), and RSS is read once it has stopped
 * moving: at most 1 MiB over the last 12 one-second samples, within 120 s
 * (a run that hit the bound says so). `--natural` skips the collection and
 * reads what the server's own GCs left after the same wait.
 *
 * `--tree DIR` (repeatable): run the server of another checkout (its
 * cli/moodio-rt.ts) instead of this one; with several, every repeat runs each
 * tree in turn, so that old and new code are measured interleaved, in one
 * sitting. `--workers 2,1` runs each worker count in turn likewise.
 *
 * `--heap`: also takes a heap snapshot of every thread at the base and at
 * the top and reports what each thread's heap gained per session, by kind
 * of object (bench/heap-summary.ts); `--heap-dir` keeps the snapshots. The
 * snapshots take memory of their own, so a `--heap` run's RSS figures are
 * not comparable with the others'; use it to account, not to measure.
 * `--trace` prints every RSS sample and heap while it settles.
 *
 * Also recorded at both points: each thread's heap (committed and used,
 * from /stats), and the kernel's view of TCP (`/proc/net/sockstat`: socket
 * buffer pages; `/proc/slabinfo`: the `TCP` and `sock_inode_cache` slabs,
 * the kernel's per-socket objects). Those are kernel memory, outside every
 * process's RSS.
 *
 * Prints a Markdown report and writes it, with a JSON of every run, to
 * bench/results/idle-memory-<date>-<commit>-<sessions>[-heap][-natural].{md,json}.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { rssOf } from './connections.ts';
import type { ClientAnswer, ClientCommand } from './idle-clients.ts';
import type { KeyDelta } from './heap-summary.ts';
import { rawRequest } from '../test/helpers/client.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from '../test/helpers/server.ts';
import { median } from './sitting.ts';

const dashes = process.argv.indexOf('--');
const OWN = process.argv.slice(2, dashes > 0 ? dashes : undefined);
const EXTRA = dashes > 0 ? process.argv.slice(dashes + 1) : [];
const optionValue = (name: string): string | undefined => {
  const i = OWN.indexOf(name);
  return i >= 0 ? OWN[i + 1] : undefined;
};
const SESSIONS = Number(optionValue('--sessions') ?? 5000);
const BASE = Number(optionValue('--base') ?? 2000);
const REPEAT = Number(optionValue('--repeat') ?? 3);
const WORKERS = (optionValue('--workers') ?? '2,1').split(',').map(Number);
const HEAP = OWN.includes('--heap');
/** No collection asked of the server before reading RSS: what its own GCs leave (see the header). */
const NATURAL = OWN.includes('--natural');
/** `--heap-dir DIR`: keep the snapshots there (one run: later runs overwrite them), for bench/heap-summary.ts --holders. */
const KEEP_DIR = optionValue('--heap-dir');
const treeName = (tree: string) => (resolve(tree) === resolve(HERE) ? 'this tree' : tree);
/** Print every RSS sample of the settling to stderr. */
const TRACE = OWN.includes('--trace');
const HERE = fileURLToPath(new URL('..', import.meta.url));
const TREES = OWN.flatMap((a, i) => (OWN[i - 1] === '--tree' ? [resolve(a)] : []));
if (TREES.length === 0) TREES.push(HERE);

const kib = (b: number) => (b / 1024).toFixed(2);
const mib = (b: number) => (b / MiB).toFixed(1);
const SAMPLE_MS = 1000;
const SETTLE_SAMPLES = Number(process.env.SETTLE_SAMPLES ?? 12);
const SETTLE_TOLERANCE = 2 ** 20;
const SETTLE_BOUND_MS = 120_000;
const ADMIN = 'idle-memory-admin-token-0123456789';
const MiB = 2 ** 20;
/** Descriptors a server needs besides its sessions: listeners, the stub's pool, pipes, files. */
const FD_HEADROOM = 400;

const fdLimit = Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim());
if (BASE + SESSIONS + FD_HEADROOM > fdLimit) {
  process.stderr.write(
    `${BASE} + ${SESSIONS} sessions need more descriptors than this machine allows one process (ulimit -n ${fdLimit}, ${FD_HEADROOM} kept for the server's own): ` +
      `use --sessions ${fdLimit - FD_HEADROOM - BASE} (${fdLimit - FD_HEADROOM} in all) or a smaller --base\n`,
  );
  process.exit(2);
}

interface ThreadHeap {
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

interface Point {
  sessions: number;
  rss: number;
  rssAnon: number;
  settledS: number;
  /** False when RSS had not settled within the bound. */
  settled: boolean;
  primary: ThreadHeap;
  shards: (ThreadHeap | null)[];
  /** /proc/net/sockstat TCP `mem` (pages of socket buffers, the whole machine). */
  tcpMemPages: number;
  /** /proc/slabinfo active objects × size of the `TCP` and `sock_inode_cache` slabs (the whole machine). */
  tcpSlabBytes: number;
  inodeSlabBytes: number;
}

interface Run {
  tree: string;
  workers: number;
  repeat: number;
  base: Point;
  top: Point;
  /** Marginal RSS per session, bytes. */
  perSession: number;
  heap?: { thread: string; total: number; rows: KeyDelta[] }[];
}

function rssAnon(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/RssAnon:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

function tcpMemPages(): number {
  return Number(/TCP: .* mem (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'))?.[1] ?? NaN);
}

function slabBytes(name: string): number {
  try {
    const line = readFileSync('/proc/slabinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(name + ' '));
    const [, active, , size] = line!.split(/\s+/);
    return Number(active) * Number(size);
  } catch {
    return NaN;
  }
}

async function stats(server: ServerProcess): Promise<{ connections: number; memory: ThreadHeap; shards: { memory: ThreadHeap | null }[] }> {
  const res = await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  return JSON.parse(res.body);
}

/** Wait for RSS to stop moving (see the header), then read everything. */
async function settle(server: ServerProcess, expected: number): Promise<Point> {
  const pid = server.child.pid!;
  const started = performance.now();
  const window: number[] = [];
  let settled = false;
  for (;;) {
    window.push(rssOf(pid));
    if (TRACE) {
      const t = await stats(server);
      const heaps = [t.memory, ...t.shards.map((x) => x.memory)].map((h) => (h === null ? '—' : `${mib(h.heapUsed)}/${mib(h.heapTotal)}`));
      process.stderr.write(
        `  ${expected} sessions, ${((performance.now() - started) / 1000).toFixed(0)} s: RSS ${mib(window.at(-1)!)} MiB, heaps used/committed ${heaps.join(', ')}\n`,
      );
    }
    if (window.length > SETTLE_SAMPLES) window.shift();
    if (window.length === SETTLE_SAMPLES && Math.max(...window) - Math.min(...window) <= SETTLE_TOLERANCE) {
      settled = true;
      break;
    }
    if (performance.now() - started > SETTLE_BOUND_MS) break;
    await sleep(SAMPLE_MS);
  }
  const s = await stats(server);
  if (s.connections !== expected) throw new Error(`the server holds ${s.connections} sessions, expected ${expected}`);
  return {
    sessions: expected,
    rss: rssOf(pid),
    rssAnon: rssAnon(pid),
    settledS: Math.round((performance.now() - started) / 1000),
    settled,
    primary: s.memory,
    shards: s.shards.map((shard) => shard.memory),
    tcpMemPages: tcpMemPages(),
    tcpSlabBytes: slabBytes('TCP'),
    inodeSlabBytes: slabBytes('sock_inode_cache'),
  };
}

function startClients(cleanup: Cleanup): { open(port: number, count: number): Promise<number>; child: ChildProcess } {
  const child = fork(fileURLToPath(new URL('./idle-clients.ts', import.meta.url)), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  cleanup.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.send({ kind: 'close' } satisfies ClientCommand);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  });
  return {
    child,
    open: (port, count) =>
      new Promise((resolveOpen, reject) => {
        child.once('message', (answer: ClientAnswer) => (answer.kind === 'opened' ? resolveOpen(answer.total) : reject(new Error(answer.message))));
        child.send({ kind: 'open', port, count, secret: TEST_SECRET } satisfies ClientCommand);
      }),
  };
}

/** Have every thread run `command` (bench/heap-hook.ts); resolves with the threads' file stems, the primary's (thread 0) first. */
async function askThreads(server: ServerProcess, dir: string, command: 'gc' | 'snapshot', tag: string, threads: number): Promise<string[]> {
  writeFileSync(join(dir, 'request'), `${command} ${tag}`);
  server.child.kill('SIGUSR2');
  const deadline = performance.now() + 300_000;
  for (;;) {
    const done = readdirSync(dir).filter((f) => f.startsWith(`${tag}-thread`) && f.endsWith('.done'));
    if (done.length === threads) {
      const threadOf = (f: string) => Number(/-thread(\d+)\./.exec(f)![1]);
      return done.sort((a, b) => threadOf(a) - threadOf(b)).map((f) => join(dir, f.slice(0, -'.done'.length)));
    }
    if (performance.now() > deadline) throw new Error(`${command} ${tag}: ${done.length} of ${threads} threads done within 300 s`);
    await sleep(200);
  }
}

function heapDifference(before: string, after: string, per: number): { total: number; rows: KeyDelta[] } {
  const out = execFileSync(
    process.execPath,
    ['--max-old-space-size=8192', fileURLToPath(new URL('./heap-summary.ts', import.meta.url)), before, after, '--per', String(per), '--json'],
    { encoding: 'utf8', maxBuffer: 256 * MiB },
  );
  return JSON.parse(out);
}

/** The run under way's cleanup, for a signal to run before the bench exits (the server and the clients would outlive it). */
let current: Cleanup | null = null;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void (current?.run() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

async function oneRun(tree: string, workers: number, repeat: number): Promise<Run> {
  const cleanup = (current = new Cleanup());
  const hookDir = KEEP_DIR ?? mkdtempSync(join(tmpdir(), 'moodio-idle-memory-'));
  mkdirSync(hookDir, { recursive: true });
  try {
    const stub = await startPermissionStub(cleanup);
    // The stub remembers every request: not what is measured here.
    stub.handle((_req, res) => {
      stub.requests.length = 0;
      res.setHeader('content-type', 'application/json');
      res.end('{"permission":"editor"}');
    });
    const server = await startServer(cleanup, {
      script: [join(tree, 'cli/moodio-rt.ts'), 'serve', '--host', '127.0.0.1', '--port', '0', '--workers', String(workers)],
      permissionApiBase: stub.base,
      // Every session comes from 127.0.0.1: the per-address limits are for the internet, not for a load generator.
      args: ['--admin-token', ADMIN, '--max-pending-per-address', '0', '--handshake-rate-per-address', '0', ...EXTRA],
      nodeArgs: ['--max-semi-space-size=4', '--require', fileURLToPath(new URL('./heap-hook.ts', import.meta.url))],
      env: { MOODIO_BENCH_HOOK_DIR: hookDir },
    });
    const threads = workers + 1;
    const clients = startClients(cleanup);
    const point = async (sessions: number, tag: string) => {
      await clients.open(server.port, sessions);
      if (!NATURAL) await askThreads(server, hookDir, 'gc', `gc-${tag}`, threads);
      const settled = await settle(server, BASE + (tag === 'top' ? SESSIONS : 0));
      const snapshots = HEAP ? await askThreads(server, hookDir, 'snapshot', tag, threads) : [];
      return { settled, snapshots };
    };
    const base = await point(BASE, 'base');
    const top = await point(SESSIONS, 'top');
    const run: Run = { tree, workers, repeat, base: base.settled, top: top.settled, perSession: (top.settled.rss - base.settled.rss) / SESSIONS };
    if (HEAP) {
      run.heap = base.snapshots.map((stem, i) => ({
        thread: i === 0 ? 'primary' : `shard ${i - 1}`,
        ...heapDifference(stem + '.heapsnapshot', top.snapshots[i]! + '.heapsnapshot', SESSIONS),
      }));
    }
    process.stderr.write(
      `${treeName(tree)} --workers ${workers} #${repeat}: RSS ${mib(run.base.rss)} → ${mib(run.top.rss)} MiB, ` +
        `${kib(run.perSession)} KiB per session (settled in ${run.base.settledS} s / ${run.top.settledS} s)\n`,
    );
    return run;
  } finally {
    await cleanup.run();
    if (KEEP_DIR === undefined) rmSync(hookDir, { recursive: true, force: true });
  }
}

const loadBefore = loadavg();
const runs: Run[] = [];
for (let r = 1; r <= REPEAT; r++) {
  for (const workers of WORKERS) {
    for (const tree of TREES) runs.push(await oneRun(tree, workers, r));
  }
}
const loadAfter = loadavg();
const info = machineInfo();
const command = `node bench/idle-memory.ts --sessions ${SESSIONS} --base ${BASE} --repeat ${REPEAT} --workers ${WORKERS.join(',')}${TREES.map((t) => (treeName(t) === 'this tree' ? '' : ` --tree ${t}`)).join('')}${HEAP ? ' --heap' : ''}${NATURAL ? ' --natural' : ''}${EXTRA.length ? ' -- ' + EXTRA.join(' ') : ''}`;
const lines = [
  `# Idle session memory: ${SESSIONS.toLocaleString('en')} sessions on top of ${BASE.toLocaleString('en')}`,
  '',
  `${describeMachine(info)}; load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} at the start, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} at the end; \`${command}\`, ${new Date().toISOString()}.`,
  '',
  '| server | workers | marginal KiB per session, median | each run | RSS MiB at the base → top, each run |',
  '|---|---|---|---|---|',
];
for (const tree of TREES) {
  for (const workers of WORKERS) {
    const mine = runs.filter((r) => r.tree === tree && r.workers === workers);
    lines.push(
      `| ${treeName(tree)} | ${workers} | ${kib(median(mine.map((r) => r.perSession)))} | ${mine.map((r) => kib(r.perSession) + (r.base.settled && r.top.settled ? '' : ' (unsettled)')).join(' / ')} | ${mine.map((r) => `${mib(r.base.rss)} → ${mib(r.top.rss)}`).join(' / ')} |`,
    );
  }
}
lines.push(
  '',
  "Per run, per session (bytes): RSS, anonymous RSS, each thread's committed heap (primary, shards), and the kernel's TCP objects and socket buffers, which are in no process's RSS:",
  '',
  "| run | RSS | RssAnon | primary heap | shards' heaps | shards' heap used | kernel TCP + sock_inode slabs | kernel TCP buffers (sockstat) | settled after (s) |",
  '|---|---|---|---|---|---|---|---|---|',
);
for (const r of runs) {
  const per = (a: number, b: number) => ((b - a) / SESSIONS).toFixed(0);
  const sum = (p: Point, f: (h: ThreadHeap) => number) => p.shards.reduce((n, h) => n + (h === null ? 0 : f(h)), 0);
  lines.push(
    `| ${treeName(r.tree)}, ${r.workers} w, #${r.repeat} | ${per(r.base.rss, r.top.rss)} | ${per(r.base.rssAnon, r.top.rssAnon)} | ${per(r.base.primary.heapTotal, r.top.primary.heapTotal)} | ${per(
      sum(r.base, (h) => h.heapTotal),
      sum(r.top, (h) => h.heapTotal),
    )} | ${per(
      sum(r.base, (h) => h.heapUsed),
      sum(r.top, (h) => h.heapUsed),
    )} | ${per(r.base.tcpSlabBytes + r.base.inodeSlabBytes, r.top.tcpSlabBytes + r.top.inodeSlabBytes)} | ${per(r.base.tcpMemPages * 4096, r.top.tcpMemPages * 4096)} | ${r.base.settledS} / ${r.top.settledS}${r.base.settled && r.top.settled ? '' : ' (bound)'} |`,
  );
}
if (HEAP) {
  lines.push('', 'Heap snapshots, top less base, per session (bytes; bench/heap-summary.ts). The largest kinds per thread:', '');
  for (const r of runs) {
    for (const h of r.heap ?? []) {
      lines.push(`${treeName(r.tree)}, ${r.workers} w, #${r.repeat}, ${h.thread}: ${h.total.toFixed(0)} bytes per session in all`, '');
      lines.push('| kind | count | self | retained |', '|---|---|---|---|');
      for (const row of h.rows.filter((x) => Math.abs(x.self) >= 4 || Math.abs(x.count) >= 0.5).slice(0, 45)) {
        lines.push(`| \`${row.key.replaceAll('|', '\\|')}\` | ${row.count.toFixed(2)} | ${row.self.toFixed(0)} | ${row.retained.toFixed(0)} |`);
      }
      lines.push('');
    }
  }
}
const report = lines.join('\n') + '\n';
process.stdout.write(report);
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const name = `${dir}idle-memory-${new Date().toISOString().slice(0, 10)}-${info.commit}-${SESSIONS}${HEAP ? '-heap' : ''}${NATURAL ? '-natural' : ''}`;
writeFileSync(`${name}.md`, report);
writeFileSync(`${name}.json`, JSON.stringify({ machine: info, loadavg: { start: loadBefore, end: loadAfter }, command, runs }, null, 2) + '\n');
