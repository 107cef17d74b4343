/**
 * Recovery attacked from outside (issue 21), against the real server
 * (primary + 2 shards), real WebSocket clients and the real permission stub.
 * Anything a socket sends is untrusted: a resume must never replay another
 * room's events, hostile parameters get a specific answer, a revoked user
 * gets nothing, one user cannot empty everyone else's history, and a replay
 * is charged to the user's budgets and bounded in memory however its reader
 * behaves. The storms are measured and reported (t.diagnostic); the only
 * bounds asserted are on counts and memory, never on time.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { REASON_HEADER } from '../src/protocol/rejections.ts';
import { TopicErrorCode } from '../src/protocol/topics.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import WebSocket from 'ws';
import { connect, HandshakeRejected, join, rawRequest, upgradeHead, type Frame, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { grant, startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { Cleanup, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { connectTopics, expectEvent, expectOp } from './helpers/topics.ts';
import { token, user } from './helpers/tokens.ts';

/** Users the app has revoked (the stub answers 403 to them, as the app would once it revoked). */
const revoked = new Set<string>();
const roles: PermissionHandler = (req, res) => {
  if (req.userId !== null && revoked.has(req.userId)) {
    res.statusCode = 403;
    res.end('{"error":"forbidden"}');
    return;
  }
  grant(req.userId?.includes('viewer') ? 'viewer' : 'editor')(req, res);
};

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup, roles);
  server = await startServer(cleanup, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--rate-limit', '100000', '--rate-limit-burst', '100000'],
  });
});
after(() => cleanup.run());

/** The next frame that is not presence. */
async function nextEvent(client: TestClient, timeoutMs = 5000): Promise<Frame> {
  for (;;) {
    const frame = await client.next(timeoutMs);
    if (frame.type !== 'session_joined' && frame.type !== 'session_left' && frame.op !== 'session_joined' && frame.op !== 'session_left') return frame;
  }
}

/** A room with a sender and a witness, and `count` events sent (seen by the witness): its id, epoch and latest offset. */
async function roomWith(t: Scope, s: ServerProcess, id: string, count: number, route = 'desktop', tag = 'n') {
  const url = `ws://127.0.0.1:${s.port}/ws/${route}/${id}`;
  const a = await join(t, url, { token: token(user('Ann')) });
  const w = await join(t, url, { token: token(user('Wit')) });
  await a.client.expect('session_joined');
  let latest = 0;
  for (let i = 0; i < count; i++) a.client.send({ type: tag, payload: { room: id, route, i } });
  for (let i = 0; i < count; i++) latest = (await w.client.expect(tag)).offset;
  return { id, url, a: a.client, w: w.client, epoch: a.joined.epoch as string, latest };
}

/** The next non-presence frame, which must be of `type`. */
async function nextOf(client: TestClient, type: string): Promise<Frame> {
  const frame = await nextEvent(client);
  assert.equal(frame.type, type, JSON.stringify(frame).slice(0, 200));
  return frame;
}

type Room = Awaited<ReturnType<typeof roomWith>>;

/** `r` (a resumed legacy session of `room`) is replayed nothing: the next non-presence frame is a live marker. */
async function expectNoReplay(room: Room, r: TestClient, what: string): Promise<void> {
  room.a.send({ type: 'marker' });
  const frame = await nextEvent(r);
  assert.equal(frame.type, 'marker', `${what}: replayed ${JSON.stringify(frame).slice(0, 200)}`);
  room.latest = (await nextOf(room.w, 'marker')).offset;
}

