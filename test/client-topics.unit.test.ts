/**
 * The SDK's multiplexed client (`connectTopics()`), with a fake socket and a
 * fake clock: subscriptions counted per topic, every topic asked again on a
 * new socket (paced by the server's subscribe budget), each topic's state,
 * errors put on the op their `ref` names, and what the client refuses before
 * the server would. Against the real server: test/client-topics.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ClientError, connectTopics, type TopicConnection, type TopicState, type WebSocketConstructor } from '../src/client/index.ts';
import { ConnectionLimit } from '../src/protocol/topics.ts';

class FakeSocket {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  readonly url: string;
  constructor(url: string) {
    this.url = url;
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {}
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
  receive(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The ops sent, as `op topic`. */
  ops(): string[] {
    return this.sent.map((f) => `${f.op} ${f.topic}${f.type === undefined ? '' : ` ${f.type}`}`);
  }
  /** The ref of the last `op` sent for `topic`. */
  ref(op: string, topic: string): string {
    const frame = this.sent.findLast((f) => f.op === op && f.topic === topic);
    assert.ok(frame, `no ${op} of ${topic} sent: ${JSON.stringify(this.ops())}`);
    return frame.ref as string;
  }
  /** The server's ack of the last subscribe of `topic`. */
  ack(topic: string, sessions: unknown[] = [], permission = 'editor', sessionId = 'session_me') {
    this.receive({ op: 'subscribed', topic, permission, sessionId, sessions, ref: this.ref('subscribe', topic) });
  }
}

function fakeClock() {
  const timers: { fn: () => void; ms: number; live: boolean }[] = [];
  let time = 0;
  return {
    timers,
    setTimeout: (fn: () => void, ms: number) => {
      const timer = { fn, ms, live: true };
      timers.push(timer);
      return timer;
    },
    clearTimeout: (timer: unknown) => void ((timer as { live: boolean }).live = false),
    /** Fire the latest live timer. */
    fire: () => {
      const timer = timers.findLast((t) => t.live)!;
      timer.live = false;
      timer.fn();
    },
    now: () => time,
    advance: (ms: number) => void (time += ms),
  };
}

function start(): { conn: TopicConnection; clock: ReturnType<typeof fakeClock>; socket: () => FakeSocket } {
  FakeSocket.all = [];
  const clock = fakeClock();
  const conn = connectTopics({
    url: 'ws://relay.test/',
    token: 'header.payload.signature',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    random: () => 0,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
  });
  return { conn, clock, socket: () => FakeSocket.all.at(-1)! };
}

const alice = { sessionId: 'session_a', userId: 'u-alice', firstName: 'Alice', email: 'a@example.com', permission: 'editor' };
const bob = { sessionId: 'session_b', userId: 'u-bob', firstName: 'Bob', email: 'b@example.com', permission: 'viewer' };
const event = (topic: string, type: string, payload: unknown = null) => ({
  op: 'event',
  topic,
  type,
  sessionId: 'session_a',
  userId: 'u-alice',
  firstName: 'Alice',
  email: 'a@example.com',
  timestamp: 1,
  payload,
});

test('one socket on /ws/connection; nothing is sent before the first subscribe', () => {
  const { conn, socket } = start();
  socket().open();
  assert.equal(socket().url, 'ws://relay.test/ws/connection');
  assert.equal(conn.state, 'open');
  assert.deepEqual(socket().sent, []);
});

