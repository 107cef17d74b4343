/**
 * The head reader's schedule, exactly, with the clock in the test's hands:
 * setTimeout and Date are mocked, and the test advances time a millisecond
 * at a time, letting the event loop turn a few times at each step (the
 * reader's next-turn polls are real setImmediates, and so is the socket's
 * I/O), writing from the client between steps. So when each poll happens, how many reads a head
 * cost, when a dribbled head is cut and when a silent one times out are
 * all exact. test/head-reader.test.ts checks the reader on real time.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { HEAD_RATE_GRACE_MS, MIN_HEAD_BYTES_PER_SECOND, readHead, type HeadReadResult, type PendingHead } from '../src/primary/head-reader.ts';
import { adoptSocket } from '../src/shard/adopt-socket.ts';

const T0 = 1_000_000;
const HEAD = 'GET /ws/desktop/abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n';

interface Reading {
  client: Socket;
  accepted: Socket;
  pending: PendingHead;
  /** The result and the mocked time (ms since the read started) it came at; null until then. */
  result: () => { at: number; value: HeadReadResult } | null;
  /** Advance the clock 1 ms at a time until `ms` after the start (or the result, if `untilResult`). */
  to(ms: number, untilResult?: boolean): Promise<void>;
}

const mocked = new WeakSet<TestContext>();
const turns = async (n = 3) => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};

/** A connected pair, then the clock frozen (at T0, for the test's first), then readHead on the server side. */
async function reading(t: TestContext, options: { maxBytes?: number; timeoutMs?: number } = {}, before?: string): Promise<Reading> {
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  client.on('error', () => {});
  const [socket] = await accepted;
  await once(client, 'connect');
  t.after(() => {
    client.destroy();
    socket.destroy();
    server.close();
  });
  if (before !== undefined) {
    // On loopback the write reaches the receive queue at once; the turn is a margin.
    client.write(before);
    await turns();
  }
  if (!mocked.has(t)) {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: T0 });
    mocked.add(t);
  }
  const start = Date.now();
  let result: { at: number; value: HeadReadResult } | null = null;
  const pending = readHead(socket, { maxBytes: options.maxBytes ?? 8192, timeoutMs: options.timeoutMs ?? 10_000 }, (value) => {
    assert.equal(result, null, 'called back once');
    result = { at: Date.now() - start, value };
  });
  return {
    client,
    accepted: socket,
    pending,
    result: () => result,
    async to(ms, untilResult = false) {
      await turns();
      while (Date.now() - start < ms && !(untilResult && result !== null)) {
        t.mock.timers.tick(1);
        await turns();
      }
    },
  };
}

// When the reader polls a silent socket, in ms from its start: the first read runs
// in readHead itself, two on the next loop turns, four 1 ms apart, then 2, 2, 4, 8 …
// 64 ms apart, then every 100 ms.
const POLLS = [0, 0, 0, 1, 2, 3, 4, 6, 8, 12, 20, 36, 68, 132, 232, 332, 432, 532];

test('a silent socket is polled on the schedule: next turns, 1 ms apart for 4 ms, then doubling up to every 100 ms', async (t) => {
  for (const writeAt of [1, 5, 7, 13, 140, 500]) {
    const r = await reading(t);
    await r.to(writeAt);
    r.client.write(HEAD);
    await r.to(1000, true);
    const foundAt = POLLS.find((p) => p > writeAt)!;
    // The poll that finds it is the n-th read; a head found whole costs no further read.
    assert.deepEqual(
      r.result(),
      { at: foundAt, value: { kind: 'head', bytes: Buffer.from(HEAD), headLength: HEAD.length, polls: POLLS.indexOf(foundAt) + 1 } },
      `written at ${writeAt} ms`,
    );
  }
});

test('a head already there is read by readHead itself, before it returns', async (t) => {
  const r = await reading(t, {}, HEAD + 'early');
  assert.deepEqual(r.result(), { at: 0, value: { kind: 'head', bytes: Buffer.from(HEAD + 'early'), headLength: HEAD.length, polls: 1 } });
  assert.equal(r.pending.received, HEAD.length + 5);
});

test('a read that makes progress steps the schedule back two steps, not to the start', async (t) => {
  const r = await reading(t);
  await r.to(10);
  r.client.write(HEAD.slice(0, 20));
  await r.to(12); // the poll at 12 ms reads 20 bytes: the schedule steps back from 8 ms to 2 ms
  assert.equal(r.pending.received, 20);
  r.client.write(HEAD.slice(20));
  await r.to(100, true);
  // Reads: the 9 polls up to 8 ms, two at 12 ms (the piece, then nothing), one at 14 ms.
  assert.deepEqual(r.result(), { at: 14, value: { kind: 'head', bytes: Buffer.from(HEAD), headLength: HEAD.length, polls: 12 } });
});