test("room A's epoch and offset used on room B (same shard, other shard, A's production table, both routes): recovered: false, nothing of A replayed", async (t) => {
  const a = await roomWith(t, server, desktopOnShard(0, 2, 'isoA'), 5, 'desktop', 'secretA');
  const sameShard = await roomWith(t, server, desktopOnShard(0, 2, 'isoB'), 8);
  const otherShard = await roomWith(t, server, desktopOnShard(1, 2, 'isoC'), 8);
  const table = await roomWith(t, server, a.id, 8, 'production-table');
  // Every room its own epoch: a position names one sequence.
  assert.equal(new Set([a.epoch, sameShard.epoch, otherShard.epoch, table.epoch]).size, 4);
  for (const victim of [sameShard, otherShard, table]) {
    // Offsets 0 and 3 are inside the victim's own range: only the epoch tells them apart.
    for (const offset of [0, 3]) {
      const r = await join(t, `${victim.url}?epoch=${a.epoch}&offset=${offset}`, { token: token(user('Eve')) });
      assert.equal(r.joined.recovered, false, `${victim.url} from A@${offset}`);
      assert.equal(r.joined.epoch, victim.epoch);
      await expectNoReplay(victim, r.client, `${victim.url} from A@${offset}`);
      await r.client.close();
    }
  }
  // The multiplexed route, the topic owned by the connection's shard and by the other one.
  const conn = await connectTopics(t, server, token(user('Eve')));
  for (const victim of [sameShard, otherShard]) {
    const topic = `desktop:${victim.id}`;
    conn.send({ op: 'subscribe', topic, recover: { epoch: a.epoch, offset: 0 } });
    const ack = await expectOp(conn, 'subscribed', { topic });
    assert.deepEqual([ack.recovered, ack.epoch, ack.offset], [false, victim.epoch, victim.latest]);
    victim.a.send({ type: 'marker' });
    const frame = await nextEvent(conn);
    assert.deepEqual([frame.op, frame.type], ['event', 'marker'], JSON.stringify(frame).slice(0, 200));
    victim.latest = (await nextOf(victim.w, 'marker')).offset;
  }
  // Sanity: A's own position still replays A's events on A.
  const own = await join(t, `${a.url}?epoch=${a.epoch}&offset=0`, { token: token(user('Ann')) });
  assert.equal(own.joined.recovered, true);
  for (let i = 0; i < 5; i++) assert.deepEqual((await own.client.expect('secretA')).payload, { room: a.id, route: 'desktop', i });
});

test('hostile resume queries: each gets a specific answer (400 invalid_resume, recovered: false, or the exact replay), never a wrong one', async (t) => {
  const room = await roomWith(t, server, desktopOnShard(1, 2, 'hostile'), 4);
  const E = room.epoch;
  const refused = [
    `epoch=${E}&offset=0x1`,
    `epoch=${E}&offset=1e0`,
    `epoch=${E}&offset=%2B1`,
    `epoch=${E}&offset=+1`,
    `epoch=${E}&offset=%31`,
    `epoch=${E}&offset=%201`,
    `epoch=${E}&offset=1%00`,
    `epoch=${E}&offset=1.0`,
    `epoch=${E}&offset=`,
    `epoch=${E}&offset`,
    `epoch=${E.replace('.', '%2E')}&offset=0`,
    `epoch=${E}%00&offset=0`,
    `epoch=${E};offset=0`,
    `epoch=${E}/../x&offset=0`,
    `epoch=${E}&offset=0&epoch=${E}`,
    `epoch=${E}&offset=0&offset=0`,
    `epoch%3D${E}&offset=0`,
    `epoch[]=${E}&offset=0`,
    `epoch=${'9'.repeat(65)}&offset=0`,
    `epoch=${E}&offset=${'0'.repeat(17)}`,
  ];
  for (const query of refused) {
    const err = await connect(t, `${room.url}?${query}`, { token: token(user('Eve')) }).then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(err instanceof HandshakeRejected, `${query}: ${err}`);
    assert.equal(err.status, 400, query);
    assert.equal(err.headers[REASON_HEADER.toLowerCase()], 'invalid_resume', query);
  }
  // Keys in another case are not resume members: a plain join, no recovered.
  const plain = await join(t, `${room.url}?EPOCH=${E}&Offset=0`, { token: token(user('Eve')) });
  assert.equal('recovered' in plain.joined, false);
  await expectNoReplay(room, plain.client, 'upper-case keys');
  // Well formed, never given: an epoch from the future (a later incarnation of the shard), or an offset past the latest.
  const positions = [
    () => `epoch=${E}0&offset=0`,
    () => `epoch=${E.replace(/\.[^.]*$/, '.zz')}&offset=0`,
    () => `epoch=${E}&offset=${2 ** 53 - 1}`,
    () => `epoch=${E}&offset=${room.latest + 1}`,
  ];
  for (const position of positions) {
    const query = position();
    const r = await join(t, `${room.url}?${query}`, { token: token(user('Eve')) });
    assert.equal(r.joined.recovered, false, query);
    await expectNoReplay(room, r.client, query);
    await r.client.close();
  }
  // Leading zeros are the same number: the exact replay from there, once.
  const zeros = await join(t, `${room.url}?epoch=${E}&offset=0002`, { token: token(user('Eve')) });
  assert.equal(zeros.joined.recovered, true);
  assert.deepEqual([(await zeros.client.expect('n')).payload.i, (await zeros.client.expect('n')).payload.i], [2, 3]);
  // A long query (other members are the client's own) still resumes; past the head limit it is 431.
  const long = await join(t, `${room.url}?pad=${'p'.repeat(12_000)}&epoch=${E}&offset=${room.latest}`, { token: token(user('Eve')) });
  assert.equal(long.joined.recovered, true);
  const tooLong = await rawRequest(server.port, [upgradeHead(`/ws/desktop/${room.id}?pad=${'p'.repeat(20_000)}&epoch=${E}&offset=0`)]);
  assert.equal(tooLong.status, 431);
});

