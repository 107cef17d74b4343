/**
 * The ring that keeps a room's events off the heap (shard/event-ring.ts):
 * every event reads back as it was kept, in order, whatever pushes, shifts,
 * moves and trims happened between (checked against a plain array under a
 * seeded random sequence), and what it holds stays within its bounds.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { EventRing, MAX_PAGE_BYTES, MIN_PAGE_BYTES, PAGES, SLOT_BYTES } from '../src/shard/event-ring.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

interface Kept {
  offset: number;
  at: number;
  nullPayload: boolean;
  text: string;
}

function assertSame(ring: EventRing, model: Kept[]): void {
  assert.equal(ring.count, model.length);
  assert.equal(
    ring.textBytes,
    model.reduce((n, e) => n + Buffer.byteLength(e.text), 0),
  );
  for (let i = 0; i < model.length; i++) {
    assert.deepEqual(ring.entry(i), model[i]);
    assert.equal(ring.offsetAt(i), model[i]!.offset);
    assert.equal(ring.atAt(i), model[i]!.at);
  }
}

test('pushes, shifts, moves and trims in any order: every event reads back as kept, in order (against an array, 20,000 random steps)', () => {
  const next = mulberry32(21);
  const ring = new EventRing();
  const model: Kept[] = [];
  let offset = 0;
  const words = ['a', 'asset_moved', 'é', '日本', '{"x":1}', '🙂'];
  for (let step = 0; step < 20_000; step++) {
    const r = next();
    if (r < 0.55) {
      offset += 1 + Math.floor(next() * 3);
      const length = Math.floor(next() * next() * 3000);
      let text = '';
      while (text.length < length) text += words[Math.floor(next() * words.length)];
      const kept = { offset, at: step, nullPayload: next() < 0.3, text };
      assert.equal(ring.push(kept.offset, kept.at, kept.nullPayload, kept.text), Buffer.byteLength(text));
      model.push(kept);
    } else if (r < 0.97) {
      if (model.length > 0) assert.equal(ring.shift(), Buffer.byteLength(model.shift()!.text));
    } else ring.trim();
    if (step % 97 === 0) assertSame(ring, model);
  }
  assertSame(ring, model);
});

test('after(): the index of the first event above an offset, for offsets that are not consecutive', () => {
  const ring = new EventRing();
  for (const offset of [3, 7, 8, 20]) ring.push(offset, 0, false, `${offset}`);
  ring.shift();
  assert.deepEqual(
    [0, 3, 6, 7, 8, 19, 20, 99].map((o) => ring.after(o)),
    [0, 0, 0, 1, 2, 2, 3, 3],
  );
});

test('what it holds: nothing while empty; within twice what is live while it grows; pages go back as events leave, trim packs what is left, clear holds nothing', () => {
  const ring = new EventRing();
  assert.equal(ring.held, 0);
  const text = 'x'.repeat(1000);
  const bound = () => 2 * (ring.textBytes + ring.count * SLOT_BYTES) + 2 * MIN_PAGE_BYTES;
  for (let i = 0; i < 1000; i++) {
    ring.push(i, i, false, text);
    assert.ok(ring.held <= bound(), `${ring.held} held for ${ring.textBytes} bytes of text`);
  }
  const grown = ring.held;
  // Keep 10: the pages the others used went back as they left, before any sweep.
  while (ring.count > 10) ring.shift();
  assert.ok(ring.held * 5 < grown, `${ring.held} held for 10 events, ${grown} for 1,000`);
  // The sweep's trim packs the 10 into one page of their size, and cuts the slots.
  ring.trim();
  assert.ok(ring.held <= bound(), `${ring.held} held after the trim`);
  assert.ok(ring.held <= 16 * 1024 + 64 * SLOT_BYTES, `${ring.held} held after the trim`);
  assert.deepEqual(
    Array.from({ length: 10 }, (_, i) => ring.entry(i).offset),
    [990, 991, 992, 993, 994, 995, 996, 997, 998, 999],
  );
  assert.equal(ring.entry(9).text, text);
  // Emptied: the next event starts at the front, and clear holds nothing.
  while (ring.count > 0) ring.shift();
  ring.trim();
  assert.equal(ring.held, 0);
  ring.push(5, 5, true, 'again');
  assert.deepEqual(ring.entry(0), { offset: 5, at: 5, nullPayload: true, text: 'again' });
  ring.clear();
  assert.equal(ring.held, 0);
  assert.equal(ring.count, 0);
});

test('a steady room (push one, let go of one) never moves a text and allocates nothing once warm: its pages come back to the pool and are taken again', () => {
  const ring = new EventRing();
  const text = 'y'.repeat(300);
  for (let i = 0; i < 1000; i++) {
    ring.push(i, i, false, text);
    if (i >= 100) ring.shift();
  }
  const allocated = PAGES.allocated;
  let most = 0;
  for (let i = 1000; i < 100_000; i++) {
    ring.push(i, i, false, text);
    ring.shift();
    most = Math.max(most, ring.held);
  }
  assert.equal(PAGES.allocated, allocated, 'no page was allocated: each came from the pool');
  assert.ok(most <= 2 * (ring.textBytes + 100 * SLOT_BYTES) + 2 * MIN_PAGE_BYTES, `${most} held at most for 100 events of 300 bytes`);
  assert.equal(ring.entry(0).offset, 99_900);
  assert.equal(ring.entry(99).text, text);
});

test('a text longer than the largest page has a page of its own, which is not pooled', () => {
  const ring = new EventRing();
  const long = 'z'.repeat(MAX_PAGE_BYTES + 10);
  ring.push(1, 1, false, 'small');
  ring.push(2, 2, false, long);
  ring.push(3, 3, false, 'after');
  assert.deepEqual(
    [0, 1, 2].map((i) => ring.entry(i).text),
    ['small', long, 'after'],
  );
  const spare = PAGES.spareBytes;
  ring.shift();
  ring.shift();
  assert.equal(PAGES.spareBytes, spare + MIN_PAGE_BYTES, 'the small page went back to the pool, the long one to the GC');
  assert.equal(ring.entry(0).text, 'after');
});

/**
 * Every page given back to the pool is overwritten at once (as a freed block
 * is poisoned by a checking allocator), so an event still pointing into a
 * page its ring gave back reads back wrong at the next check, whoever takes
 * the page next. Restored after the test.
 */
