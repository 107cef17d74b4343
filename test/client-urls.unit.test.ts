/**
 * The SDK given every node's URL (issue 21), with a fake socket and clock:
 * the `url` option checked at `connect()`/`connectTopics()` (an empty list,
 * a URL that is not ws:/wss:, a query: ERR_INVALID_OPTION naming the
 * culprit); each attempt dials the next URL, from a random first one; a
 * drain close (1012, 1001) goes to the next node after the short jitter even
 * past the backoff's floor, once per URL until a session is stable; the
 * resume position goes to whichever node is next; one URL behaves as before.
 * Against real nodes: test/client-failover.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect, connectTopics, type ConnectOptions, type Retry, type WebSocketConstructor } from '../src/client/index.ts';

class FakeSocket {
  static all: FakeSocket[] = [];
  readyState = 0;
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  readonly url: string;
  constructor(url: string) {
    this.url = url;
    FakeSocket.all.push(this);
  }
  send() {}
  close() {}
  /** Refused, or dropped before it opened. */
  fail() {
    this.onclose?.({ code: 1006, reason: '' });
  }
  join(sessionId: string, epoch = 'e1', offset = 0) {
    this.readyState = 1;
    this.onopen?.({});
    this.onmessage?.({ data: JSON.stringify({ type: 'room_joined', sessionId, sessions: [], epoch, offset }) });
  }
  drop(code: number) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
}

const WS = FakeSocket as unknown as WebSocketConstructor;
const A = 'ws://a.test';
const B = 'ws://b.test';
const C = 'ws://c.test';
const MIN = 100;

function fakeClock() {
  const timers: { fn: () => void; ms: number }[] = [];
  let time = 0;
  return {
    setTimeout: (fn: () => void, ms: number) => timers.push({ fn, ms }),
    clearTimeout: () => {},
    fire: () => timers.at(-1)!.fn(),
    now: () => time,
    advance: (ms: number) => void (time += ms),
  };
}

/** The first draw is `first` (it picks the first URL), every later one `rest` (the jitter). */
function draws(first: number, rest = 0.999) {
  let n = 0;
  return () => (n++ === 0 ? first : rest);
}

/** The base URL each socket dialled. */
const bases = () => FakeSocket.all.map((s) => new URL(s.url).origin.replace(/^http/, 'ws'));

function desktopClient(extra: Partial<ConnectOptions>) {
  const clock = fakeClock();
  const retries: Retry[] = [];
  const client = connect({ url: [A, B, C], desktopId: 'd', WebSocket: WS, minDelayMs: MIN, maxDelayMs: 1600, ...clock, ...extra });
  client.on('retry', (r) => retries.push(r));
  return { client, clock, retries };
}

test('options.url: an empty list, a non-ws URL, a query or fragment, a non-string are refused with ERR_INVALID_OPTION naming the entry, before any dial', () => {
  FakeSocket.all = [];
  const cases: [unknown, RegExp][] = [
    [[], /options\.url is an empty list/],
    ['http://a.test', /options\.url must be a ws:\/\/ or wss:\/\/ URL, not "http:\/\/a\.test" \(http:\)/],
    [[A, 'https://b.test'], /options\.url\[1\] must be a ws:\/\/ or wss:\/\/ URL, not "https:\/\/b\.test"/],
    [[A, 'b.test:8081'], /options\.url\[1\] must be a ws:\/\/ or wss:\/\/ URL/],
    ['not a url', /options\.url must be a ws:\/\/ or wss:\/\/ URL, not "not a url"/],
    ['ws://a.test/?desk=1', /options\.url must be a base URL without a query or fragment/],
    [[A, 'ws://b.test/#x'], /options\.url\[1\] must be a base URL without a query or fragment/],
    [[A, 42], /options\.url\[1\] must be a ws:\/\/ or wss:\/\/ URL, not a number/],
    [undefined, /options\.url must be a ws:\/\/ or wss:\/\/ URL or a list of them, not undefined/],
    [null, /options\.url must be a ws:\/\/ or wss:\/\/ URL or a list of them, not null/],
  ];
  for (const [url, message] of cases) {
    const options = { url: url as string, WebSocket: WS };
    assert.throws(() => connect({ ...options, desktopId: 'd' }), { code: 'ERR_INVALID_OPTION', message }, `connect() ${JSON.stringify(url)}`);
    assert.throws(() => connectTopics(options), { code: 'ERR_INVALID_OPTION', message }, `connectTopics() ${JSON.stringify(url)}`);
  }
  assert.equal(FakeSocket.all.length, 0, 'nothing dialled');
  // Accepted: wss, a path to put the route under, a trailing slash, a one-entry list.
  for (const url of ['wss://a.test', 'ws://a.test/rt/', [B]]) connect({ url, desktopId: 'd', WebSocket: WS }).close();
  assert.deepEqual(
    FakeSocket.all.map((s) => s.url),
    ['wss://a.test/ws/desktop/d', 'ws://a.test/rt/ws/desktop/d', 'ws://b.test/ws/desktop/d'],
  );
});

