/**
 * The window of the fleet's stream a node keeps per followed room
 * (src/shard/stream-log.ts), in process on the test's clock: offsets that
 * skip numbers, the rule for what it serves, events fetched from the stream
 * put in front, bounds that move the window's start, and a cursor that says
 * `gone` rather than skip.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LogCursor, LogEntry } from '../src/shard/room-log.ts';
import { PAGES } from '../src/shard/event-ring.ts';
import { StreamLog } from '../src/shard/stream-log.ts';

function drain(cursor: LogCursor): (number | string | null)[] {
  const out: (number | string | null)[] = [];
  for (;;) {
    const read = cursor.read();
    if (read === null || typeof read === 'string') {
      out.push(read);
      return out;
    }
    out.push((read as LogEntry).offset);
  }
}

function log(now = { t: 0 }, bounds: Partial<{ maxAgeMs: number; maxEvents: number; maxRoomBytes: number }> = {}): StreamLog {
  const l = new StreamLog({ maxAgeMs: 60_000, maxEvents: 100, maxRoomBytes: 1 << 20, now: () => now.t, ...bounds });
  l.setEpoch('s~1');
  return l;
}

test('a followed room serves resumes from where it began following, with the stream’s offsets (not consecutive)', () => {
  const l = log();
  assert.equal(l.follows('r'), false);
  l.begin('r', 10);
  assert.equal(l.follows('r'), true);
  assert.deepEqual(l.latest('r'), { epoch: 's~1', offset: 10 });
  for (const seq of [12, 15, 21]) l.append('r', seq, `{"type":"e${seq}"}`, false);
  assert.deepEqual(l.latest('r'), { epoch: 's~1', offset: 21 });
  assert.deepEqual(drain(l.since('r', { epoch: 's~1', offset: 10 })!), [12, 15, 21, null]);
  assert.deepEqual(drain(l.since('r', { epoch: 's~1', offset: 13 })!), [15, 21, null], 'a position between two events');
  assert.equal(l.since('r', { epoch: 's~1', offset: 9 }), null, 'before the window: read from the stream first');
  assert.equal(l.since('r', { epoch: 's~1', offset: 22 }), null, 'past the room');
  assert.equal(l.since('r', { epoch: 's~2', offset: 12 }), null, 'another epoch');
  assert.equal(l.stamp(), 0, 'the shard gives no offset: the stream does');
  l.append('r', 20, 'late', false);
  assert.equal(l.latest('r').offset, 21, 'an offset not after the last is ignored');
});

test('events fetched from the stream go in front when they reach the window, whatever order the fetches end in', () => {
  const l = log();
  l.begin('r', 10);
  l.append('r', 12, 'x', false);
  assert.equal(l.prepend('r', 3, 9, [{ offset: 5, text: 'a' }]), false, 'a fetch up to 9 does not reach a window from 10');
  assert.equal(l.covers('r', { epoch: 's~1', offset: 3 }), false);
  // Two resumes fetched (6, 10] and (3, 10] at once; the nearer one ends first.
  assert.equal(l.prepend('r', 6, 10, [{ offset: 8, text: 'b' }]), true);
  const both = [
    { offset: 5, text: 'a' },
    { offset: 8, text: 'b' },
  ];
  assert.equal(l.prepend('r', 3, 10, both), true);
  assert.equal(l.prepend('r', 6, 10, [{ offset: 8, text: 'b' }]), true, 'already there');
  assert.equal(l.covers('r', { epoch: 's~1', offset: 3 }), true);
  assert.deepEqual(drain(l.since('r', { epoch: 's~1', offset: 3 })!), [5, 8, 12, null], 'each once, in order');
});

test('bounds move the window’s start; a cursor behind it says gone; a new epoch ends every window', () => {
  const now = { t: 0 };
  const l = log(now, { maxEvents: 2 });
  l.begin('r', 0);
  l.append('r', 1, 'a', false);
  const cursor = l.since('r', { epoch: 's~1', offset: 0 })!;
  l.append('r', 2, 'b', false);
  l.append('r', 3, 'c', false);
  assert.equal(l.base('r'), 1, 'the oldest let go: events after 1 are all here');
  assert.equal(cursor.read(), 'gone', 'its next event (1) was let go');
  assert.equal(l.since('r', { epoch: 's~1', offset: 0 }), null);
  assert.deepEqual(drain(l.since('r', { epoch: 's~1', offset: 1 })!), [2, 3, null]);
  now.t = 61_000;
  assert.equal(l.since('r', { epoch: 's~1', offset: 1 }), null, 'aged out');
  assert.deepEqual(drain(l.since('r', { epoch: 's~1', offset: 3 })!), [null], 'the latest position still serves');
  const held = l.since('r', { epoch: 's~1', offset: 3 })!;
  assert.equal(l.setEpoch('s~2'), true);
  assert.equal(held.read(), 'gone');
  assert.equal(l.follows('r'), false, 'the room follows the new stream anew');
  assert.equal(l.setEpoch('s~2'), false);
  l.stop();
});

test('while the bus is down no room counts as followed (its events are delivered here without an offset)', () => {
  const l = log();
  let up = true;
  l.busUp = () => up;
  l.begin('r', 0);
  assert.equal(l.follows('r'), true);
  up = false;
  assert.equal(l.follows('r'), false);
  l.stop();
});

test("a room no longer followed gives its window's pages back to the thread's pool, and a cursor on it reads 'gone'", () => {
  const l = log();
  l.begin('r', 0);
  const text = `{"type":"e","payload":"${'p'.repeat(3000)}"}`;
  for (let seq = 1; seq <= 20; seq++) l.append('r', seq, text, false);
  const cursor = l.since('r', { epoch: 's~1', offset: 0 })!;
  const spare = PAGES.spareBytes;
  l.end('r');
  assert.ok(PAGES.spareBytes > spare, `the pool's spare stayed at ${PAGES.spareBytes}`);
  assert.equal(cursor.read(), 'gone');
  assert.equal(l.follows('r'), false);
});
