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
import { PACE_MIN_MS } from '../src/shard/pace-control.ts';
import { SHARED_FRAME_BYTES } from '../src/shard/shared-frames.ts';
import { WriteCoalescer, type OutboundOwner } from '../src/shard/write-coalescer.ts';

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
  // Frames produced later in the same turn (say, a broadcast to its room) are dropped.
  out.write(session, frame('C'));
  await nextTurn();
  assert.equal(session.queuedBytes, 0, 'the dropped frame is not kept either');
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
  assert.deepEqual(targets.map((each) => out.sharedHeldBy(each)), [big.length, big.length, big.length]);
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
  let sent = '';
  // Until a rate window has judged the socket fast, frames go out per turn.
  for (let i = 0; !session.pace.fast; i++) {
    for (let j = 0; j < 5; j++) out.write(session, frame(`${i}.${j};`));
    sent += Array.from({ length: 5 }, (_, j) => `${i}.${j};`).join('');
    await tick();
  }
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
