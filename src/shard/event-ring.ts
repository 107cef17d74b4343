/**
 * A room's kept events, off the V8 heap (issue 23): what history.ts and
 * stream-log.ts hold per room.
 *
 * Why off the heap: an event kept for resumes lives for seconds to minutes,
 * far longer than the young generation. Kept as a JS object and a string,
 * each event was copied by every scavenge it lived through and then promoted,
 * and the old generation it filled was marked and compacted in its turn. At
 * light load that doubled each scavenge (0.3–0.5 ms without history, 0.7–1.1
 * with it) and brought mark-compacts with 20 ms steps; at the ceiling it
 * promoted some 40 MB a second. Here an event is bytes in a page (its text,
 * UTF-8) and a slot in six typed arrays (offset, time, page, place, length,
 * flags): whatever the number of events, a room holds a handful of heap
 * objects, and a scavenge has nothing of the history to copy.
 *
 * Layout. The slots are a ring (a power of two of them, doubled when full;
 * small: 29 bytes an event). The texts go into pages, one after the other,
 * a text never split: a text that does not fit in the last page's rest
 * starts a new page, and a page goes back when the oldest event no longer
 * uses it. Pages come from a pool per thread ({@link PAGES}: powers of two
 * from 1 to 64 KiB, 8 MiB spare at most); a new page is a quarter of what is
 * live, within those bounds, so a small room holds a small page and a full
 * one a few large ones. A text over 64 KiB has a page of its own.
 *
 * Nothing is ever moved on the live path. The single buffer this replaced
 * grew by 1.5× and moved its live texts to the front when it reached its
 * end: rooms that fill at one rate did both in the same turn, every room
 * copying hundreds of KB into fresh memory, which cost the tail at medium
 * load (docs/performance.md, The cost of history). A room holds what is
 * live, the rests its texts did not fit in (each shorter than the text
 * that did not fit, so at most as much again: texts just over half a page
 * come near it), the let-go start of its first page and the free end of its
 * last; {@link EventRing.trim}, from the sweep, packs a room that shrank,
 * when packing gives memory back.
 *
 * Reading an event makes its text a string again: that is a resume's cost,
 * never the live path's.
 */
import { encodeOffsetFrame } from '../protocol/frame.ts';
import type { LogEntry } from './room-log.ts';

import { SlabPool } from './slab-pool.ts';

/** What a slot takes: offset and time (2 × 8 bytes), page, place and length (3 × 4), flags (1). */
export const SLOT_BYTES = 29;
/** The smallest page, and the largest pooled one (a longer text has a page of its own). */
export const MIN_PAGE_BYTES = 1024;
export const MAX_PAGE_BYTES = 64 * 1024;
/** The pages of every ring of this thread (a worker has its own module instance, so one pool per shard). */
export const PAGES = new SlabPool({ minBytes: MIN_PAGE_BYTES, maxBytes: MAX_PAGE_BYTES, maxSpareBytes: 8 * 1024 * 1024 });
const MIN_SLOTS = 8;
const NULL_PAYLOAD = 1;

