/**
 * The backpressure policy in process (test/helpers/shard-parts.ts), with
 * the clock and the sweep interval in the test's hands and backlogs made
 * exact: a corked socket keeps every byte written to it in
 * `writableLength`, as a peer that does not read makes it keep what the
 * kernel has no room for. Frames are delivered as the relay does
 * (`p.deliver`: the verdict acted on, then the cuts aside settled), and
 * each test asserts what the client receives, in order, and when the
 * session is cut. test/backpressure.test.ts and
 * test/outbound-memory.test.ts check the same policy through the server.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { Backpressure, Delivery, LARGE_BACKLOG_BYTES, SWEEP_MS } from '../src/shard/backpressure.ts';
import { WriteCoalescer } from '../src/shard/write-coalescer.ts';
import type { Session } from '../src/shard/session.ts';
import { recordingLogger, shardParts, type Member, type Parts, type PartsOptions } from './helpers/shard-parts.ts';

const NOW = 1_800_000_000_000;
/** Date and setInterval (the sweep) are the test's; setImmediate (the coalescer's turn) and sockets are real. */
const freeze = (t: TestContext) => t.mock.timers.enable({ apis: ['Date', 'setInterval'], now: NOW });
const sweep = (t: TestContext, times = 1) => {
  for (let i = 0; i < times; i++) t.mock.timers.tick(SWEEP_MS);
};
const turn = () => new Promise((resolve) => setImmediate(resolve));

/** A text frame of exactly `bytes` bytes whose text starts with `label` (padded with dots). */
function frame(label: string, bytes: number): Buffer {
  const header = bytes - 2 < 126 ? 2 : bytes - 4 < 65536 ? 4 : 10;
  const f = encodeTextFrame(label.padEnd(bytes - header, '.'));
  assert.equal(f.length, bytes, `no frame is ${bytes} bytes long`);
  return f;
}
const textOf = (f: Buffer) => f.subarray(f[1] === 126 ? 4 : f[1] === 127 ? 10 : 2).toString();
const metric = (p: Parts, m: number) => p.metrics.values[m];

/** Members named `names`, in one room (each past the session_joined of those after it), or each in a room of its own. */
async function setup(t: TestContext, backpressure: PartsOptions['backpressure'], names = ['Ann', 'Bob'], rooms: 'one' | 'own' = 'one') {
  freeze(t);
  const p = await shardParts(t, { backpressure });
  const members: Member[] = [];
  for (const name of names) members.push(await p.join(name, rooms === 'own' ? { desktopId: `desk-${name}` } : {}));
  if (rooms === 'one') for (let i = 0; i < members.length; i++) for (let j = i + 1; j < members.length; j++) await members[i]!.client.next();
  return { p, members };
}

/** More than a socket takes in one write without asking for a drain. */
const overHighWater = (m: Member) => m.session.socket.writableHighWaterMark + 1000;

/** Queue `f` for `m` and let the coalescer write it (into the corked socket, if corked). */
async function written(p: Parts, m: Member, f: Buffer): Promise<void> {
  p.deliver(m.session, f, undefined);
  await turn();
}

/** The frames `m` receives next, as text. */
async function received(m: Member, count: number): Promise<string[]> {
  const texts: string[] = [];
  for (let i = 0; i < count; i++) texts.push(await m.client.next());
  return texts;
}

const warnOf = (p: Parts) => p.log.entries.filter((e) => e.event === 'slow_consumer_close').map((e) => e.fields);
const budgetOf = (s: Session) => ({ ...s.budget });
const names = (sessions: Session[]) => sessions.map((session) => session.firstName);

