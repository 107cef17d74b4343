/**
 * The SDK's resume (issue 21), against a fake relay: a real `ws`
 * WebSocketServer on loopback that speaks the wire the issue states. It
 * numbers each desktop's events (`offset`, within an `epoch`), names both in
 * `room_joined` and in the `subscribed` ack, and on `?epoch=E&offset=N` (or
 * `recover:{epoch,offset}`) replays the missed events with `recovered:true`,
 * or says `recovered:false` when the test made it forget. The test can
 * also make it misbehave (send an event twice, replay from too far back) to
 * see the SDK drop duplicates by offset.
 *
 * Measured: the URL and subscribe op of each attempt, and the exact sequence
 * of what the app sees (events by offset, `recovered` with its count, `gap`).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { describe, it, type TestContext } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { connect, connectTopics, type MoodioClient, type Topic, type WebSocketConstructor } from '../src/client/index.ts';

const WS = WebSocket as unknown as WebSocketConstructor;
/** Reconnect fast: the backoff is not what these tests measure. */
const FAST = { WebSocket: WS, minDelayMs: 10, maxDelayMs: 20 };

interface StoredEvent {
  offset: number;
  sessionId: string;
  type: string;
  payload: unknown;
}

interface Stream {
  epoch: string;
  last: number;
  events: StoredEvent[];
}

/** The fake relay: see the module's comment. */
class FakeRelay {
  url = '';
  /** Each legacy attempt's request URL. */
  readonly legacyUrls: string[] = [];
  /** Each subscribe op received on /ws/connection. */
  readonly subscribes: Record<string, unknown>[] = [];
  /** Replay from this many offsets before the one asked (a misbehaving server: the SDK must drop what it had). */
  overlap = 0;
  /** On the next topic replay, send this many events, then `recovery_lost` (the history let go of the rest), and forget the history. */
  loseReplayAfter: number | null = null;
  private readonly wss: WebSocketServer;
  private readonly streams = new Map<string, Stream>();
  private readonly legacy = new Map<WebSocket, string>();
  private readonly topics = new Map<WebSocket, Set<string>>();
  private epochs = 0;
  private readonly checks = new Set<() => void>();

  constructor() {
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    this.wss.on('connection', (ws, req) => this.onConnection(ws, req));
  }

  async start(t: TestContext): Promise<this> {
    await once(this.wss, 'listening');
    t.after(() => {
      for (const ws of this.wss.clients) ws.terminate();
      this.wss.close();
    });
    this.url = `ws://127.0.0.1:${(this.wss.address() as { port: number }).port}`;
    return this;
  }

  stream(id: string): Stream {
    let stream = this.streams.get(id);
    if (!stream) this.streams.set(id, (stream = { epoch: `e${++this.epochs}`, last: 0, events: [] }));
    return stream;
  }

  /** A peer's event on desktop `id`: numbered, kept, and sent to whoever is there (`repeat` times: a duplicate). */
  publish(id: string, type: string, payload: unknown, repeat = 1): number {
    return this.relay(id, { type, payload, sessionId: 'peer' }, null, repeat);
  }

  /** Drop every socket, as a node that dies does (no close frame). */
  dropAll(): void {
    for (const ws of this.wss.clients) ws.terminate();
  }

  /** A restart: a new epoch for desktop `id`, its history gone, offsets from 1 again. */
  restart(id: string): void {
    this.streams.set(id, { epoch: `e${++this.epochs}`, last: 0, events: [] });
  }

  /** The history of desktop `id` is forgotten (past its bounds): an older position cannot be recovered. */
  forget(id: string): void {
    this.stream(id).events = [];
  }

