/**
 * Replay time for a crowd that resumes at once (issue 21): `--clients`
 * (1,000) real clients in `--rooms` desktops (100, so 10 each) connect
 * together, each resuming from offset 0 of a full history (`--events`,
 * 2,000: the default count bound, events of about 200 bytes), and each
 * checks that every event arrives once, in order. The setup is
 * test/recovery-crowd.test.ts's: the real server (`--workers 2`, every
 * history option at its default), a real permission stub, the benchmark's
 * limits off. Measured: from the first connect until every client has its
 * `room_joined`, and until the last replayed event is received; each
 * client's own time; the bytes replayed; the server's RSS and outbound
 * gauge while it replays. `--repeat N` runs N crowds against the same
 * history (each from fresh sockets, within the 2 minutes it keeps).
 *
 *   node bench/recovery.ts [--clients 1000] [--rooms 100] [--events 2000] [--repeat 3]
 *
 * Writes bench/results/recovery-<date>-<commit>.{json,md}.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { signAccessToken } from '../src/auth/token.ts';
import { encodeClientText, RawWebSocket } from '../src/loadtest/ws-client.ts';
import { scrape, sumOf } from '../test/helpers/metrics.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { startServer, TEST_SECRET } from '../test/helpers/server.ts';
import { rssOf } from './connections.ts';
import { loadAverage } from './sitting.ts';

const argv = process.argv.slice(2);
const arg = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  const value = i >= 0 ? Number(argv[i + 1]) : fallback;
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got ${argv[i + 1]}`);
  return value;
};
const CLIENTS = arg('--clients', 1000);
const ROOMS = arg('--rooms', 100);
const EVENTS = arg('--events', 2000);
const REPEAT = arg('--repeat', 3);
/** A crowd that has not finished within this is reported as stuck. */
const BOUND_MS = 60_000;
const MiB = 2 ** 20;
const JOINED = '{"type":"room_joined"';
const OFFSET = Buffer.from(',"offset":');

