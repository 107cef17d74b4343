/**
 * Giving memory back after an attack or a crowd. Used by every thread: the
 * shards and the primary each own one.
 *
 * Two things keep memory after load, and a collection V8 starts on its own
 * comes late for both, or never:
 *
 * - **Buffers.** The bytes a shard queues for sockets live in ArrayBuffers
 *   outside the V8 heap (slabs, frames, the write requests of a socket that
 *   was cut). Once unreferenced they are only freed by a full GC, and V8
 *   starts one when the heap or external memory *grows*: a shard that goes
 *   quiet after buffering hundreds of MB keeps them for good (measured: 183
 *   MiB of array buffers held by an idle shard with no session left, its
 *   heap at 14 MiB). So after a cut or a large backlog the shard asks for
 *   one full GC once things have settled ({@link MemoryRelease.request}
 *   with `'buffers'`).
 * - **The heap itself.** A crowd's sessions (or, in the primary, a burst of
 *   connects) grow the V8 heap, and once they are gone V8 gives the pages
 *   back only when its memory reducer finds the thread idle. Idle shards
 *   got theirs back 10–20 s after 5,000–19,500 sessions left
 *   (bench/memory-release.ts), but a shard that still relayed one busy room
 *   kept 93 MiB committed for 21 MiB in use, for good, and the primary's
 *   heap stayed at twice its fresh size. A crowd that arrives leaves the
 *   same kind of garbage: its handshakes'. A regular full GC frees the
 *   objects and keeps the pages. So once a crowd has gone (a shard's
 *   sessions fell to a quarter of their peak, {@link Peak}), once a crowd
 *   has come (a shard's sessions rose by a thousand, {@link Rise}, and the
 *   joins stopped for {@link SETTLE_MS}), or once handshakes stopped for
 *   {@link SETTLE_MS} after a thousand came (the primary, which should not
 *   pause during a storm), the thread asks for a
 *   *memory-reducing* collection (`'heap'`): V8's last-resort GC, which
 *   compacts and releases free pages. It is made only if the heap grew by
 *   {@link HEAP_SLACK_BYTES} since the last one, and it pauses the thread
 *   once per crowd: 60–250 ms for a shard that held 2,500–9,750 sessions
 *   (0.5 s in one run), 30–175 ms for the primary.
 *
 * The `gc` function comes from `--expose-gc`, set at run time for this
 * isolate (a flag change made once, before any use; Node documents such
 * changes as to be used with care, and this one only adds a global). Where
 * that is refused, nothing is collected here and memory goes back when V8
 * collects on its own.
 */
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Wait this long after the last request before collecting: cut sockets are destroyed within 2 s. */
export const SETTLE_MS = 3000;
/** Collect at most this long after the first request, even if requests keep coming. */
export const MAX_WAIT_MS = 30_000;
/** A crowd: this many sessions gone (and 3/4 of the peak, {@link Peak}), or handshakes handed to shards. */
export const CROWD = 1000;
/**
 * A memory-reducing collection is made only when the heap has grown by at
 * least this much since the last one (or the start): otherwise there is
 * little to give back, and its pause would buy nothing.
 */
export const HEAP_SLACK_BYTES = 8 * 1024 * 1024;

/** What to collect: unreferenced buffers (a regular full GC), or the heap's free pages too (memory-reducing). */
export type ReleaseKind = 'buffers' | 'heap';

/** The options V8's `gc()` takes (its gc extension). */
export interface GcOptions {
  type: 'major';
  /** `last-resort`: collect until nothing more is freed, compacting and releasing pages. */
  flavor: 'regular' | 'last-resort';
}

export type Collector = (options: GcOptions) => void;

export interface Released {
  kind: ReleaseKind;
  /** How long the collection paused the thread. */
  ms: number;
  /** The isolate's heap committed before and after (bytes). */
  heapBefore: number;
  heapAfter: number;
}

export interface MemoryReleaseOptions {
  /** Told after each collection (for the thread's log). */
  onReleased?: (released: Released) => void;
  /** The collector; by default V8's `gc`, or none where `--expose-gc` is refused. */
  collect?: Collector | null;
  /** The isolate's heap committed, in bytes (default: V8's total_heap_size). */
  heapSize?: () => number;
  /**
   * Collect at most this long after the first request, even if requests
   * keep coming (default {@link MAX_WAIT_MS}); `Infinity`: only once they
   * stop for {@link SETTLE_MS}.
   */
  maxWaitMs?: number;
}