test('hostile recover members on /ws/connection: bad_recover, or recovered: false, never a wrong replay', async (t) => {
  const room = await roomWith(t, server, desktopOnShard(0, 2, 'hostmux'), 3);
  const topic = `desktop:${room.id}`;
  const conn = await connectTopics(t, server, token(user('Eve')));
  // Raw JSON texts, for what JSON.stringify would not write.
  const bad = [
    `{"epoch":"${room.epoch}","offset":1e400}`,
    `{"epoch":"${room.epoch}","offset":-0.5}`,
    `{"epoch":"${room.epoch}","offset":"0x0"}`,
    `{"epoch":"${room.epoch}","offset":true}`,
    `{"epoch":["${room.epoch}"],"offset":0}`,
    `{"epoch":"${room.epoch}\\u0000","offset":0}`,
    `{"epoch":"${room.epoch}/x","offset":0}`,
    `{"__proto__":{"epoch":"${room.epoch}","offset":0}}`,
    `"${room.epoch}:0"`,
  ];
  for (const recover of bad) {
    conn.send(`{"op":"subscribe","topic":"${topic}","recover":${recover},"ref":"r"}`);
    await expectOp(conn, 'error', { code: TopicErrorCode.BAD_RECOVER, topic, ref: 'r' });
  }
  // A position of the future, then the exact one written as 1e0 (JSON's number 1): recovered from 1, once.
  conn.send(`{"op":"subscribe","topic":"${topic}","recover":{"epoch":"${room.epoch}","offset":${room.latest + 1}},"ref":"f"}`);
  assert.equal((await expectOp(conn, 'subscribed', { topic, ref: 'f' })).recovered, false);
  conn.send(`{"op":"unsubscribe","topic":"${topic}","ref":"u"}`);
  await expectOp(conn, 'unsubscribed', { topic });
  conn.send(`{"op":"subscribe","topic":"${topic}","recover":{"epoch":"${room.epoch}","offset":1e0},"ref":"g"}`);
  assert.equal((await expectOp(conn, 'subscribed', { topic, ref: 'g' })).recovered, true);
  assert.deepEqual([(await expectEvent(conn, topic, 'n')).payload.i, (await expectEvent(conn, topic, 'n')).payload.i], [1, 2]);
});

