/**
 * The shard's write coalescer on real loopback sockets: one write per socket
 * per turn, `flushNow` before a close puts the queue ahead of the close
 * frame, nothing queued after a session stops being open reaches the wire,
 * and pacing: fast sockets written once per interval while slow ones keep
 * one write per turn, `auto` pacing only a saturated loop. (The end-to-end
 * tests cover the same through the server; these pin orderings within one
 * turn and load states the server cannot be made to hit on demand.)
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { PACE_MIN_MS, PACE_ON_SAMPLES } from '../src/shard/pace-control.ts';
import { SHARED_FRAME_BYTES } from '../src/shard/shared-frames.ts';
import { MIN_SLAB_BYTES, type SlabPool } from '../src/shard/slab-pool.ts';
import { MAX_OUTBOX_BYTES, SLAB_DECAY_MS, WriteCoalescer, type Outbound, type OutboundOwner } from '../src/shard/write-coalescer.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

/** A connected loopback pair: `local` is written to, `remote` collects what arrives, read by read. */
async function socketPair(t: TestContext): Promise<{ local: Socket; reads: Buffer[]; ended: Promise<Buffer> }> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const remote = connect(port, '127.0.0.1');
  const [local] = await accepted;
  local.setNoDelay(true);
  const reads: Buffer[] = [];
  remote.on('data', (chunk: Buffer) => reads.push(chunk));
  const ended = once(remote, 'end').then(() => Buffer.concat(reads));
  t.after(() => {
    local.destroy();
    remote.destroy();
    server.close();
  });
  return { local, reads, ended };
}

/** A socket's outbound queue, with an owner whose `open` the test can flip. */
const target = (socket: Socket, out: WriteCoalescer<OutboundOwner & { open: boolean }>) => out.newOutbound({ socket, open: true });
const frame = (text: string) => Buffer.from(text, 'latin1');
/** Turn batching alone, as a shard whose pacing is off. */
const UNPACED = { pacing: 'off', paceIntervalMs: 32, paceAbove: 200 } as const;
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));
const tick = () => new Promise((resolve) => setTimeout(resolve, 1));

/** Record every chunk written to `socket`. */
function recordWrites(socket: Socket): Buffer[] {
  const writes: Buffer[] = [];
  const write = socket.write.bind(socket);
  socket.write = ((chunk: Buffer, ...rest: never[]) => {
    writes.push(Buffer.from(chunk));
    return write(chunk, ...rest);
  }) as typeof socket.write;
  return writes;
}

/** The coalescer's slab pool (private: what it holds is what the tests check). */
const slabsOf = (out: WriteCoalescer<never> | WriteCoalescer<OutboundOwner & { open: boolean }>) => (out as unknown as { slabs: SlabPool }).slabs;

/**
 * Five frames a tick to `session` until a rate window has judged it fast
 * (until then its frames go out per turn); the text they made together.
 */
async function judgedFast(out: WriteCoalescer<OutboundOwner & { open: boolean }>, session: Outbound<OutboundOwner & { open: boolean }>): Promise<string> {
  let sent = '';
  const started = performance.now();
  for (let i = 0; !session.pace.fast; i++) {
    assert.ok(performance.now() - started < 5000, 'the socket was not judged fast within 5 s');
    for (let j = 0; j < 5; j++) out.write(session, frame(`${i}.${j};`));
    sent += Array.from({ length: 5 }, (_, j) => `${i}.${j};`).join('');
    await tick();
  }
  return sent;
}