test('within the budget every frame goes out at once; a backlog exactly at the budget is within it', async (t) => {
  const {
    p,
    members: [a],
  } = await setup(t, { maxBufferedBytes: 100 }, ['Ann']);
  const [f1, f2, f3, f4] = [frame('f1', 50), frame('f2', 50), frame('f3', 20), frame('f4', 20)];
  p.deliver(a!.session, f1, undefined);
  p.deliver(a!.session, f2, 'k'); // backlog 50
  p.deliver(a!.session, f3, 'k'); // backlog 100: still within
  assert.deepEqual(budgetOf(a!.session), { overBudgetSince: 0, awaitingDrain: false, coalesced: null });
  p.deliver(a!.session, f4, 'k'); // backlog 120: held
  assert.equal(a!.session.budget.overBudgetSince, NOW);
  assert.deepEqual([...a!.session.budget.coalesced!.values()], [f4]);
  assert.deepEqual(await received(a!, 3), [f1, f2, f3].map(textOf));
  sweep(t); // the socket took everything: back within budget, the held frame goes out
  assert.deepEqual(budgetOf(a!.session), { overBudgetSince: 0, awaitingDrain: true, coalesced: null });
  assert.deepEqual(await received(a!, 1), [textOf(f4)]);
  assert.equal(metric(p, Metric.DROPPED_COALESCED), 0);
});

test('over budget: the newest transient frame per key is held and ordered frames are written; all held go out, in key order, on drain', async (t) => {
  const {
    p,
    members: [a],
  } = await setup(t, { maxBufferedBytes: 100 }, ['Ann']);
  const socket = a!.session.socket;
  socket.cork();
  const big = frame('big', overHighWater(a!)); // its write asks for a drain
  await written(p, a!, big);
  assert.equal(socket.writableNeedDrain, true);
  const [t1, t2, u1, o] = [frame('t1', 30), frame('t2', 30), frame('u1', 30), frame('o', 30)];
  p.deliver(a!.session, t1, 'ann\nasset_dragging');
  p.deliver(a!.session, u1, 'bob\nasset_dragging');
  p.deliver(a!.session, t2, 'ann\nasset_dragging');
  p.deliver(a!.session, o, undefined);
  assert.equal(metric(p, Metric.DROPPED_COALESCED), 1);
  assert.equal(socket.listenerCount('drain'), 1);
  socket.uncork();
  // No sweep runs: only the drain brings the held frames.
  assert.deepEqual(await received(a!, 4), [big, o, t2, u1].map(textOf));
  assert.deepEqual(budgetOf(a!.session), { overBudgetSince: 0, awaitingDrain: false, coalesced: null });
  assert.equal(socket.listenerCount('drain'), 0);

  // Over again: one drain listener again, and a second delivery over budget adds none.
  socket.cork();
  const big2 = frame('big2', overHighWater(a!));
  await written(p, a!, big2);
  p.deliver(a!.session, frame('t3', 30), 'ann\nasset_dragging');
  const t4 = frame('t4', 30);
  p.deliver(a!.session, t4, 'ann\nasset_dragging');
  assert.equal(socket.listenerCount('drain'), 1);
  socket.uncork();
  assert.deepEqual(await received(a!, 2), [big2, t4].map(textOf));
  assert.equal(metric(p, Metric.DROPPED_COALESCED), 2);
});

test('back within budget by the sweep (exactly at the budget counts), with no drain: one listener stays for the next time', async (t) => {
  const {
    p,
    members: [a],
  } = await setup(t, { maxBufferedBytes: 100 }, ['Ann']);
  const socket = a!.session.socket;
  socket.cork();
  await written(p, a!, frame('small', 150)); // under the high-water mark: no drain will come
  const held = frame('held', 30);
  p.deliver(a!.session, held, 'k');
  assert.equal(a!.session.budget.overBudgetSince, NOW);
  socket.uncork();
  while (socket.writableLength > 0) await turn();
  p.deliver(a!.session, frame('exact', 100), undefined); // queued: the backlog is exactly the budget
  sweep(t);
  assert.deepEqual(budgetOf(a!.session), { overBudgetSince: 0, awaitingDrain: true, coalesced: null });
  assert.deepEqual(
    await received(a!, 3),
    ['small', 'exact', 'held'].map((l, i) => textOf(frame(l, [150, 100, 30][i]!))),
  );
  // Over again: the listener still waiting serves; no second one.
  socket.cork();
  await written(p, a!, frame('again', 150));
  p.deliver(a!.session, frame('h2', 30), 'k');
  assert.equal(a!.session.budget.overBudgetSince, NOW + SWEEP_MS);
  assert.equal(socket.listenerCount('drain'), 1);
  socket.uncork();
});