const log = (line: string) => process.stderr.write(line + '\n');
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
const jwt = (userId: string) => signAccessToken({ userId, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
const runId = Math.random().toString(36).slice(2, 8);

const cleanup = new Cleanup();
const stub = await startPermissionStub(cleanup);
const server = await startServer(cleanup, {
  workers: 2,
  permissionApiBase: stub.base,
  // Every client comes from 127.0.0.1 and the senders fill the history as fast as the server reads: the limits for the internet are off.
  args: ['--max-room-size', '0', '--handshake-rate-per-address', '0', '--max-pending-per-address', '0', '--permission-queue', '2000', '--rate-limit', '0'],
  nodeArgs: ['--max-semi-space-size=4'],
});
// The stub remembers every request: not what is measured here.
stub.handle((_req, res) => {
  stub.requests.length = 0;
  res.setHeader('content-type', 'application/json');
  res.end('{"permission":"editor"}');
});
const pid = server.child.pid!;

/** Connect to `path`; `onText` sees each text frame as a string-free slice of the read buffer. */
function connect(
  path: string,
  user: string,
  onText: (buf: Buffer, start: number, end: number) => void,
  onClose: (code: number) => void,
): Promise<RawWebSocket> {
  return RawWebSocket.connect({
    meter: { busyUs: 0 },
    host: '127.0.0.1',
    port: server.port,
    path,
    headers: { Cookie: `moodio_access_token=${jwt(user)}` },
    onText,
    onClose,
  });
}

interface Crowd {
  load: string;
  joinedMs: number;
  lastEventMs: number;
  perClientMs: { p50: number; p99: number; max: number };
  replayedBytes: number;
  rssBefore: number;
  rssPeak: number;
  outboundPeak: number;
}

async function fill(): Promise<string[]> {
  const epochs: string[] = [];
  const senders: RawWebSocket[] = [];
  for (let r = 0; r < ROOMS; r++) {
    let joined!: (text: string) => void;
    const ready = new Promise<string>((resolve) => (joined = resolve));
    senders.push(
      await connect(
        `/ws/desktop/replay-${runId}-${r}`,
        `replay-sender-${runId}-${r}`,
        (buf, start, end) => {
          if (buf.toString('latin1', start, start + JOINED.length) === JOINED) joined(buf.toString('utf8', start, end));
        },
        () => {},
      ),
    );
    epochs.push((JSON.parse(await ready) as { epoch: string }).epoch);
  }
  const base = sumOf((await scrape(server.port)).metrics, 'moodio_rt_messages_received_total');
  for (let sent = 0; sent < EVENTS; ) {
    const batch = Math.min(100, EVENTS - sent);
    for (const sender of senders)
      sender.sendFrame(
        Buffer.concat(
          Array.from({ length: batch }, (_, k) => {
            const n = sent + k + 1;
            return encodeClientText(
              `{"type":"asset_moved","payload":{"assetId":"asset-${String(n).padStart(6, '0')}","x":${(n * 7) % 1920}.5,"y":${(n * 13) % 1080}.25}}`,
            );
          }),
        ),
      );
    sent += batch;
    const deadline = Date.now() + 60_000;
    while (sumOf((await scrape(server.port)).metrics, 'moodio_rt_messages_received_total') - base < sent * ROOMS) {
      if (Date.now() > deadline) throw new Error(`the server read fewer than ${sent * ROOMS} events within 60 s`);
      await sleep(20);
    }
  }
  // The senders stay: their desktops keep a member, as a desktop whose other users reconnect does.
  return epochs;
}

async function crowd(epochs: string[], round: number): Promise<Crowd> {
  const load = loadAverage();
  log(`# crowd ${round}/${REPEAT}: ${CLIENTS} clients resume ${EVENTS} events each (load ${load})`);
  const rssBefore = rssOf(pid);
  let rssPeak = rssBefore;
  let outboundPeak = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      rssPeak = Math.max(rssPeak, rssOf(pid));
      outboundPeak = Math.max(outboundPeak, sumOf((await scrape(server.port)).metrics, 'moodio_rt_outbound_buffered_bytes'));
      await sleep(50);
    }
  })();
  const joinedAt: number[] = [];
  const doneAt: number[] = [];
  let replayedBytes = 0;
  const failures: string[] = [];
  const sockets: RawWebSocket[] = [];
  let finish!: () => void;
  const allDone = new Promise<void>((resolve) => (finish = resolve));
  const started = performance.now();
  const opened = Array.from({ length: CLIENTS }, (_, i) => {
    const room = i % ROOMS;
    let next = 1;
    let recovered = false;
    const fail = (why: string) => {
      failures.push(`client ${i}: ${why}`);
      doneAt.push(NaN);
      if (doneAt.length === CLIENTS) finish();
    };
    return connect(
      `/ws/desktop/replay-${runId}-${room}?epoch=${epochs[room]}&offset=0`,
      `replay-${runId}-${round}-${i}`,
      (buf, start, end) => {
        if (next > EVENTS) return;
        replayedBytes += end - start;
        if (buf.toString('latin1', start, start + JOINED.length) === JOINED) {
          recovered = buf.toString('latin1', start, end).includes('"recovered":true');
          joinedAt.push(performance.now() - started);
          if (!recovered) fail('recovered: false');
          return;
        }
        // `…,"offset":N}`: the offset is the last member.
        const at = buf.lastIndexOf(OFFSET, end - 1);
        const offset = Number(buf.toString('latin1', at + OFFSET.length, end - 1));
        if (!recovered || at < start) return;
        if (offset !== next) {
          recovered = false;
          fail(`expected offset ${next}, got ${offset}`);
          return;
        }
        if (++next > EVENTS) {
          doneAt.push(performance.now() - started);
          if (doneAt.length === CLIENTS) finish();
        }
      },
      (code) => {
        if (next <= EVENTS && recovered) fail(`closed ${code} at offset ${next}`);
      },
    ).then(
      (socket) => sockets.push(socket),
      (err: Error) => fail(err.message),
    );
  });
  await Promise.all(opened);
  const bound = sleep(BOUND_MS).then(() => 'stuck' as const);
  const outcome = await Promise.race([allDone, bound]);
  sampling = false;
  await sampler;
  for (const socket of sockets) socket.close();
  if (outcome === 'stuck') throw new Error(`${doneAt.length}/${CLIENTS} clients done after ${BOUND_MS} ms`);
  if (failures.length > 0) throw new Error(`${failures.length} clients failed: ${failures.slice(0, 5).join('; ')}`);
  const sorted = [...doneAt].sort((a, b) => a - b);
  // Let the server see every close before the next crowd.
  const deadline = Date.now() + 30_000;
  while (sumOf((await scrape(server.port)).metrics, 'moodio_rt_connections') > ROOMS && Date.now() < deadline) await sleep(50);
  return {
    load,
    joinedMs: Math.max(...joinedAt),
    lastEventMs: sorted.at(-1)!,
    perClientMs: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1)! },
    replayedBytes,
    rssBefore,
    rssPeak,
    outboundPeak,
  };
}

