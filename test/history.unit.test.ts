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
  assert.equal(h.roomBytes('a'), 2 * per);
  h.stamp('a', text, false);
  assert.equal(h.roomBytes('a'), 2 * per);
  // A character of 2 UTF-8 bytes counts 2.
  const { h: wide } = history({ maxRoomBytes: 1 << 20 });
  t.after(() => wide.stop());
  wide.stamp('a', 'é'.repeat(100), false);
  assert.equal(wide.roomBytes('a'), 200 + ENTRY_OVERHEAD);
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

/** What a shard's history holds with one room of `events` texts `text` (its log and its ring's buffers). */
function heldWith(events: number, text: string): number {
  const { h } = history();
  for (let i = 0; i < events; i++) h.stamp('r', text, false);
  const held = h.bytes;
  h.stop();
  return held;
}

test('the shard cap counts what the logs hold; over it, the room holding the most is emptied first, down to 90% of it', (t) => {
  const text = 'y'.repeat(1000);
  const { h: probe } = history();
  t.after(() => probe.stop());
  probe.stamp('quiet', text, false);
  for (const key of ['old', 'new']) for (let i = 0; i < 4; i++) probe.stamp(key, text, false);
  const others = probe.bytes;
  assert.equal(others, heldWith(1, text) + 2 * heldWith(4, text), 'the shard holds what its logs hold');
  // 'big' may hold up to what it holds with 7 events; it crosses the cap when it outgrows that, being the largest then.
  const cap = others + heldWith(7, text);
  const { h, advance } = history({ maxBytes: cap });
  t.after(() => h.stop());
  const full = (key: string) => h.since(key, { epoch: h.latest(key).epoch, offset: 0 }) !== null;
  h.stamp('quiet', text, false);
  advance(10);
  for (const key of ['old', 'new']) {
    for (let i = 0; i < 4; i++) h.stamp(key, text, false);
    advance(10);
  }
  let stamped = 0;
  while (full('big') || stamped === 0) {
    h.stamp('big', text, false);
    stamped++;
    assert.ok(h.bytes <= cap, `over the cap after ${stamped} events: ${h.bytes} > ${cap}`);
    assert.ok(stamped < 100, 'never over the cap');
  }
  assert.ok(heldWith(stamped, text) > heldWith(7, text), `emptied at ${stamped} events, once it outgrew the cap`);
  assert.deepEqual([full('quiet'), full('old'), full('new')], [true, true, true], 'the others kept');
  assert.equal(h.since('big', h.latest('big')) !== null, true, 'its epoch and offset stay');
  assert.ok(h.bytes <= cap * 0.9);
});