test('slow consumer: over budget for exactly slowConsumerTimeoutMs, it leaves its room and gets what was queued for it, then 4008', async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxBufferedBytes: 100, slowConsumerTimeoutMs: 1000 });
  const socket = b!.session.socket;
  socket.cork();
  const big = frame('big', overHighWater(b!));
  await written(p, b!, big);
  const o1 = frame('o1', 30);
  p.deliver(b!.session, o1, undefined); // over since NOW
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), big.length + 30, 'over budget and backlogged: counted once');
  sweep(t, 8);
  assert.equal(b!.session.open, true, 'not cut at 900 ms');
  assert.deepEqual(p.cuts, []);
  const o2 = frame('o2', 30);
  p.deliver(b!.session, o2, undefined); // still queued when the sweep cuts
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob']);
  assert.equal(b!.session.open, false);
  const left = `{"type":"session_left","sessionId":"${b!.session.id}","userId":"${b!.session.userId}","firstName":"Bob","email":"bob@example.com","timestamp":${NOW + 1000},"payload":${b!.session.infoJson}}`;
  assert.equal(
    metric(p, Metric.OUTBOUND_BUFFERED),
    socket.writableLength + encodeTextFrame(left).length,
    'what its socket still holds (the queue flushed, then the 4008) counts until it is destroyed, and so does the session_left queued for Ann',
  );
  assert.deepEqual(warnOf(p), [{ sessionId: b!.session.id, desktopId: 'desk-1', reason: 'slow_consumer', backlogBytes: big.length + 60, overForMs: 1000 }]);
  assert.deepEqual(
    [metric(p, Metric.CLOSED_SLOW_CONSUMER), metric(p, Metric.CLOSED_BACKLOG_CAP), metric(p, Metric.CLOSED_MEMORY_CAP), p.releases.count],
    [1, 0, 0, 1],
  );
  assert.equal(await a!.client.next(), left);
  socket.uncork();
  assert.deepEqual(await received(b!, 3), [big, o1, o2].map(textOf));
  assert.deepEqual(await b!.client.waitClosed(), { code: 4008, reason: 'slow consumer' });
  assert.equal(b!.client.pending, 0);
  sweep(t, 20);
  assert.equal(metric(p, Metric.CLOSED_SLOW_CONSUMER), 1, 'cut once');
});

test('a member back within budget before the timeout is not cut, and its next time over starts a new timeout', async (t) => {
  const {
    p,
    members: [a],
  } = await setup(t, { maxBufferedBytes: 100, slowConsumerTimeoutMs: 1000 }, ['Ann']);
  const socket = a!.session.socket;
  socket.cork();
  await written(p, a!, frame('one', overHighWater(a!)));
  p.deliver(a!.session, frame('o', 30), undefined);
  sweep(t, 9);
  socket.uncork();
  await received(a!, 2);
  while (a!.session.budget.overBudgetSince !== 0) await turn(); // the drain
  socket.cork();
  await written(p, a!, frame('two', overHighWater(a!)));
  p.deliver(a!.session, frame('o', 30), undefined); // over again since NOW + 900
  assert.equal(a!.session.budget.overBudgetSince, NOW + 900);
  sweep(t, 9);
  assert.deepEqual(p.cuts, [], 'not cut at 1800 ms, 900 ms into its second time over');
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Ann']);
  assert.equal(warnOf(p)[0]!.overForMs, 1000);
  socket.uncork();
});