test('a user revoked (PUT …/permissions/{userId} none) who resumes gets 403 and nothing replayed; on /ws/connection, forbidden and nothing replayed', async (t) => {
  const id = desktopOnShard(0, 2, 'revoke');
  const room = await roomWith(t, server, id, 0);
  const mallory = user('Mallory');
  const m = await join(t, room.url, { token: token(mallory) });
  const sub = await connectTopics(t, server, token(mallory));
  sub.send({ op: 'subscribe', topic: `desktop:${id}` });
  const ack = await expectOp(sub, 'subscribed');
  await room.a.expect('session_joined');
  await room.w.expect('session_joined');
  await room.a.expect('session_joined');
  await room.w.expect('session_joined');
  // The app revokes Mallory: its live sessions end, then the room goes on without it.
  const res = await api(server, 'PUT', `desktops/${id}/permissions/${mallory.userId}`, { permission: 'none' });
  assert.equal(res.status, 202);
  assert.equal((await m.client.closed).code, 4003);
  // The revocation may close Mallory's legacy session first: its subscription then hears that session leave before its own end.
  let ended = await sub.next();
  if (ended.op === 'event' && ended.type === 'session_left') ended = await sub.next();
  assert.equal(ended.op, 'error', JSON.stringify(ended));
  assert.equal(ended.code, TopicErrorCode.FORBIDDEN);
  for (let i = 0; i < 3; i++) room.a.send({ type: 'n', payload: { i } });
  for (let i = 0; i < 3; i++) await nextOf(room.w, 'n');
  // Even before the app's answer changes (the server's cache holds "none" from the PUT), the resume is refused.
  const early = await connect(t, `${room.url}?epoch=${room.epoch}&offset=0`, { token: token(mallory) }).then(
    () => null,
    (e: unknown) => e,
  );
  assert.ok(early instanceof HandshakeRejected && early.status === 403, `${early}`);
  revoked.add(mallory.userId);
  const late = await connect(t, `${room.url}?epoch=${room.epoch}&offset=0`, { token: token(mallory) }).then(
    () => null,
    (e: unknown) => e,
  );
  assert.ok(late instanceof HandshakeRejected && late.status === 403, `${late}`);
  sub.send({ op: 'subscribe', topic: `desktop:${id}`, recover: { epoch: ack.epoch, offset: 0 }, ref: 'x' });
  await expectOp(sub, 'error', { code: TopicErrorCode.FORBIDDEN, ref: 'x' });
  room.a.send({ type: 'marker' });
  await nextOf(room.w, 'marker');
  assert.equal(sub.pending, 0, 'nothing replayed to a revoked subscriber');
});

test("one editor filling --history-memory with big events in rooms of its own empties its own rooms first, never a quiet room's history", async (t) => {
  const stub = await startPermissionStub(t);
  // 512 KiB per shard, 128 KiB per room: four of the attacker's rooms fill a shard. The rate limit is the default.
  const s = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--history-memory', String(1 << 20), '--history-room-bytes', String(128 << 10)],
  });
  // The victim: a quiet room on shard 0, with a member away since 10 small events.
  const quiet = await roomWith(t, s, desktopOnShard(0, 2, 'quiet'), 0);
  const bob = user('Bob');
  const away = await join(t, quiet.url, { token: token(bob) });
  await away.client.close();
  for (let i = 0; i < 10; i++) quiet.a.send({ type: 'n', payload: { i } });
  for (let i = 0; i < 10; i++) await nextOf(quiet.w, 'n');
  // The attacker: one editor, alone in 6 desktops of shard 0 (a viewer witnesses that each event was kept),
  // 32 events of 3.9 KB in each: 32 × ~4.2 KB fills a room's 128 KiB, 6 rooms over the shard's 512 KiB.
  const mallory = user('Mallory');
  const big = 'm'.repeat(3900);
  for (let r = 0; r < 6; r++) {
    const url = s.wsUrl(desktopOnShard(0, 2, 'flood'));
    const m = await join(t, url, { token: token(mallory) });
    const v = await join(t, url, { token: token(user('viewer')) });
    await m.client.expect('session_joined');
    for (let i = 0; i < 32; i++) m.client.send({ type: 'flood', payload: { r, i, big } });
    for (let i = 0; i < 32; i++) await v.client.expect('flood');
  }
  const back = await join(t, `${quiet.url}?epoch=${away.joined.epoch}&offset=${away.joined.offset}`, { token: token(bob) });
  assert.equal(back.joined.recovered, true, "the flood emptied a quiet room's history");
  for (let i = 0; i < 10; i++) assert.equal((await back.client.expect('n')).payload.i, i);
});