test('subscriptions are counted: two holders share one subscribe; the first unsubscribe sends nothing and takes only its own listeners; the last one leaves', () => {
  const { conn, socket } = start();
  socket().open();
  const a = conn.subscribe('desktop:abc');
  const b = conn.subscribe('desktop:abc');
  assert.deepEqual(socket().ops(), ['subscribe desktop:abc'], 'one op for two holders');
  socket().ack('desktop:abc', [alice]);
  assert.deepEqual([a.state, b.state], ['subscribed', 'subscribed']);
  assert.equal(a.permission, 'editor');
  assert.deepEqual([...b.sessions.keys()], ['session_a'], 'one presence, seen by both');

  const got: string[] = [];
  a.onEvent('asset_moved', (e) => got.push(`a ${e.topic} ${JSON.stringify(e.payload)}`));
  b.onEvent('asset_moved', (e) => got.push(`b ${e.topic} ${JSON.stringify(e.payload)}`));
  socket().receive(event('desktop:abc', 'asset_moved', { id: 'x' }));
  assert.deepEqual(got, ['a desktop:abc {"id":"x"}', 'b desktop:abc {"id":"x"}']);

  a.unsubscribe();
  a.unsubscribe(); // again: nothing
  assert.equal(a.state, 'unsubscribed');
  assert.deepEqual(socket().ops(), ['subscribe desktop:abc'], 'b still holds it');
  assert.throws(
    () => a.send('cursor', {}),
    (e: ClientError) => e.code === 'ERR_NOT_SUBSCRIBED',
  );
  got.length = 0;
  socket().receive(event('desktop:abc', 'asset_moved', { id: 'y' }));
  assert.deepEqual(got, ['b desktop:abc {"id":"y"}'], "a's listener went with it");
  b.send('cursor', { x: 1 });

  b.unsubscribe();
  assert.deepEqual(socket().ops(), ['subscribe desktop:abc', 'publish desktop:abc cursor', 'unsubscribe desktop:abc']);
  assert.deepEqual(conn.topics, []);
  socket().receive({ op: 'unsubscribed', topic: 'desktop:abc', ref: socket().ref('unsubscribe', 'desktop:abc') });

  // Held again after leaving: a new subscribe; the old hold's late frames are not the new one's.
  const c = conn.subscribe('desktop:abc');
  assert.equal(socket().ops().at(-1), 'subscribe desktop:abc');
  assert.equal(c.state, 'subscribing');
});

test('a topic left before the socket opened is never asked for; sends before the ack wait and go first, in order', () => {
  const { conn, socket } = start();
  const gone = conn.subscribe('desktop:gone');
  gone.unsubscribe();
  const table = conn.subscribe('production-table:t1');
  table.send('pt_cell_updated', { id: 'r1:c1', value: 'a' });
  table.send('pt_cell_updated', { id: 'r1:c2', value: 'b' });
  assert.equal(table.queued, 2);
  socket().open();
  assert.deepEqual(socket().ops(), ['subscribe production-table:t1']);
  const order: string[] = [];
  table.on('state', (s) => {
    order.push(`state ${s} after ${socket().sent.length} frames`);
    table.send('pt_cell_updated', { id: 'r1:c3', value: 'c' });
  });
  socket().ack('production-table:t1');
  assert.deepEqual(socket().ops(), [
    'subscribe production-table:t1',
    'publish production-table:t1 pt_cell_updated',
    'publish production-table:t1 pt_cell_updated',
    'publish production-table:t1 pt_cell_updated',
  ]);
  assert.deepEqual(
    socket()
      .sent.slice(1)
      .map((f) => (f.payload as { id: string }).id),
    ['r1:c1', 'r1:c2', 'r1:c3'],
  );
  assert.deepEqual(order, ['state subscribed after 3 frames']);
});

test('everything held is subscribed again on reconnect; presence says what changed meanwhile; a topic let go while away is not', () => {
  const { conn, clock, socket } = start();
  socket().open();
  const desk = conn.subscribe('desktop:d1');
  const table = conn.subscribe('production-table:t1');
  const dropped = conn.subscribe('desktop:d2');
  socket().ack('desktop:d1', [alice]);
  socket().ack('production-table:t1', []);
  socket().ack('desktop:d2', []);
  const states: TopicState[] = [];
  desk.on('state', (s) => states.push(s));
  const changes: unknown[] = [];
  desk.on('presence', (c) => changes.push(c));

  const first = socket();
  first.drop(1006);
  assert.equal(conn.state, 'reconnecting');
  assert.deepEqual([desk.state, table.state], ['subscribing', 'subscribing']);
  assert.deepEqual([...desk.sessions.keys()], ['session_a'], 'presence kept while away');
  dropped.unsubscribe();
  desk.send('asset_moved', { id: 'card', x: 1, y: 2 });
  assert.equal(first.sent.length, 3, 'nothing goes to the dead socket');

  clock.fire();
  assert.notEqual(socket(), first);
  socket().open();
  assert.deepEqual(socket().ops(), ['subscribe desktop:d1', 'subscribe production-table:t1']);
  socket().ack('desktop:d1', [bob], 'editor', 'session_me2');
  assert.equal(conn.sessionId, 'session_me2');
  assert.deepEqual(states, ['subscribing', 'subscribed']);
  assert.deepEqual(changes, [{ joined: [bob], left: [alice], updated: [], reconnected: true }]);
  assert.deepEqual(socket().ops().at(-1), 'publish desktop:d1 asset_moved', 'the send made while away went after the ack');
  assert.equal(table.state, 'subscribing', 'each topic has its own state');
  socket().ack('production-table:t1');
  assert.equal(table.state, 'subscribed');
});