test('hard cap: a socket holding more than maxSessionBacklogBytes from earlier turns is cut at the next frame, which is not queued', async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxBufferedBytes: 100, maxSessionBacklogBytes: 1000 });
  const socket = b!.session.socket;
  // A turn's own queue is not held against the cap: it goes to the kernel at the end of the turn.
  for (let i = 0; i < 5; i++) p.deliver(b!.session, frame(`q${i}`, 300), undefined);
  assert.deepEqual(p.cuts, []);
  assert.deepEqual(
    await received(b!, 5),
    [0, 1, 2, 3, 4].map((i) => textOf(frame(`q${i}`, 300))),
  );
  socket.cork();
  const fill = frame('fill', 1000);
  await written(p, b!, fill);
  const x = frame('x', 30);
  p.deliver(b!.session, x, undefined); // exactly at the cap: written
  await turn();
  assert.deepEqual(p.cuts, []);
  p.deliver(b!.session, frame('y', 30), undefined);
  assert.deepEqual(names(p.cuts), ['Bob']);
  assert.deepEqual(warnOf(p), [{ sessionId: b!.session.id, desktopId: 'desk-1', reason: 'backlog_cap', backlogBytes: 1030, overForMs: 0 }]);
  assert.deepEqual([metric(p, Metric.CLOSED_BACKLOG_CAP), metric(p, Metric.CLOSED_SLOW_CONSUMER), p.releases.count], [1, 0, 1]);
  assert.equal(b!.session.budget.coalesced, null);
  // Closing: a frame for it now neither queues nor cuts again.
  const deliveries = metric(p, Metric.DELIVERIES);
  p.deliver(b!.session, frame('z', 30), undefined);
  assert.deepEqual([metric(p, Metric.CLOSED_BACKLOG_CAP), p.cuts.length, metric(p, Metric.DELIVERIES)], [1, 1, deliveries]);
  socket.uncork();
  assert.deepEqual(await received(b!, 2), [fill, x].map(textOf));
  assert.deepEqual(await b!.client.waitClosed(), { code: 4008, reason: 'slow consumer' });
  assert.match(await a!.client.next(), /^\{"type":"session_left"/);
});

test('hard cap: a frame of the server never cuts the member, however much its socket holds; the next frame of a client does', async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxBufferedBytes: 100, maxSessionBacklogBytes: 1000 });
  const socket = b!.session.socket;
  socket.cork();
  const fill = frame('fill', 1001);
  await written(p, b!, fill);
  const server = frame('server', 30);
  p.deliver(b!.session, server, undefined, 'server');
  await turn();
  assert.deepEqual(p.cuts, [], "an API publish (or a role change) is not the member's doing");
  assert.equal(b!.session.budget.overBudgetSince, NOW, 'over budget all the same: the timeout still applies');
  p.deliver(b!.session, frame('client', 30), undefined);
  assert.deepEqual(names(p.cuts), ['Bob']);
  assert.deepEqual(
    warnOf(p).map((f) => [f!.reason, f!.backlogBytes]),
    [['backlog_cap', 1031]],
  );
  socket.uncork();
  assert.deepEqual(await received(b!, 2), [fill, server].map(textOf));
  assert.deepEqual(await b!.client.waitClosed(), { code: 4008, reason: 'slow consumer' });
  assert.match(await a!.client.next(), /^\{"type":"session_left"/);
});

test('the shard publishes what it counts: the bytes sockets hold, and every byte queued in the coalescer, over budget or not', async (t) => {
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxBufferedBytes: 100 }, ['Ann', 'Bob', 'Cat']);
  a!.session.socket.cork();
  await written(p, a!, frame('a', 3000));
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 3000);
  // b over budget by what is queued for it in this turn alone (b2 held back); c within it, queued too.
  p.deliver(b!.session, frame('b1', 101), undefined);
  p.deliver(b!.session, frame('b2', 90), 'k');
  p.deliver(c!.session, frame('c', 90), undefined);
  assert.equal(p.backpressure.outboundBytes, 3191, 'counted as queued, before any sweep');
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 3191, 'a, b and c; not the held b2');
  await received(b!, 1);
  await received(c!, 1);
  a!.session.socket.destroy();
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 90, 'a destroyed socket holds nothing; b2, let go by that sweep (b is back within budget), is queued');
  assert.equal(await b!.client.next(), textOf(frame('b2', 90)));
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 0);
});

/** Cork `m`'s socket and have `bytes` written into it, then let a sweep publish the new figure and another see it settled. */
async function backlog(t: TestContext, p: Parts, m: Member, bytes: number): Promise<void> {
  m.session.socket.cork();
  await written(p, m, frame(m.session.firstName, bytes));
  sweep(t, 2);
}

