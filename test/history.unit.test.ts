/**
 * The history module's bounds (shard/history.ts), in process with a clock
 * the test moves: count, bytes and age per room, the shard's byte cap
 * (the rooms holding the most let go first, the oldest among equals), epochs that never name two
 * sequences, and cursors that say `gone` rather than skip.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { legacyText } from '../src/protocol/event-frames.ts';
import { memberText } from '../src/protocol/json-member.ts';
import { ENTRY_OVERHEAD, History, LOG_OVERHEAD, type HistoryOptions } from '../src/shard/history.ts';
import type { LogCursor, LogEntry } from '../src/shard/room-log.ts';

function history(options: Partial<HistoryOptions> = {}, inUse = new Set<string>()) {
  let now = 1_000_000;
  const h = new History({
    maxAgeMs: 120_000,
    maxEvents: 1000,
    maxRoomBytes: 1 << 20,
    maxBytes: 1 << 30,
    inUse: (key) => inUse.has(key),
    now: () => now,
    epoch: 'test',
    ...options,
  });
  return { h, advance: (ms: number) => (now += ms), inUse };
}

/** Every entry a cursor gives until it catches up. */
function drain(cursor: LogCursor): LogEntry[] {
  const out: LogEntry[] = [];
  for (;;) {
    const read = cursor.read();
    if (read === null) return out;
    assert.ok(typeof read === 'object', `read ${read}`);
    out.push(read);
  }
}

test('offsets are consecutive from 1 per room; latest and since give what was stamped, in order', (t) => {
  const { h } = history();
  t.after(() => h.stop());
  assert.deepEqual(h.latest('a'), { epoch: 'test.1', offset: 0 });
  for (let i = 1; i <= 5; i++) assert.equal(h.stamp('a', `{"n":${i}}`, false), i);
  assert.equal(h.stamp('b', '{}', true), 1);
  assert.deepEqual(h.latest('a'), { epoch: 'test.1', offset: 5 });
  assert.deepEqual(h.latest('b'), { epoch: 'test.2', offset: 1 });
  assert.deepEqual(
    drain(h.since('a', { epoch: 'test.1', offset: 2 })!).map((e) => [e.offset, e.text]),
    [
      [3, '{"n":3}'],
      [4, '{"n":4}'],
      [5, '{"n":5}'],
    ],
  );
  assert.deepEqual(drain(h.since('a', { epoch: 'test.1', offset: 5 })!), []);
  assert.equal(h.since('a', { epoch: 'test.2', offset: 0 }), null, 'another room’s epoch');
  assert.equal(h.since('a', { epoch: 'test.1', offset: 6 }), null, 'an offset never given');
  assert.equal(h.since('c', { epoch: 'test.1', offset: 0 }), null, 'no log');
  // A cursor follows the room's new events.
  const cursor = h.since('a', { epoch: 'test.1', offset: 5 })!;
  assert.equal(cursor.read(), null);
  h.stamp('a', '{"n":6}', false);
  assert.equal((cursor.read() as LogEntry).offset, 6);
});

test('the count bound lets the oldest go; a position before them is not recovered, and a cursor behind them reads gone', (t) => {
  const { h } = history({ maxEvents: 3 });
  t.after(() => h.stop());
  h.latest('a');
  const behind = h.since('a', { epoch: 'test.1', offset: 0 })!;
  for (let i = 1; i <= 3; i++) h.stamp('a', `${i}`, false);
  assert.ok(h.since('a', { epoch: 'test.1', offset: 0 }) !== null, '3 kept: from 0 is whole');
  h.stamp('a', '4', false);
  assert.equal(h.since('a', { epoch: 'test.1', offset: 0 }), null, 'event 1 let go');
  assert.deepEqual(
    drain(h.since('a', { epoch: 'test.1', offset: 1 })!).map((e) => e.offset),
    [2, 3, 4],
  );
  assert.equal(behind.read(), 'gone');
});

test('the byte bound per room counts each text and its overhead', (t) => {
  const text = 'x'.repeat(100);
  const per = text.length + ENTRY_OVERHEAD;
  const { h } = history({ maxRoomBytes: per * 2 });
  t.after(() => h.stop());
  h.stamp('a', text, false);
  h.stamp('a', text, false);
  assert.equal(h.bytes, LOG_OVERHEAD + 2 * per);
  h.stamp('a', text, false);
  assert.equal(h.bytes, LOG_OVERHEAD + 2 * per);
  assert.equal(h.since('a', { epoch: 'test.1', offset: 0 }), null);
  assert.ok(h.since('a', { epoch: 'test.1', offset: 1 }) !== null);
});