/** `count` numbered frames `<prefix><n>;` and the text they make together. */
const numbered = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i};`);

test('frames queued in one turn go out in order, as one write per socket', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, UNPACED);
  const a = await socketPair(t);
  const b = await socketPair(t);
  const ta = target(a.local, out);
  const tb = target(b.local, out);
  const writes: string[] = [];
  for (const s of [a.local, b.local]) {
    const write = s.write.bind(s);
    s.write = ((chunk: Buffer, ...rest: never[]) => {
      writes.push(`${s === a.local ? 'a' : 'b'}:${chunk.toString('latin1')}`);
      return write(chunk, ...rest);
    }) as typeof s.write;
  }
  out.write(ta, frame('1'));
  out.write(tb, frame('x'));
  out.write(ta, frame('2'));
  out.write(ta, frame('3'));
  assert.deepEqual(writes, [], 'nothing is written before the end of the turn');
  await nextTurn();
  assert.deepEqual(writes, ['a:123', 'b:x']);
  assert.equal(metrics.values[Metric.DELIVERIES], 4);
  assert.equal(metrics.values[Metric.OUTBOUND_BYTES], 4);
  assert.equal(metrics.values[Metric.OUTBOUND_WRITES], 2);
  a.local.end();
  b.local.end();
  assert.equal((await a.ended).toString('latin1'), '123');
  assert.equal((await b.ended).toString('latin1'), 'x');
});

test('flushNow puts the queue ahead of a close in the same turn; later frames never reach the wire', async (t) => {
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  out.write(session, frame('A'));
  out.write(session, frame('B'));
  // What the relay does before it closes a session itself: flush, then the close frame.
  out.flushNow(session);
  pair.local.write(frame('<close>'));
  session.owner.open = false;
  // Frames produced later in the same turn (say, a broadcast to its room) are dropped, one or several.
  out.write(session, frame('C'));
  await nextTurn();
  assert.equal(session.queuedBytes, 0, 'the dropped frame is not kept either');
  const spare = slabsOf(out).spareBytes;
  out.write(session, frame('D'));
  out.write(session, frame('E'));
  await nextTurn();
  assert.equal(session.queuedBytes, 0);
  assert.equal(slabsOf(out).spareBytes, spare, 'the slab they took went back to the pool');
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), 'AB<close>');
});

test('a frame of SHARED_FRAME_BYTES or more goes out at once, by reference, behind what was queued; its bytes count once until every socket has handed it to the kernel', async (t) => {
  assert.equal(SHARED_FRAME_BYTES, 16 * 1024);
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  const pairs = [await socketPair(t), await socketPair(t), await socketPair(t)];
  const targets = pairs.map((pair) => target(pair.local, out));
  const chunks: Buffer[][] = pairs.map(() => []);
  pairs.forEach((pair, i) => {
    const write = pair.local.write.bind(pair.local);
    pair.local.write = ((chunk: Buffer, ...rest: never[]) => {
      chunks[i]!.push(chunk);
      return write(chunk, ...rest);
    }) as typeof pair.local.write;
    pair.local.cork(); // the peer takes nothing: every byte stays in the socket
  });
  const big = frame('B'.repeat(SHARED_FRAME_BYTES));
  const small = frame('s'.repeat(SHARED_FRAME_BYTES - 1));
  out.write(targets[0]!, frame('q'));
  for (const each of targets) out.write(each, big);
  assert.equal(chunks[0]!.length, 2, 'the queued frame first, then the large one, before the end of the turn');
  assert.equal(chunks[0]![0]!.toString('latin1'), 'q');
  for (const c of chunks) assert.equal(c.at(-1), big, 'the very buffer, not a copy');
  assert.deepEqual([out.queuedBytes, out.sharedBytes], [0, big.length], 'three sockets hold it: counted once');
  assert.deepEqual(
    targets.map((each) => out.sharedHeldBy(each)),
    [big.length, big.length, big.length],
  );
  out.write(targets[1]!, small);
  assert.equal(chunks[1]!.length, 1, 'one byte less is queued for the end of the turn');
  assert.deepEqual([out.queuedBytes, out.sharedBytes], [small.length, big.length]);
  await nextTurn();
  assert.equal(out.queuedBytes, 0);
  // Released as each socket hands it over: still counted while one holds it.
  pairs[0]!.local.uncork();
  pairs[1]!.local.uncork();
  await tick();
  assert.deepEqual([out.sharedBytes, out.sharedHeldBy(targets[0]!), out.sharedHeldBy(targets[2]!)], [big.length, 0, big.length]);
  pairs[2]!.local.destroy(); // a socket destroyed with it unwritten lets go of it too
  await tick();
  assert.equal(out.sharedBytes, 0);
  for (const pair of pairs.slice(0, 2)) pair.local.end();
  assert.equal((await pairs[0]!.ended).toString('latin1'), 'q' + big.toString('latin1'));
  assert.equal((await pairs[1]!.ended).toString('latin1'), big.toString('latin1') + small.toString('latin1'));
});

test('pacing: a fast socket is written once per interval, a slow one still once per turn, every byte in order', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, { pacing: 'always', paceIntervalMs: 40, paceAbove: 200, rateWindowMs: 50 });
  t.after(() => out.stop());
  const fast = await socketPair(t);
  const slow = await socketPair(t);
  const tf = target(fast.local, out);
  const ts = target(slow.local, out);
  const fastWrites = recordWrites(fast.local);
  const slowWrites = recordWrites(slow.local);
  const fastFrames = numbered('f', 600);
  const slowFrames: string[] = [];
  // 3 frames a tick (≥ 600/s however slow the timers) to one, a frame every 20th tick (≤ 50/s) to the other.
  for (let i = 0; i < 200; i++) {
    for (let j = 0; j < 3; j++) out.write(tf, frame(fastFrames[i * 3 + j]!));
    if (i % 20 === 0) {
      slowFrames.push(`s${i};`);
      out.write(ts, frame(`s${i};`));
    }
    await tick();
  }
  out.flushAll();
  assert.equal(tf.queuedBytes + ts.queuedBytes, 0, 'flushAll leaves nothing held');
  assert.equal(slowWrites.length, slowFrames.length, 'the slow socket got one write per frame (one per turn)');
  assert.ok(fastWrites.length < fastFrames.length / 5, `the fast socket got ${fastWrites.length} writes for ${fastFrames.length} frames`);
  const paced = metrics.values[Metric.PACED_WRITES]!;
  assert.ok(paced > 0, 'writes were paced');
  assert.equal(paced + metrics.values[Metric.OUTBOUND_WRITES]!, fastWrites.length + slowWrites.length, 'every write is counted once');
  fast.local.end();
  slow.local.end();
  assert.equal((await fast.ended).toString('latin1'), fastFrames.join(''));
  assert.equal((await slow.ended).toString('latin1'), slowFrames.join(''));
});

test('pacing: held bytes wait past the end of the turn; flushAll writes them at once', async (t) => {
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), { pacing: 'always', paceIntervalMs: 1000, paceAbove: 100, rateWindowMs: 20 });
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  const sent = await judgedFast(out, session);
  out.flushAll();
  const before = writes.length;
  out.write(session, frame('held;'));
  assert.ok(session.queuedBytes > 0);
  out.flushAll();
  assert.equal(writes.length, before + 1);
  assert.equal(writes.at(-1)!.toString('latin1').endsWith('held;'), true);
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), sent + 'held;');
});

test('auto pacing leaves a quiet loop alone, starts short when the loop saturates, lengthens while it stays saturated, and stops when it is quiet', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, { pacing: 'auto', paceIntervalMs: 40, paceAbove: 100, rateWindowMs: 20 });
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  // Quiet: a fast stream (3 frames a tick), every turn's frames written at the end of that turn.
  for (let i = 0; i < 100; i++) {
    for (let j = 0; j < 3; j++) out.write(session, frame('q;'));
    await tick();
  }
  assert.equal(out.pacing, false);
  assert.ok(session.pace.fast, 'the socket counts as fast');
  assert.equal(writes.length, 100, 'one write per turn');
  assert.equal(metrics.values[Metric.PACE_INTERVAL], 0);

  // Saturated: every turn burns 10 ms of CPU. Pacing starts at the shortest interval…
  let burned = 0;
  const burn = async () => {
    const until = performance.now() + 10;
    while (performance.now() < until);
    for (let j = 0; j < 3; j++, burned++) out.write(session, frame('b;'));
    await nextTurn();
  };
  const started = performance.now();
  while (!out.pacing) {
    assert.ok(performance.now() - started < 5000, 'pacing did not start on a saturated loop');
    await burn();
  }
  assert.equal(out.paceIntervalMs, PACE_MIN_MS);
  assert.equal(metrics.values[Metric.PACE_INTERVAL], PACE_MIN_MS / 1000, 'the gauge shows the interval in seconds');
  // …and grows to the configured one while the loop stays saturated.
  while (out.paceIntervalMs < 40) {
    assert.ok(performance.now() - started < 10_000, `the interval stayed at ${out.paceIntervalMs} ms on a saturated loop`);
    await burn();
  }
  assert.equal(metrics.values[Metric.PACE_INTERVAL], 0.04);
  // Quiet again: the interval shrinks and pacing stops.
  const quiet = performance.now();
  while (out.pacing) {
    assert.ok(performance.now() - quiet < 5000, 'pacing did not stop on a quiet loop');
    await tick();
  }
  assert.equal(metrics.values[Metric.PACE_INTERVAL], 0);
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), 'q;'.repeat(300) + 'b;'.repeat(burned), 'every frame arrived, in order, across the changes of mode');
});

test('a burst that outgrows its slab moves to a large enough one at once, every byte kept in order; the smaller slab goes back to the pool; the next outbox is sized for the last write', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, UNPACED);
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  // Each under SHARED_FRAME_BYTES: a frame that large is written by reference, never copied into a slab.
  const frames = [5000, 5000, 15_000, 1000].map((size, i) => Buffer.alloc(size, 0x61 + i));
  assert.ok(frames.every((f) => f.length < SHARED_FRAME_BYTES));
  out.write(session, frames[0]!);
  out.write(session, frames[1]!);
  assert.equal(session.outbox?.length, 16 * 1024, 'two frames: a slab that holds both');
  // 10,000 bytes queued and 15,000 more: past the slab, so the next one must hold them all.
  out.write(session, frames[2]!);
  assert.equal(session.outbox?.length, 32 * 1024);
  assert.equal(slabsOf(out).spareBytes, 16 * 1024, 'the outgrown slab is back in the pool');
  out.write(session, frames[3]!);
  assert.equal(session.queuedBytes, 26_000);
  await nextTurn();
  assert.equal(writes.length, 1, 'one write for the whole burst');
  assert.ok(writes[0]!.equals(Buffer.concat(frames)));
  assert.equal(metrics.values[Metric.OUTBOUND_BYTES], 26_000);
  // The next turn's outbox is as large as the last write, so that a steady stream does not grow one each time.
  out.write(session, frame('x;'));
  out.write(session, frame('y;'));
  assert.equal(session.outbox?.length, 32 * 1024);
  await nextTurn();
  pair.local.end();
  assert.ok((await pair.ended).equals(Buffer.concat([...frames, frame('x;y;')])));
});

test('an outbox never grows past MAX_OUTBOX_BYTES: a turn that queues more writes what it holds at once and starts a new one, every byte in order, every slab from the pool (a shard that fell behind must not queue megabytes per socket)', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, UNPACED);
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  // 600 frames of 1,000 bytes in one turn: 600,000 bytes, over four times the bound.
  const frames = Array.from({ length: 600 }, (_, i) => Buffer.alloc(1000, 0x41 + (i % 26)));
  let largest = 0;
  for (const f of frames) {
    out.write(session, f);
    largest = Math.max(largest, session.outbox?.length ?? 0, session.queuedBytes);
  }
  assert.ok(largest <= MAX_OUTBOX_BYTES, `an outbox held ${largest} bytes`);
  // Written during the turn, each time the next frame would not fit: 131 frames per write.
  const perWrite = Math.floor(MAX_OUTBOX_BYTES / 1000);
  assert.equal(writes.length, Math.floor(600 / perWrite));
  assert.ok(writes.every((w) => w.length === perWrite * 1000));
  assert.equal(session.queuedBytes, 600_000 - writes.length * perWrite * 1000, 'the rest waits for the end of the turn');
  await nextTurn();
  assert.equal(writes.length, Math.floor(600 / perWrite) + 1, 'the rest: one write at the end of the turn');
  assert.equal(metrics.values[Metric.OUTBOUND_BYTES], 600_000);
  assert.equal(metrics.values[Metric.DELIVERIES], 600);
  pair.local.end();
  assert.ok((await pair.ended).equals(Buffer.concat(frames)));
});

test('an outbox filled to exactly MAX_OUTBOX_BYTES is still one write at the end of the turn: only a frame that would pass the bound writes early', async (t) => {
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  const frames = Array.from({ length: MAX_OUTBOX_BYTES / 1024 }, (_, i) => Buffer.alloc(1024, 0x30 + (i % 10)));
  for (const f of frames) out.write(session, f);
  assert.equal(session.queuedBytes, MAX_OUTBOX_BYTES);
  assert.equal(writes.length, 0, 'nothing written before the end of the turn');
  await nextTurn();
  assert.equal(writes.length, 1);
  pair.local.end();
  assert.ok((await pair.ended).equals(Buffer.concat(frames)));
});

test('a paced socket whose outbox fills before its slot is written then, and what follows still waits for the slot', async (t) => {
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), { pacing: 'always', paceIntervalMs: 1000, paceAbove: 100, rateWindowMs: 20 });
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const sent = await judgedFast(out, session);
  out.flushAll();
  const writes = recordWrites(pair.local);
  out.write(session, frame('c;'));
  const big = Array.from({ length: 200 }, (_, i) => Buffer.alloc(1000, 0x61 + (i % 26)));
  for (const f of big) out.write(session, f);
  // 'c;' and 131 frames fill the outbox (131,002 bytes); the 132nd starts the next.
  assert.equal(writes.length, 1, 'one write when the outbox filled, before the slot');
  assert.equal(writes[0]!.length, 2 + 131 * 1000);
  assert.equal(session.queuedBytes, 69 * 1000);
  await nextTurn();
  assert.equal(writes.length, 1, 'the rest is paced: not written at the end of the turn');
  out.flushAll();
  assert.equal(writes.length, 2);
  pair.local.end();
  assert.ok((await pair.ended).equals(Buffer.concat([frame(sent + 'c;'), ...big])));
});

test('a slab goes back to the pool once the kernel has its bytes; while the socket still holds them it stays out, and the backlog is reported', async (t) => {
  const backlogs: OutboundOwner[] = [];
  const out = new WriteCoalescer<OutboundOwner & { open: boolean }>(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  out.attach({ noteBacklog: (owner) => void backlogs.push(owner) });
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  out.write(session, frame('a;'));
  out.write(session, frame('b;'));
  await nextTurn();
  assert.equal(slabsOf(out).spareBytes, MIN_SLAB_BYTES);
  assert.deepEqual(backlogs, []);
  // Corked, the socket keeps what it is given: the slab is still referenced.
  pair.local.cork();
  out.write(session, frame('c;'));
  out.write(session, frame('d;'));
  await nextTurn();
  assert.equal(slabsOf(out).spareBytes, 0, 'the slab was taken again and not given back');
  assert.deepEqual(backlogs, [session.owner]);
  out.write(session, frame('e;'));
  await nextTurn();
  assert.deepEqual(backlogs, [session.owner, session.owner], 'a single frame left in the socket is a backlog too');
  pair.local.uncork();
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), 'a;b;c;d;e;');
});

test('flushAll writes what waits for the end of the turn too, at once', async (t) => {
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const session = target(pair.local, out);
  const writes = recordWrites(pair.local);
  out.write(session, frame('x;'));
  out.write(session, frame('y;'));
  out.flushAll();
  assert.deepEqual(
    writes.map((w) => w.toString('latin1')),
    ['x;y;'],
  );
});

/** A coalescer on a clock the test sets (performance.now, and setTimeout/setInterval mocked), pacing always at 8 s: 1 s slots. */
async function pacedOnClock(t: TestContext, start: number) {
  const clock = { now: start };
  t.mock.method(performance, 'now', () => clock.now);
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  // paceAbove 100/s over a 50 ms window: 5 frames in a window make a socket fast.
  const out = new WriteCoalescer<OutboundOwner & { open: boolean }>(metrics, { pacing: 'always', paceIntervalMs: 8000, paceAbove: 100, rateWindowMs: 50 });
  t.after(() => out.stop());
  const socket = async () => {
    const pair = await socketPair(t);
    return { pair, out: target(pair.local, out), writes: recordWrites(pair.local) };
  };
  return { clock, metrics, out, socket };
}

test("pacing on a set clock: fast means at least paceAbove frames/s over a whole rate window just ended; a paced socket waits for its slot, turned at the end of a turn or by the wheel's timer", async (t) => {
  const { clock, metrics, out, socket } = await pacedOnClock(t, 1000);
  assert.equal(metrics.values[Metric.PACE_INTERVAL], 8, 'the gauge shows the interval from the start');
  const fast = await socket();
  const stale = await socket();
  const borderline = await socket();
  for (let i = 0; i < 5; i++) out.write(fast.out, frame(`f${i};`));
  for (let i = 0; i < 5; i++) out.write(stale.out, frame(`s${i};`));
  for (let i = 0; i < 4; i++) out.write(borderline.out, frame(`b${i};`));
  await nextTurn();
  assert.deepEqual([fast.writes.length, stale.writes.length, borderline.writes.length], [1, 1, 1], 'a new socket is not paced');

  // Exactly one window later: 5 frames made `fast` fast, 4 did not make `borderline`.
  clock.now = 1050;
  out.flush();
  out.write(fast.out, frame('f5;'));
  out.write(borderline.out, frame('b4;'));
  await nextTurn();
  assert.equal(fast.out.pace.fast, true);
  assert.equal(borderline.out.pace.fast, false);
  assert.deepEqual([fast.writes.length, fast.out.queuedBytes], [1, 3], 'held past the end of its turn');
  assert.equal(borderline.writes.length, 2);

  // Two windows after its frames: a window that ended long ago says nothing of the socket now.
  clock.now = 1100;
  out.flush();
  out.write(stale.out, frame('s5;'));
  await nextTurn();
  assert.equal(stale.out.pace.fast, false);
  assert.equal(stale.writes.length, 2);

  // `fast` has bucket 1: its slot is second 9 of the 8-second wheel (9 mod 8 = 1).
  clock.now = 8999;
  out.flush();
  assert.equal(fast.out.queuedBytes, 3, 'not before its slot');
  clock.now = 9000;
  out.flush();
  assert.deepEqual([fast.writes.length, fast.out.queuedBytes], [2, 0], 'written by the turn at its slot');
  assert.equal(fast.writes[1]!.toString('latin1'), 'f5;');
  assert.equal(metrics.values[Metric.PACED_WRITES], 1);

  // Fast again, held; with no turn at all, the wheel's timer writes it at its next slot (second 17).
  for (let i = 6; i < 11; i++) out.write(fast.out, frame(`f${i};`));
  await nextTurn();
  clock.now = 9050;
  out.flush();
  out.write(fast.out, frame('f11;'));
  assert.equal(fast.out.queuedBytes, 4);
  clock.now = 17_000;
  t.mock.timers.tick(1000);
  assert.equal(fast.out.queuedBytes, 0, 'the timer turned the wheel on the clock it read');
  assert.equal(fast.writes.at(-1)!.toString('latin1'), 'f11;');

  // stop(): the wheel's timer is gone, and what is still held stays held.
  for (let i = 12; i < 17; i++) out.write(fast.out, frame(`f${i};`));
  await nextTurn();
  clock.now = 17_050;
  out.flush();
  out.write(fast.out, frame('f17;'));
  assert.equal(fast.out.queuedBytes, 4);
  out.stop();
  clock.now = 40_000;
  t.mock.timers.tick(30_000);
  assert.equal(fast.out.queuedBytes, 4);
});

test("a worker's clock starts near 0: a new socket is not paced before a rate window has judged it", async (t) => {
  const { out, socket } = await pacedOnClock(t, 10);
  const s = await socket();
  out.flush();
  out.write(s.out, frame('first;'));
  await nextTurn();
  assert.deepEqual([s.writes.length, s.out.queuedBytes], [1, 0]);
});

test('the slab pool lets go of unused slabs every second until the coalescer stops', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), UNPACED);
  const decay = t.mock.method(slabsOf(out), 'decay');
  t.mock.timers.tick(SLAB_DECAY_MS);
  assert.equal(decay.mock.callCount(), 1);
  t.mock.timers.tick(SLAB_DECAY_MS);
  assert.equal(decay.mock.callCount(), 2);
  out.stop();
  t.mock.timers.tick(10 * SLAB_DECAY_MS);
  assert.equal(decay.mock.callCount(), 2);
});

test('turn after turn, outboxes that together pass the default spare cap are all taken from the pool when maxSpareBytes allows it (a shard at the ceiling must not allocate its outboxes again each turn)', async (t) => {
  // 40 sockets × 24 frames of 1,000 bytes: a 32 KiB slab each, 1.25 MiB a turn, all given back by the flush.
  const run = async (maxSpareBytes: number) => {
    const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0), { ...UNPACED, maxSpareBytes });
    t.after(() => out.stop());
    const pairs = await Promise.all(Array.from({ length: 40 }, () => socketPair(t)));
    const sessions = pairs.map((pair) => target(pair.local, out));
    const allocatedAfter: number[] = [];
    for (let turn = 0; turn < 5; turn++) {
      for (const session of sessions) for (let i = 0; i < 24; i++) out.write(session, Buffer.alloc(1000, 0x41 + turn));
      await nextTurn();
      // Precondition: the kernel took every write whole, so every slab could go back.
      assert.ok(
        pairs.every((pair) => pair.local.writableLength === 0),
        'a socket kept bytes',
      );
      allocatedAfter.push(slabsOf(out).allocated);
    }
    for (const pair of pairs) pair.local.end();
    for (const pair of pairs) assert.equal((await pair.ended).length, 5 * 24 * 1000);
    return allocatedAfter;
  };
  const kept = await run(2 * 1024 * 1024);
  assert.ok(kept[0]! >= 40, `the first turn allocates a slab per socket: ${kept[0]}`);
  assert.deepEqual(kept, Array(5).fill(kept[0]), 'the other turns take every slab from the pool');
  // The pool capped below a turn's outboxes drops some at each flush and allocates them again at the next turn.
  const capped = await run(1024 * 1024);
  assert.ok(capped[4]! > capped[0]!, `allocated ${capped.join(', ')}`);
});

test('auto pacing on a load the test sets: the wheel follows the interval in force, a sample that changes nothing leaves it alone, and when pacing stops held bytes go out at once', async (t) => {
  const clock = { now: 1000 };
  let load = 1;
  t.mock.method(performance, 'now', () => clock.now);
  // The load sampler reads the loop's utilization from here (perf_hooks' performance is the global one).
  t.mock.method(performance as unknown as { eventLoopUtilization: () => unknown }, 'eventLoopUtilization', () => ({ idle: 0, active: 0, utilization: load }));
  // The sampler's interval only: the wheel's own timer is left real, and never gets a turn, since what follows is synchronous
  // (a mocked one would fire within a sample's tick and write what the test means to see held).
  t.mock.timers.enable({ apis: ['setInterval'] });
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer<OutboundOwner & { open: boolean }>(metrics, { pacing: 'auto', paceIntervalMs: 40, paceAbove: 100, rateWindowMs: 50 });
  t.after(() => out.stop());
  const pair = await socketPair(t);
  const s = target(pair.local, out);
  const writes = recordWrites(pair.local);
  const sample = () => t.mock.timers.tick(50);
  for (let i = 0; i < PACE_ON_SAMPLES; i++) sample();
  assert.equal(out.paceIntervalMs, PACE_MIN_MS);

  // Fast: 5 frames in the window that started at 1000, judged at 1050.
  for (let i = 0; i < 5; i++) out.write(s, frame(`w${i};`));
  await nextTurn();
  clock.now = 1050;
  out.flush();
  /** Queue a frame: it is paced, and the wheel has just turned, so it is held. */
  const hold = (text: string) => {
    out.flush();
    out.write(s, frame(text));
    out.flush();
    assert.ok(s.queuedBytes > 0, `${text} is held`);
  };
  out.write(s, frame('p0;'));
  out.flush();
  hold('p1;');
  // A whole interval of the 4 ms in force later, every slot has come.
  clock.now = 1054;
  out.flush();
  assert.equal(s.queuedBytes, 0, 'held no longer than the 4 ms interval');

  // The load eases: the interval grows to 6 ms, then holds.
  load = 0.8;
  sample();
  assert.equal(out.paceIntervalMs, PACE_MIN_MS * 1.5);
  sample();
  assert.equal(out.paceIntervalMs, 6);
  hold('p2;');
  clock.now = 1060;
  sample();
  assert.equal(out.paceIntervalMs, 6, 'unchanged');
  out.flush();
  assert.equal(s.queuedBytes, 0, 'a sample that changed nothing did not move the wheel past its slot');

  // Quiet: the interval shrinks, then pacing stops, and what was held goes out with it.
  load = 0;
  sample();
  assert.equal(out.paceIntervalMs, 4.8);
  hold('p3;');
  const before = writes.length;
  sample();
  assert.equal(out.pacing, false);
  assert.equal(metrics.values[Metric.PACE_INTERVAL], 0);
  assert.deepEqual([writes.length, s.queuedBytes], [before + 1, 0], 'written as pacing stopped');
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), 'w0;w1;w2;w3;w4;p0;p1;p2;p3;');
});

test('every byte in order whatever happens between turns (seeded): bursts past MAX_OUTBOX_BYTES, frames of SHARED_FRAME_BYTES or more, flushNow, paced and unpaced turns; no outbox past the bound, nothing left after flushAll', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics, { pacing: 'always', paceIntervalMs: 8, paceAbove: 100, rateWindowMs: 20 });
  t.after(() => out.stop());
  const next = mulberry32(31);
  const sessions = await Promise.all(
    [0, 1, 2].map(async () => {
      const pair = await socketPair(t);
      return { pair, target: target(pair.local, out), sent: [] as Buffer[] };
    }),
  );
  let n = 0;
  const send = (session: (typeof sessions)[number], length: number) => {
    const f = Buffer.alloc(length, 0x21 + (n++ % 90));
    session.sent.push(f);
    out.write(session.target, f);
    assert.ok(session.target.queuedBytes <= MAX_OUTBOX_BYTES && (session.target.outbox?.length ?? 0) <= MAX_OUTBOX_BYTES);
  };
  let paced = false;
  for (let turn = 0; turn < 300; turn++) {
    for (const session of sessions) {
      const r = next();
      if (r < 0.6) for (let i = Math.floor(next() * 8); i > 0; i--) send(session, 1 + Math.floor(next() * 2000));
      else if (r < 0.7) for (let i = 0; i < 40; i++) send(session, 3000 + Math.floor(next() * (SHARED_FRAME_BYTES - 3000)));
      else if (r < 0.8) {
        send(session, 10);
        send(session, SHARED_FRAME_BYTES + Math.floor(next() * 20_000));
        send(session, 10);
      } else if (r < 0.85) out.flushNow(session.target);
      paced ||= session.target.pace.fast;
    }
    assert.equal(
      out.queuedBytes,
      sessions.reduce((sum, s) => sum + s.target.queuedBytes, 0),
    );
    await (next() < 0.5 ? nextTurn() : tick());
  }
  out.flushAll();
  assert.ok(paced, 'some turns were paced');
  assert.equal(out.queuedBytes, 0);
  for (const session of sessions) {
    session.pair.local.end();
    const received = await session.pair.ended;
    assert.equal(received.length, Buffer.concat(session.sent).length);
    assert.ok(received.equals(Buffer.concat(session.sent)), 'every byte, in the order queued');
  }
});
