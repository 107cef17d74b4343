/**
 * primary/head-reader.ts in isolation, on real loopback sockets: the head is
 * read from the descriptor, and the socket can still be transferred to a
 * worker thread afterwards (the whole point of the module).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, Socket, type AddressInfo, type Server } from 'node:net';
import { test, type TestContext } from 'node:test';
import { Worker } from 'node:worker_threads';
import { HeadReaderUnsupportedError } from '../src/errors.ts';
import { HEAD_RATE_GRACE_MS, readHead, type HeadReadResult } from '../src/primary/head-reader.ts';

const HEAD = 'GET /ws/desktop/abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n';

interface Harness {
  /** The client side. */
  client: Socket;
  /** The server side, never read by libuv. */
  accepted: Socket;
}

async function pair(t: TestContext): Promise<Harness> {
  const server: Server = createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const acceptedP = once(server, 'connection') as Promise<[Socket]>;
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => {});
  const [accepted] = await acceptedP;
  t.after(() => {
    client.destroy();
    accepted.destroy();
  });
  return { client, accepted };
}

function read(socket: Socket, maxBytes = 8192, timeoutMs = 2000): Promise<HeadReadResult> {
  return new Promise((resolve) => readHead(socket, { maxBytes, timeoutMs }, resolve));
}

test('reads a head sent in one write, and the socket is still transferable to a worker', async (t) => {
  const { client, accepted } = await pair(t);
  client.write(HEAD);
  const result = await read(accepted);
  assert.equal(result.kind, 'head');
  if (result.kind !== 'head') return;
  assert.equal(result.bytes.toString(), HEAD);
  assert.equal(result.headLength, HEAD.length);

  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.once('message', ({ socket }) => {
       socket.on('data', (d) => socket.end('worker saw: ' + d));
       socket.resume();
     });`,
    { eval: true },
  );
  t.after(() => worker.terminate());
  worker.postMessage({ socket: accepted }, [accepted as never]);
  client.write('hello');
  const chunks: Buffer[] = [];
  client.on('data', (c: Buffer) => chunks.push(c));
  await once(client, 'end');
  assert.equal(Buffer.concat(chunks).toString(), 'worker saw: hello');
});

test('reassembles a head that arrives in pieces', async (t) => {
  const { client, accepted } = await pair(t);
  const pending = read(accepted);
  for (const piece of [HEAD.slice(0, 10), HEAD.slice(10, 40), HEAD.slice(40)]) {
    await new Promise((r) => setTimeout(r, 15));
    client.write(piece);
  }
  const result = await pending;
  assert.equal(result.kind, 'head');
  if (result.kind === 'head') assert.equal(result.bytes.toString(), HEAD);
});

test('keeps the bytes that follow the head and says where the head ends', async (t) => {
  const { client, accepted } = await pair(t);
  client.write(HEAD + 'EARLY');
  const result = await read(accepted);
  assert.equal(result.kind, 'head');
  if (result.kind !== 'head') return;
  assert.equal(result.headLength, HEAD.length);
  assert.equal(result.bytes.subarray(result.headLength).toString(), 'EARLY');
});

test('gives up with too-large after maxBytes without an end of head', async (t) => {
  const { client, accepted } = await pair(t);
  client.write('GET / HTTP/1.1\r\nX: ' + 'a'.repeat(600));
  assert.deepEqual(await read(accepted, 512), { kind: 'too-large' });
});

test('times out a client that stops mid-head, counting what it sent', async (t) => {
  const { client, accepted } = await pair(t);
  client.write('GET / HTTP/1.1\r\n');
  const started = Date.now();
  assert.deepEqual(await read(accepted, 8192, 150), { kind: 'timeout', received: 16 });
  assert.ok(Date.now() - started >= 140);
});

test('reports closed when the peer hangs up before the head is complete', async (t) => {
  const { client, accepted } = await pair(t);
  const pending = read(accepted);
  client.end('GET / HT');
  assert.deepEqual(await pending, { kind: 'closed', received: 8 });
});

test('reports closed when the socket is destroyed locally while waiting', async (t) => {
  const { accepted } = await pair(t);
  const pending = read(accepted);
  accepted.destroy();
  assert.equal((await pending).kind, 'closed');
});

test('a cancelled read never calls back and leaves the data for the next reader', async (t) => {
  const { client, accepted } = await pair(t);
  let called = false;
  const first = readHead(accepted, { maxBytes: 8192, timeoutMs: 2000 }, () => (called = true));
  first.cancel();
  client.write(HEAD);
  const result = await read(accepted);
  assert.equal(called, false);
  assert.equal(result.kind, 'head');
});

test('a socket without a descriptor is refused with a typed error', () => {
  assert.throws(
    () => readHead(new Socket(), { maxBytes: 10, timeoutMs: 10 }, () => {}),
    (err: unknown) => {
      assert.ok(err instanceof HeadReaderUnsupportedError);
      assert.equal(err.code, 'ERR_HEAD_READER_UNSUPPORTED');
      return true;
    },
  );
});

test('the head bytes own an exact-size ArrayBuffer (postMessage clones the whole ArrayBuffer)', async (t) => {
  const { client, accepted } = await pair(t);
  client.write(HEAD);
  const result = await read(accepted);
  assert.equal(result.kind, 'head');
  if (result.kind === 'head') assert.equal(result.bytes.buffer.byteLength, HEAD.length);
});

test('a head in many small pieces does not pull polling back to every loop turn', async (t) => {
  const { client, accepted } = await pair(t);
  const head = HEAD.replace('\r\n\r\n', `\r\nX-Pad: ${'p'.repeat(600)}\r\n\r\n`);
  const pending = read(accepted);
  const size = Math.ceil(head.length / 20);
  for (let i = 0; i < head.length; i += size) {
    await new Promise((r) => setTimeout(r, 25));
    client.write(head.slice(i, i + size));
  }
  const result = await pending;
  assert.equal(result.kind, 'head');
  // Restarting the schedule at every piece polled ~11 times per 25 ms gap (220 in all);
  // stepping back two steps settles at about three polls per piece (~70).
  if (result.kind === 'head') assert.ok(result.polls <= 120, `${result.polls} polls for 20 pieces`);
});

test(`a head that stops arriving is cut as too-slow after ${HEAD_RATE_GRACE_MS} ms, before its timeout`, async (t) => {
  const { client, accepted } = await pair(t);
  client.write('GET / HTTP/1.1\r\n');
  const started = Date.now();
  assert.deepEqual(await read(accepted, 8192, HEAD_RATE_GRACE_MS * 3), { kind: 'too-slow', received: 16 });
  const took = Date.now() - started;
  assert.ok(took >= HEAD_RATE_GRACE_MS - 50 && took < HEAD_RATE_GRACE_MS + 500, `${took} ms`);
});