  /** Resolves once `done()` holds, checked on each message the relay gets; rejects after `boundMs`. */
  waitFor(done: () => boolean, boundMs = 5_000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (done()) return resolve();
      const timer = setTimeout(() => {
        this.checks.delete(check);
        reject(new Error(`the relay's condition did not hold within ${boundMs} ms`));
      }, boundMs);
      const check = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.checks.delete(check);
        resolve();
      };
      this.checks.add(check);
    });
  }

  /** Number and keep an event of desktop `id`, and send it to everyone there but its sender (the relay never echoes). */
  private relay(id: string, event: Omit<StoredEvent, 'offset'>, sender: WebSocket | null, repeat = 1): number {
    const stream = this.stream(id);
    const stored = { ...event, offset: ++stream.last };
    stream.events.push(stored);
    for (let i = 0; i < repeat; i++) this.deliver(id, stored, sender);
    return stored.offset;
  }

  private deliver(id: string, event: StoredEvent, sender: WebSocket | null): void {
    for (const [ws, desk] of this.legacy) if (desk === id && ws !== sender) ws.send(JSON.stringify(this.legacyFrame(event)));
    for (const [ws, held] of this.topics)
      if (held.has(`desktop:${id}`) && ws !== sender) ws.send(JSON.stringify({ op: 'event', topic: `desktop:${id}`, ...this.legacyFrame(event) }));
  }

  private legacyFrame(event: StoredEvent): Record<string, unknown> {
    return {
      type: event.type,
      sessionId: event.sessionId,
      userId: 'u-peer',
      firstName: 'Peer',
      email: 'peer@example.com',
      timestamp: 1,
      payload: event.payload,
      offset: event.offset,
    };
  }

  /** The events after `offset` if the history still has all of them, else null. */
  private missed(stream: Stream, epoch: unknown, offset: unknown): StoredEvent[] | null {
    const n = Number(offset);
    if (epoch !== stream.epoch || !Number.isInteger(n) || n < 0 || n > stream.last) return null;
    const first = stream.events[0]?.offset ?? stream.last + 1;
    if (n + 1 < first) return null;
    return stream.events.filter((e) => e.offset > n - this.overlap);
  }

  private onConnection(ws: WebSocket, req: IncomingMessage): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const desk = /^\/ws\/desktop\/([^/]+)$/.exec(url.pathname);
    if (desk) {
      this.legacyUrls.push(req.url ?? '');
      const id = decodeURIComponent(desk[1]!);
      const stream = this.stream(id);
      const resume = url.searchParams.has('epoch');
      const replay = resume ? this.missed(stream, url.searchParams.get('epoch'), url.searchParams.get('offset')) : null;
      const sessionId = `s${this.legacyUrls.length}`;
      const joined: Record<string, unknown> = {
        type: 'room_joined',
        sessionId,
        permission: 'editor',
        sessions: [],
        epoch: stream.epoch,
        offset: stream.last,
      };
      if (resume) joined.recovered = replay !== null;
      ws.send(JSON.stringify(joined));
      for (const event of replay ?? []) ws.send(JSON.stringify(this.legacyFrame(event)));
      this.legacy.set(ws, id);
      ws.on('close', () => this.legacy.delete(ws));
      ws.on('message', (data) => {
        const { type, payload } = JSON.parse(String(data)) as { type: string; payload: unknown };
        this.relay(id, { type, payload, sessionId }, ws);
        for (const check of [...this.checks]) check();
      });
      return;
    }
    const held = new Set<string>();
    this.topics.set(ws, held);
    ws.on('close', () => this.topics.delete(ws));
    ws.on('message', (data) => {
      const op = JSON.parse(String(data)) as Record<string, unknown>;
      if (op.op !== 'subscribe') return;
      this.subscribes.push(op);
      const topic = String(op.topic);
      const stream = this.stream(topic.slice('desktop:'.length));
      const recover = op.recover as { epoch?: unknown; offset?: unknown } | undefined;
      const replay = recover ? this.missed(stream, recover.epoch, recover.offset) : null;
      const ack: Record<string, unknown> = {
        op: 'subscribed',
        topic,
        permission: 'editor',
        sessionId: 'me',
        sessions: [],
        ref: op.ref,
        epoch: stream.epoch,
        offset: stream.last,
      };
      if (recover) ack.recovered = replay !== null;
      ws.send(JSON.stringify(ack));
      const lose = replay !== null && this.loseReplayAfter !== null ? this.loseReplayAfter : null;
      for (const event of (replay ?? []).slice(0, lose ?? undefined)) ws.send(JSON.stringify({ op: 'event', topic, ...this.legacyFrame(event) }));
      if (lose !== null) {
        this.loseReplayAfter = null;
        stream.events = [];
        ws.send(
          JSON.stringify({ op: 'error', code: 'recovery_lost', topic, message: 'the history let go of events this replay had not sent; subscribe again' }),
        );
        return;
      }
      held.add(topic);
    });
  }
}

