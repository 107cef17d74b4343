/**
 * 1,000 real clients resume at once against full histories (issue 21):
 * every one gets `recovered: true` and exactly the events it missed, in
 * order, then the live ones sent while the replays ran; the server's memory
 * stays bounded while it replays, because a replay writes only as its
 * socket drains (replay.ts). Measured and reported (RSS of the server
 * process, its outbound gauge, the replay's length); the only bound
 * asserted is on memory, never on time.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import WebSocket from 'ws';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { join, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const CLIENTS = Number(process.env.RECOVERY_CROWD_CLIENTS ?? 1000);
const ROOMS = 4;
const HISTORY = 500;
const LIVE = 20;

/** The server process's resident set (its worker threads included), from /proc. */
function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match === null ? 0 : Number(match[1]) * 1024;
}

interface Resumer {
  recovered: boolean | undefined;
  next: number;
  bytes: number;
  done: Promise<void>;
}

/** A raw client that resumes from `offset` and checks every event as it comes: offsets consecutive from `offset + 1`, `total` of them. */
function resume(url: string, jwt: string, offset: number, total: number): Resumer {
  const state: Resumer = { recovered: undefined, next: offset + 1, bytes: 0, done: Promise.resolve() };
  state.done = new Promise<void>((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${jwt}` }, perMessageDeflate: false });
    ws.on('message', (data: Buffer) => {
      state.bytes += data.length;
      const frame = JSON.parse(data.toString()) as { type: string; offset?: number; recovered?: boolean };
      if (frame.type === 'room_joined') {
        state.recovered = frame.recovered;
        if (frame.recovered !== true) {
          reject(new Error(`room_joined said recovered: ${frame.recovered}`));
          ws.terminate();
        }
        return;
      }
      if (frame.type !== 'n') return;
      if (frame.offset !== state.next) {
        reject(new Error(`expected offset ${state.next}, got ${frame.offset}`));
        ws.terminate();
        return;
      }
      state.next++;
      if (state.next > offset + total) {
        ws.close();
        resolve();
      }
    });
    ws.once('error', reject);
    ws.once('close', (code) => {
      if (state.next <= offset + total) reject(new Error(`closed ${code} at offset ${state.next}`));
    });
  });
  return state;
}

test(`${CLIENTS} clients resume at once against full histories: all recover exactly, and the server's memory stays bounded`, async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    // Full once the live events are in.
    args: [
      '--history-events',
      String(HISTORY + LIVE),
      '--max-room-size',
      '0',
      '--handshake-rate-per-address',
      '0',
      // The crowd is one address: on a loaded machine its heads can wait past 1 s and count as slow (503 past 64).
      '--max-pending-per-address',
      '0',
      '--permission-queue',
      '2000',
      '--rate-limit',
      '0',
    ],
  });
  const pid = server.child.pid!;
  const rooms: { id: string; epoch: string; sender: TestClient; witness: TestClient }[] = [];
  for (let i = 0; i < ROOMS; i++) {
    const id = desktop('crowd');
    const sender = await join(t, server.wsUrl(id), { token: token(user('Snd')) });
    const witness = await join(t, server.wsUrl(id), { token: token(user('Wit')) });
    await sender.client.expect('session_joined');
    rooms.push({ id, epoch: sender.joined.epoch, sender: sender.client, witness: witness.client });
  }
  // Full histories: HISTORY events of ~200 bytes each, every one seen by the witness (so stamped).
  const pad = 'p'.repeat(120);
  for (const room of rooms) for (let n = 1; n <= HISTORY; n++) room.sender.send({ type: 'n', payload: { n, pad } });
  for (const room of rooms) for (let n = 1; n <= HISTORY; n++) assert.equal((await room.witness.expect('n')).offset, n);

  const tokens = Array.from({ length: CLIENTS }, (_, i) => token(user(`R${i}`)));
  const before = rssBytes(pid);
  let peak = before;
  let peakOutbound = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, rssBytes(pid));
      const { metrics } = await scrape(server.port);
      peakOutbound = Math.max(peakOutbound, sumOf(metrics, 'moodio_rt_outbound_buffered_bytes'));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  const started = Date.now();
  const resumers = tokens.map((jwt, i) => resume(server.wsUrl(rooms[i % ROOMS]!.id) + `?epoch=${rooms[i % ROOMS]!.epoch}&offset=0`, jwt, 0, HISTORY + LIVE));
  // Live events while the replays run: each must come after its room's history, once.
  for (const room of rooms) for (let n = HISTORY + 1; n <= HISTORY + LIVE; n++) room.sender.send({ type: 'n', payload: { n } });
  let finished = 0;
  const all = Promise.all(resumers.map((r) => r.done.then(() => finished++)));
  // A bound for a hung replay, with what each client reached.
  const bound = new Promise<never>((_, reject) => {
    const timer = setTimeout(() => {
      const stuck = resumers.filter((r) => r.next <= HISTORY + LIVE).map((r) => `${r.recovered}@${r.next}`);
      reject(new Error(`${finished}/${CLIENTS} done after 120 s; stuck: ${stuck.slice(0, 20).join(' ')}`));
    }, 120_000);
    all.finally(() => clearTimeout(timer));
  });
  await Promise.race([all, bound]);
  const elapsed = Date.now() - started;
  sampling = false;
  await sampler;

  assert.equal(resumers.filter((r) => r.recovered === true).length, CLIENTS);
  const replayed = resumers.reduce((sum, r) => sum + r.bytes, 0);
  const grew = peak - before;
  t.diagnostic(
    `${CLIENTS} resumes of ${HISTORY} events + ${LIVE} live: ${(replayed / 1048576).toFixed(1)} MiB written in ${elapsed} ms; ` +
      `server RSS ${(before / 1048576).toFixed(0)} → peak ${(peak / 1048576).toFixed(0)} MiB (+${(grew / 1048576).toFixed(0)}); peak outbound gauge ${(peakOutbound / 1048576).toFixed(1)} MiB`,
  );
  // Bounded: the server never held the crowd's replay at once (its RSS grew by less than half of what it wrote).
  assert.ok(grew < replayed / 2, `RSS grew ${grew} bytes for ${replayed} replayed`);
});
