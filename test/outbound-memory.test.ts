/**
 * Outbound memory under attack (issue 11, finding 1): one user with
 * sessions that never read must not make the server buffer without bound.
 * A backlog over --max-session-backlog is cut at once; while the process is
 * over --max-outbound-memory the largest backlog goes first; payloads are
 * relayed as sent (never larger); error frames count toward the budget.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { join, rawRequest, type TestClient } from './helpers/client.ts';
import { scrape, sumOf } from './helpers/metrics.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const socketOf = (client: TestClient) => (client.ws as unknown as { _socket: Socket })._socket;
const PAD = 'p'.repeat(3400);

async function serve(t: TestContext, args: string[]): Promise<ServerProcess> {
  const stub = await startPermissionStub(t);
  return startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--rate-limit', '0', '--slow-consumer-timeout', '60s', ...args] });
}

/**
 * Send `count` asset_moved events in steps of `step`, the fast member reading
 * each step before the next is sent: its own backlog stays small (the test
 * process parses JSON slower than the server writes), while the member that
 * stopped reading takes all of it. The fast member must get every event in
 * order, and the session_left of `leaverId` somewhere among them.
 */
async function streamPast(sender: TestClient, reader: TestClient, count: number, leaverId: string, step = 50): Promise<void> {
  let next = 0;
  let left = false;
  for (let sent = 0; sent < count; ) {
    const until = Math.min(count, sent + step);
    for (; sent < until; sent++) sender.send({ type: 'asset_moved', payload: { i: sent, pad: PAD } });
    while (next < until) {
      const frame = await reader.next();
      if (frame.type === 'session_left') {
        assert.equal(frame.sessionId, leaverId);
        left = true;
      } else {
        assert.equal(frame.type, 'asset_moved');
        assert.equal(frame.payload.i, next++, 'the fast member loses nothing');
      }
    }
  }
  while (!left) {
    const frame = await reader.next();
    assert.deepEqual([frame.type, frame.sessionId], ['session_left', leaverId]);
    left = true;
  }
}

/** A room of sender, fast reader and a member that stopped reading. */
async function room(t: TestContext, server: ServerProcess) {
  const id = desktop();
  const { client: sender } = await join(t, server.wsUrl(id), { token: token(user('Sen')) });
  const { client: fast } = await join(t, server.wsUrl(id), { token: token(user('Fas')) });
  const { client: slow, joined } = await join(t, server.wsUrl(id), { token: token(user('Slo')) });
  await sender.expect('session_joined');
  await sender.expect('session_joined');
  await fast.expect('session_joined');
  socketOf(slow).pause();
  return { sender, fast, slow, slowId: joined.sessionId as string };
}

test('a backlog over --max-session-backlog is cut at once with 4008, long before the slow-consumer timeout', async (t) => {
  const server = await serve(t, ['--max-buffered-bytes', '65536', '--max-session-backlog', '262144']);
  const { sender, fast, slow, slowId } = await room(t, server);
  // ~7 MB: more than loopback's kernel buffers take, so the server's own backlog grows.
  await streamPast(sender, fast, 2000, slowId);
  const line = await server.waitForLog((l) => l.event === 'slow_consumer_close' && l.sessionId === slowId);
  assert.equal(line.reason, 'backlog_cap');
  assert.ok((line.overForMs as number) < 5000, `cut after ${line.overForMs} ms over budget, not at the 60 s timeout`);
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_protective_closes_total{reason="backlog_cap"}'), 1);
  assert.equal(metrics.get('moodio_rt_protective_closes_total{reason="slow_consumer"}'), 0);
  assert.equal(metrics.get('moodio_rt_session_backlog_limit_bytes'), 262144);
  // The socket is gone within the grace whatever the peer does, and with it the memory.
  socketOf(slow).resume();
  const closed = await slow.closed;
  assert.ok(closed.code === 4008 || closed.code === 1006, `closed with ${closed.code}`);
  let buffered = Infinity;
  while (buffered > 0) buffered = sumOf((await scrape(server.port)).metrics, 'moodio_rt_outbound_buffered_bytes');
  assert.equal(buffered, 0);
});