/** The smallest power of two ≥ n (n ≥ 1). */
function ceilPow2(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/** The largest power of two ≤ n (n ≥ 1). */
function floorPow2(n: number): number {
  return n < 2 ? 1 : 2 ** Math.floor(Math.log2(n));
}

/** Let go of the spare pages no ring took since the last call (the history's sweep calls it). */
export function decayPages(): void {
  PAGES.decay();
}

export class EventRing {
  private offsets = new Float64Array(0);
  private ats = new Float64Array(0);
  /** The page of each event, as a number that only grows: its index in `pages` is `pageOf - firstPage`. */
  private pageOf = new Uint32Array(0);
  private places = new Uint32Array(0);
  private lengths = new Uint32Array(0);
  private flags = new Uint8Array(0);
  /** Slots - 1 (the slot arrays' length is a power of two). */
  private mask = -1;
  /** The slot of the oldest event. */
  private head = 0;
  count = 0;
  /** The pages in use, oldest first; `firstPage` numbers the first. */
  private pages: Buffer[] = [];
  private firstPage = 0;
  /** Where the next text goes in the last page. */
  private pageEnd = 0;
  /** Bytes of the pages in use. */
  private pageBytes = 0;
  /** Bytes of every event's text kept. */
  textBytes = 0;

  /** Bytes this ring holds: its pages and its slot arrays. */
  get held(): number {
    return this.pageBytes + this.offsets.length * SLOT_BYTES;
  }

  /** Keep one event; the bytes of its text. */
  push(offset: number, at: number, nullPayload: boolean, text: string): number {
    const length = Buffer.byteLength(text, 'utf8');
    if (this.count === this.offsets.length) this.moveSlots(Math.max(MIN_SLOTS, this.count * 2));
    const page = this.lastPageFitting(length) ?? this.newPage(length);
    const place = this.pageEnd;
    page.write(text, place, length, 'utf8');
    const slot = (this.head + this.count++) & this.mask;
    this.offsets[slot] = offset;
    this.ats[slot] = at;
    this.pageOf[slot] = this.lastPageNumber();
    this.places[slot] = place;
    this.lengths[slot] = length;
    this.flags[slot] = nullPayload ? NULL_PAYLOAD : 0;
    this.pageEnd = place + length;
    this.textBytes += length;
    return length;
  }

  /** Let go of the oldest event; the bytes of its text. */
  shift(): number {
    const length = this.lengths[this.head]!;
    this.head = (this.head + 1) & this.mask;
    this.textBytes -= length;
    if (--this.count === 0) {
      // Empty: the last page is kept for the next text, from its start.
      while (this.pages.length > 1) this.givePage();
      this.pageEnd = 0;
    } else {
      // The pages before the new oldest event's are no one's any more.
      const oldest = this.pageOf[this.head]!;
      while (this.firstPage !== oldest) this.givePage();
    }
    return length;
  }

  /** The offset of the i-th event kept (0: the oldest). */
  offsetAt(i: number): number {
    return this.offsets[(this.head + i) & this.mask]!;
  }

  /** When the i-th event was kept. */
  atAt(i: number): number {
    return this.ats[(this.head + i) & this.mask]!;
  }

  /**
   * The legacy frame of the newest event with `"offset":N` as its last
   * member, built from the bytes its page holds (its text without the
   * closing brace, then the offset member): the live path's frame without a
   * second encode of the text. The ring must not be empty.
   */
  newestFrame(offset: number): Buffer {
    const slot = (this.head + this.count - 1) & this.mask;
    const place = this.places[slot]!;
    return encodeOffsetFrame(this.pages[(this.pageOf[slot]! - this.firstPage) >>> 0]!, place, place + this.lengths[slot]! - 1, offset);
  }

  /** The i-th event, its text a string again. */
  entry(i: number): LogEntry {
    const slot = (this.head + i) & this.mask;
    const place = this.places[slot]!;
    return {
      offset: this.offsets[slot]!,
      text: this.pages[(this.pageOf[slot]! - this.firstPage) >>> 0]!.toString('utf8', place, place + this.lengths[slot]!),
      nullPayload: this.flags[slot] === NULL_PAYLOAD,
      at: this.ats[slot]!,
    };
  }

  /** The index of the first event with an offset above `after` (count when none); offsets increase. */
  after(after: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.offsetAt(mid) <= after) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Let go of every event and of the memory that held them. */
  clear(): void {
    this.offsets = new Float64Array(0);
    this.ats = new Float64Array(0);
    this.pageOf = new Uint32Array(0);
    this.places = new Uint32Array(0);
    this.lengths = new Uint32Array(0);
    this.flags = new Uint8Array(0);
    this.mask = -1;
    while (this.pages.length > 0) this.givePage();
    this.head = this.count = this.pageEnd = this.textBytes = 0;
  }

  /**
   * Give back what a shrunken room no longer needs: pages more than twice
   * what is live (and more than a small page) are packed into pages of the
   * live size; slots more than four times the events are cut down; empty,
   * nothing is held at all. For a sweep, not the live path.
   */
  trim(): void {
    if (this.count === 0) {
      if (this.held > 0) this.clear();
      return;
    }
    // Packed pages can hold more than twice what is live (texts near the
    // largest page's size each leave a rest no other fits): repacking then
    // would copy every text again at each sweep and give nothing back.
    if (this.pageBytes > 2 * this.textBytes + 2 * MIN_PAGE_BYTES && this.packedBytes() < this.pageBytes) this.repack();
    if (this.offsets.length > MIN_SLOTS && this.offsets.length > 4 * this.count) this.moveSlots(Math.max(MIN_SLOTS, ceilPow2(2 * this.count)));
  }

  /** The last page when a text of `length` bytes fits after its last text; null when there is none or it does not fit. */
  private lastPageFitting(length: number): Buffer | null {
    const pages = this.pages;
    if (pages.length === 0) return null;
    const page = pages[pages.length - 1]!;
    return this.pageEnd + length <= page.length ? page : null;
  }

  /** The number of the last page (what a slot's `pageOf` holds). */
  private lastPageNumber(): number {
    return (this.firstPage + this.pages.length - 1) >>> 0;
  }

  /**
   * A page for a text of `length` bytes after the last one: `size` (by
   * default a quarter of what is live), within the pool's sizes, or the
   * text's own length when it is larger than the largest.
   */
  private newPage(length: number, size = floorPow2(this.textBytes >>> 2)): Buffer {
    const page = PAGES.take(length > MAX_PAGE_BYTES ? length : Math.max(length, Math.min(MAX_PAGE_BYTES, size)));
    this.pages.push(page);
    this.pageBytes += page.length;
    this.pageEnd = 0;
    return page;
  }

  /** The oldest page goes back to the pool. */
  private givePage(): void {
    const page = this.pages.shift()!;
    this.firstPage = (this.firstPage + 1) >>> 0;
    this.pageBytes -= page.length;
    PAGES.give(page);
  }

  /** The length of the i-th event's text. */
  private lengthAt(i: number): number {
    return this.lengths[(this.head + i) & this.mask]!;
  }

  /**
   * Bytes of the texts from the i-th on that one page holds when packed: as
   * many as fit in the largest page, one after the other (a longer text
   * alone).
   */
  private runBytes(i: number): number {
    let bytes = this.lengthAt(i);
    for (let j = i + 1; j < this.count && bytes + this.lengthAt(j) <= MAX_PAGE_BYTES; j++) bytes += this.lengthAt(j);
    return bytes;
  }

  /** Bytes of the pages {@link repack} would take (the same layout, nothing copied). */
  private packedBytes(): number {
    let bytes = 0;
    let rest = 0;
    for (let i = 0; i < this.count; i++) {
      const length = this.lengthAt(i);
      if (i === 0 || length > rest) {
        const page = PAGES.slabBytes(this.runBytes(i));
        bytes += page;
        rest = page - length;
      } else rest -= length;
    }
    return bytes;
  }

  /**
   * Copy every live text, in order, into new pages; the old pages go back.
   * Each page is sized for the texts it will hold (those that fit in the
   * largest page), so that a page is never larger than twice its texts (or
   * a small page) whatever their lengths.
   */
  private repack(): void {
    const old = this.pages;
    const oldFirst = this.firstPage;
    this.pages = [];
    this.firstPage = (oldFirst + old.length) >>> 0;
    this.pageEnd = 0;
    this.pageBytes = 0;
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) & this.mask;
      const length = this.lengths[slot]!;
      const page = this.lastPageFitting(length) ?? this.newPage(length, this.runBytes(i));
      const from = old[(this.pageOf[slot]! - oldFirst) >>> 0]!;
      const place = this.places[slot]!;
      from.copy(page, this.pageEnd, place, place + length);
      this.pageOf[slot] = this.lastPageNumber();
      this.places[slot] = this.pageEnd;
      this.pageEnd += length;
    }
    for (const page of old) PAGES.give(page);
  }

  /** Copy the slots, oldest first, to the front of arrays of `size` (a power of two ≥ count). */
  private moveSlots(size: number): void {
    const offsets = new Float64Array(size);
    const ats = new Float64Array(size);
    const pageOf = new Uint32Array(size);
    const places = new Uint32Array(size);
    const lengths = new Uint32Array(size);
    const flags = new Uint8Array(size);
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) & this.mask;
      offsets[i] = this.offsets[slot]!;
      ats[i] = this.ats[slot]!;
      pageOf[i] = this.pageOf[slot]!;
      places[i] = this.places[slot]!;
      lengths[i] = this.lengths[slot]!;
      flags[i] = this.flags[slot]!;
    }
    this.offsets = offsets;
    this.ats = ats;
    this.pageOf = pageOf;
    this.places = places;
    this.lengths = lengths;
    this.flags = flags;
    this.mask = size - 1;
    this.head = 0;
  }
}
