/**
 * The history a fleet shares (src/shard/federation/room-stream.ts), in
 * process, against a real `nats-server -js` this file starts: the stream
 * made once by racing nodes, events captured from core publishes (the Go
 * relay's wire) and republished in order with their sequence, a follower
 * that fills what core NATS dropped, and replays that are exact or refused.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNats, type NatsServer } from './helpers/nats.ts';
import { Cleanup } from './helpers/scope.ts';
import { epochOf, ReplayRefusal, RoomStream, type HistoryStreamConfig, type StoredEvent } from '../src/shard/federation/room-stream.ts';
import { validEpoch } from '../src/protocol/resume.ts';

const cleanup = new Cleanup();
let nats: NatsServer;

const CONFIG: HistoryStreamConfig = {
  name: 'rt-test',
  storage: 'memory',
  maxAgeMs: 120_000,
  maxBytes: 64 * 1024 * 1024,
  maxMsgs: 100_000,
  maxMsgSize: 66 * 1024,
};
const BOUNDS = { maxEvents: 1000, maxBytes: 1024 * 1024, timeoutMs: 5000 };

async function client(): Promise<NatsConnection> {
  const nc = await connect({ servers: nats.url, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  cleanup.after(() => nc.close());
  return nc;
}

/** Until `check()` holds (bounded). */
async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const text = (e: StoredEvent): string => new TextDecoder().decode(e.data);

/** Only one stream may capture `room.>` on a server: each test deletes its own when it ends. */
function dropAfter(t: { after(fn: () => unknown): void }, nc: NatsConnection, name: string): void {
  t.after(async () => {
    const { jetstreamManager } = await import('@nats-io/jetstream');
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(name).catch(() => undefined);
  });
}

before(async () => {
  nats = await startNats(cleanup, { jetstream: true });
});
after(() => cleanup.run());

describe('the stream', () => {
  test('nodes racing to create it agree on one stream and one epoch; a second ensure keeps it', async (t) => {
    const config = { ...CONFIG, name: 'race' };
    const ncs = await Promise.all([client(), client(), client()]);
    dropAfter(t, ncs[0]!, 'race');
    const streams = ncs.map((nc) => new RoomStream(nc, config));
    const results = await Promise.all(streams.map((s) => s.ensure()));
    assert.equal(new Set(results.map((r) => r.epoch)).size, 1);
    assert.ok(results.some((r) => r.outcome === 'created'));
    assert.match(results[0]!.epoch, /^race~\d{14}/);
    assert.ok(validEpoch(results[0]!.epoch), 'an epoch the wire takes back');
    const again = await streams[0]!.ensure();
    assert.deepEqual(again, { epoch: results[0]!.epoch, outcome: 'kept', fields: [] });
  });

  test('a node with other limits brings the stream to them, keeping its epoch', async (t) => {
    const nc = await client();
    dropAfter(t, nc, 'limits');
    const first = await new RoomStream(nc, { ...CONFIG, name: 'limits' }).ensure();
    const second = await new RoomStream(nc, { ...CONFIG, name: 'limits', maxMsgs: 500 }).ensure();
    assert.equal(second.outcome, 'updated');
    assert.deepEqual(second.fields, ['max_msgs']);
    assert.equal(second.epoch, first.epoch);
  });

  test('a core publish on room.{id} (the Go wire) is stored and reaches every follower with its sequence, in order, once', async (t) => {
    const config = { ...CONFIG, name: 'live' };
    const [pub, n1, n2] = await Promise.all([client(), client(), client()]);
    dropAfter(t, pub!, 'live');
    const s1 = new RoomStream(n1!, config);
    const s2 = new RoomStream(n2!, config);
    await s1.ensure();
    await s2.ensure();
    const got1: [number, string][] = [];
    const got2: [number, string][] = [];
    const f1 = await s1.follow('room.d1', await s1.latest('room.d1'), (e) => got1.push([e.seq, text(e)]));
    const f2 = await s2.follow('room.d1', await s2.latest('room.d1'), (e) => got2.push([e.seq, text(e)]));
    t.after(() => {
      f1.stop();
      f2.stop();
    });
    for (let i = 0; i < 20; i++) pub!.publish(i % 2 === 0 ? 'room.d1' : 'room.other', `{"i":${i}}`);
    await until(() => got1.length === 10 && got2.length === 10, '10 events on each follower');
    assert.deepEqual(got1, got2);
    assert.deepEqual(
      got1.map(([, t]) => t),
      [0, 2, 4, 6, 8, 10, 12, 14, 16, 18].map((i) => `{"i":${i}}`),
    );
    // Sequences grow and are not consecutive: room.other took the others.
    for (let k = 1; k < got1.length; k++) assert.equal(got1[k]![0], got1[k - 1]![0] + 2);
    assert.equal(await s1.latest('room.d1'), got1.at(-1)![0]);
    assert.equal(await s1.latest('room.never'), 0);
  });

  test('a follower started after N gets N+1 on, and nothing before', async (t) => {
    const nc = await client();
    dropAfter(t, nc, 'from');
    const s = new RoomStream(nc, { ...CONFIG, name: 'from' });
    await s.ensure();
    for (let i = 0; i < 6; i++) nc.publish('room.f', `{"n":${i}}`);
    let last = 0;
    const deadline = Date.now() + 5000;
    while (last < 6 && Date.now() < deadline) last = await s.latest('room.f');
    assert.equal(last, 6);
    const got: string[] = [];
    const f = await s.follow('room.f', 3, (e) => got.push(text(e)));
    t.after(() => f.stop());
    nc.publish('room.f', '{"n":6}');
    await until(() => got.length === 4, '3 stored and 1 live');
    assert.deepEqual(got, ['{"n":3}', '{"n":4}', '{"n":5}', '{"n":6}']);
  });
});