test('process cap as frames are queued: the figure rises with each frame, and the frame that takes the process over has the largest socket backlog cut at once, before any sweep', async (t) => {
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxOutboundBytes: 10_000 }, ['Ann', 'Bob', 'Cat'], 'own');
  await backlog(t, p, a!, 3000);
  await backlog(t, p, b!, 1000);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 4000);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 5000);
  // Cat reads; three frames for it in one turn, no sweep: 9,400, 9,800, then 10,200 over the cap.
  const frames = [frame('c1', 400), frame('c2', 400), frame('c3', 400)];
  p.deliver(c!.session, frames[0]!, undefined, 'server');
  assert.equal(p.backpressure.outboundBytes, 4400, 'counted as it is queued');
  p.deliver(c!.session, frames[1]!, undefined, 'server');
  assert.equal(p.backpressure.outboundBytes, 4800);
  assert.deepEqual(p.cuts, [], 'exactly at the cap');
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 4000, 'published at the end of the turn');
  p.deliver(c!.session, frames[2]!, undefined, 'server');
  assert.deepEqual(names(p.cuts), ['Ann'], 'cut at once: its peer reads nothing, and it holds the most');
  assert.deepEqual(
    warnOf(p).map((f) => [f!.reason, f!.sessionId, f!.backlogBytes]),
    [['memory_cap', a!.session.id, 3000]],
  );
  assert.equal(p.backpressure.outboundBytes, 2200, 'Bob and what is queued for Cat');
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 2200, 'a cut publishes the figure at once');
  assert.deepEqual(await received(c!, 3), frames.map(textOf), 'the reader gets every frame');
  assert.equal(c!.session.open, true);
  // A sweep after the turn finds the process under the cap: nothing more is cut.
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Ann']);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 1000);
  b!.session.socket.uncork();
});

test("process cap: a large frame delivered to many counts once, whatever the sockets that hold it; each member's budget counts it whole", async (t) => {
  const { p, members } = await setup(t, { maxBufferedBytes: 4096, maxOutboundBytes: 100_000 }, ['Ann', 'Bob', 'Cat']);
  for (const m of members) m.session.socket.cork();
  const big = frame('big', 64 * 1024);
  for (const m of members) p.deliver(m.session, big, undefined, 'server');
  assert.equal(p.backpressure.outboundBytes, big.length, 'one buffer, held by three sockets');
  p.deliver(members[0]!.session, frame('small', 100), undefined);
  assert.equal(p.backpressure.outboundBytes, big.length + 100);
  await turn();
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), big.length + 100, 'published at the end of the turn');
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), big.length + 100, 'recounted by the sweep: the same');
  assert.deepEqual(
    members.map((m) => m.session.socket.writableLength - (m === members[0] ? 100 : 0)),
    [big.length, big.length, big.length],
    'what each budget sees',
  );
  assert.deepEqual(p.cuts, [], '3 × 64 KiB would be over the cap; one is not');
  for (const m of members) m.session.socket.uncork();
  for (const m of members) assert.equal(await m.client.next(), textOf(big));
  assert.equal(await members[0]!.client.next(), textOf(frame('small', 100)));
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 0);
});

test('process cap: while every shard together is over it, this shard cuts its largest open backlogs first, just enough', async (t) => {
  const { p, members } = await setup(t, { maxOutboundBytes: 20_000 }, ['Ann', 'Bob', 'Cat', 'Dan'], 'own');
  const [a, b, c, d] = members as [Member, Member, Member, Member];
  for (const [m, size] of [
    [a, 2000],
    [b, 3000],
    [c, 1000],
    [d, 5000],
  ] as const)
    await backlog(t, p, m, size);
  d.session.ws.close(); // closing (its close frame joins its backlog): counted, never a candidate
  const dBacklog = d.session.socket.writableLength;
  sweep(t, 2);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 6000 + dBacklog);
  assert.deepEqual(p.cuts, []);
  // Elsewhere, what brings the process exactly to 20,000 once b (3000) and then a (2000) are cut.
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 19_000 - dBacklog);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob', 'Ann']);
  assert.deepEqual(
    warnOf(p).map((f) => [f!.reason, f!.sessionId, f!.backlogBytes, 'overForMs' in f!]),
    [
      ['memory_cap', b.session.id, 3000, false],
      ['memory_cap', a.session.id, 2000, false],
    ],
  );
  assert.equal(metric(p, Metric.CLOSED_MEMORY_CAP), 2);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 1000 + dBacklog, 'c and the closing d; the cut ones no longer count');
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob', 'Ann']);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 1000 + dBacklog);
  // Over again: c is the only open backlog left; the closing d is not cut though the process stays over.
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 20_000);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob', 'Ann', 'Cat']);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), dBacklog);
  for (const m of members) m.session.socket.uncork();
});