/** The server process's resident set (its worker threads included), from /proc. */
function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match === null ? 0 : Number(match[1]) * 1024;
}

/** CPU seconds the server process has used (all its threads), from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const MiB = (n: number): string => (n / 1048576).toFixed(1);

/**
 * Another room's live latency while an attack runs: a sender stamps an event
 * every 20 ms with its clock, a member of the same process reads it.
 */
async function latencyProbe(t: Scope, s: ServerProcess, shard: number) {
  const id = desktopOnShard(shard, 2, 'probe');
  const a = await join(t, s.wsUrl(id), { token: token(user('ProbeA')) });
  const b = await join(t, s.wsUrl(id), { token: token(user('ProbeB')) });
  await a.client.expect('session_joined');
  const samples: number[] = [];
  b.client.ws.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as Frame;
    if (frame.type === 'probe') samples.push(performance.now() - frame.payload.at);
  });
  const timer = setInterval(() => a.client.send({ type: 'probe', payload: { at: performance.now() } }), 20);
  t.after(() => clearInterval(timer));
  return {
    /** Stop, and the percentiles of what was measured (ms). */
    stop(): string {
      clearInterval(timer);
      const sorted = [...samples].sort((x, y) => x - y);
      const at = (q: number) => (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN).toFixed(1);
      return `${sorted.length} samples, p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms`;
    },
  };
}

/** A room on `shard` filled with `count` events of `pad` characters (a witness saw each): its id and epoch. */
async function fullRoom(t: Scope, s: ServerProcess, shard: number, count: number, pad: number) {
  const room = await roomWith(t, s, desktopOnShard(shard, 2, 'full'), 0);
  const text = 'f'.repeat(pad);
  // In batches that the witness reads before the next: a whole history sent at once would trip its backlog cap.
  for (let from = 0; from < count; from += 200) {
    const to = Math.min(count, from + 200);
    for (let i = from; i < to; i++) room.a.send({ type: 'n', payload: { i, text } });
    for (let i = from; i < to; i++) room.latest = (await room.w.expect('n')).offset;
  }
  return room;
}

test('a reader that never reads while it replays holds at most a window, is cut by the ping, and other rooms go on', async (t) => {
  const stub = await startPermissionStub(t);
  const s = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    args: [
      '--api-key',
      API_KEY,
      '--api-publish-rate',
      '0',
      '--rate-limit',
      '0',
      '--ping-interval',
      '3s',
      '--history-events',
      '5000',
      '--history-room-bytes',
      String(64 << 20),
    ],
  });
  const pid = s.child.pid!;
  // 5,000 events of 3.9 KB: 20 MB, more than the loopback socket buffers take from a reader that never reads.
  const room = await fullRoom(t, s, 0, 5000, 3900);
  await room.a.close();
  await room.w.close();
  const probe = await latencyProbe(t, s, 0);
  const sloth = user('Sloth');
  const r = await connect(t, `${room.url}?epoch=${room.epoch}&offset=0`, { token: token(sloth) });
  r.ws.pause();
  // While it does not read, the server goes on publishing to its room: 5,000 more overtake the history it replays.
  // It is the room's only member, so the outbound gauge is its own (and the probe's).
  let peakOutbound = 0;
  const rssBefore = rssBytes(pid);
  let peakRss = rssBefore;
  const text = 'g'.repeat(3900);
  for (let i = 0; i < 5000; i++) {
    assert.equal((await api(s, 'POST', `desktops/${room.id}/events`, { type: 'n', payload: { i: 5000 + i, text } })).status, 202);
    if (i % 250 === 249) {
      peakOutbound = Math.max(peakOutbound, sumOf((await scrape(s.port)).metrics, 'moodio_rt_outbound_buffered_bytes'));
      peakRss = Math.max(peakRss, rssBytes(pid));
    }
  }
  // Cut by the ping (it answers nothing): the room is left empty.
  const cutBy = Date.now() + 15_000;
  while ((await api(s, 'GET', `desktops/${room.id}/presence`)).body.sessions.length > 0) {
    assert.ok(Date.now() < cutBy, 'a non-reader still in its room 15 s after a 3 s ping interval');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.diagnostic(
    `non-reader over a 20 MB replay, 20 MB more published past it: outbound gauge peak ${MiB(peakOutbound)} MiB; server RSS ${MiB(rssBefore)} → peak ${MiB(peakRss)} MiB; ` +
      `another room's latency meanwhile: ${probe.stop()}`,
  );
  // The server's own bound for a replay: a window (64 KiB) and a chunk, far under a session's 1 MiB budget.
  assert.ok(peakOutbound < 256 << 10, `outbound gauge ${peakOutbound}`);
  // That its cursor pins no event the history let go of is history.unit.test.ts's (a heap measure here would be GC noise).
});

