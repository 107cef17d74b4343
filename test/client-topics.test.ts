/**
 * The SDK's multiplexed client against the real server (two shards, topics
 * on both, the real permission stub answering the authorize calls): one
 * connection holding desktops and a production table, presence and events
 * both ways and with a legacy socket in one of the rooms; two holders of a
 * topic sharing one subscription (one authorize call); a topic the app
 * refuses, alone; and a forced reconnect (a logout, 4001) after which every
 * topic is held again. The counting and pacing with a fake socket:
 * test/client-topics.unit.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { connectTopics, type Topic, type TopicConnection, type TopicEvent, type TopicEvents, type WebSocketConstructor } from '../src/client/index.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { join } from './helpers/client.ts';
import { grant, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WS = WebSocket as unknown as WebSocketConstructor;
const WORKERS = 2;
const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

before(async () => {
  stub = await startPermissionStub(cleanup, (req, res) => {
    // Topics whose id says `deny` are refused by the app.
    if (req.topic?.includes('deny')) {
      res.statusCode = 403;
      return void res.end();
    }
    grant('editor')(req, res);
  });
  server = await startServer(cleanup, { workers: WORKERS, permissionApiBase: stub.base, args: ['--api-key', API_KEY] });
});
after(() => cleanup.run());

/** The next value `on(name)` hands over that satisfies `ok`, within 5 s. */
function next<V>(on: (handler: (value: V) => void) => () => void, ok: (value: V) => boolean = () => true, what = 'event'): Promise<V> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${what} within 5 s`));
    }, 5000);
    const off = on((value) => {
      if (!ok(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Wait until `topic` is in `state`. */
async function stateOf(topic: Topic, state: TopicEvents['state']): Promise<void> {
  if (topic.state !== state)
    await next<TopicEvents['state']>(
      (h) => topic.on('state', h),
      (s) => s === state,
      `${topic.topic} ${state}`,
    );
}

/** Wait until `topic`'s presence satisfies `ok`. */
async function presenceUntil(topic: Topic, ok: () => boolean): Promise<void> {
  while (!ok())
    await next(
      (h) => topic.on('presence', h),
      () => true,
      `presence on ${topic.topic}`,
    );
}

/** A multiplexed SDK connection of a fresh user named `name`; `tokens` counts the token function's calls. */
function open(t: Scope, name: string): { conn: TopicConnection; userId: string; counter: { tokens: number } } {
  const claims = user(name);
  const counter = { tokens: 0 };
  const conn = connectTopics({
    url: `ws://127.0.0.1:${server.port}`,
    token: () => {
      counter.tokens++;
      return token(claims);
    },
    WebSocket: WS,
  });
  t.after(() => conn.close());
  return { conn, userId: claims.userId, counter };
}

const authorizeCalls = (topic: string) => stub.requests.filter((r) => r.endpoint === 'authorize' && r.topic === topic).length;

test('one connection holds desktops on both shards and a production table: presence and events both ways, and with a legacy socket in the room', async (t) => {
  const here = desktopOnShard(0, WORKERS, 'sdk');
  const there = desktopOnShard(1, WORKERS, 'sdk');
  const topics = [`desktop:${here}`, `desktop:${there}`, `production-table:${desktop('tab')}`];
  const { client: legacy } = await join(t, server.wsUrl(here), { token: token(user('Leg')) });

  const ann = open(t, 'Ann');
  const ben = open(t, 'Ben');
  const annTopics = topics.map((topic) => ann.conn.subscribe(topic));
  const benTopics = topics.map((topic) => ben.conn.subscribe(topic));
  for (const topic of [...annTopics, ...benTopics]) await stateOf(topic, 'subscribed');
  assert.equal(new Set(annTopics.map((topic) => topic.permission)).size, 1);
  assert.equal(annTopics[0]!.permission, 'editor');

  // Each sees the other on every topic, whichever shard owns it, and the legacy socket on its desktop.
  for (const [i, topic] of annTopics.entries())
    await presenceUntil(topic, () => topic.sessions.has(ben.conn.sessionId!) && (i !== 0 || topic.sessions.size === 2));
  await legacy.expect('session_joined');
  await legacy.expect('session_joined');

  const received = benTopics.map((topic) =>
    next<TopicEvent>(
      (h) => topic.onEvent('asset_moved', h),
      () => true,
      `asset_moved on ${topic.topic}`,
    ),
  );
  for (const [i, topic] of annTopics.entries()) topic.send('asset_moved', { id: `card-${i}`, x: i, y: 2 });
  const events = await Promise.all(received);
  assert.deepEqual(
    events.map((e) => [e.topic, e.type, e.sessionId, (e.payload as { id: string }).id]),
    topics.map((topic, i) => [topic, 'asset_moved', ann.conn.sessionId, `card-${i}`]),
  );
  const legacyGot = await legacy.expect('asset_moved');
  assert.deepEqual([legacyGot.sessionId, legacyGot.payload], [ann.conn.sessionId, { id: 'card-0', x: 0, y: 2 }]);

  // And back: the legacy socket's event reaches the topic in the topic's framing.
  const back = next<TopicEvent>((h) => annTopics[0]!.onEvent('cursor', h));
  legacy.send({ type: 'cursor', payload: { x: 5 } });
  const cursor = await back;
  assert.deepEqual([cursor.topic, cursor.payload], [topics[0], { x: 5 }]);
});

