/**
 * The authorize calls of the multiplexed route are bounded per worker as the
 * desktop route's permission lookups are: --permission-concurrency calls at
 * the app, --permission-queue more waiting for one of its connections, and
 * past that a subscribe is refused at once, naming its topic and ref,
 * instead of queueing without bound in front of an app that does not answer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { scrape } from './helpers/metrics.ts';
import { grant, startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics } from './helpers/topics.ts';
import { TopicErrorCode } from '../src/protocol/topics.ts';

const CONCURRENCY = 2;
const QUEUE = 3;
const USERS = 12;
const TOPICS_PER_USER = 4;

test('an authorize storm against an app that never answers: at most --permission-concurrency calls at the app, --permission-queue more waiting, the rest refused at once; legacy sessions unaffected', async (t) => {
  const stub = await startPermissionStub(t);
  // The authorize endpoint never answers within the test; the desktop permission endpoint does.
  stub.handle((req, res) => (req.endpoint === 'authorize' ? 'hang' : grant('editor')(req, res)));
  const server = await startServer(t, {
    workers: 1,
    permissionApiBase: stub.base,
    args: ['--permission-concurrency', String(CONCURRENCY), '--permission-queue', String(QUEUE), '--permission-timeout', '30s'],
  });

  const conns: TestClient[] = [];
  for (let i = 0; i < USERS; i++) conns.push(await connectTopics(t, server, token(user(`Sto${i}`))));
  // Every frame any storming connection gets, as it comes.
  const total = USERS * TOPICS_PER_USER;
  const admitted = CONCURRENCY + QUEUE;
  const refusals: Frame[] = [];
  const allRefused = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${refusals.length} of ${total - admitted} refusals within 5 s`)), 5000);
    for (const conn of conns) {
      conn.ws.on('message', (data) => {
        refusals.push(JSON.parse(data.toString()) as Frame);
        if (refusals.length === total - admitted) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
  });
  const started = Date.now();
  // Distinct (user, topic) pairs: no two lookups are identical, so none shares another's call.
  const asked = new Map<string, string>();
  conns.forEach((conn, i) => {
    for (let k = 0; k < TOPICS_PER_USER; k++) {
      const topic = `desktop:${desktop(`storm${i}x${k}`)}`;
      const ref = `r${i}-${k}`;
      asked.set(ref, topic);
      conn.send({ op: 'subscribe', topic, ref });
    }
  });
  await allRefused;
  const elapsed = Date.now() - started;
  assert.equal(refusals.length, total - admitted);
  for (const frame of refusals) {
    assert.equal(frame.op, 'error', JSON.stringify(frame));
    assert.equal(frame.code, TopicErrorCode.INTERNAL);
    assert.equal(frame.topic, asked.get(frame.ref), 'the refusal names the topic of its subscribe');
    assert.match(frame.message, /busy/);
  }
  assert.equal(new Set(refusals.map((f) => f.ref)).size, refusals.length, 'one refusal per subscribe');
  t.diagnostic(`${refusals.length} subscribes refused ${elapsed} ms after the storm began`);
  assert.ok(elapsed < 5000, `refused at once (${elapsed} ms), not after the 30 s timeout`);

  // Other users' legacy sessions keep working meanwhile (their lookups have their own bound).
  const room = desktop('calm');
  const { client: ann } = await join(t, server.wsUrl(room), { token: token(user('Ann')) });
  const { client: bob } = await join(t, server.wsUrl(room), { token: token(user('Bob')) });
  await ann.expect('session_joined');
  bob.send({ type: 'asset_moved', payload: { x: 1 } });
  assert.deepEqual((await ann.expect('asset_moved')).payload, { x: 1 });

  // The app saw exactly the calls the pool's connections carry; the queued ones never left.
  const authorizeCalls = stub.requests.filter((r) => r.endpoint === 'authorize');
  assert.equal(authorizeCalls.length, CONCURRENCY);
  assert.equal((await scrape(server.port)).metrics.get('moodio_rt_permission_lookups_total{outcome="queue_full"}'), total - admitted);
  assert.equal(refusals.length, total - admitted, 'no other frame reached a storming connection');
});