function poisonGivenPages(t: TestContext): { given: () => number } {
  const give = PAGES.give;
  let given = 0;
  PAGES.give = (page: Buffer) => {
    page.fill(0x23);
    given++;
    give.call(PAGES, page);
  };
  t.after(() => {
    PAGES.give = give;
  });
  return { given: () => given };
}

test('rings sharing the pool, under pushes (empty texts, texts at and over page sizes, over the largest page), shifts, trims and clears: no page goes back while an event uses it, and what each holds stays within its bounds (seeded, 12,000 steps)', (t) => {
  const pages = poisonGivenPages(t);
  const next = mulberry32(23);
  const rings = Array.from({ length: 4 }, () => ({ ring: new EventRing(), model: [] as Kept[] }));
  // Lengths around each page size (a text just over half a page, just over a page), and over the largest one.
  const edges = [0, 1, MIN_PAGE_BYTES - 1, MIN_PAGE_BYTES, MIN_PAGE_BYTES + 1, 2049, 4097, 16 * 1024 + 1, 32 * 1024 + 1, MAX_PAGE_BYTES, MAX_PAGE_BYTES + 1];
  const peak = new Map<EventRing, number>();
  let offset = 0;
  let letter = 0;
  for (let step = 0; step < 12_000; step++) {
    const { ring, model } = rings[Math.floor(next() * rings.length)]!;
    const givenBefore = pages.given();
    const r = next();
    if (r < 0.5) {
      const length = next() < 0.05 ? edges[Math.floor(next() * edges.length)]! : Math.floor(next() * next() * 2000);
      // Each text its own letter (never the poison '#'), so a text read from another's bytes differs too.
      const text = String.fromCharCode(0x41 + (letter++ % 58)).repeat(length);
      const kept = { offset: ++offset, at: step, nullPayload: next() < 0.3, text };
      assert.equal(ring.push(kept.offset, kept.at, kept.nullPayload, kept.text), length);
      model.push(kept);
    } else if (r < 0.94) {
      if (model.length > 0) assert.equal(ring.shift(), model.shift()!.text.length);
    } else if (r < 0.99) ring.trim();
    else {
      ring.clear();
      model.length = 0;
      assert.equal(ring.held, 0, 'cleared: nothing held');
    }
    // A page went back: every event of this ring still reads as kept.
    if (pages.given() !== givenBefore || step % 50 === 0) assertSame(ring, model);
    // Pages: what is live, at most as much again in the rests of the pages a text did not fit
    // (each rest is shorter than that text), and the first and last pages' other bytes. Slots:
    // at most twice the most events the ring had since it was cleared.
    const largest = model.reduce((n, e) => Math.max(n, e.text.length), 0);
    peak.set(ring, model.length === 0 && r >= 0.99 ? 0 : Math.max(peak.get(ring) ?? 0, model.length));
    const bound = 2 * ring.textBytes + 2 * Math.max(MAX_PAGE_BYTES, largest) + Math.max(8, 2 * peak.get(ring)!) * SLOT_BYTES;
    assert.ok(ring.held <= bound, `step ${step}: ${ring.held} held for ${ring.count} events, ${ring.textBytes} bytes of text`);
  }
  for (const { ring, model } of rings) assertSame(ring, model);
  assert.ok(pages.given() > 1000, `${pages.given()} pages given back: the sequence exercised the pool`);
});