test('a member cut by --max-session-backlog in the middle of a relay: every other member, the last joined included, gets every event exactly once', async (t) => {
  const server = await serve(t, ['--max-buffered-bytes', '65536', '--max-session-backlog', '262144']);
  const id = desktop();
  // Joined in this order: the silent member is neither first nor last, so a
  // relay that walked the live member list would skip the member swapped
  // into its slot when it is cut (the last joined).
  const people = ['Sen', 'One', 'Sil', 'Two', 'Thr'];
  const clients: TestClient[] = [];
  let silentId = '';
  for (const name of people) {
    const { client, joined } = await join(t, server.wsUrl(id), { token: token(user(name)) });
    for (const earlier of clients) await earlier.expect('session_joined');
    if (name === 'Sil') silentId = joined.sessionId as string;
    clients.push(client);
  }
  const [sender, one, silent, two, last] = clients as [TestClient, TestClient, TestClient, TestClient, TestClient];
  socketOf(silent).pause();
  const readers = [one, two, last];
  const events = readers.map(() => 0);
  const lefts = readers.map(() => 0);
  // ~7 MB in steps of 20 events (~70 KB), each reader reading every step before the next is sent.
  const count = 2000;
  for (let sent = 0; sent < count; ) {
    const until = Math.min(count, sent + 20);
    for (; sent < until; sent++) sender.send({ type: 'asset_moved', payload: { i: sent, pad: PAD } });
    for (const [r, reader] of readers.entries()) {
      while (events[r]! < until) {
        const frame = await reader.next();
        if (frame.type === 'session_left') {
          assert.equal(frame.sessionId, silentId);
          lefts[r]!++;
          continue;
        }
        assert.equal(frame.type, 'asset_moved');
        assert.equal(frame.payload.i, events[r], `reader ${r + 1} of 3 got event ${frame.payload.i} when ${events[r]} was next`);
        events[r]!++;
      }
    }
  }
  const line = await server.waitForLog((l) => l.event === 'slow_consumer_close' && l.sessionId === silentId);
  assert.equal(line.reason, 'backlog_cap');
  // A marker proves nothing more was on its way: each reader has had every event once, and one session_left.
  sender.send({ type: 'marker' });
  for (const [r, reader] of readers.entries()) {
    let frame = await reader.next();
    if (frame.type === 'session_left' && lefts[r] === 0) {
      lefts[r]!++;
      frame = await reader.next();
    }
    assert.equal(frame.type, 'marker');
  }
  assert.deepEqual(events, [count, count, count]);
  assert.deepEqual(lefts, [1, 1, 1]);
});

test('over --max-outbound-memory the largest backlog is cut first; a smaller one stays', async (t) => {
  const server = await serve(t, [
    '--max-buffered-bytes',
    String(64 << 20),
    '--max-session-backlog',
    String(64 << 20),
    '--max-outbound-memory',
    String(1 << 20),
  ]);
  const big = await room(t, server);
  const small = await room(t, server);
  // A few frames that the kernel takes whole: the small room's slow member holds (almost) nothing.
  for (let i = 0; i < 5; i++) small.sender.send({ type: 'asset_moved', payload: { i } });
  for (let i = 0; i < 5; i++) assert.equal((await small.fast.expect('asset_moved')).payload.i, i);
  await streamPast(big.sender, big.fast, 2000, big.slowId);
  const line = await server.waitForLog((l) => l.event === 'slow_consumer_close' && l.sessionId === big.slowId);
  assert.equal(line.reason, 'memory_cap');
  const { metrics } = await scrape(server.port);
  assert.equal(metrics.get('moodio_rt_protective_closes_total{reason="memory_cap"}'), 1);
  assert.equal(metrics.get('moodio_rt_outbound_buffered_limit_bytes'), 1 << 20);
  // The small room is whole: its slow member reads its five events and the next one.
  socketOf(small.slow).resume();
  for (let i = 0; i < 5; i++) assert.equal((await small.slow.expect('asset_moved')).payload.i, i);
  small.sender.send({ type: 'asset_moved', payload: { after: true } });
  assert.deepEqual((await small.slow.expect('asset_moved')).payload, { after: true });
});