test('an end of head split over two reads (…\\r\\n\\r | \\n) is found', async (t) => {
  const r = await reading(t);
  const cut = HEAD.length - 1;
  r.client.write(HEAD.slice(0, cut));
  await r.to(1);
  assert.equal(r.pending.received, cut);
  r.client.write(HEAD.slice(cut));
  await r.to(100, true);
  assert.equal(r.result()!.value.kind, 'head');
  assert.deepEqual(r.result()!.value, {
    kind: 'head',
    bytes: Buffer.from(HEAD),
    headLength: HEAD.length,
    polls: (r.result()!.value as { polls: number }).polls,
  });
});

test('a head larger than the 16 KiB scratch buffer is read whole when maxBytes allows it; maxBytes without an end is too-large', async (t) => {
  const big = HEAD.replace('\r\n\r\n', `\r\nX-Pad: ${'p'.repeat(18_000)}\r\n\r\n`);
  const r = await reading(t, { maxBytes: 20_000 }, big);
  assert.deepEqual(r.result()?.value, { kind: 'head', bytes: Buffer.from(big), headLength: big.length, polls: 1 });
  const over = await reading(t, { maxBytes: 512 });
  over.client.write(`GET / HTTP/1.1\r\nX: ${'a'.repeat(300)}`);
  await over.to(1);
  assert.equal(over.result(), null);
  over.client.write('a'.repeat(300));
  await over.to(100, true);
  assert.deepEqual(over.result()?.value, { kind: 'too-large' });
  // Exactly maxBytes, ending the head: read, not too large.
  const exact = await reading(t, { maxBytes: HEAD.length });
  exact.client.write(HEAD.slice(0, 10));
  await exact.to(1);
  exact.client.write(HEAD.slice(10));
  await exact.to(100, true);
  assert.equal(exact.result()?.value.kind, 'head');
});

test(`a started head must keep up ${MIN_HEAD_BYTES_PER_SECOND} B/s once ${HEAD_RATE_GRACE_MS} ms passed since its first byte: judged from exactly then, and exactly that rate passes`, async (t) => {
  // The first byte is read at 232 ms; after it, polls at 296 ms and every 100 ms. pollNow() at 2231 and 2232 ms
  // (1999 and 2000 ms after the first byte) puts a judgement on each side of the grace.
  for (const [bytes, cutAt] of [
    [2047, 2232],
    [2048, 2332],
  ] as const) {
    const r = await reading(t);
    await r.to(140);
    r.client.write(`GET / HTTP/1.1\r\nX: ${'a'.repeat(bytes - 19)}`);
    await r.to(2231);
    r.pending.pollNow();
    assert.equal(r.result(), null, `${bytes} bytes at 1999 ms: within the grace`);
    await r.to(2232);
    r.pending.pollNow();
    await r.to(3000, true);
    assert.deepEqual(r.result(), { at: cutAt, value: { kind: 'too-slow', received: bytes } }, `${bytes} bytes`);
  }
  // A head that starts slowly is not judged before the grace either.
  const slow = await reading(t);
  await slow.to(140);
  slow.client.write('GET / HTTP/1.1\r\n');
  await slow.to(3000, true);
  assert.deepEqual(slow.result(), { at: 2296, value: { kind: 'too-slow', received: 16 } });
});

test('a silent socket times out at exactly timeoutMs, counting what was received; a partial head too', async (t) => {
  const silent = await reading(t, { timeoutMs: 150 });
  await silent.to(1000, true);
  assert.deepEqual(silent.result(), { at: 150, value: { kind: 'timeout', received: 0 } });
  const partial = await reading(t, { timeoutMs: 1500 }, 'GET / HTTP/1.1\r\n');
  await partial.to(5000, true);
  assert.deepEqual(partial.result(), { at: 1500, value: { kind: 'timeout', received: 16 } });
});

test('closed: the peer ends or resets, or the socket is destroyed; pollNow reads at once and a finished read never calls back again', async (t) => {
  const ended = await reading(t);
  ended.client.end('GET / HT');
  await ended.to(50, true);
  assert.deepEqual(ended.result()?.value, { kind: 'closed', received: 8 });

  const reset = await reading(t);
  reset.client.write('GET / HT');
  await reset.to(1);
  reset.client.resetAndDestroy();
  await new Promise((resolve) => reset.client.once('close', resolve));
  await reset.to(500, true);
  assert.deepEqual(reset.result(), { at: 2, value: { kind: 'closed', received: 8 } }, 'at the next poll');

  const destroyed = await reading(t);
  await destroyed.to(3);
  destroyed.accepted.destroy();
  destroyed.pending.pollNow();
  assert.deepEqual(destroyed.result(), { at: 3, value: { kind: 'closed', received: 0 } });
  destroyed.pending.pollNow();
  await destroyed.to(200);

  const now = await reading(t);
  await now.to(140);
  now.client.write(HEAD);
  now.pending.pollNow();
  assert.deepEqual(now.result()?.at, 140, 'read at once, not at the next poll (232 ms)');
  now.pending.pollNow();
  await now.to(1000);
});