test('the age bound: an event older than maxAgeMs is let go, at a resume and by the sweep; 0 keeps none but still counts', (t) => {
  const { h, advance } = history({ maxAgeMs: 1000 });
  t.after(() => h.stop());
  h.stamp('a', 'old', false);
  advance(600);
  h.stamp('a', 'new', false);
  assert.ok(h.since('a', { epoch: 'test.1', offset: 0 }) !== null);
  advance(400);
  assert.equal(h.since('a', { epoch: 'test.1', offset: 0 }), null, 'the first is 1000 ms old');
  assert.ok(h.since('a', { epoch: 'test.1', offset: 1 }) !== null);
  advance(600);
  h.sweep();
  assert.equal(h.rooms, 0, 'empty and not in use: forgotten');
  assert.equal(h.bytes, 0);

  const { h: off } = history({ maxAgeMs: 0 });
  t.after(() => off.stop());
  assert.equal(off.recording, false);
  assert.equal(off.stamp('a', 'x', false), 1);
  assert.equal(off.stamp('a', 'x', false), 2);
  assert.equal(off.since('a', { epoch: 'test.1', offset: 1 }), null);
  assert.deepEqual(drain(off.since('a', { epoch: 'test.1', offset: 2 })!), [], 'nothing missed');
});

test('a log outlives its room while it holds events; once forgotten, the room starts a new epoch and old positions are not recovered', (t) => {
  const inUse = new Set(['a']);
  const { h, advance } = history({ maxAgeMs: 1000 }, inUse);
  t.after(() => h.stop());
  h.stamp('a', '1', false);
  const cursor = h.since('a', { epoch: 'test.1', offset: 0 })!;
  inUse.delete('a');
  h.sweep();
  assert.equal(h.rooms, 1, 'it holds an event');
  advance(1000);
  h.sweep();
  assert.equal(h.rooms, 0);
  assert.equal(cursor.read(), 'gone');
  assert.deepEqual(h.latest('a'), { epoch: 'test.2', offset: 0 }, 'a new incarnation');
  assert.equal(h.since('a', { epoch: 'test.1', offset: 1 }), null);
  // A room in use keeps its log (and epoch) even once empty.
  inUse.add('a');
  advance(5000);
  h.sweep();
  assert.equal(h.latest('a').epoch, 'test.2');
});

test('the shard cap empties the rooms holding the most first, the oldest first among equals, down to 90% of it', (t) => {
  const text = 'y'.repeat(1000 - ENTRY_OVERHEAD);
  const cap = 4 * LOG_OVERHEAD + 14_000;
  const { h, advance } = history({ maxBytes: cap });
  t.after(() => h.stop());
  const full = (key: string) => h.since(key, { epoch: h.latest(key).epoch, offset: 0 }) !== null;
  // A quiet room, written first (its oldest event is the oldest), then two busier ones.
  h.stamp('quiet', text, false);
  advance(10);
  for (const key of ['old', 'new']) {
    for (let i = 0; i < 4; i++) h.stamp(key, text, false);
    advance(10);
  }
  assert.equal(h.bytes, 3 * LOG_OVERHEAD + 9000);
  // 'big' grows past the others: over the cap, it goes whole, and the rest are under 90%.
  for (let i = 0; i < 5; i++) h.stamp('big', text, false);
  assert.equal(h.bytes, cap, 'at the cap, not over it');
  h.stamp('big', text, false);
  assert.deepEqual([full('quiet'), full('old'), full('new'), full('big')], [true, true, true, false]);
  assert.equal(h.since('big', h.latest('big')) !== null, true, 'its epoch and offset stay');
  assert.ok(h.bytes <= cap * 0.9);
  // Among rooms holding as much, the one whose oldest event is the oldest goes first; the quiet room stays.
  for (let i = 0; i < 2; i++) h.stamp('quiet', text, false);
  for (let i = 0; i < 4; i++) h.stamp('big', text, false);
  assert.deepEqual([full('quiet'), full('old'), full('new')], [true, false, true]);
  const big = h.latest('big');
  assert.equal(drain(h.since('big', { epoch: big.epoch, offset: big.offset - 4 })!).length, 4, "big's new events kept");
  assert.ok(h.bytes <= cap * 0.9);
});