describe('replay', () => {
  after(async () => {
    const { jetstreamManager } = await import('@nats-io/jetstream');
    await (await jetstreamManager(pub)).streams.delete('replay');
  });
  let stream: RoomStream;
  let pub: NatsConnection;
  let epoch: string;
  const seqs: number[] = [];

  before(async () => {
    pub = await client();
    stream = new RoomStream(pub, { ...CONFIG, name: 'replay' });
    epoch = (await stream.ensure()).epoch;
    const seen: number[] = [];
    const f = await stream.follow('room.r', 0, (e) => seen.push(e.seq));
    for (let i = 0; i < 50; i++) {
      pub.publish('room.r', `{"n":${i}}`);
      pub.publish('room.noise', `{"n":${i}}`);
    }
    await until(() => seen.length === 50, '50 events');
    f.stop();
    seqs.push(...seen);
  });

  test('after N: exactly the events of that room after N, in order, up to the last one delivered', async () => {
    const from = seqs[9]!;
    const result = await stream.replay('room.r', epoch, from, seqs.at(-1)!, BOUNDS);
    assert.ok(result.ok);
    assert.deepEqual(
      result.events.map((e) => e.seq),
      seqs.slice(10),
    );
    assert.deepEqual(
      result.events.map(text),
      Array.from({ length: 40 }, (_, i) => `{"n":${i + 10}}`),
    );
    assert.ok(result.events.every((e) => e.subject === 'room.r'));
  });

  test('up to a point: events after it (live ones) are left to the follower', async () => {
    const result = await stream.replay('room.r', epoch, seqs[0]!, seqs[4]!, BOUNDS);
    assert.ok(result.ok);
    assert.deepEqual(
      result.events.map((e) => e.seq),
      seqs.slice(1, 5),
    );
  });

  test('at the last offset: recovered with nothing to send', async () => {
    const result = await stream.replay('room.r', epoch, seqs.at(-1)!, seqs.at(-1)!, BOUNDS);
    assert.deepEqual(result, { ok: true, events: [] });
  });

  test('another epoch, an offset past the room, or more than the bounds: refused, never a part', async () => {
    assert.deepEqual(await stream.replay('room.r', `${epoch}x`, seqs[0]!, seqs.at(-1)!, BOUNDS), { ok: false, reason: ReplayRefusal.EPOCH });
    assert.deepEqual(await stream.replay('room.r', epoch, seqs.at(-1)! + 1, seqs.at(-1)!, BOUNDS), { ok: false, reason: ReplayRefusal.AHEAD });
    assert.deepEqual(await stream.replay('room.r', epoch, seqs[0]!, seqs.at(-1)!, { ...BOUNDS, maxEvents: 10 }), {
      ok: false,
      reason: ReplayRefusal.TOO_LARGE,
    });
    assert.deepEqual(await stream.replay('room.r', epoch, seqs[0]!, seqs.at(-1)!, { ...BOUNDS, maxBytes: 100 }), {
      ok: false,
      reason: ReplayRefusal.TOO_LARGE,
    });
  });
});

