/**
 * The SDK's resume against the real server (primary + 1 shard, the real
 * permission stub): a client is sent away (the server API disconnects its
 * user, `4001`) and held away (its token function waits), while a peer and
 * the server API send events; a legacy observer sees them land. Let back,
 * the client resumes by itself, gets exactly what it missed, in order,
 * then `recovered` with the count, then live events; on both routes
 * (`connect()` on /ws/desktop/{id}, a topic of `connectTopics()`). A shard
 * restart is a new epoch: `gap`, and no replay.
 * The wire itself is tested in test/recovery.test.ts; the SDK's logic, with
 * a fake relay, in test/client-resume.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { connect, connectTopics, type MoodioClient, type RelayedEvent, type Topic, type WebSocketConstructor } from '../src/client/index.ts';
import { api, API_KEY } from './helpers/api.ts';
import { join, rawRequest, type TestClient } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WS = WebSocket as unknown as WebSocketConstructor;
const ADMIN = 'admin-token-resume-0123456789';
const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--admin-token', ADMIN] });
});
after(() => cleanup.run());

/** What the app sees, in order; `until()` waits (bounded) for a condition on it. */
class Seen {
  readonly log: string[] = [];
  private readonly waiters = new Set<() => void>();

  push(entry: string): void {
    this.log.push(entry);
    for (const wake of [...this.waiters]) wake();
  }

  until(done: (log: string[]) => boolean, what: string, boundMs = 15_000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (done(this.log)) return resolve();
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        reject(new Error(`not seen within ${boundMs} ms: ${what}; seen ${JSON.stringify(this.log)}`));
      }, boundMs);
      const wake = () => {
        if (!done(this.log)) return;
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      this.waiters.add(wake);
    });
  }

  has(entry: string): Promise<void> {
    return this.until((log) => log.includes(entry), entry);
  }
}

/** A user whose token function can be held: while held, the client stays away. */
function heldUser(name: string) {
  const claims = user(name);
  let gate: Promise<void> | null = null;
  let open = () => {};
  return {
    userId: claims.userId,
    token: async () => {
      if (gate) await gate;
      return token(claims);
    },
    hold() {
      gate = new Promise((resolve) => {
        open = () => {
          gate = null;
          resolve();
        };
      });
    },
    release: () => open(),
  };
}

/** Note what the resume is about: events (by their `n`), `recovered`, `gap`; and that offsets only grow. */
function watch(target: MoodioClient | Topic, seen: Seen): void {
  let last = -1;
  target.onAnyEvent((e: RelayedEvent) => {
    if (e.type !== 'note') return;
    assert.ok(typeof e.offset === 'number' && e.offset > last, `offset ${e.offset} after ${last}`);
    last = e.offset;
    seen.push(`event ${(e.payload as { n: unknown }).n}`);
  });
  const on = target.on.bind(target) as (name: string, handler: (value: never) => void) => () => void;
  on('recovered', (r: { count: number }) => seen.push(`recovered ${r.count}`));
  on('gap', (g: { from: unknown }) => {
    last = -1; // a new epoch numbers from its own start
    seen.push(`gap${g.from === null ? ' (no position)' : ''}`);
  });
}

/** Resolves once `client` is open (at once if it is). */
function opened(client: MoodioClient): Promise<void> {
  return new Promise((resolve) => (client.state === 'open' ? resolve() : client.on('state', (s) => s === 'open' && resolve())));
}

/** A legacy observer's frames until `count` notes have arrived: the server has stamped them all. */
async function notesSeen(observer: TestClient, count: number): Promise<void> {
  for (let seen = 0; seen < count; ) if ((await observer.next(10_000)).type === 'note') seen++;
}