/** Counts the pages rings take from the pool. Restored after the test. */
function countTakes(t: TestContext): { takes: () => number } {
  const take = PAGES.take;
  let takes = 0;
  PAGES.take = (bytes: number) => {
    takes++;
    return take.call(PAGES, bytes);
  };
  t.after(() => {
    PAGES.take = take;
  });
  return { takes: () => takes };
}

test("the sweep's trim packs a ring once: packed, the next trim moves nothing, and a trim never makes a ring hold more (texts of 1 byte beside one of the largest page's size)", (t) => {
  const pool = countTakes(t);
  const ring = new EventRing();
  let offset = 0;
  // A room that held 300 KB: its pages are of the largest size when 'a' goes in.
  for (let i = 0; i < 300; i++) ring.push(++offset, 0, false, 'x'.repeat(1000));
  const texts = ['a', 'B'.repeat(MAX_PAGE_BYTES), 'c'];
  for (const text of texts) ring.push(++offset, 0, false, text);
  while (ring.count > texts.length) ring.shift();
  let held = ring.held;
  for (let sweep = 0; sweep < 3; sweep++) {
    const takes = pool.takes();
    ring.trim();
    assert.ok(ring.held <= held, `sweep ${sweep}: ${ring.held} held after the trim, ${held} before`);
    if (sweep > 0)
      assert.equal(pool.takes(), takes, `sweep ${sweep}: packed already, yet the trim took ${pool.takes() - takes} pages and copied every text again`);
    held = ring.held;
  }
  assert.deepEqual(
    [0, 1, 2].map((i) => ring.entry(i).text),
    texts,
  );
  assert.ok(ring.held <= 2 * ring.textBytes + 2 * MIN_PAGE_BYTES + 8 * SLOT_BYTES, `${ring.held} held for ${ring.textBytes} bytes of text`);
});

test('trim, on rings of texts up to over the largest page: never holds more after than before, and a second trim takes no page (seeded, 3,000 rings)', (t) => {
  const pool = countTakes(t);
  const next = mulberry32(25);
  for (let n = 0; n < 3000; n++) {
    const ring = new EventRing();
    const lengths = Array.from({ length: 1 + Math.floor(next() * 8) }, () =>
      next() < 0.3 ? Math.floor(next() * 100) : Math.floor(1.2 * MAX_PAGE_BYTES * (0.3 + 0.7 * next())),
    );
    // A ring that was larger before: its first page partly let go of.
    for (let i = 0; i < 300; i++) ring.push(i, 0, false, 'x'.repeat(1000));
    lengths.forEach((length, i) => ring.push(1000 + i, 0, false, 'y'.repeat(length)));
    while (ring.count > lengths.length) ring.shift();
    const before = ring.held;
    ring.trim();
    assert.ok(ring.held <= before, `lengths ${lengths}: ${ring.held} held after the trim, ${before} before`);
    const takes = pool.takes();
    ring.trim();
    assert.equal(pool.takes(), takes, `lengths ${lengths}: a second trim repacked`);
    assert.deepEqual(
      lengths.map((_, i) => ring.entry(i).text.length),
      lengths,
    );
    ring.clear();
  }
});
