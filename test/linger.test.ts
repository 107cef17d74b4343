/**
 * Answered sockets (404, 401, 503 …) are drained until the client closes,
 * but only until an absolute deadline, and only so many at once per thread:
 * a client that keeps dribbling bytes after its answer cannot hold a socket.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LINGER_MS, MAX_LINGERING } from '../src/linger.ts';
import { rawRequest } from './helpers/client.ts';
import { count, Crowd, type IdleSocket } from './helpers/idle.ts';
import { scrape } from './helpers/metrics.ts';
import { startServer } from './helpers/server.ts';

const NOT_FOUND = 'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n';
/** Timer and scheduling slack on a loaded CI machine. */
const MARGIN_MS = 1000;

test('clients that dribble bytes after their 404 are all closed at the deadline; /health still answers', async (t) => {
  // No address limit: 200 heads from 127.0.0.1 may be pending at once.
  const server = await startServer(t, { workers: 1, args: ['--max-pending-per-address', '0'] });
  const crowd = new Crowd(t);
  // allowHalfOpen: the server's FIN does not make our side close, as it would not for an attacker.
  const dribblers = await crowd.open(server.port, 200, { write: NOT_FOUND, allowHalfOpen: true });
  await crowd.until(() => dribblers.every((s) => s.received.includes('\r\n\r\n')), 10_000, 'every dribbler was answered');
  for (const s of dribblers) assert.match(s.received, /^HTTP\/1\.1 404 /);
  const dribble = setInterval(() => {
    for (const s of dribblers) if (s.closedAt === 0) s.socket.write('x');
  }, 100);
  t.after(() => clearInterval(dribble));

  const health = await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n']);
  assert.equal(health.status, 200);
  await crowd.until(() => dribblers.every((s) => s.closedAt !== 0), LINGER_MS + MARGIN_MS + 3000, 'the server closed every dribbler');
  clearInterval(dribble);
  const late = dribblers.filter((s) => s.closedAt - s.answeredAt > LINGER_MS + MARGIN_MS);
  assert.deepEqual(
    late.map((s) => Math.round(s.closedAt - s.answeredAt)),
    [],
    'closed within the deadline',
  );
  const { metrics } = await scrape(server.port);
  assert.ok(metrics.get('moodio_rt_lingering_cut_total')! >= 200);
});

test(`at most ${MAX_LINGERING} answered sockets linger per thread: the oldest are cut first`, async (t) => {
  const server = await startServer(t, { workers: 1, args: ['--max-pending-per-address', '0'] });
  const crowd = new Crowd(t);
  const total = MAX_LINGERING + 76;
  const answered: IdleSocket[] = [];
  // In waves, so that the pending table never fills (it would shed heads not yet read).
  for (let wave = 0; answered.length < total; wave++) {
    const sockets = await crowd.open(server.port, Math.min(100, total - answered.length), { write: NOT_FOUND, allowHalfOpen: true });
    await crowd.until(() => sockets.every((s) => s.received !== ''), 10_000, `wave ${wave} was answered`);
    answered.push(...sockets);
  }
  const { metrics } = await scrape(server.port);
  assert.ok(metrics.get('moodio_rt_lingering_sockets{shard="primary"}')! <= MAX_LINGERING);
  assert.ok(metrics.get('moodio_rt_lingering_cut_total')! >= total - MAX_LINGERING, `cut: ${metrics.get('moodio_rt_lingering_cut_total')}`);
  // Our side learns of a cut (an RST) only when it next writes.
  const dribble = setInterval(() => {
    for (const s of answered) if (s.closedAt === 0) s.socket.write('x');
  }, 100);
  t.after(() => clearInterval(dribble));
  await crowd.until(() => count(answered, (s) => s.closedAt !== 0) >= total - MAX_LINGERING, 5000, 'the surplus was closed');
  // The first cut were among the first answered (two waves), not the latest.
  const firstClosed = answered
    .map((s, i) => ({ i, at: s.closedAt }))
    .filter((s) => s.at !== 0)
    .sort((a, b) => a.at - b.at)
    .slice(0, total - MAX_LINGERING)
    .map((s) => s.i);
  assert.ok(
    firstClosed.every((i) => i < 200),
    `closed first: ${firstClosed.slice(0, 10)}…`,
  );
  assert.equal((await rawRequest(server.port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'])).status, 200);
  await crowd.until(() => answered.every((s) => s.closedAt !== 0), LINGER_MS + MARGIN_MS + 3000, 'every answered socket was closed');
  clearInterval(dribble);
});
