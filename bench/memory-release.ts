/**
 * Memory after load: does the server give back what a crowd of idle
 * sessions took, once they are gone? Runs the real server as the supervised
 * command does (`--max-semi-space-size=4`, the allocator re-exec of
 * src/process-setup.ts), reads its RSS at a fresh start, opens N idle sessions
 * (rooms of 10, distinct users, each permission asked of a real HTTP stub
 * of the permission API, as in production; `--dev` uses the token's claim
 * instead), closes them all, and samples RSS and each isolate's heap every
 * `--interval` seconds for `--seconds`.
 *
 *   node bench/memory-release.ts [--sessions 5000] [--seconds 60] [--interval 5] [--workers 2] [--dev] [--abrupt] [--gdb-trim]
 *
 * `--abrupt`: the clients' sockets are destroyed instead of closed with 1000
 * (a load generator killed, a network gone). `--busy-room <rate>`: a room of
 * 10 sessions stays open throughout, one of them sending `rate` events a
 * second (a server is rarely idle once a crowd has left).
 *
 * `--gdb-trim` (a diagnostic, needs gdb and ptrace rights): at the end, has
 * glibc print its arenas (malloc_stats), give back every free page
 * (malloc_trim(0)) and print them again, then reads RSS once more. What that
 * releases is memory the C allocator held free.
 *
 * Prints a Markdown report (and writes it to bench/results/memory-<date>-<commit>.md).
 * Extra server flags after `--`, e.g. `-- --permission-cache-ttl 0`.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { openMany, rssOf } from './connections.ts';
import { encodeClientText } from '../src/loadtest/ws-client.ts';
import { rawRequest } from '../test/helpers/client.ts';
import { scrape, sumOf } from '../test/helpers/metrics.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET } from '../test/helpers/server.ts';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const SESSIONS = arg('--sessions', 5000);
const SECONDS = arg('--seconds', 60);
const INTERVAL_S = arg('--interval', 5);
const WORKERS = arg('--workers', 2);
const dashes = process.argv.indexOf('--');
const EXTRA = dashes > 0 ? process.argv.slice(dashes + 1) : [];
const OWN = process.argv.slice(0, dashes > 0 ? dashes : undefined);
const DEV = OWN.includes('--dev');
const GDB_TRIM = OWN.includes('--gdb-trim');
/** Clients vanish (their sockets destroyed, as when a generator is killed) instead of closing with 1000. */
const ABRUPT = OWN.includes('--abrupt');
/** A room that stays busy throughout: 10 sessions, one sending this many events a second (0 = none). */
const BUSY_RATE = arg('--busy-room', 0);
const ADMIN = 'memory-admin-token-0123456789';
const MiB = 2 ** 20;