test('a payload is relayed as the client wrote it: never larger than sent, apart from the stamp', async (t) => {
  const server = await serve(t, []);
  const id = desktop();
  const { client: sender } = await join(t, server.wsUrl(id), { token: token(user('Sen')) });
  const { client: reader } = await join(t, server.wsUrl(id), { token: token(user('Rea')) });
  await sender.expect('session_joined');
  const raw: string[] = [];
  reader.ws.on('message', (data: Buffer) => raw.push(data.toString()));
  const payload = `[${Array.from({ length: 500 }, () => '1e20').join(',')}]`;
  sender.send(`{"type":"note","payload":${payload}}`);
  const got = await reader.expect('note');
  assert.equal(got.payload.length, 500);
  const text = raw.find((r) => r.includes('"type":"note"'))!;
  // The room's offset (issue 21) is the last member.
  assert.ok(text.endsWith(`"payload":${payload},"offset":${got.offset}}`), 'the payload text is the one sent');
  const stamp = text.length - `{"type":"note","payload":${payload}}`.length;
  assert.ok(stamp < 400, `the stamp adds ${stamp} bytes`);
});

test('error frames count toward the budget: a session that sends bad frames and never reads is cut', async (t) => {
  const server = await serve(t, ['--max-buffered-bytes', '65536', '--max-session-backlog', '131072']);
  const id = desktop();
  const { client: bystander } = await join(t, server.wsUrl(id), { token: token(user('Bys')) });
  const { client: bad, joined } = await join(t, server.wsUrl(id), { token: token(user('Bad')) });
  await bystander.expect('session_joined');
  socketOf(bad).pause();
  // Each answered with an ~80-byte error frame: ~16 MB of answers, far past the kernel's buffers and the cap.
  const frame = 'x'.repeat(40);
  for (let i = 0; i < 200_000 && bad.ws.readyState === bad.ws.OPEN; i++) bad.ws.send(frame);
  assert.equal((await bystander.expect('session_left', 20_000)).sessionId, joined.sessionId);
  const line = await server.waitForLog((l) => l.event === 'slow_consumer_close' && l.sessionId === joined.sessionId);
  assert.equal(line.reason, 'backlog_cap');
});

test('after a cut the shard gives its buffers back once things settle, without waiting for V8 to need the memory', async (t) => {
  const ADMIN = 'admin-token-0123456789';
  // Cut by the timeout (the hard cap could cut the fast reader too, were the test process slow to read 35 MB).
  const server = await serve(t, [
    '--max-buffered-bytes',
    '65536',
    '--max-session-backlog',
    String(256 << 20),
    '--slow-consumer-timeout',
    '1s',
    '--admin-token',
    ADMIN,
  ]);
  const arrayBuffers = async (): Promise<number> => {
    const res = await rawRequest(server.port, [`GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
    return (JSON.parse(res.body) as { shards: { memory: { arrayBuffers: number } }[] }).shards[0]!.memory.arrayBuffers;
  };
  const before = await arrayBuffers();
  const { sender, fast, slowId } = await room(t, server);
  // ~35 MB through the shard: its frames and slabs are garbage once written.
  await streamPast(sender, fast, 10_000, slowId, 200);
  const during = await arrayBuffers();
  assert.ok(during > before + 16 * 1024 * 1024, `the attack left ${during - before} bytes of array buffers`);
  // The shard is idle from here on: only its own release (3 s after the cut) can free them.
  let now = during;
  const deadline = Date.now() + 15_000;
  while (now > before + 4 * 1024 * 1024 && Date.now() < deadline) now = await arrayBuffers();
  assert.ok(now <= before + 4 * 1024 * 1024, `${now - before} bytes of array buffers still held 15 s later`);
});
