/**
 * The shard's write coalescer on real loopback sockets: one write per socket
 * per turn, `flushNow` before a close puts the queue ahead of the close
 * frame, and nothing queued after a session stops being open reaches the
 * wire. (The end-to-end tests cover the same through the server; these pin
 * the ordering within one turn, which the server cannot be made to hit on
 * demand.)
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { WriteCoalescer, type CoalescedTarget } from '../src/shard/write-coalescer.ts';

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

const target = (socket: Socket): CoalescedTarget & { open: boolean } => ({ socket, open: true, queue: [], queuedBytes: 0 });
const frame = (text: string) => Buffer.from(text, 'latin1');
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

test('frames queued in one turn go out in order, as one write per socket', async (t) => {
  const metrics = new MetricsSlot(createMetricsBuffer(0), 0);
  const out = new WriteCoalescer(metrics);
  const a = await socketPair(t);
  const b = await socketPair(t);
  const ta = target(a.local);
  const tb = target(b.local);
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
  const out = new WriteCoalescer(new MetricsSlot(createMetricsBuffer(0), 0));
  const pair = await socketPair(t);
  const session = target(pair.local);
  out.write(session, frame('A'));
  out.write(session, frame('B'));
  // What the relay does before it closes a session itself: flush, then the close frame.
  out.flushNow(session);
  pair.local.write(frame('<close>'));
  session.open = false;
  // Frames produced later in the same turn (say, a broadcast to its room) are dropped.
  out.write(session, frame('C'));
  await nextTurn();
  assert.equal(session.queuedBytes, 0, 'the dropped frame is not kept either');
  pair.local.end();
  assert.equal((await pair.ended).toString('latin1'), 'AB<close>');
});