const results: Record<string, unknown> = {
  machine: machineInfo(),
  date: new Date().toISOString(),
  command: `node bench/recovery.ts ${argv.join(' ')}`.trim(),
  clients: CLIENTS,
  rooms: ROOMS,
  events: EVENTS,
};
try {
  log(`# filling ${ROOMS} desktops with ${EVENTS} events each`);
  const epochs = await fill();
  const crowds: Crowd[] = [];
  for (let round = 1; round <= REPEAT; round++) crowds.push(await crowd(epochs, round));
  results.crowds = crowds;
} finally {
  await cleanup.run();
}

const crowds = results.crowds as Crowd[];
const ms = (n: number) => `${Math.round(n).toLocaleString('en-US')} ms`;
const mib = (n: number) => (n / MiB).toFixed(0);
const md = [
  `# Replay: ${CLIENTS.toLocaleString('en-US')} clients resuming at once — ${results.date as string}`,
  '',
  `Machine: ${describeMachine()}. Server \`--workers 2\`, unpinned, sharing the cores with the clients. Command: \`${results.command as string}\``,
  '',
  `${CLIENTS.toLocaleString('en-US')} clients in ${ROOMS} desktops, each resuming from offset 0 of a full history of ${EVENTS.toLocaleString('en-US')} events: every client got \`recovered: true\` and every event once, in order.`,
  '',
  '| crowd | load (1/5/15 min) | connects → every `room_joined` | → last replayed event | per client p50 / p99 / max | replayed | events/s | server RSS before → peak | outbound gauge peak |',
  '|---|---|---|---|---|---|---|---|---|',
  ...crowds.map(
    (c, i) =>
      `| ${i + 1} | ${c.load} | ${ms(c.joinedMs)} | ${ms(c.lastEventMs)} | ${ms(c.perClientMs.p50)} / ${ms(c.perClientMs.p99)} / ${ms(c.perClientMs.max)} | ${mib(c.replayedBytes)} MiB | ${Math.round((CLIENTS * EVENTS) / (c.lastEventMs / 1000)).toLocaleString('en-US')} | ${mib(c.rssBefore)} → ${mib(c.rssPeak)} MiB | ${(c.outboundPeak / MiB).toFixed(1)} MiB |`,
  ),
  '',
];
const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const name = `recovery-${(results.date as string).slice(0, 10)}-${(results.machine as { commit: string }).commit}`;
writeFileSync(`${dir}${name}.json`, JSON.stringify(results, null, 2) + '\n');
writeFileSync(`${dir}${name}.md`, md.join('\n') + '\n');
process.stdout.write(md.join('\n') + '\n');
log(`# wrote bench/results/${name}.{json,md}`);