interface IsolateMemory {
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

interface Sample {
  /** Seconds since the last session closed (negative: before). */
  at: number;
  label: string;
  rss: number;
  rssAnon: number;
  rssFile: number;
  sessions: number;
  primary: IsolateMemory;
  shards: (IsolateMemory | null)[];
}

/** RssAnon and RssFile of a process (Linux), bytes. */
function rssParts(pid: number): { anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { anon: kb('RssAnon'), file: kb('RssFile') };
}

const cleanup = new Cleanup();
const stub = DEV ? null : await startPermissionStub(cleanup);
const server = await startServer(cleanup, {
  workers: WORKERS,
  ...(stub === null ? { env: devSecretEnv() } : { permissionApiBase: stub.base }),
  // Every session comes from 127.0.0.1: the per-address limits are for the internet, not for a load generator.
  args: [...(DEV ? ['--dev'] : []), '--admin-token', ADMIN, '--max-pending-per-address', '0', '--handshake-rate-per-address', '0', ...EXTRA],
  nodeArgs: ['--max-semi-space-size=4'],
});
// The stub remembers every request: not what is measured here.
stub?.handle((_req, res) => {
  stub.requests.length = 0;
  res.setHeader('content-type', 'application/json');
  res.end('{"permission":"editor"}');
});
const pid = server.child.pid!;
const samples: Sample[] = [];
let closedAt = 0;
let busy: { stop(): void } | null = null;

async function sample(label: string): Promise<Sample> {
  const res = await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  const stats = JSON.parse(res.body) as { connections: number; memory: IsolateMemory; shards: { memory: IsolateMemory | null }[] };
  const parts = rssParts(pid);
  const s: Sample = {
    at: closedAt === 0 ? NaN : Math.round((performance.now() - closedAt) / 1000),
    label,
    rss: rssOf(pid),
    rssAnon: parts.anon,
    rssFile: parts.file,
    sessions: stats.connections,
    primary: stats.memory,
    shards: stats.shards.map((shard) => shard.memory),
  };
  samples.push(s);
  process.stderr.write(`${label}: rss ${(s.rss / MiB).toFixed(0)} MiB, ${s.sessions} sessions\n`);
  return s;
}

try {
  if (BUSY_RATE > 0) {
    const room = await openMany(server.port, 10, 10, TEST_SECRET, 10);
    const sender = room[0]!;
    const frame = encodeClientText('{"type":"asset_moved","payload":{"x":1,"y":2,"assetId":"busy-room-asset"}}');
    const timer = setInterval(() => sender.sendFrame(frame), 1000 / BUSY_RATE);
    busy = {
      stop() {
        clearInterval(timer);
        room.forEach((c) => c.close());
      },
    };
  }
  await sample('started');
  await sleep(5000);
  const fresh = await sample('fresh (5 s after start)');
  const openedAt = performance.now();
  const clients = await openMany(server.port, SESSIONS, 100, TEST_SECRET, 10);
  const openSeconds = (performance.now() - openedAt) / 1000;
  await sample(`${SESSIONS} sessions open`);
  await sleep(5000);
  const loaded = await sample(`${SESSIONS} sessions, 5 s later`);
  clients.forEach((c) => (ABRUPT ? c.destroy() : c.close()));
  for (;;) {
    if (sumOf((await scrape(server.port)).metrics, 'moodio_rt_connections') === (busy === null ? 0 : 10)) break;
    await sleep(50);
  }
  closedAt = performance.now();
  await sample('all closed');
  for (let t = INTERVAL_S; t <= SECONDS; t += INTERVAL_S) {
    await sleep(Math.max(0, closedAt + t * 1000 - performance.now()));
    await sample(`${t} s after`);
  }
  const last = samples.at(-1)!;
  let trimmed = '';
  if (GDB_TRIM) {
    const stderrBefore = server.stderr.length;
    execFileSync(
      'gdb',
      ['-p', String(pid), '-batch', '-ex', 'call (void)malloc_stats()', '-ex', 'call (int)malloc_trim(0)', '-ex', 'call (void)malloc_stats()'],
      { stdio: 'ignore' },
    );
    await sample('after malloc_trim(0)');
    const arenas = server.stderr.slice(stderrBefore).split('Total (incl. mmap):');
    trimmed = [
      '',
      'glibc `malloc_stats()` before and after `malloc_trim(0)`:',
      '',
      '```',
      arenas[0]!.trim(),
      '--- malloc_trim(0) ---',
      (arenas[1] ?? '').split('\n').slice(4).join('\n').trim(),
      '```',
      '',
    ].join('\n');
  }
  const mib = (b: number) => (b / MiB).toFixed(0);
  const iso = (m: IsolateMemory | null) => (m === null ? '—' : `${mib(m.heapUsed)}/${m.heapTotal === undefined ? '?' : mib(m.heapTotal)}, ${mib(m.external)}`);
  const lines = [
    `# Memory after ${SESSIONS} idle sessions`,
    '',
    `${describeMachine()}; \`node bench/memory-release.ts --sessions ${SESSIONS} --seconds ${SECONDS} --workers ${WORKERS}${DEV ? ' --dev' : ''}${ABRUPT ? ' --abrupt' : ''}${BUSY_RATE ? ` --busy-room ${BUSY_RATE}` : ''}${GDB_TRIM ? ' --gdb-trim' : ''}${EXTRA.length ? ' -- ' + EXTRA.join(' ') : ''}\`, ${new Date().toISOString()}.`,
    '',
    `Opened in ${openSeconds.toFixed(1)} s. RSS fresh ${mib(fresh.rss)} MiB, loaded ${mib(loaded.rss)} MiB, ${SECONDS} s after the last close ${mib(last.rss)} MiB (${(last.rss / fresh.rss).toFixed(2)}× fresh).`,
    '',
    `| when | sessions | RSS MiB (anon + file) | primary heap used/committed, external MiB | ${Array.from({ length: WORKERS }, (_, i) => `shard ${i} heap used/committed, external MiB`).join(' | ')} |`,
    `|---|---|---|---|${'---|'.repeat(WORKERS)}`,
    ...samples.map(
      (s) => `| ${s.label} | ${s.sessions} | ${mib(s.rss)} (${mib(s.rssAnon)} + ${mib(s.rssFile)}) | ${iso(s.primary)} | ${s.shards.map(iso).join(' | ')} |`,
    ),
    '',
  ];
  const released = server.logs.filter((l) => l.event === 'memory_released');
  lines.push(
    `Collections the server made (\`memory_released\` log lines): ${released.length === 0 ? 'none' : ''}`,
    '',
    ...released.map(
      (l) => `- ${l.worker === 'primary' ? 'primary' : `shard ${l.worker}`}: ${l.kind}, ${l.ms} ms, heap committed ${l.heapBeforeMiB} → ${l.heapAfterMiB} MiB`,
    ),
    '',
  );
  const report = lines.join('\n') + trimmed;
  process.stdout.write(report + '\n');
  const info = machineInfo();
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const variant = `${DEV ? '-dev' : ''}${ABRUPT ? '-abrupt' : ''}${BUSY_RATE ? '-busy' : ''}`;
  writeFileSync(`${dir}memory-${new Date().toISOString().slice(0, 10)}-${info.commit}-${SESSIONS}${variant}.md`, report);
} finally {
  busy?.stop();
  await cleanup.run();
}
