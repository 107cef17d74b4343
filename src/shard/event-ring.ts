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
 * promoted some 40 MB a second. Here an event is bytes in one Buffer (its
 * text, UTF-8) and a slot in five typed arrays (offset, time, place, length,
 * flags): whatever the number of events, a room holds six heap objects, and
 * a scavenge has nothing of the history to copy.
 *
 * Layout. The slots are a ring (a power of two of them, doubled when
 * full). The texts are a sliding window: appended at the end of the buffer,
 * let go from the front; when a text does not fit after the last one, the
 * live texts move to the front if they fill at most 3/4 of the buffer, and
 * the buffer grows to 1.5 times what is live otherwise. Each byte is moved
 * at most a few times (amortized O(1) per event), and a full room holds
 * about 1.33 times its texts (at most 1.5 as it grows; {@link EventRing.trim}
 * gives back what a shrunken room no longer needs). Growing is what a room
 * pays while it first fills: at medium load it costs the tail until the
 * histories are full (docs/performance.md, The cost of history), not after.
 *
 * Reading an event makes its text a string again: that is a resume's cost,
 * never the live path's.
 */
import type { LogEntry } from './room-log.ts';

/** What a slot takes: offset and time (2 × 8 bytes), place and length (2 × 4), flags (1). */
export const SLOT_BYTES = 25;
const MIN_TEXT_BYTES = 1024;
/** Buffers are sized in pages of this many bytes. */
const TEXT_PAGE = 1024;
const MIN_SLOTS = 8;
const NULL_PAYLOAD = 1;
const EMPTY = Buffer.alloc(0);

/** The smallest power of two ≥ n (n ≥ 1). */
function ceilPow2(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/** A text buffer's size for `live` bytes: 1.5 times them, in whole pages. */
function textSize(live: number): number {
  return Math.max(MIN_TEXT_BYTES, Math.ceil((live * 1.5) / TEXT_PAGE) * TEXT_PAGE);
}

export class EventRing {
  private offsets = new Float64Array(0);
  private ats = new Float64Array(0);
  private places = new Uint32Array(0);
  private lengths = new Uint32Array(0);
  private flags = new Uint8Array(0);
  /** Slots - 1 (the slot arrays' length is a power of two). */
  private mask = -1;
  /** The slot of the oldest event. */
  private head = 0;
  count = 0;
  private text: Buffer = EMPTY;
  /** Where the next text goes. */
  private textEnd = 0;
  /** Bytes of every event's text kept. */
  textBytes = 0;

  /** Bytes this ring holds: its text buffer and its slot arrays. */
  get held(): number {
    return this.text.length + this.offsets.length * SLOT_BYTES;
  }

  /** Keep one event; the bytes of its text. */
  push(offset: number, at: number, nullPayload: boolean, text: string): number {
    const length = Buffer.byteLength(text, 'utf8');
    if (this.count === this.offsets.length) this.moveSlots(Math.max(MIN_SLOTS, this.count * 2));
    if (this.textEnd + length > this.text.length) this.makeRoom(length);
    const place = this.textEnd;
    this.text.write(text, place, length, 'utf8');
    const slot = (this.head + this.count++) & this.mask;
    this.offsets[slot] = offset;
    this.ats[slot] = at;
    this.places[slot] = place;
    this.lengths[slot] = length;
    this.flags[slot] = nullPayload ? NULL_PAYLOAD : 0;
    this.textEnd = place + length;
    this.textBytes += length;
    return length;
  }

  /** Let go of the oldest event; the bytes of its text. */
  shift(): number {
    const length = this.lengths[this.head]!;
    this.head = (this.head + 1) & this.mask;
    this.textBytes -= length;
    // Empty: the next text starts at the front, nothing to move.
    if (--this.count === 0) this.textEnd = 0;
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

  /** The i-th event, its text a string again. */
  entry(i: number): LogEntry {
    const slot = (this.head + i) & this.mask;
    const place = this.places[slot]!;
    return {
      offset: this.offsets[slot]!,
      text: this.text.toString('utf8', place, place + this.lengths[slot]!),
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
    this.places = new Uint32Array(0);
    this.lengths = new Uint32Array(0);
    this.flags = new Uint8Array(0);
    this.mask = -1;
    this.text = EMPTY;
    this.head = this.count = this.textEnd = this.textBytes = 0;
  }

  /**
   * Give back what a shrunken room no longer needs: a text buffer more than
   * twice what is live, or slots more than four times the events, is cut
   * down (empty: nothing held at all). For a sweep, not the live path.
   */
  trim(): void {
    if (this.count === 0) {
      if (this.held > 0) this.clear();
      return;
    }
    if (this.text.length > MIN_TEXT_BYTES && this.text.length > 2 * this.textBytes) this.moveText(textSize(this.textBytes));
    if (this.offsets.length > MIN_SLOTS && this.offsets.length > 4 * this.count) this.moveSlots(Math.max(MIN_SLOTS, ceilPow2(2 * this.count)));
  }

  /** `length` more bytes do not fit after the last text: move the live texts to the front, or grow the buffer. */
  private makeRoom(length: number): void {
    const needed = this.textBytes + length;
    const size = this.text.length;
    this.moveText(needed * 4 <= size * 3 ? size : textSize(needed));
  }

  /** Copy the slots, oldest first, to the front of arrays of `size` (a power of two ≥ count). */
  private moveSlots(size: number): void {
    const offsets = new Float64Array(size);
    const ats = new Float64Array(size);
    const places = new Uint32Array(size);
    const lengths = new Uint32Array(size);
    const flags = new Uint8Array(size);
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) & this.mask;
      offsets[i] = this.offsets[slot]!;
      ats[i] = this.ats[slot]!;
      places[i] = this.places[slot]!;
      lengths[i] = this.lengths[slot]!;
      flags[i] = this.flags[slot]!;
    }
    this.offsets = offsets;
    this.ats = ats;
    this.places = places;
    this.lengths = lengths;
    this.flags = flags;
    this.mask = size - 1;
    this.head = 0;
  }

  /** Copy the live texts, in order, to the front of a buffer of `size` bytes (this one when it is that size). */
  private moveText(size: number): void {
    const from = this.text;
    const to = size === from.length ? from : Buffer.allocUnsafeSlow(size);
    // The live texts are one run, from the oldest's place to the end (each is
    // put right after the one before): one copy (a memmove within a buffer),
    // then every place moves by the same amount.
    const start = this.count === 0 ? 0 : this.places[this.head]!;
    if (start !== 0 || to !== from) from.copy(to, 0, start, this.textEnd);
    if (start !== 0) for (let i = 0; i < this.count; i++) this.places[(this.head + i) & this.mask]! -= start;
    this.text = to;
    this.textEnd -= start;
  }
}