test(`resubscribes are paced by the server's budget: ${ConnectionLimit.SUBSCRIBE_BURST} at once, then ${ConnectionLimit.SUBSCRIBES_PER_SECOND} a second`, () => {
  const { conn, clock, socket } = start();
  for (let i = 0; i < 23; i++) conn.subscribe(`desktop:d${i}`);
  socket().open();
  assert.equal(socket().sent.length, ConnectionLimit.SUBSCRIBE_BURST);
  const pace = clock.timers.findLast((t) => t.live)!;
  assert.equal(pace.ms, 1000 / ConnectionLimit.SUBSCRIBES_PER_SECOND);
  clock.advance(pace.ms);
  clock.fire();
  assert.equal(socket().sent.length, ConnectionLimit.SUBSCRIBE_BURST + 1);
  clock.advance(1000);
  clock.fire();
  assert.equal(socket().sent.length, 23);
  assert.equal(clock.timers.filter((t) => t.live).length, 0, 'no timer left once all went');
});

test('an error with a ref lands on the op that caused it: a refused subscribe refuses its topic alone, with the code; a new subscribe or a reconnect asks again', () => {
  const { conn, clock, socket } = start();
  socket().open();
  const ok = conn.subscribe('desktop:ok');
  const no = conn.subscribe('desktop:no');
  const errors: unknown[] = [];
  no.on('error', (e) => errors.push(e));
  socket().receive({ op: 'error', topic: 'desktop:no', code: 'forbidden', message: 'no', ref: socket().ref('subscribe', 'desktop:no') });
  socket().ack('desktop:ok');
  assert.deepEqual([ok.state, no.state], ['subscribed', 'refused']);
  assert.deepEqual(no.refusal, { code: 'forbidden', message: 'no', op: 'subscribe' });
  assert.deepEqual(errors, [{ code: 'forbidden', message: 'no', op: 'subscribe' }]);
  assert.throws(
    () => no.send('cursor', {}),
    (e: ClientError) => e.code === 'ERR_NOT_SUBSCRIBED',
  );

  // Not an op's: an error naming no topic is the connection's.
  const connErrors: unknown[] = [];
  conn.on('error', (e) => connErrors.push(e));
  socket().receive({ op: 'error', code: 'rate_limited', message: 'slow down' });
  assert.deepEqual(connErrors, [{ code: 'rate_limited', message: 'slow down' }]);

  socket().drop(1006);
  clock.fire();
  socket().open();
  assert.deepEqual(socket().ops(), ['subscribe desktop:ok', 'subscribe desktop:no'], 'the refused topic is asked again on a new socket');
  socket().receive({ op: 'error', topic: 'desktop:no', code: 'not_found', ref: socket().ref('subscribe', 'desktop:no') });
  assert.deepEqual(no.refusal, { code: 'not_found', op: 'subscribe' });
  const again = conn.subscribe('desktop:no');
  assert.equal(again.state, 'subscribing', 'a new subscribe of a refused topic asks again');
  socket().ack('desktop:no');
  assert.deepEqual([no.state, again.state], ['subscribed', 'subscribed']);
});