test('past the stream bounds: what was discarded is refused, what is kept still recovers', async (t) => {
  const pub = await client();
  dropAfter(t, pub, 'bounded');
  const stream = new RoomStream(pub, { ...CONFIG, name: 'bounded', maxMsgs: 20 });
  const { epoch } = await stream.ensure();
  const { jetstream } = await import('@nats-io/jetstream');
  const js = jetstream(pub);
  const seen: number[] = [];
  // The acks tell the sequences (a follower this far behind would find the front gone).
  for (let i = 0; i < 30; i++) seen.push((await js.publish('room.b', `{"n":${i}}`)).seq);
  // Seqs 1–10 were discarded: resuming after 5 would miss 6–10.
  assert.deepEqual(await stream.replay('room.b', epoch, seen[4]!, seen.at(-1)!, BOUNDS), { ok: false, reason: ReplayRefusal.DISCARDED });
  // After 10 the stream holds everything (11 is its first).
  const kept = await stream.replay('room.b', epoch, seen[9]!, seen.at(-1)!, BOUNDS);
  assert.ok(kept.ok);
  assert.deepEqual(
    kept.events.map((e) => e.seq),
    seen.slice(10),
  );
});

test('a memory stream lost with its nats-server comes back as a new epoch: old positions are refused', async () => {
  const own = await startNats(cleanup, { jetstream: true });
  const nc = await connect({ servers: own.url, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
  cleanup.after(() => nc.close());
  const stream = new RoomStream(nc, { ...CONFIG, name: 'restart' });
  const { epoch: before } = await stream.ensure();
  const seen: number[] = [];
  await stream.follow('room.m', 0, (e) => seen.push(e.seq));
  for (let i = 0; i < 5; i++) nc.publish('room.m', `{"n":${i}}`);
  await until(() => seen.length === 5, '5 events');
  await own.kill();
  await own.start();
  // The client reconnects by itself; the stream is gone until a node ensures it again.
  const deadline = Date.now() + 10_000;
  let after: string | null = null;
  while (after === null) {
    after = await stream
      .ensure()
      .then((r) => r.epoch)
      .catch(() => null);
    if (after === null) {
      if (Date.now() > deadline) throw new Error('stream not recreated');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  assert.notEqual(after, before);
  assert.deepEqual(await stream.replay('room.m', before, seen[1]!, seen[4]!, BOUNDS), { ok: false, reason: ReplayRefusal.EPOCH });
  assert.equal(await stream.latest('room.m'), 0);
  assert.equal(epochOf({ created: '2026-12-07T14:39:47.123456789Z', config: { name: 'n' } }), 'n~20261207143947123456789');
  assert.equal(epochOf({ created: '2026-12-07T14:39:47.123456789Z', config: { name: 'n'.repeat(64) } }).length, 36 + 1 + 23, 'at most 64 characters');
});

describe('--history-stream options', () => {
  const base = { jwtSecret: 's', natsUrls: 'nats://127.0.0.1:4222' };
  test('off by default; on, its defaults: memory, 2 minutes, 256 MiB, a million messages', async () => {
    const { resolveServeConfig } = await import('../src/config.ts');
    assert.equal(resolveServeConfig(base).historyStream, '');
    const config = resolveServeConfig({ ...base, historyStream: 'moodio-history' });
    assert.deepEqual(
      [config.historyStream, config.historyStreamStorage, config.historyStreamMaxAgeMs, config.historyStreamMaxBytes, config.historyStreamMaxMsgs],
      ['moodio-history', 'memory', 120_000, 256 * 1024 * 1024, 1_000_000],
    );
  });

  test('a name JetStream or a subject would refuse, a storage other than memory or file, or no --nats-url: refused at start, naming the option', async () => {
    const { resolveServeConfig } = await import('../src/config.ts');
    for (const [raw, option] of [
      [{ ...base, historyStream: 'a.b' }, '--history-stream'],
      [{ ...base, historyStream: 'a b' }, '--history-stream'],
      [{ ...base, historyStream: 'x'.repeat(65) }, '--history-stream'],
      [{ ...base, historyStream: 'h', historyStreamStorage: 'disk' }, '--history-stream-storage'],
      [{ ...base, historyStream: 'h', historyStreamMaxAgeMs: '500ms' }, '--history-stream-max-age'],
      [{ ...base, historyStream: 'h', historyStreamMaxMsgs: '10' }, '--history-stream-max-msgs'],
      [{ jwtSecret: 's', historyStream: 'h' }, '--history-stream'],
    ] as const) {
      assert.throws(
        () => resolveServeConfig(raw as Record<string, string>),
        (err: Error & { code?: string; option?: string }) => err.code === 'ERR_CONFIG' && err.option === option,
        JSON.stringify(raw),
      );
    }
  });
});