test('clear (the bus missed events): the epoch and offsets go on, no resume from before is whole', (t) => {
  const { h } = history();
  t.after(() => h.stop());
  for (let i = 1; i <= 3; i++) h.stamp('a', `${i}`, false);
  h.stamp('b', 'x', false);
  h.clear('a');
  assert.equal(h.since('a', { epoch: 'test.1', offset: 1 }), null);
  assert.deepEqual(drain(h.since('a', { epoch: 'test.1', offset: 3 })!), [], 'at the latest offset: nothing missed here');
  assert.equal(h.stamp('a', '4', false), 4, 'the sequence goes on');
  assert.ok(h.since('b', { epoch: 'test.2', offset: 0 }) !== null, 'another room kept');
  h.clear(null);
  assert.equal(h.since('b', { epoch: 'test.2', offset: 0 }), null);
  assert.equal(h.bytes, 2 * LOG_OVERHEAD);
});

test('a shard epoch is drawn at start: two histories never share one', (t) => {
  const a = new History({ maxAgeMs: 1, maxEvents: 1, maxRoomBytes: 4096, maxBytes: 1 << 20, inUse: () => false });
  const b = new History({ maxAgeMs: 1, maxEvents: 1, maxRoomBytes: 4096, maxBytes: 1 << 20, inUse: () => false });
  t.after(() => {
    a.stop();
    b.stop();
  });
  assert.notEqual(a.latest('x').epoch, b.latest('x').epoch);
  assert.match(a.latest('x').epoch, /^[A-Za-z0-9_.~-]{1,64}$/);
});

test('a cursor that stalls behind the history pins none of the events let go of; it reads gone', async (t) => {
  // The collector, for this test alone: whether an entry is still reachable is the question.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const { h } = history({ maxEvents: 10 });
  t.after(() => h.stop());
  const epoch = h.latest('a').epoch;
  for (let i = 0; i < 10; i++) h.stamp('a', `event ${i} ${'x'.repeat(1000)}`, false);
  const stalled = h.since('a', { epoch, offset: 0 })!;
  const refs = drain(h.since('a', { epoch, offset: 0 })!).map((entry) => new WeakRef(entry));
  assert.equal(refs.length, 10);
  // 50 more: the 10 are let go, and fewer than the 64 that compact the array (each slot is cleared as it goes).
  for (let i = 0; i < 50; i++) h.stamp('a', `later ${i}`, false);
  await new Promise((resolve) => setImmediate(resolve));
  gc();
  assert.equal(refs.filter((ref) => ref.deref() !== undefined).length, 0, 'evicted entries still reachable');
  assert.equal(stalled.read(), 'gone');
});

test('what an event holds in the heap is what the history counts: a text built as the relay builds it, in a room nobody else hears', (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const { h } = history({ maxEvents: 100_000, maxRoomBytes: 1 << 30 });
  t.after(() => h.stop());
  const stamp = ',"sessionId":"3f1c2a4e-0000-4000-8000-0123456789ab","userId":"user-bench-0001","firstName":"Bench"';
  const EVENTS = 50_000;
  // The relay's text: its parts joined (a rope), the payload a slice of the client's whole frame.
  // Only a room with receivers has it flattened, by the frame it writes; a lone member's event is kept as built.
  const relayed = (n: number) => {
    const json = Buffer.from(
      `{"type":"asset_moved","payload":{"assetId":"asset-${String(n).padStart(6, '0')}","x":${n % 1920}.5,"y":${n % 1080}.25}}`,
    ).toString();
    return legacyText('asset_moved', stamp, 1_700_000_000_000 + n, memberText(json, 'payload'));
  };
  gc();
  const before = process.memoryUsage().heapUsed;
  let counted = 0;
  for (let n = 0; n < EVENTS; n++) {
    const text = relayed(n);
    counted += text.length + ENTRY_OVERHEAD;
    h.stamp('room', text, false);
  }
  gc();
  const held = process.memoryUsage().heapUsed - before;
  t.diagnostic(`${EVENTS} events: ${(held / EVENTS).toFixed(0)} bytes of heap each, counted ${(counted / EVENTS).toFixed(0)}`);
  assert.ok(held <= counted, `held ${(held / EVENTS).toFixed(0)} bytes per event, counted ${(counted / EVENTS).toFixed(0)}`);
});