test('process cap: exactly at the cap nothing is cut, one byte over it the largest goes; its own figure is replaced, not added', async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxOutboundBytes: 4000 }, ['Ann', 'Bob'], 'own');
  await backlog(t, p, a!, 1500);
  await backlog(t, p, b!, 1000);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 1500);
  sweep(t, 3);
  assert.deepEqual(p.cuts, []);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 2500);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 1501);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Ann']);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 1000);
  a!.session.socket.uncork();
  b!.session.socket.uncork();
});

test('process cap: the sweep after a backlog grows counts it once', async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxOutboundBytes: 4000 }, ['Ann', 'Bob'], 'own');
  a!.session.socket.cork();
  b!.session.socket.cork();
  await written(p, a!, frame('a', 1500));
  await written(p, b!, frame('b', 1000));
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 1500);
  sweep(t);
  try {
    assert.deepEqual(names(p.cuts), [], 'the process holds exactly 4000 bytes');
  } finally {
    a!.session.socket.uncork();
    b!.session.socket.uncork();
  }
});

test("process cap: sockets holding bytes go first, however large a turn's queue; a member over budget by its queue alone is a candidate after them", async (t) => {
  const {
    p,
    members: [a, b],
  } = await setup(t, { maxBufferedBytes: 100, maxOutboundBytes: 3000 }, ['Ann', 'Bob'], 'own');
  await backlog(t, p, b!, 800);
  // In one turn: a over budget, its 900 bytes only queued; then another shard's figure puts the process 1 byte over.
  p.deliver(a!.session, frame('a1', 900), undefined);
  p.deliver(a!.session, frame('a2', 30), 'k');
  sweep(t);
  assert.deepEqual(p.cuts, []);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 1700);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 1301);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob'], 'its peer is not reading; what is queued for a goes to the kernel at the end of the turn');
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 900);
  // Over again with only a left: its queue alone makes it a candidate.
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 2101);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Bob', 'Ann']);
  assert.deepEqual(
    warnOf(p).map((f) => [f!.reason, f!.backlogBytes]),
    [
      ['memory_cap', 800],
      ['memory_cap', 900],
    ],
  );
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 0, "the cut ones' queued and held bytes are no longer counted");
  assert.deepEqual(await a!.client.waitClosed(), { code: 4008, reason: 'slow consumer' });
  assert.equal(a!.client.pending, 0, 'over a cap, what was queued for it is dropped, not sent');
  b!.session.socket.uncork();
});

test('process cap: a session both backlogged and over budget is one candidate; one that has drained is none', async (t) => {
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxBufferedBytes: 100, maxOutboundBytes: 10_000 }, ['Ann', 'Bob', 'Cat'], 'own');
  await backlog(t, p, a!, 2000);
  p.deliver(a!.session, frame('a-over', 30), undefined); // a: over budget too
  await turn();
  await backlog(t, p, b!, 1000);
  await backlog(t, p, c!, 500);
  c!.session.socket.uncork();
  await received(c!, 1);
  sweep(t, 2); // c holds nothing now
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 3030);
  // 10,001 elsewhere: cutting a (2030) is not enough, b (1000) goes too; the process stays a byte over, but c holds nothing and stays.
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 10_001);
  sweep(t);
  assert.deepEqual(names(p.cuts), ['Ann', 'Bob']);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 0);
  a!.session.socket.uncork();
  b!.session.socket.uncork();
});

test('a session over budget that closes by itself leaves the count once its queue is dropped, at the end of the turn', async (t) => {
  const {
    p,
    members: [a],
  } = await setup(t, { maxBufferedBytes: 100 }, ['Ann']);
  p.deliver(a!.session, frame('a1', 900), undefined);
  p.deliver(a!.session, frame('a2', 30), 'k');
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 900);
  a!.session.ws.close(1000); // what is queued for it will be dropped
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 900, 'still queued until the turn ends');
  await turn();
  sweep(t);
  assert.equal(metric(p, Metric.OUTBOUND_BUFFERED), 0);
  assert.deepEqual(p.cuts, []);
});