test('the server ending a subscription: forbidden refuses it (presence gone); internal (its shard restarted) subscribes again', () => {
  const { conn, socket } = start();
  socket().open();
  const desk = conn.subscribe('desktop:d1');
  const table = conn.subscribe('production-table:t1');
  socket().ack('desktop:d1', [alice]);
  socket().ack('production-table:t1', [alice]);
  const left: unknown[] = [];
  desk.on('presence', (c) => left.push(...c.left));
  socket().receive({ op: 'error', topic: 'desktop:d1', code: 'forbidden', message: 'permission revoked' });
  assert.equal(desk.state, 'refused');
  assert.deepEqual(left, [alice]);
  assert.equal(desk.sessions.size, 0);

  socket().receive({ op: 'error', topic: 'production-table:t1', code: 'internal', message: 'shard restarted' });
  assert.equal(table.state, 'subscribing');
  assert.equal(socket().ops().at(-1), 'subscribe production-table:t1');
  socket().ack('production-table:t1', [alice]);
  assert.equal(table.state, 'subscribed');
  assert.equal(conn.topics.length, 2);
});

test('a viewer: its mutations are refused by send(); queued ones are dropped at the ack and said; other types go', () => {
  const { conn, socket } = start();
  const table = conn.subscribe('production-table:t1');
  const errors: unknown[] = [];
  table.on('error', (e) => errors.push(e));
  const roles: unknown[] = [];
  table.on('permission', (p) => roles.push(p));
  table.send('pt_cell_updated', { id: 'c1', value: 'x' });
  table.send('cursor', { x: 1 });
  socket().open();
  socket().ack('production-table:t1', [], 'viewer');
  assert.deepEqual(socket().ops(), ['subscribe production-table:t1', 'publish production-table:t1 cursor']);
  assert.equal(errors.length, 1);
  assert.equal((errors[0] as ClientError).code, 'ERR_VIEWER_MUTATION');
  assert.deepEqual(roles, [{ permission: 'viewer', previous: null }]);
  assert.throws(
    () => table.send('pt_cell_updated', { id: 'c1', value: 'x' }),
    (e: ClientError) => e.code === 'ERR_VIEWER_MUTATION',
  );
  socket().receive({ ...event('production-table:t1', 'permission_changed'), permission: 'editor' });
  table.send('pt_cell_updated', { id: 'c1', value: 'x' });
  assert.equal(socket().ops().at(-1), 'publish production-table:t1 pt_cell_updated');
});

test('refused before the server would: a bad topic, whitespace around it, a 51st topic, a bad or server-only type; frames of the wrong shape are dropped', () => {
  const { conn, socket } = start();
  socket().open();
  for (const topic of ['desktop', 'desktop:', ' desktop:abc', 'desktop:abc ', 'room:abc', 'desktop:a/b', `desktop:${'x'.repeat(129)}`]) {
    assert.throws(
      () => conn.subscribe(topic),
      (e: ClientError) => e.code === 'ERR_INVALID_TOPIC',
      topic,
    );
  }
  const handles = [];
  for (let i = 0; i < ConnectionLimit.MAX_TOPICS; i++) handles.push(conn.subscribe(`production-table:t${i}`));
  assert.throws(
    () => conn.subscribe('desktop:one-more'),
    (e: ClientError) => e.code === 'ERR_TOO_MANY_TOPICS',
  );
  conn.subscribe('production-table:t0'); // one already held is shared, not counted again
  handles[1]!.unsubscribe();
  conn.subscribe('desktop:one-more');

  const t0 = handles[0]!;
  for (const type of ['', 'x'.repeat(65), 'session_joined', 'session_left', 'presence_sync_request']) {
    assert.throws(
      () => t0.send(type, {}),
      (e: ClientError) => e.code === 'ERR_INVALID_TYPE',
      type,
    );
  }
  socket().receive({
    op: 'subscribed',
    topic: 'production-table:t0',
    permission: 'root',
    sessionId: 's',
    sessions: [],
    ref: socket().ref('subscribe', 'production-table:t0'),
  });
  socket().receive({ op: 'event', topic: 'production-table:t0' });
  assert.equal(t0.state, 'subscribing', 'an ack with an unknown role is dropped');
  assert.throws(
    () => t0.on('asset_moved' as 'state', () => {}),
    (e: ClientError) => e.code === 'ERR_UNKNOWN_CLIENT_EVENT',
  );
  conn.close();
  assert.equal(conn.state, 'closed');
  assert.throws(
    () => conn.subscribe('desktop:late'),
    (e: ClientError) => e.code === 'ERR_CLOSED',
  );
  assert.throws(
    () => t0.send('cursor', {}),
    (e: ClientError) => e.code === 'ERR_CLOSED',
  );
});