test('two holders of a topic share one subscription (one authorize call); the last unsubscribe leaves, and the others see it', async (t) => {
  const topic = `desktop:${desktopOnShard(1, WORKERS, 'shared')}`;
  const ann = open(t, 'Ann');
  const ben = open(t, 'Ben');
  const watcher = ben.conn.subscribe(topic);
  await stateOf(watcher, 'subscribed');

  const first = ann.conn.subscribe(topic);
  const second = ann.conn.subscribe(topic);
  await stateOf(first, 'subscribed');
  assert.equal(second.state, 'subscribed');
  assert.equal(authorizeCalls(topic), 2, 'one call per connection: Ben and Ann');
  await presenceUntil(watcher, () => watcher.sessions.has(ann.conn.sessionId!));

  first.unsubscribe();
  // Still held: an event still reaches the second holder.
  const got = next<TopicEvent>((h) => second.onEvent('ping', h));
  watcher.send('ping', { n: 1 });
  assert.deepEqual((await got).payload, { n: 1 });
  assert.equal(watcher.sessions.has(ann.conn.sessionId!), true);

  second.unsubscribe();
  await presenceUntil(watcher, () => !watcher.sessions.has(ann.conn.sessionId!));
  assert.deepEqual(ann.conn.topics, []);
});

test('a topic the app refuses is refused alone, with its code; the other topics go on', async (t) => {
  const ann = open(t, 'Ann');
  const good = ann.conn.subscribe(`desktop:${desktop('fine')}`);
  const denied = ann.conn.subscribe(`desktop:${desktop('deny')}`);
  const error = next<TopicEvents['error']>((h) => denied.on('error', h));
  await stateOf(denied, 'refused');
  assert.deepEqual(await error, { code: 'forbidden', op: 'subscribe', ...(denied.refusal?.message === undefined ? {} : { message: denied.refusal.message }) });
  assert.equal(denied.refusal?.code, 'forbidden');
  await stateOf(good, 'subscribed');
  assert.throws(() => denied.send('cursor', {}), { code: 'ERR_NOT_SUBSCRIBED' });
});

test('after a logout (4001) the connection comes back at once, with the token asked again, and holds every topic again', async (t) => {
  const topics = [`desktop:${desktopOnShard(0, WORKERS, 'again')}`, `desktop:${desktopOnShard(1, WORKERS, 'again')}`];
  const ann = open(t, 'Ann');
  const ben = open(t, 'Ben');
  const annTopics = topics.map((topic) => ann.conn.subscribe(topic));
  const benTopics = topics.map((topic) => ben.conn.subscribe(topic));
  for (const topic of [...annTopics, ...benTopics]) await stateOf(topic, 'subscribed');
  for (const topic of benTopics) await presenceUntil(topic, () => topic.sessions.has(ann.conn.sessionId!));
  const before = ann.conn.sessionId!;
  assert.equal(ann.counter.tokens, 1);

  const out = await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/disconnect`);
  assert.equal(out.status, 202);
  for (const topic of benTopics) await presenceUntil(topic, () => !topic.sessions.has(before));
  // Ben may hear the leave before Ann's client has read its close: wait for her new session, then her topics.
  const deadline = Date.now() + 10_000;
  while (ann.conn.sessionId === before || !ann.conn.sessionId) {
    assert.ok(Date.now() < deadline, 'the connection came back within 10 s');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  for (const topic of annTopics) await stateOf(topic, 'subscribed');
  const after = ann.conn.sessionId!;
  assert.notEqual(after, before, 'a new session');
  assert.equal(ann.counter.tokens, 2, 'the token was asked again');
  for (const topic of benTopics) await presenceUntil(topic, () => topic.sessions.has(after));

  const received = benTopics.map((topic) => next<TopicEvent>((h) => topic.onEvent('asset_moved', h)));
  for (const topic of annTopics) topic.send('asset_moved', { id: 'back', x: 1, y: 1 });
  for (const e of await Promise.all(received)) assert.equal(e.sessionId, after);
});