/** What the app sees, in order, as short strings; `until()` waits (bounded) for a condition on it. */
class Seen {
  readonly log: string[] = [];
  private readonly waiters = new Set<() => void>();

  push(entry: string): void {
    this.log.push(entry);
    for (const wake of [...this.waiters]) wake();
  }

  until(done: (log: string[]) => boolean, what: string, boundMs = 5_000): Promise<void> {
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

  /** Wait until `entry` is the last thing seen. */
  last(entry: string): Promise<void> {
    return this.until((log) => log.at(-1) === entry, entry);
  }
}

/** Listen to what the resume is about on a client or a topic handle. */
function watch(target: MoodioClient | Topic, seen: Seen): void {
  target.onAnyEvent((e) => seen.push(`event ${e.offset} ${JSON.stringify(e.payload)}`));
  const on = target.on.bind(target) as (name: string, handler: (value: never) => void) => () => void;
  on('recovered', (r: { from: number; to: number; count: number }) => seen.push(`recovered ${r.from}..${r.to} count ${r.count}`));
  on('gap', (g: { epoch: string | null; offset: number | null; from: { epoch: string; offset: number } | null }) =>
    seen.push(`gap ${g.from?.epoch}:${g.from?.offset} -> ${g.epoch}:${g.offset}`),
  );
  on('state', (s: string) => seen.push(`state ${s}`));
  on('error', (e: { code: string }) => seen.push(`error ${e.code}`));
}

async function desktopClient(t: TestContext, relay: FakeRelay, desktopId = 'd1'): Promise<{ client: MoodioClient; seen: Seen }> {
  const seen = new Seen();
  const client = connect({ url: relay.url, desktopId, ...FAST });
  t.after(() => client.close());
  watch(client, seen);
  await seen.last('state open');
  return { client, seen };
}

describe('connect(): resume on /ws/desktop/{id}', () => {
  it('drops an event whose offset it has already seen, live or replayed', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { client, seen } = await desktopClient(t, relay);
    relay.publish('d1', 'note', 'a');
    relay.publish('d1', 'note', 'b', 3); // sent three times
    relay.publish('d1', 'note', 'c');
    await seen.last('event 3 "c"');
    // The relay replays from 2 before the position asked: 2 and 3 again, then 4 (missed).
    relay.overlap = 2;
    relay.dropAll();
    await seen.last('state reconnecting');
    relay.publish('d1', 'note', 'd');
    await seen.last('recovered 3..4 count 1');
    assert.deepEqual(seen.log, [
      'state open',
      'event 1 "a"',
      'event 2 "b"',
      'event 3 "c"',
      'state reconnecting',
      'state open',
      'event 4 "d"',
      'recovered 3..4 count 1',
    ]);
    assert.deepEqual(client.resumePosition, { epoch: 'e1', offset: 4 });
  });

  it('offers no position on the first attempt, and the last offset seen after a drop', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { seen } = await desktopClient(t, relay, 'desk one');
    relay.publish('desk one', 'note', 1);
    relay.publish('desk one', 'note', 2);
    await seen.last('event 2 2');
    relay.dropAll();
    await seen.until((log) => log.filter((e) => e === 'state open').length === 2, 'a rejoin');
    relay.dropAll();
    await seen.until((log) => log.filter((e) => e === 'state open').length === 3, 'a second rejoin');
    assert.deepEqual(relay.legacyUrls, ['/ws/desktop/desk%20one', '/ws/desktop/desk%20one?epoch=e1&offset=2', '/ws/desktop/desk%20one?epoch=e1&offset=2']);
  });

