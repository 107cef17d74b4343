/**
 * Soak: N minutes of churn against a real server, checking that nothing
 * accumulates. Sessions join and leave continuously, rooms are created and
 * emptied, every session sends a few messages a second. Every 10 s it
 * records server RSS, heap per thread and open sessions/rooms; at the end
 * everyone leaves and the server must report 0 sessions and 0 rooms.
 *
 *   node bench/soak.ts [--minutes 10] [--sessions 400] [--churn 40]
 * (--churn: joins and leaves per second). Writes bench/results/soak-<date>-<commit>.{json,md}.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { signAccessToken } from '../src/auth/token.ts';
import { encodeClientText, RawWebSocket } from '../src/loadtest/ws-client.ts';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { rssOf } from './connections.ts';
import { rawRequest } from '../test/helpers/client.ts';
import { scrape, sumOf } from '../test/helpers/metrics.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { devSecretEnv, startServer, TEST_SECRET } from '../test/helpers/server.ts';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const MINUTES = arg('--minutes', 10);
const TARGET_SESSIONS = arg('--sessions', 400);
const CHURN = arg('--churn', 40);
const ADMIN = 'soak-admin-token-0123456789';
const ERROR_FRAME = Buffer.from('{"type":"error"');

interface Live {
  client: RawWebSocket;
  room: number;
  closing: boolean;
}

const cleanup = new Cleanup();
const server = await startServer(cleanup, {
  workers: 2,
  // Every soak client comes from 127.0.0.1: the per-address pending limit is for the internet, not for a load generator.
  args: ['--dev', '--admin-token', ADMIN, '--max-pending-per-address', '0', '--handshake-rate-per-address', '0'],
  env: devSecretEnv(),
  nodeArgs: ['--max-semi-space-size=4'],
});
const pid = server.child.pid!;
const live = new Set<Live>();
const errors: Record<string, number> = {};
const countError = (kind: string) => (errors[kind] = (errors[kind] ?? 0) + 1);
let joins = 0;
let leaves = 0;
let received = 0;
let sent = 0;
// Rooms drift: new ids appear and old ones empty out over the run.
let roomBase = 0;
const room = () => roomBase + Math.floor(Math.random() * 60);

async function joinOne(): Promise<void> {
  const r = room();
  const token = signAccessToken(
    { userId: `soak-${joins}-${Math.random().toString(36).slice(2, 8)}`, firstName: 'Soak', email: 'soak@example.com' },
    TEST_SECRET,
    3600,
  );
  let entry: Live | null = null;
  try {
    const client = await RawWebSocket.connect({
      meter: { busyUs: 0 },
      host: '127.0.0.1',
      port: server.port,
      path: `/ws/desktop/soak-room-${r}`,
      headers: { Cookie: `moodio_access_token=${token}` },
      onText: (buf, start) => {
        received++;
        if (buf.indexOf(ERROR_FRAME, start) === start) countError('server_error_frame');
      },
      onClose: (code) => {
        if (entry && !entry.closing) countError(`unexpected_close_${code}`);
        if (entry) live.delete(entry);
      },
    });
    entry = { client, room: r, closing: false };
    live.add(entry);
    joins++;
  } catch (err) {
    countError(`connect_${(err as { status?: number }).status ?? 'error'}`);
  }
}

function leaveOne(): void {
  const entry = live.values().next().value as Live | undefined;
  if (!entry) return;
  entry.closing = true;
  live.delete(entry);
  entry.client.close();
  leaves++;
}

const samples: Record<string, number | string>[] = [];
async function sample(label: string): Promise<Record<string, number | string>> {
  const { metrics } = await scrape(server.port);
  const stats = JSON.parse((await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`])).body);
  const row = {
    at: label,
    rssMiB: Math.round(rssOf(pid) / 2 ** 20),
    heapMiB: Math.round(sumOf(metrics, 'moodio_rt_heap_used_bytes') / 2 ** 20),
    sessions: stats.connections as number,
    rooms: stats.rooms as number,
    clientSessions: live.size,
    joins,
    leaves,
    sent,
    received,
  };
  samples.push(row);
  process.stderr.write(JSON.stringify(row) + '\n');
  return row;
}

const started = Date.now();
const endAt = started + MINUTES * 60_000;
await sample('start');
let nextSample = Date.now() + 10_000;
let lastTick = Date.now();
while (Date.now() < endAt) {
  const now = Date.now();
  const dt = (now - lastTick) / 1000;
  lastTick = now;
  // Joins and leaves at the churn rate, steering towards the target population.
  const budget = Math.max(1, Math.round(CHURN * dt));
  const toJoin = live.size < TARGET_SESSIONS ? budget + Math.min(20, TARGET_SESSIONS - live.size) : budget;
  for (let i = 0; i < budget && live.size > 0; i++) leaveOne();
  await Promise.all(Array.from({ length: toJoin }, joinOne));
  // Every session sends ~2 messages a second.
  for (const entry of live) {
    if (Math.random() < 2 * dt) {
      entry.client.sendFrame(encodeClientText(`{"type":"asset_moved","payload":{"x":${Math.round(Math.random() * 1000)}}}`));
      sent++;
    }
  }
  if (Math.random() < dt / 5) roomBase++; // a new room id every ~5 s, the oldest fades out
  if (now >= nextSample) {
    nextSample += 10_000;
    await sample(`${Math.round((now - started) / 1000)}s`);
  }
  await new Promise((r) => setTimeout(r, 50));
}

// Everyone leaves; nothing may remain.
for (const entry of [...live]) {
  entry.closing = true;
  entry.client.close();
}
live.clear();
let final = await sample('all left');
for (let i = 0; i < 100 && (final.sessions !== 0 || final.rooms !== 0); i++) {
  await new Promise((r) => setTimeout(r, 100));
  final = await sample('all left');
}
await cleanup.run();

const ok = final.sessions === 0 && final.rooms === 0 && Object.keys(errors).length === 0;
const machine = machineInfo();
const result = { machine, date: new Date().toISOString(), minutes: MINUTES, targetSessions: TARGET_SESSIONS, churnPerSecond: CHURN, samples, errors, ok };
const md = [
  `# moodio-rt soak — ${result.date}`,
  '',
  `Machine: ${describeMachine(machine)}. Command: \`node bench/soak.ts --minutes ${MINUTES} --sessions ${TARGET_SESSIONS} --churn ${CHURN}\``,
  '',
  '| at | RSS MiB | heap MiB (all threads) | sessions | rooms | joins | leaves | sent | received |',
  '|---|---|---|---|---|---|---|---|---|',
  ...samples.map((s) => `| ${s.at} | ${s.rssMiB} | ${s.heapMiB} | ${s.sessions} | ${s.rooms} | ${s.joins} | ${s.leaves} | ${s.sent} | ${s.received} |`),
  '',
  `Errors: ${Object.keys(errors).length === 0 ? 'none' : JSON.stringify(errors)}. After everyone left: ${final.sessions} sessions, ${final.rooms} rooms. Result: **${ok ? 'PASS' : 'FAIL'}**.`,
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const name = `soak-${result.date.slice(0, 10)}-${machine.commit}`;
writeFileSync(`${dir}${name}.json`, JSON.stringify(result, null, 2) + '\n');
writeFileSync(`${dir}${name}.md`, md.join('\n') + '\n');
process.stdout.write(md.join('\n') + '\n');
process.exitCode = ok ? 0 : 1;