test('each attempt dials the next URL in order, from a random first one; retry names the URL and the close code', () => {
  for (const [first, start] of [
    [0, [A, B, C, A, B]],
    [0.34, [B, C, A, B, C]],
    [0.999, [C, A, B, C, A]],
  ] as const) {
    FakeSocket.all = [];
    const { client, clock, retries } = desktopClient({ random: draws(first) });
    for (let i = 0; i < 4; i++) {
      FakeSocket.all.at(-1)!.fail();
      clock.fire();
    }
    assert.deepEqual(bases(), start, `first draw ${first}`);
    assert.deepEqual(
      retries.map((r) => [r.url, r.code]),
      start.slice(1).map((url) => [url, 1006]),
    );
    client.close();
  }
  // The multiplexed client rotates the same way, on its own path.
  FakeSocket.all = [];
  const clock = fakeClock();
  const conn = connectTopics({ url: [A, B], WebSocket: WS, random: draws(0.6), ...clock });
  FakeSocket.all[0]!.fail();
  clock.fire();
  FakeSocket.all[1]!.fail();
  clock.fire();
  assert.deepEqual(
    FakeSocket.all.map((s) => s.url),
    ['ws://b.test/ws/connection', 'ws://a.test/ws/connection', 'ws://b.test/ws/connection'],
  );
  conn.close();
});

test('a drain close goes to the next URL after the short jitter even past the floor, once per URL until a session is stable; one URL backs off as before', () => {
  FakeSocket.all = [];
  const { client, clock, retries } = desktopClient({ random: draws(0) });
  // Two failed opens: the backoff is past its floor.
  FakeSocket.all.at(-1)!.fail();
  clock.fire();
  FakeSocket.all.at(-1)!.fail();
  clock.fire();
  assert.deepEqual(
    retries.map((r) => r.inMs),
    [99, 199],
  );
  // On C, joined; C drains before the session is stable: the next node (A) at the jitter, not the backoff.
  FakeSocket.all.at(-1)!.join('s1');
  FakeSocket.all.at(-1)!.drop(1012);
  assert.deepEqual(retries.at(-1), { inMs: 99, attempt: 1, url: A, code: 1012 });
  // Sent away again and again: one hop per URL (3), then the backoff.
  clock.fire();
  FakeSocket.all.at(-1)!.join('s2');
  FakeSocket.all.at(-1)!.drop(1001);
  assert.deepEqual(retries.at(-1), { inMs: 99, attempt: 1, url: B, code: 1001 });
  clock.fire();
  FakeSocket.all.at(-1)!.join('s3');
  FakeSocket.all.at(-1)!.drop(1012);
  assert.equal(retries.at(-1)!.inMs, 99);
  clock.fire();
  FakeSocket.all.at(-1)!.join('s4');
  FakeSocket.all.at(-1)!.drop(1012);
  assert.deepEqual(retries.at(-1), { inMs: 1599, attempt: 1, url: A, code: 1012 }, 'a fleet that keeps sending the client away: the backoff');
  // A stable session gives the hops back.
  clock.fire();
  FakeSocket.all.at(-1)!.join('s5');
  clock.advance(5_000);
  FakeSocket.all.at(-1)!.drop(1012);
  clock.fire();
  FakeSocket.all.at(-1)!.join('s6');
  FakeSocket.all.at(-1)!.drop(1012);
  assert.equal(retries.at(-1)!.inMs, 99, 'past the floor again, and again a hop');
  assert.deepEqual(bases(), [A, B, C, A, B, C, A, B]);
  client.close();

  // The same sequence with one URL: past the floor, a 1012 waits for the backoff (unchanged).
  FakeSocket.all = [];
  const single = desktopClient({ url: A, random: () => 0.999 });
  FakeSocket.all.at(-1)!.fail();
  single.clock.fire();
  FakeSocket.all.at(-1)!.fail();
  single.clock.fire();
  FakeSocket.all.at(-1)!.join('s1');
  FakeSocket.all.at(-1)!.drop(1012);
  assert.deepEqual(single.retries.at(-1), { inMs: 399, attempt: 1, url: A, code: 1012 });
  assert.deepEqual(bases(), [A, A, A]);
  single.client.close();
});

test('the resume position goes to the next node; a single URL draws no random number for its start', () => {
  FakeSocket.all = [];
  const { client, clock } = desktopClient({ url: [A, B], random: draws(0) });
  FakeSocket.all[0]!.join('s1', 'epoch-a', 7);
  FakeSocket.all[0]!.drop(1012);
  clock.fire();
  assert.equal(FakeSocket.all[1]!.url, 'ws://b.test/ws/desktop/d?epoch=epoch-a&offset=7');
  client.close();

  let drawn = 0;
  const random = () => (drawn++, 0.5);
  connect({ url: A, desktopId: 'd', WebSocket: WS, random, ...fakeClock() }).close();
  connectTopics({ url: [A], WebSocket: WS, random, ...fakeClock() }).close();
  assert.equal(drawn, 0, 'one URL: the jitter sequence is the same as before lists');
});