/** Send Ann away and keep her away; Bob and the server API send 6 notes, which the observer sees; then let her back. */
async function awayWhileSent(ann: ReturnType<typeof heldUser>, bob: MoodioClient, desk: string, observer: TestClient): Promise<void> {
  ann.hold();
  const res = await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/disconnect`);
  assert.equal(res.status, 202);
  for (let n = 2; n <= 6; n++) bob.send('note', { n });
  assert.equal((await api(server, 'POST', `desktops/${desk}/events`, { type: 'note', payload: { n: 'api' } })).status, 202);
  await notesSeen(observer, 6);
  ann.release();
}

test('connect(): back after a drop, it resumes by itself: exactly the 6 events it missed, in order, then recovered, then live ones', async (t) => {
  const desk = desktop('sdk-resume');
  const ann = heldUser('Ann');
  const seen = new Seen();
  const client = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: desk, token: ann.token, WebSocket: WS });
  t.after(() => client.close());
  watch(client, seen);
  const bob = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: desk, token: token(user('Bob')), WebSocket: WS });
  t.after(() => bob.close());
  const { client: observer } = await join(t, server.wsUrl(desk), { token: token(user('Obs')) });
  await opened(bob);
  bob.send('note', { n: 1 });
  await seen.has('event 1');
  await notesSeen(observer, 1);
  const before = client.resumePosition;
  assert.ok(before !== null && before.offset > 0, 'a position after the first event');

  await awayWhileSent(ann, bob, desk, observer);
  await seen.has('recovered 6');
  bob.send('note', { n: 'live' });
  await seen.has('event live');
  assert.deepEqual(seen.log, ['event 1', 'event 2', 'event 3', 'event 4', 'event 5', 'event 6', 'event api', 'recovered 6', 'event live']);
  assert.equal(client.resumePosition?.epoch, before.epoch);
});

test('connectTopics(): a topic resumes by itself (recover): exactly the 6 events it missed, in order, then recovered, then live ones', async (t) => {
  const desk = desktop('sdk-recover');
  const ann = heldUser('Ann');
  const seen = new Seen();
  const conn = connectTopics({ url: `ws://127.0.0.1:${server.port}`, token: ann.token, WebSocket: WS });
  t.after(() => conn.close());
  const topic = conn.subscribe(`desktop:${desk}`);
  watch(topic, seen);
  const bob = connect({ url: `ws://127.0.0.1:${server.port}`, desktopId: desk, token: token(user('Bob')), WebSocket: WS });
  t.after(() => bob.close());
  const { client: observer } = await join(t, server.wsUrl(desk), { token: token(user('Obs')) });
  await opened(bob);
  if (topic.state !== 'subscribed') await new Promise<void>((resolve) => topic.on('state', (s) => s === 'subscribed' && resolve()));
  bob.send('note', { n: 1 });
  await seen.has('event 1');
  await notesSeen(observer, 1);

  await awayWhileSent(ann, bob, desk, observer);
  await seen.has('recovered 6');
  bob.send('note', { n: 'live' });
  await seen.has('event live');
  assert.deepEqual(seen.log, ['event 1', 'event 2', 'event 3', 'event 4', 'event 5', 'event 6', 'event api', 'recovered 6', 'event live']);
});

test('a restarted shard is a new epoch: both clients say gap and replay nothing; offsets of the new epoch are taken', async (t) => {
  const desk = desktop('sdk-epoch');
  const url = `ws://127.0.0.1:${server.port}`;
  const legacySeen = new Seen();
  const topicSeen = new Seen();
  const client = connect({ url, desktopId: desk, token: token(user('Ann')), WebSocket: WS, minDelayMs: 50, maxDelayMs: 100 });
  t.after(() => client.close());
  watch(client, legacySeen);
  const conn = connectTopics({ url, token: token(user('Cy')), WebSocket: WS, minDelayMs: 50, maxDelayMs: 100 });
  t.after(() => conn.close());
  const topic = conn.subscribe(`desktop:${desk}`);
  watch(topic, topicSeen);
  const bob = connect({ url, desktopId: desk, token: token(user('Bob')), WebSocket: WS, minDelayMs: 50, maxDelayMs: 100 });
  t.after(() => bob.close());
  await opened(bob);
  if (topic.state !== 'subscribed') await new Promise<void>((resolve) => topic.on('state', (s) => s === 'subscribed' && resolve()));
  await opened(client);
  bob.send('note', { n: 1 });
  await legacySeen.has('event 1');
  await topicSeen.has('event 1');
  const before = client.resumePosition!;

  const restarts = server.logs.filter((l) => l.event === 'shard_ready').length;
  assert.equal((await rawRequest(server.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`])).status, 202);
  await server.waitForLog((l) => l.event === 'shard_ready' && server.logs.filter((m) => m.event === 'shard_ready').length > restarts);
  await legacySeen.has('gap');
  await topicSeen.has('gap');
  assert.notEqual(client.resumePosition?.epoch, before.epoch);
  await opened(bob);
  bob.send('note', { n: 'new epoch' });
  await legacySeen.has('event new epoch');
  await topicSeen.has('event new epoch');
  assert.deepEqual(legacySeen.log, ['event 1', 'gap', 'event new epoch']);
  assert.deepEqual(topicSeen.log, ['event 1', 'gap', 'event new epoch']);
});