test('the shard cap: among rooms holding as much, the one whose oldest event is the oldest is emptied first', (t) => {
  const text = 'z'.repeat(1000);
  const four = heldWith(4, text);
  const { h, advance } = history({ maxBytes: 3 * four - 1 });
  t.after(() => h.stop());
  const full = (key: string) => h.since(key, { epoch: h.latest(key).epoch, offset: 0 }) !== null;
  for (const key of ['a', 'b']) {
    for (let i = 0; i < 4; i++) h.stamp(key, text, false);
    advance(10);
  }
  for (let i = 0; i < 4; i++) h.stamp('c', text, false);
  assert.deepEqual([full('a'), full('b'), full('c')], [false, true, true]);
  assert.ok(h.bytes <= (3 * four - 1) * 0.9);
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
  assert.equal(h.bytes, 2 * LOG_OVERHEAD, 'emptied logs hold no buffer');
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

test('a cursor that stalls behind the history pins none of the events let go of: it reads gone, and the sweep gives their memory back', (t) => {
  const { h } = history({ maxEvents: 10 });
  t.after(() => h.stop());
  const epoch = h.latest('a').epoch;
  for (let i = 0; i < 10; i++) h.stamp('a', `event ${i} ${'x'.repeat(1000)}`, false);
  const stalled = h.since('a', { epoch, offset: 0 })!;
  const whole = h.bytes;
  // 50 small ones: the 10 large are let go.
  for (let i = 0; i < 50; i++) h.stamp('a', `later ${i}`, false);
  h.sweep();
  assert.ok(h.bytes * 4 < whole, `held ${h.bytes} bytes after the sweep, ${whole} while the large events were kept`);
  assert.equal(stalled.read(), 'gone');
  assert.deepEqual(
    drain(h.since('a', { epoch, offset: 50 })!).map((e) => e.text),
    Array.from({ length: 10 }, (_, i) => `later ${40 + i}`),
  );
});

test('the history keeps its events off the heap, and holds no more than it counts: texts built as the relay builds them', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const { h } = history({ maxEvents: 100_000, maxRoomBytes: 1 << 30 });
  t.after(() => h.stop());
  const stamp = ',"sessionId":"3f1c2a4e-0000-4000-8000-0123456789ab","userId":"user-bench-0001","firstName":"Bench"';
  const EVENTS = 50_000;
  // The relay's text: its parts joined (a rope), the payload a slice of the client's whole frame.
  const relayed = (n: number) => {
    const json = Buffer.from(
      `{"type":"asset_moved","payload":{"assetId":"asset-${String(n).padStart(6, '0')}","x":${n % 1920}.5,"y":${n % 1080}.25}}`,
    ).toString();
    return legacyText('asset_moved', stamp, 1_700_000_000_000 + n, memberText(json, 'payload'));
  };
  gc();
  const before = process.memoryUsage();
  let texts = 0;
  for (let n = 0; n < EVENTS; n++) {
    const text = relayed(n);
    texts += text.length;
    h.stamp('room', text, false);
  }
  // The buffers a ring outgrew are freed once collected, and their memory counted off after the collector's sweep.
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  const after = process.memoryUsage();
  const heap = after.heapUsed - before.heapUsed;
  const buffers = after.arrayBuffers - before.arrayBuffers;
  t.diagnostic(
    `${EVENTS} events of ${(texts / EVENTS).toFixed(0)} characters: heap ${(heap / EVENTS).toFixed(1)} bytes each, buffers ${(buffers / EVENTS).toFixed(0)}, counted ${(h.bytes / EVENTS).toFixed(0)}`,
  );
  assert.ok(heap < 32 * EVENTS, `${(heap / EVENTS).toFixed(1)} bytes of heap per event: the events are on the heap`);
  // 64 KiB for what else the process allocated meanwhile.
  assert.ok(buffers <= h.bytes + 65_536, `buffers hold ${buffers} bytes, counted ${h.bytes}`);
  // And every one of them reads back as it was given.
  const all = drain(h.since('room', { epoch: h.latest('room').epoch, offset: 0 })!);
  assert.equal(all.length, EVENTS);
  assert.equal(all[12_345]!.text, relayed(12_345));
});

test('the shard figure never drifts from what the logs hold, whatever path let events go (seeded: stamps over the bounds and the cap, resumes that age events out, clears, sweeps)', (t) => {
  const inUse = new Set<string>();
  const { h, advance } = history({ maxAgeMs: 1000, maxEvents: 50, maxRoomBytes: 64 * 1024, maxBytes: 400 * 1024 }, inUse);
  t.after(() => h.stop());
  let a = 27;
  const next = () => {
    a = (a * 1103515245 + 12345) >>> 0;
    return a / 4294967296;
  };
  const rooms = ['a', 'b', 'c', 'd', 'e', 'f'];
  for (let step = 0; step < 5000; step++) {
    const room = rooms[Math.floor(next() * rooms.length)]!;
    const r = next();
    if (r < 0.6) h.stamp(room, 'x'.repeat(Math.floor(next() * next() * 6000)), false);
    else if (r < 0.8) h.since(room, { epoch: h.latest(room).epoch, offset: 0 });
    else if (r < 0.82) h.clear(next() < 0.5 ? room : null);
    else if (r < 0.85) h.sweep();
    else if (r < 0.9) inUse[next() < 0.5 ? 'add' : 'delete'](room);
    advance(Math.floor(next() * 60));
    assert.ok(h.bytes <= 400 * 1024, `step ${step}: ${h.bytes} over the cap`);
  }
  // Emptied, every log holds its overhead alone; forgotten, nothing: any drift shows here.
  h.clear(null);
  assert.equal(h.bytes, h.rooms * LOG_OVERHEAD);
  inUse.clear();
  h.sweep();
  assert.deepEqual([h.rooms, h.bytes], [0, 0]);
});

test('newestFrame: the frame of the event just stamped, from the bytes kept, equals encoding its text with the offset; null when the event was not kept or is not the newest', async (t) => {
  const { encodeTextFrame } = await import('../src/protocol/frame.ts');
  const { withOffset } = await import('../src/protocol/event-frames.ts');
  const { h } = history({ maxRoomBytes: 70_000 + ENTRY_OVERHEAD });
  t.after(() => h.stop());
  // Texts whose frames take each header size (under 126 bytes, under 64 KiB), and characters of 2 to 4 UTF-8 bytes.
  const texts = ['{"a":1}', legacyText('t', ',"sessionId":"s"', 1, '{"x":"é€😀"}'), `{"p":"${'y'.repeat(200)}"}`, `{"p":"${'é'.repeat(30_000)}"}`];
  for (const text of texts) {
    const offset = h.stamp('room', text, false);
    const frame = h.newestFrame('room', offset);
    assert.ok(frame !== null);
    assert.ok(frame.equals(encodeTextFrame(withOffset(text, offset))), `for a text of ${text.length} characters`);
    // Its bytes are its own: the room's next text does not change them.
    const copy = Buffer.from(frame);
    h.stamp('room', '{"b":2}', false);
    assert.ok(frame.equals(copy));
    assert.equal(h.newestFrame('room', offset), null, 'no longer the newest');
  }
  assert.equal(h.newestFrame('other', 1), null, 'a room with no log');
  // A text over the room's byte bound is let go as it is stamped: no frame from it.
  const over = h.stamp('room', `{"p":"${'z'.repeat(80_000)}"}`, false);
  assert.equal(h.newestFrame('room', over), null);
  // No history kept (age 0): offsets still given, no frame.
  const { h: none } = history({ maxAgeMs: 0 });
  t.after(() => none.stop());
  assert.equal(none.newestFrame('room', none.stamp('room', '{"a":1}', false)), null);
});

test('encodeOffsetFrame writes the offset member byte by byte: equal to encoding the text with it, for offsets of every digit count and across header sizes', async () => {
  const { encodeTextFrame, encodeOffsetFrame } = await import('../src/protocol/frame.ts');
  const { withOffset } = await import('../src/protocol/event-frames.ts');
  const offsets = [0, 1, 9, 10, 99, 100, 12_345, 1_234_567, 12_345_678, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 10 ** 15, Number.MAX_SAFE_INTEGER];
  // Texts whose length with the member (the kept bytes, 11 bytes and the digits) is each header size's last and first:
  // 107 kept bytes make 125 with 7 digits and 126 with 8; 65,522 make 65,535 with 2 and 65,536 with 3.
  const bodies = ['{"a":1}', `{"x":"é€😀"}`, `{"p":"${'y'.repeat(100)}"}`, `{"p":"${'y'.repeat(65_515)}"}`];
  const lengths = new Set<number>();
  for (const body of bodies) {
    const source = Buffer.concat([Buffer.from('garbage before'), Buffer.from(body), Buffer.from('after')]);
    const start = 'garbage before'.length;
    const end = start + Buffer.byteLength(body) - 1; // without the closing brace
    for (const offset of offsets) {
      const frame = encodeOffsetFrame(source, start, end, offset);
      const expected = encodeTextFrame(withOffset(body, offset));
      lengths.add(Buffer.byteLength(withOffset(body, offset)));
      assert.ok(frame.equals(expected), `offset ${offset}, a body of ${body.length} characters: ${frame.subarray(-30).toString('latin1')}`);
    }
  }
  for (const bound of [125, 126, 65_535, 65_536]) assert.ok(lengths.has(bound), `no text of ${bound} bytes`);
});