  it('says recovered, after the missed events in order, then takes live ones; nothing on the first join', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { seen } = await desktopClient(t, relay);
    relay.publish('d1', 'note', 'before');
    await seen.last('event 1 "before"');
    relay.dropAll();
    await seen.last('state reconnecting');
    // Sent while away: the reconnect is scheduled 10–20 ms out, so these land in the history first.
    for (let i = 1; i <= 5; i++) relay.publish('d1', 'note', `away ${i}`);
    await seen.last('recovered 1..6 count 5');
    relay.publish('d1', 'note', 'live');
    await seen.last('event 7 "live"');
    assert.deepEqual(seen.log, [
      'state open',
      'event 1 "before"',
      'state reconnecting',
      'state open',
      'event 2 "away 1"',
      'event 3 "away 2"',
      'event 4 "away 3"',
      'event 5 "away 4"',
      'event 6 "away 5"',
      'recovered 1..6 count 5',
      'event 7 "live"',
    ]);
    assert.ok(!seen.log.some((e) => e.startsWith('gap')), 'no gap anywhere');
  });

  it("does not hand over its own earlier session's events that a replay holds, as the relay never echoes them live", async (t) => {
    const relay = await new FakeRelay().start(t);
    const { client, seen } = await desktopClient(t, relay);
    relay.publish('d1', 'note', 'peer 1');
    await seen.last('event 1 "peer 1"');
    client.send('note', 'mine'); // offset 2, never echoed: the client's last seen stays 1
    await relay.waitFor(() => relay.stream('d1').last === 2);
    relay.dropAll();
    await seen.last('state reconnecting');
    relay.publish('d1', 'note', 'peer 3');
    await seen.last('recovered 1..3 count 1');
    assert.deepEqual(seen.log, ['state open', 'event 1 "peer 1"', 'state reconnecting', 'state open', 'event 3 "peer 3"', 'recovered 1..3 count 1']);
  });

  it('says recovered with a count of 0 when nothing was missed', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { seen } = await desktopClient(t, relay);
    relay.publish('d1', 'note', 'x');
    await seen.last('event 1 "x"');
    relay.dropAll();
    await seen.last('recovered 1..1 count 0');
    assert.deepEqual(seen.log, ['state open', 'event 1 "x"', 'state reconnecting', 'state open', 'recovered 1..1 count 0']);
  });

  it('says gap when the server cannot replay (its history forgot), and replays nothing', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { client, seen } = await desktopClient(t, relay);
    relay.publish('d1', 'note', 'seen');
    await seen.last('event 1 "seen"');
    relay.dropAll();
    await seen.last('state reconnecting');
    relay.publish('d1', 'note', 'lost 1');
    relay.publish('d1', 'note', 'lost 2');
    relay.forget('d1');
    await seen.last('gap e1:1 -> e1:3');
    relay.publish('d1', 'note', 'live');
    await seen.last('event 4 "live"');
    assert.deepEqual(seen.log, ['state open', 'event 1 "seen"', 'state reconnecting', 'state open', 'gap e1:1 -> e1:3', 'event 4 "live"']);
    assert.deepEqual(client.resumePosition, { epoch: 'e1', offset: 4 });
  });

  it('says gap on a new epoch, and then takes its offsets from 1 again', async (t) => {
    const relay = await new FakeRelay().start(t);
    const { client, seen } = await desktopClient(t, relay);
    for (let i = 1; i <= 3; i++) relay.publish('d1', 'note', i);
    await seen.last('event 3 3');
    relay.restart('d1');
    relay.dropAll();
    await seen.last('gap e1:3 -> e2:0');
    // Offset 1 of the new epoch is not a duplicate of the old epoch's 1.
    relay.publish('d1', 'note', 'new 1');
    await seen.last('event 1 "new 1"');
    assert.deepEqual(seen.log, [
      'state open',
      'event 1 1',
      'event 2 2',
      'event 3 3',
      'state reconnecting',
      'state open',
      'gap e1:3 -> e2:0',
      'event 1 "new 1"',
    ]);
    assert.deepEqual(client.resumePosition, { epoch: 'e2', offset: 1 });
    assert.equal(relay.legacyUrls[1], '/ws/desktop/d1?epoch=e1&offset=3');
  });
});