test('stop() ends the sweeps; the sweep timer never keeps the process alive', async (t) => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const metrics = new MetricsSlot(createMetricsBuffer(1), 0);
  const out = new WriteCoalescer<Session>(metrics, { pacing: 'off', paceIntervalMs: 32, paceAbove: 200 });
  t.after(() => out.stop());
  const options = {
    maxBufferedBytes: 100,
    slowConsumerTimeoutMs: 1000,
    maxSessionBacklogBytes: 1000,
    maxOutboundBytes: 1000,
    processOutbound: () => 0,
    onRelease: () => {},
  };
  const before = timers();
  const real = new Backpressure(options, out, metrics, recordingLogger(false));
  assert.equal(timers(), before, "unref'd");
  real.stop();
  freeze(t);
  const mocked = new Backpressure(options, out, metrics, recordingLogger(false));
  metrics.set(Metric.OUTBOUND_BUFFERED, 123);
  sweep(t);
  assert.equal(metrics.values[Metric.OUTBOUND_BUFFERED], 0, 'a sweep ran');
  metrics.set(Metric.OUTBOUND_BUFFERED, 123);
  mocked.stop();
  sweep(t, 3);
  assert.equal(metrics.values[Metric.OUTBOUND_BUFFERED], 123, 'no sweep after stop()');
});

test('a backlog of 32 MiB, once back under the budget (not merely at it), asks once for memory to be released; one byte less never does', async (t) => {
  assert.equal(LARGE_BACKLOG_BYTES, 32 * 1024 * 1024);
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxBufferedBytes: 4096 }, ['Ann', 'Bob', 'Cat'], 'own');
  for (const m of [a, b, c]) m!.session.socket.cork();
  await written(p, a!, frame('a', LARGE_BACKLOG_BYTES - 1));
  sweep(t);
  a!.session.socket.destroy();
  sweep(t, 2);
  assert.equal(p.releases.count, 0);
  await written(p, b!, frame('b', LARGE_BACKLOG_BYTES - 4096));
  await written(p, c!, frame('c', 4096));
  sweep(t);
  assert.equal(p.releases.count, 0, 'not while it is large');
  b!.session.socket.destroy();
  sweep(t);
  assert.equal(p.releases.count, 0, 'exactly the budget is not under it');
  c!.session.socket.destroy();
  sweep(t);
  assert.equal(p.releases.count, 1);
  sweep(t, 3);
  assert.equal(p.releases.count, 1, 'once');
});

const membersOf = (p: Parts, desktopId: string) => (p.rooms.get(desktopId)?.members ?? []).map((s) => s.firstName);