test('cancel() stops the polls: no call back, even at the deadline', async (t) => {
  const r = await reading(t, { timeoutMs: 300 });
  await r.to(50);
  r.pending.cancel();
  r.client.write(HEAD);
  await r.to(1000);
  assert.equal(r.result(), null);
  r.pending.pollNow();
  assert.equal(r.result(), null);
});

test('what the kernel answers a read: EAGAIN polls on; reset, broken pipe, not connected, timed out or a bad descriptor is closed; anything else is an error', async (t) => {
  const real = fs.readSync;
  const answer = (code: string | null) => {
    fs.readSync =
      code === null
        ? real
        : ((() => {
            throw Object.assign(new Error(`injected ${code}`), { code });
          }) as typeof fs.readSync);
    syncBuiltinESMExports();
  };
  t.after(() => answer(null));
  for (const code of ['ECONNRESET', 'EPIPE', 'ENOTCONN', 'ETIMEDOUT', 'EBADF']) {
    const r = await reading(t); // readHead's own read found nothing
    answer(code);
    await r.to(10, true);
    answer(null);
    assert.deepEqual(r.result(), { at: 0, value: { kind: 'closed', received: 0 } }, code);
  }
  for (const code of ['EAGAIN', 'EWOULDBLOCK']) {
    const r = await reading(t);
    answer(code);
    await r.to(10);
    answer(null);
    assert.equal(r.result(), null, code);
    r.client.write(HEAD);
    await r.to(100, true);
    assert.equal(r.result()?.value.kind, 'head', code);
  }
  const r = await reading(t);
  answer('EIO');
  await r.to(10, true);
  answer(null);
  const result = r.result();
  assert.equal(result?.value.kind, 'error');
  assert.equal((result!.value as { error: NodeJS.ErrnoException }).error.code, 'EIO');
});

test('pollNow right after readHead takes the place of its next-turn poll: the schedule goes on as before, not twice', async (t) => {
  const r = await reading(t);
  r.pending.pollNow();
  await r.to(140);
  r.client.write(HEAD);
  await r.to(1000, true);
  assert.deepEqual(r.result(), { at: 232, value: { kind: 'head', bytes: Buffer.from(HEAD), headLength: HEAD.length, polls: 15 } });
});

test("a socket whose handle was handed on reads nothing more: closed, and the bytes are the new owner's", async (t) => {
  const r = await reading(t);
  await r.to(5);
  r.client.write(HEAD);
  const adopted = adoptSocket(r.accepted);
  t.after(() => adopted.destroy());
  r.pending.pollNow();
  assert.deepEqual(r.result(), { at: 5, value: { kind: 'closed', received: 0 } });
  adopted.resume();
  const [data] = (await once(adopted, 'data')) as [Buffer];
  assert.equal(data.toString(), HEAD);
});

test('the reader never takes more than maxBytes from the socket: what follows stays for whoever reads next', async (t) => {
  const extra = 'early-frame-bytes-0123456789';
  const r = await reading(t, { maxBytes: HEAD.length + 10 });
  r.client.write(HEAD.slice(0, 5));
  await r.to(1);
  assert.equal(r.pending.received, 5);
  r.client.write(HEAD.slice(5) + extra);
  await r.to(100, true);
  assert.deepEqual(r.result()?.value, {
    kind: 'head',
    bytes: Buffer.from(HEAD + extra.slice(0, 10)),
    headLength: HEAD.length,
    polls: (r.result()!.value as { polls: number }).polls,
  });
  const next = readHead(r.accepted, { maxBytes: 100, timeoutMs: 1000 }, () => {});
  assert.equal(next.received, extra.length - 10);
  next.cancel();
});

test('the minimum rate counts from the first byte of the head, not from its latest piece', async (t) => {
  const r = await reading(t);
  await r.to(140);
  r.client.write('GET / HTTP/1.1\r\n');
  for (let at = 400; at < 3000 && r.result() === null; at += 300) {
    await r.to(at, true);
    if (r.result() === null) r.client.write('X');
  }
  await r.to(3000, true);
  const result = r.result();
  assert.equal(result?.value.kind, 'too-slow');
  assert.ok(result!.at >= 2232 && result!.at <= 2332, `cut at ${result!.at} ms`);
});

test('cancel() leaves no timer behind', async (t) => {
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  const [socket] = await accepted;
  t.after(() => {
    client.destroy();
    socket.destroy();
    server.close();
  });
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  const pending = readHead(socket, { maxBytes: 8192, timeoutMs: 10_000 }, () => assert.fail('called back'));
  // Past its next-turn polls, the reader waits on a timer.
  while (timers() === before) await new Promise((resolve) => setImmediate(resolve));
  pending.cancel();
  assert.equal(timers(), before);
});