test('a resume storm: one user, then 20, reconnecting in a loop from offset 0 of a full history, is charged to the connect budgets; measured', async (t) => {
  const stub = await startPermissionStub(t);
  // Budgets at their defaults (--connect-rate 5/s after a burst of 30 per user and worker, 100 handshakes/s per address);
  // the history at 2,000 events of 1.5 KB (3.6 MB), so its byte bound is raised.
  const s = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--rate-limit', '0', '--history-room-bytes', String(8 << 20)] });
  const pid = s.child.pid!;
  const room = await fullRoom(t, s, 0, 2000, 1500);
  const url = `${room.url}?epoch=${room.epoch}&offset=0`;
  // The probes join first: the storm spends the address's handshake budget (the test's clients share 127.0.0.1).
  const probes = [await latencyProbe(t, s, 0), await latencyProbe(t, s, 0)];
  for (const users of [1, 20]) {
    const probe = probes.shift()!;
    const jwts = Array.from({ length: users }, () => token(user('Storm')));
    const count = { accepted: 0, refused: 0, other: 0, bytes: 0, recovered: 0 };
    const reasons = new Map<string, number>();
    const cpu = cpuSeconds(pid);
    const started = performance.now();
    const until = started + 3000;
    // Each user keeps 4 attempts in flight: connect with the resume, read the replay's first 100 events, drop the socket.
    const loop = async (jwt: string): Promise<void> => {
      while (performance.now() < until) {
        await new Promise<void>((resolve) => {
          const ws = new WebSocket(url, { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${jwt}` }, perMessageDeflate: false });
          let frames = 0;
          ws.on('message', (data: Buffer) => {
            count.bytes += data.length;
            if (frames++ === 0 && (JSON.parse(data.toString()) as Frame).recovered === true) count.recovered++;
            if (frames > 100) ws.terminate();
          });
          ws.once('open', () => count.accepted++);
          ws.once('unexpected-response', (_req, res) => {
            if (res.statusCode === 429) count.refused++;
            else count.other++;
            const reason = `${res.statusCode} ${res.headers[REASON_HEADER.toLowerCase()]}`;
            reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
            res.resume();
            ws.terminate();
          });
          ws.once('error', () => undefined);
          ws.once('close', () => resolve());
        });
      }
    };
    await Promise.all(jwts.flatMap((jwt) => [loop(jwt), loop(jwt), loop(jwt), loop(jwt)]));
    const seconds = (performance.now() - started) / 1000;
    t.diagnostic(
      `${users} user(s) × 4 loops for ${seconds.toFixed(1)} s: ${count.accepted} resumes accepted (${count.recovered} recovered), ${count.refused} refused 429 (${[...reasons].map(([r, n]) => `${n} ${r}`).join(', ')}), ${count.other} other; ` +
        `${MiB(count.bytes)} MiB replayed; server CPU ${(cpuSeconds(pid) - cpu).toFixed(2)} s; RSS ${MiB(rssBytes(pid))} MiB; another room on the shard: ${probe.stop()}`,
    );
    assert.equal(count.other, 0);
    assert.equal(count.recovered, count.accepted);
    // Charged to the user's connect budget (per worker: the room lives on one): a burst of 30, then 5 a second.
    assert.ok(count.accepted <= users * (30 + Math.ceil(5 * seconds) + 1), `${count.accepted} accepted`);
    assert.ok(count.refused > 0);
  }
});

test('50 topics on one connection, each recovering a full history from 0 across both shards: every replay exact, the outbound bounded; measured', async (t) => {
  const stub = await startPermissionStub(t);
  const s = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--rate-limit', '0'] });
  const pid = s.child.pid!;
  const HISTORY = 200;
  const rooms: Room[] = [];
  for (let i = 0; i < 50; i++) rooms.push(await fullRoom(t, s, i % 2, HISTORY, 1000));
  const probes = [await latencyProbe(t, s, 0), await latencyProbe(t, s, 1)];
  const conn = await connectTopics(t, s, token(user('Many')));
  const rssBefore = rssBytes(pid);
  let peakRss = rssBefore;
  let peakOutbound = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peakRss = Math.max(peakRss, rssBytes(pid));
      peakOutbound = Math.max(peakOutbound, sumOf((await scrape(s.port)).metrics, 'moodio_rt_outbound_buffered_bytes'));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  const started = performance.now();
  const next = new Map<string, number>();
  let replayed = 0;
  let acks = 0;
  let limited = 0;
  conn.ws.on('message', (data: Buffer) => {
    replayed += data.length;
  });
  // The subscribe budget (20, then 2 a second) paces the recovers: a rate_limited one is asked again once the ack before it came.
  const pending = rooms.map((room) => `desktop:${room.id}`);
  const send = (topic: string) =>
    conn.send({ op: 'subscribe', topic, recover: { epoch: rooms.find((r) => `desktop:${r.id}` === topic)!.epoch, offset: 0 }, ref: topic });
  for (const topic of pending) send(topic);
  const deadline = performance.now() + 60_000;
  while ([...next.values()].filter((n) => n > HISTORY).length < rooms.length || acks < rooms.length) {
    const frame = await conn.next(Math.max(1, deadline - performance.now()));
    if (frame.op === 'subscribed') {
      assert.equal(frame.recovered, true, JSON.stringify(frame).slice(0, 200));
      acks++;
      next.set(frame.topic, 1);
    } else if (frame.op === 'error') {
      assert.equal(frame.code, TopicErrorCode.RATE_LIMITED, JSON.stringify(frame));
      limited++;
      await new Promise((resolve) => setTimeout(resolve, 250));
      send(frame.ref);
    } else if (frame.op === 'event') {
      const offset = frame.offset as number;
      assert.equal(offset, next.get(frame.topic), `${frame.topic}: in order, once`);
      assert.equal(frame.payload.i, offset - 1);
      next.set(frame.topic, offset + 1);
    }
  }
  const elapsed = performance.now() - started;
  sampling = false;
  await sampler;
  t.diagnostic(
    `50 topics × ${HISTORY} events of 1 KB recovered on one connection: ${MiB(replayed)} MiB in ${elapsed.toFixed(0)} ms (${limited} subscribes rate_limited and asked again); ` +
      `server RSS ${MiB(rssBefore)} → peak ${MiB(peakRss)} MiB; outbound gauge peak ${MiB(peakOutbound)} MiB; other rooms meanwhile: shard 0 ${probes[0]!.stop()}; shard 1 ${probes[1]!.stop()}`,
  );
  assert.equal(conn.pending, 0);
  // The connection's replays share one window: never more than its budget outstanding.
  assert.ok(peakOutbound < 1 << 20, `outbound gauge ${peakOutbound}`);
});