test('a delivery returns what became of its session: SENT, HELD (a transient frame over the budget), CUT (over the hard cap); the relay takes a CUT member out of its room itself, no handler called', async (t) => {
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxBufferedBytes: 100, maxSessionBacklogBytes: 1000 }, ['Ann', 'Bob', 'Cat']);
  assert.equal(p.backpressure.deliver(c!.session, frame('sent', 30), undefined), Delivery.SENT);
  assert.equal(await c!.client.next(), textOf(frame('sent', 30)));
  b!.session.socket.cork();
  await written(p, b!, frame('fill', 500));
  assert.equal(p.backpressure.deliver(b!.session, frame('held', 30), 'k'), Delivery.HELD, 'over the budget, under the hard cap');
  assert.equal(p.backpressure.deliver(b!.session, frame('ordered', 30), undefined), Delivery.SENT, 'an ordered frame is written regardless');
  await turn();
  await written(p, b!, frame('more', 600));
  assert.ok(b!.session.socket.writableLength > 1000);
  // Ann's event cuts Bob in the relay's loop: he leaves at once, and Cat, after him in the loop, hears it before the event.
  p.relay.onMessage(a!.session, Buffer.from('{"type":"asset_moved","payload":1}'), false);
  assert.deepEqual(names(p.cuts), ['Bob']);
  assert.deepEqual(p.handled, [], 'the verdict, not the cut handler, took him out');
  assert.deepEqual(membersOf(p, 'desk-1'), ['Ann', 'Cat']);
  assert.match(await a!.client.next(), /^\{"type":"session_left","sessionId":"[^"]+","userId":"[^"]+","firstName":"Bob"/);
  assert.match(await c!.client.next(), /^\{"type":"session_left","sessionId":"[^"]+","userId":"[^"]+","firstName":"Bob"/);
  assert.match(await c!.client.next(), /^\{"type":"asset_moved"/);
  assert.equal(p.backpressure.deliver(b!.session, frame('late', 30), undefined), Delivery.HELD, 'already closing: dropped, not cut again');
  assert.deepEqual(names(p.cuts), ['Bob']);
  b!.session.socket.uncork();
});

test('a session the process cap cuts aside of a delivery waits in the list until the caller settles it, then leaves its room through the cut handler; one cut by its own frame is the verdict', async (t) => {
  freeze(t);
  const p = await shardParts(t, { backpressure: { maxOutboundBytes: 10_000 } });
  const ann = await p.join('Ann', { desktopId: 'desk-A' });
  const dan = await p.join('Dan', { desktopId: 'desk-A' });
  assert.match(await ann.client.next(), /^\{"type":"session_joined"/);
  const bob = await p.join('Bob', { desktopId: 'desk-B' });
  await backlog(t, p, ann, 3000);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 6500);
  // 3000 + 600 + 6500 is over the cap: Ann, the largest backlog, is cut aside of Bob's frame.
  assert.equal(p.backpressure.deliver(bob.session, frame('to-bob', 600), undefined, 'server'), Delivery.SENT);
  assert.deepEqual(names(p.cuts), ['Ann']);
  assert.equal(ann.session.open, false);
  assert.deepEqual([p.handled, membersOf(p, 'desk-A')], [[], ['Ann', 'Dan']], 'nothing was called back from inside the delivery');
  p.backpressure.settleCuts();
  assert.deepEqual(names(p.handled), ['Ann']);
  assert.deepEqual(membersOf(p, 'desk-A'), ['Dan']);
  assert.match(await dan.client.next(), /^\{"type":"session_left","sessionId":"[^"]+","userId":"[^"]+","firstName":"Ann"/);
  p.backpressure.settleCuts();
  assert.deepEqual(names(p.handled), ['Ann'], 'the list was emptied');
  assert.equal(await bob.client.next(), textOf(frame('to-bob', 600)));

  // Bob's own frame takes the process over and he holds the most: his verdict says so, and the list stays empty.
  await backlog(t, p, bob, 3000);
  p.otherShard.set(Metric.OUTBOUND_BUFFERED, 10_000 - p.backpressure.outboundBytes - 100);
  assert.equal(p.backpressure.deliver(bob.session, frame('over', 600), undefined, 'server'), Delivery.CUT);
  assert.deepEqual(names(p.cuts), ['Ann', 'Bob']);
  p.backpressure.settleCuts();
  assert.deepEqual(names(p.handled), ['Ann'], 'the caller, not the handler, takes Bob out');
  assert.deepEqual(membersOf(p, 'desk-B'), ['Bob']);
  ann.session.socket.uncork();
  bob.session.socket.uncork();
});

test('the sweep hands the sessions it cuts to the cut handler once it has cut them all', async (t) => {
  const {
    p,
    members: [a, b, c],
  } = await setup(t, { maxBufferedBytes: 100, slowConsumerTimeoutMs: 1000 }, ['Ann', 'Bob', 'Cat']);
  for (const m of [a!, b!]) {
    m.session.socket.cork();
    await written(p, m, frame(m.session.firstName, overHighWater(m)));
    p.deliver(m.session, frame('o', 30), undefined);
  }
  sweep(t, 9);
  assert.deepEqual(p.handled, []);
  sweep(t);
  assert.deepEqual(names(p.handled), ['Ann', 'Bob']);
  assert.deepEqual(membersOf(p, 'desk-1'), ['Cat']);
  for (const name of ['Ann', 'Bob'])
    assert.match(await c!.client.next(), new RegExp(`^\\{"type":"session_left","sessionId":"[^"]+","userId":"[^"]+","firstName":"${name}"`));
  for (const m of [a!, b!]) m.session.socket.uncork();
});