function exposeGc(): Collector | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as Collector) : null;
  } catch {
    return null;
  }
}

const v8HeapSize = (): number => getHeapStatistics().total_heap_size;

export class MemoryRelease {
  private readonly collect: Collector | null;
  private readonly onReleased: ((released: Released) => void) | undefined;
  private readonly heapSize: () => number;
  private readonly maxWaitMs: number;
  /** The heap committed after the last memory-reducing collection (or at the start). */
  private baseline: number;
  private timer: NodeJS.Timeout | null = null;
  private firstAt = 0;
  private lastAt = 0;
  private wantBuffers = false;
  private wantHeap = false;

  constructor(options: MemoryReleaseOptions = {}) {
    this.collect = options.collect === undefined ? exposeGc() : options.collect;
    this.onReleased = options.onReleased;
    this.heapSize = options.heapSize ?? v8HeapSize;
    this.maxWaitMs = options.maxWaitMs ?? MAX_WAIT_MS;
    this.baseline = this.heapSize();
  }

  /**
   * Ask for a collection once the thread has been free of new requests for
   * {@link SETTLE_MS} (at most `maxWaitMs` after the first). A
   * `'heap'` request makes it a memory-reducing one, if the heap has grown
   * by {@link HEAP_SLACK_BYTES} since the last.
   */
  request(kind: ReleaseKind = 'buffers', now = Date.now()): void {
    if (this.collect === null) return;
    this.lastAt = now;
    if (kind === 'heap') this.wantHeap = true;
    else this.wantBuffers = true;
    if (this.timer !== null) return;
    this.firstAt = now;
    this.arm(SETTLE_MS);
  }

  private arm(ms: number): void {
    this.timer = setTimeout(this.fire, ms);
    this.timer.unref();
  }

  private readonly fire = (): void => {
    this.timer = null;
    const now = Date.now();
    const quietFor = now - this.lastAt;
    if (quietFor < SETTLE_MS && now - this.firstAt < this.maxWaitMs) {
      this.arm(SETTLE_MS - quietFor);
      return;
    }
    const heapBefore = this.heapSize();
    const reduce = this.wantHeap && heapBefore - this.baseline >= HEAP_SLACK_BYTES;
    const collect = reduce || this.wantBuffers;
    this.wantHeap = this.wantBuffers = false;
    if (!collect) return;
    const started = performance.now();
    this.collect!({ type: 'major', flavor: reduce ? 'last-resort' : 'regular' });
    const ms = performance.now() - started;
    const heapAfter = this.heapSize();
    if (reduce) this.baseline = heapAfter;
    this.onReleased?.({ kind: reduce ? 'heap' : 'buffers', ms, heapBefore, heapAfter });
  };

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** A collection as a log line's fields (`memory_released`): ms and MiB, rounded. */
export function releasedFields(released: Released): { kind: ReleaseKind; ms: number; heapBeforeMiB: number; heapAfterMiB: number } {
  const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
  return { kind: released.kind, ms: Math.round(released.ms), heapBeforeMiB: mib(released.heapBefore), heapAfterMiB: mib(released.heapAfter) };
}

/**
 * Whether a crowd has come: fed a count (a shard's sessions), it says so
 * while the count is at least {@link CROWD} above the lowest it was since
 * the thread last collected ({@link reset}). The shard asks for a
 * memory-reducing collection at each such count, so it runs once the joins
 * have stopped for {@link SETTLE_MS}: a connect burst leaves its garbage
 * (heads, tokens, permission lookups) in the old generation, and V8 frees it
 * and gives its pages back only when its memory reducer finds the thread
 * idle, which a shard still relaying never is (bench/idle-memory.ts
 * --natural).
 */
export class Rise {
  private low = 0;

  /** The count now; true while a crowd has come since the last reset. */
  update(count: number): boolean {
    if (count < this.low) this.low = count;
    return count - this.low >= CROWD;
  }

  /** The thread collected: the next crowd counts from `count`. */
  reset(count: number): void {
    this.low = count;
  }
}

/**
 * Whether a crowd has gone: fed a count (a shard's sessions), it says so
 * once the count has fallen by at least {@link CROWD} and to a quarter or
 * less of its peak since the last time it said so.
 */
export class Peak {
  private peak = 0;

  /** The count now; true when a crowd has just gone. */
  update(count: number): boolean {
    if (count > this.peak) {
      this.peak = count;
      return false;
    }
    if (this.peak - count < CROWD || count * 4 > this.peak) return false;
    this.peak = count;
    return true;
  }
}