describe('connectTopics(): recover per topic on resubscribe', () => {
  it('offers each topic its own position, and each says recovered or gap by itself', async (t) => {
    const relay = await new FakeRelay().start(t);
    const conn = connectTopics({ url: relay.url, ...FAST });
    t.after(() => conn.close());
    const seenA = new Seen();
    const seenB = new Seen();
    const a = conn.subscribe('desktop:a');
    const b = conn.subscribe('desktop:b');
    watch(a, seenA);
    watch(b, seenB);
    await seenA.last('state subscribed');
    await seenB.last('state subscribed');
    relay.publish('a', 'note', 'a1');
    relay.publish('a', 'note', 'a2', 2); // twice
    relay.publish('b', 'note', 'b1');
    await seenA.last('event 2 "a2"');
    await seenB.last('event 1 "b1"');
    relay.dropAll();
    await seenA.last('state subscribing');
    relay.publish('a', 'note', 'a3');
    relay.publish('a', 'note', 'a4');
    relay.restart('b');
    await seenA.last('recovered 2..4 count 2');
    await seenB.last('gap e2:1 -> e3:0');
    assert.deepEqual(
      relay.subscribes.map((op) => `${op.topic} ${JSON.stringify(op.recover ?? null)}`),
      ['desktop:a null', 'desktop:b null', 'desktop:a {"epoch":"e1","offset":2}', 'desktop:b {"epoch":"e2","offset":1}'],
    );
    assert.deepEqual(seenA.log, [
      'state subscribed',
      'event 1 "a1"',
      'event 2 "a2"',
      'state subscribing',
      'state subscribed',
      'event 3 "a3"',
      'event 4 "a4"',
      'recovered 2..4 count 2',
    ]);
    assert.deepEqual(seenB.log, ['state subscribed', 'event 1 "b1"', 'state subscribing', 'state subscribed', 'gap e2:1 -> e3:0']);
    assert.deepEqual(a.resumePosition, { epoch: 'e1', offset: 4 });
    assert.deepEqual(b.resumePosition, { epoch: 'e3', offset: 0 });
  });

  it('a replay cut short by recovery_lost: the topic subscribes again from the last event seen, and the server says gap', async (t) => {
    const relay = await new FakeRelay().start(t);
    const conn = connectTopics({ url: relay.url, ...FAST });
    t.after(() => conn.close());
    const seen = new Seen();
    const a = conn.subscribe('desktop:a');
    watch(a, seen);
    await seen.last('state subscribed');
    relay.publish('a', 'note', 'a1');
    await seen.last('event 1 "a1"');
    relay.dropAll();
    await seen.last('state subscribing');
    for (let i = 2; i <= 4; i++) relay.publish('a', 'note', `a${i}`);
    relay.loseReplayAfter = 1;
    await seen.last('gap e1:2 -> e1:4');
    assert.deepEqual(seen.log, [
      'state subscribed',
      'event 1 "a1"',
      'state subscribing',
      'state subscribed',
      'event 2 "a2"',
      'state subscribing',
      'error recovery_lost',
      'state subscribed',
      'gap e1:2 -> e1:4',
    ]);
    assert.deepEqual(
      relay.subscribes.map((op) => op.recover ?? null),
      [null, { epoch: 'e1', offset: 1 }, { epoch: 'e1', offset: 2 }],
    );
  });

  it('a topic subscribed anew (after its last unsubscribe) starts fresh: no recover, no gap', async (t) => {
    const relay = await new FakeRelay().start(t);
    const conn = connectTopics({ url: relay.url, ...FAST });
    t.after(() => conn.close());
    const first = conn.subscribe('desktop:a');
    const seen1 = new Seen();
    watch(first, seen1);
    await seen1.last('state subscribed');
    relay.publish('a', 'note', 'x');
    await seen1.last('event 1 "x"');
    first.unsubscribe();
    const again = conn.subscribe('desktop:a');
    const seen2 = new Seen();
    watch(again, seen2);
    await seen2.last('state subscribed');
    assert.deepEqual(
      relay.subscribes.map((op) => op.recover ?? null),
      [null, null],
    );
    assert.deepEqual(seen2.log, ['state subscribed']);
  });
});
