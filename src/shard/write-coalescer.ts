/**
 * Outbound frames: one `write` (one syscall) per socket per turn, however
 * many frames the turn produced for it, and under saturation one per pace
 * interval for sockets that receive fast.
 *
 * On this path the kernel is the cost: a loopback TCP `write` costs 7–9 µs
 * of CPU whatever its size (bench/loopback.ts measures it), so one syscall
 * per delivery would cap a shard near 135k deliveries/s per core. Frames are
 * therefore gathered per session: a session's first frame of a turn puts it
 * on the dirty list, and one `setImmediate` (the check phase, right after
 * the poll phase that delivered the turn's messages) writes each dirty
 * session's bytes at once. Under load the batches grow by themselves: the
 * busier the shard, the longer its turns and the more frames each write
 * carries.
 *
 * Gathering copies each frame into the session's outbox, a slab of off-heap
 * memory (slab-pool.ts) taken when the session's first frame arrives and
 * given back once the kernel has the bytes. An outbox is written as soon as
 * the next frame would take it past {@link MAX_OUTBOX_BYTES}, whatever its
 * turn or its pace slot, so every slab comes from the pool. Nothing per frame stays
 * referenced past `write()`, so a broadcast's frame buffer dies young
 * however long its recipients' bytes wait, and the flush is a single
 * `socket.write` of a view on the slab (no cork, no per-frame
 * `Writable.write` bookkeeping, no concat).
 *
 * Pacing. A saturated shard spends its turns on writes, and every socket
 * then waits for all the others: at the extreme preset a turn writes ~900
 * sockets and lasts ~10 ms, so a room that sends ten events a second waits
 * as long as one that streams hundreds. While the shard is saturated, a
 * socket that received more than `paceAbove` frames/s in the last 100 ms
 * is written once per pace interval instead of once per turn: its bytes
 * wait on a wheel of 8 slots, its slot fixed for life so paced writes
 * spread evenly over the interval rather than bursting together. Fewer,
 * larger writes free the core; every other socket is still written at the
 * end of its turn. In `auto` mode the interval follows the load, from 4 ms
 * up to `paceIntervalMs` (pace-control.ts); `always`
 * paces at `paceIntervalMs` whatever the load. Measured at the extreme
 * preset: target-room p99 from ~31 ms to ~8 ms, the streaming rooms' p99
 * about the same (~35 ms); see docs/performance.md.
 *
 * Large frames (at least SHARED_FRAME_BYTES, shared-frames.ts) skip the
 * gathering: what the session has queued is written first, then the frame
 * itself, by reference and at once, so that no socket ever holds a copy of
 * it.
 *
 * The coalescer keeps two totals for the process cap (backpressure.ts):
 * the bytes queued for all its sessions ({@link WriteCoalescer.queuedBytes})
 * and the bytes of the shared frames their sockets hold
 * ({@link WriteCoalescer.sharedBytes}), each kept current as frames are
 * queued and written.
 *
 * Bytes still waiting when a session's WebSocket stops being open are
 * dropped: after a close frame nothing may follow, and a closing peer reads
 * nothing more. Code that closes a session itself calls
 * {@link WriteCoalescer.flushNow} first.
 */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { PacingMode } from '../config.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { LoadSampler } from './load-sampler.ts';
import { PaceControl } from './pace-control.ts';
import { PaceWheel, WHEEL_BUCKETS } from './pace-wheel.ts';
import { SHARED_FRAME_BYTES, SharedFrames, type SharedQueue } from './shared-frames.ts';
import { MAX_POOLED_BYTES, MAX_SPARE_BYTES, OUTBOX_SLABS, SlabPool } from './slab-pool.ts';

/** The pacing options come from the server's configuration (src/config.ts holds their defaults). */
export interface CoalescerOptions {
  pacing: PacingMode;
  /** A paced socket is written once per this many ms (`always`), or at most this far apart (`auto`). */
  paceIntervalMs: number;
  /** Frames per second a socket must receive to be paced. */
  paceAbove: number;
  /** Length of the rate window a socket's speed is judged on, and of `auto`'s load samples (tests shorten it). */
  rateWindowMs?: number;
  /**
   * Spare outbox bytes the slab pool may keep between turns (slab-pool.ts):
   * the shard's share of `--max-outbound-memory`, since its outboxes never
   * hold more at once. Default {@link MAX_SPARE_BYTES}.
   */
  maxSpareBytes?: number;
}

/** Who counts the backlogs the coalescer leaves in sockets (backpressure.ts), registered with {@link WriteCoalescer.attach}. */
export interface BacklogListener<O extends OutboundOwner = OutboundOwner> {
  /**
   * Called after a write that the socket could not hand to the kernel whole,
   * with the bytes of that write the socket kept (0 for a shared frame,
   * which is counted once, here).
   */
  noteBacklog(owner: O, keptBytes: number): void;
}

const NO_LISTENER: BacklogListener<never> = { noteBacklog() {} };

export const RATE_WINDOW_MS = 100;
/**
 * The most a session's outbox holds before it is written, whatever its turn
 * or its pace slot: the largest pooled slab. A paced socket at the ceiling
 * (3.3 MB/s) queues about 106 KB per 32 ms, within it. Without a bound, a
 * shard that fell behind read so much per turn that each session queued
 * megabytes: fresh slabs outside the pool (page faults on first touch, and
 * external memory that brought V8's major GCs forward on helper threads
 * sharing the core), which slowed the shard further, until the process cap
 * cut the readers (docs/performance.md, The ceiling's collapse).
 */
export const MAX_OUTBOX_BYTES = MAX_POOLED_BYTES;
/** How often the slab pool lets go of size classes it did not use (slab-pool.ts `decay`). */
export const SLAB_DECAY_MS = 1000;

/** Whom an outbound queue serves: the socket it is written to, and whether frames may still be written. */
export interface OutboundOwner {
  readonly socket: Socket;
  /** True while data frames may still be written. */
  readonly open: boolean;
}

/**
 * What waits to be written for one socket, made by
 * {@link WriteCoalescer.newOutbound} and touched by the coalescer alone:
 * nothing (queuedBytes 0), one frame by reference (`single`), or the bytes
 * of two or more in `outbox[0, queuedBytes)`.
 */
export interface Outbound<O extends OutboundOwner = OutboundOwner> {
  readonly owner: O;
  single: Buffer | null;
  outbox: Buffer | null;
  queuedBytes: number;
  readonly pace: PaceState;
  /** Shared frames its socket holds (made at the first). */
  shared: SharedQueue | null;
}

/** A target's rate window and wheel slot. */
export interface PaceState {
  /** Start (ms, the coalescer's per-turn clock) of the current window, and frames queued in it. */
  windowStart: number;
  windowFrames: number;
  /** The previous window reached the pacing rate. */
  fast: boolean;
  /** Bytes of the last write: the next outbox is sized for it, so a paced socket does not grow one each time. */
  lastBytes: number;
  /** Wheel bucket, fixed for life so paced sockets stay spread over the interval. */
  readonly bucket: number;
}

export { WHEEL_BUCKETS };

export class WriteCoalescer<O extends OutboundOwner = OutboundOwner> {
  private dirty: Outbound<O>[] = [];
  private spare: Outbound<O>[] = [];
  private scheduled = false;
  private readonly slabs: SlabPool;
  private readonly metrics: MetricsSlot;
  private readonly rateWindowMs: number;
  private readonly fastFrames: number;
  /** Whether fast sockets are paced, and how far apart their writes (pace-control.ts). */
  private readonly control: PaceControl;
  /** Paced targets with bytes waiting, until their slot (pace-wheel.ts). */
  private readonly wheel: PaceWheel<Outbound<O>>;
  /** Coarse clock (ms), read once per turn rather than per frame. */
  private now = performance.now();
  private readonly sampler: LoadSampler | null;
  /** The backpressure policy, once it is built on this coalescer. */
  private backlogs: BacklogListener<O> = NO_LISTENER;
  private readonly decayTimer: NodeJS.Timeout;
  private readonly sharedFrames = new SharedFrames();
  private queued = 0;

  constructor(metrics: MetricsSlot, options: CoalescerOptions) {
    this.metrics = metrics;
    this.rateWindowMs = options.rateWindowMs ?? RATE_WINDOW_MS;
    this.slabs = new SlabPool({ ...OUTBOX_SLABS, maxSpareBytes: options.maxSpareBytes ?? MAX_SPARE_BYTES });
    this.fastFrames = Math.max(1, Math.ceil((options.paceAbove * this.rateWindowMs) / 1000));
    this.control = new PaceControl(options.pacing, options.paceIntervalMs);
    this.wheel = new PaceWheel<Outbound<O>>(
      options.paceIntervalMs,
      this.now,
      (target) => this.writeOut(target, Metric.PACED_WRITES),
      () => (this.now = performance.now()),
    );
    if (this.control.intervalMs > 0) this.applyInterval(this.control.intervalMs);
    this.decayTimer = setInterval(() => this.slabs.decay(), SLAB_DECAY_MS);
    this.decayTimer.unref();
    this.sampler = options.pacing === 'auto' ? new LoadSampler(this.rateWindowMs, (load) => this.sampleLoad(load)) : null;
  }

  /**
   * Report backlogs to `listener` from now on. The backpressure policy calls
   * it from its own constructor: it writes through the coalescer, so the
   * coalescer is built first and cannot be handed the policy.
   */
  attach(listener: BacklogListener<O>): void {
    this.backlogs = listener;
  }

  /** The outbound queue of a new socket, with its rate window and its wheel bucket for life. */
  newOutbound(owner: O): Outbound<O> {
    return {
      owner,
      single: null,
      outbox: null,
      queuedBytes: 0,
      pace: { windowStart: 0, windowFrames: 0, fast: false, lastBytes: 0, bucket: this.wheel.assignBucket() },
      shared: null,
    };
  }

  /** Bytes queued for every target and not written yet (each target's own, copies included). */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Bytes of the distinct shared frames that sockets hold: each counted once, however many hold it. */
  get sharedBytes(): number {
    return this.sharedFrames.bytes;
  }

  /** Bytes of shared frames `target`'s socket holds (they are in its `writableLength` too). */
  sharedHeldBy(target: Outbound<O>): number {
    return target.shared === null ? 0 : target.shared.bytes;
  }

  /**
   * `target` was cut: drop what is queued for it, and stop counting the
   * shared frames its socket holds (its socket is destroyed within the cut's
   * grace, and with it the last references).
   */
  release(target: Outbound<O>): void {
    if (target.queuedBytes > 0) {
      this.queued -= target.queuedBytes;
      if (target.outbox !== null) this.slabs.give(target.outbox);
      target.single = null;
      target.outbox = null;
      target.queuedBytes = 0;
    }
    if (target.shared !== null) this.sharedFrames.release(target.shared);
  }

  /**
   * Queue a copy of `frame` for `target`: written at the end of this turn, or
   * at its wheel slot when paced. A frame of {@link SHARED_FRAME_BYTES} or
   * more is written now, by reference, behind what `target` has queued.
   */
  write(target: Outbound<O>, frame: Buffer): void {
    const length = frame.length;
    const used = target.queuedBytes;
    const pace = target.pace;
    // Rate window: a few compares per frame, no clock read.
    if (this.now - pace.windowStart >= this.rateWindowMs) {
      pace.fast = pace.windowFrames >= this.fastFrames && this.now - pace.windowStart < 2 * this.rateWindowMs;
      pace.windowStart = this.now;
      pace.windowFrames = 0;
    }
    pace.windowFrames++;
    if (length >= SHARED_FRAME_BYTES) {
      this.writeShared(target, frame);
      return;
    }
    this.queued += length;
    if (used === 0) {
      // First frame: kept by reference. Most turns carry one frame per
      // socket at light load, and then nothing is copied.
      target.single = frame;
      if (pace.fast && this.control.intervalMs > 0) {
        this.wheel.add(target, pace.bucket);
      } else {
        this.dirty.push(target);
        if (!this.scheduled) {
          this.scheduled = true;
          setImmediate(this.flush);
        }
      }
      target.queuedBytes = length;
      this.count(length);
      return;
    }
    if (used + length > MAX_OUTBOX_BYTES) {
      // The outbox is full: its bytes go to the kernel now and this frame
      // starts the next one. The target is still on its list (dirty or
      // wheel), which writes this frame at its time.
      this.writeOut(target, Metric.OUTBOUND_WRITES);
      target.single = frame;
      target.queuedBytes = length;
      this.count(length);
      return;
    }
    let outbox = target.outbox;
    if (outbox === null) {
      // Second frame: both move into a slab, so no frame buffer is held past this call.
      outbox = target.outbox = this.slabs.take(used + length > pace.lastBytes ? used + length : pace.lastBytes);
      outbox.set(target.single!, 0);
      target.single = null;
    } else if (used + length > outbox.length) {
      // A burst outgrew the slab: move to the next size that holds it.
      const grown = this.slabs.take(Math.max(outbox.length * 2, used + length));
      grown.set(outbox.subarray(0, used));
      this.slabs.give(outbox);
      outbox = target.outbox = grown;
    }
    // TypedArray#set is V8's memcpy builtin: no allocation per call.
    outbox.set(frame, used);
    target.queuedBytes = used + length;
    this.count(length);
  }

  /** A large frame: what `target` has queued goes first, then the frame by reference, now. */
  private writeShared(target: Outbound<O>, frame: Buffer): void {
    this.count(frame.length);
    if (target.queuedBytes > 0) this.writeOut(target, Metric.OUTBOUND_WRITES);
    const owner = target.owner;
    if (!owner.open) return;
    const queue = (target.shared ??= this.sharedFrames.newQueue());
    this.sharedFrames.hold(queue, frame);
    owner.socket.write(frame, queue.done);
    this.metrics.values[Metric.OUTBOUND_WRITES]! += 1;
    if (owner.socket.writableLength !== 0) this.backlogs.noteBacklog(owner, 0);
  }

  private count(bytes: number): void {
    const values = this.metrics.values;
    values[Metric.DELIVERIES]! += 1;
    values[Metric.OUTBOUND_BYTES]! += bytes;
  }

  /** Write `target`'s bytes now (before closing it, say). A list that still holds it finds it empty later. */
  flushNow(target: Outbound<O>): void {
    this.writeOut(target, Metric.OUTBOUND_WRITES);
  }

  /** End of turn: write every session queued this turn, then the paced ones whose slot has come. */
  readonly flush = (): void => {
    this.scheduled = false;
    this.now = performance.now();
    // Swap lists so frames queued while flushing wait for the next turn.
    const dirty = this.dirty;
    this.dirty = this.spare;
    for (let i = 0; i < dirty.length; i++) this.writeOut(dirty[i]!, Metric.OUTBOUND_WRITES);
    dirty.length = 0;
    this.spare = dirty;
    if (this.wheel.size > 0) this.wheel.turn(this.now);
  };

  /** Write everything held, paced or not (shutdown). */
  flushAll(): void {
    this.flush();
    this.wheel.flushAll();
  }

  stop(): void {
    clearInterval(this.decayTimer);
    this.sampler?.stop();
    this.wheel.stop();
  }

  /** True while fast sockets are paced. */
  get pacing(): boolean {
    return this.control.intervalMs > 0;
  }

  /** Current pace interval in ms; 0 while not pacing. */
  get paceIntervalMs(): number {
    return this.control.intervalMs;
  }

  /** Put a new pace interval (ms; 0 = stop pacing) in force. */
  private applyInterval(intervalMs: number): void {
    this.metrics.values[Metric.PACE_INTERVAL]! = intervalMs / 1000;
    // Held bytes go out now rather than at slots of an interval no longer in force.
    if (intervalMs === 0) this.wheel.flushAll();
    else this.wheel.setInterval(intervalMs, this.now);
  }

  /** `auto`: one load sample per rate window; pace-control.ts decides, this applies. */
  private sampleLoad(load: number): void {
    this.now = performance.now();
    const before = this.control.intervalMs;
    const after = this.control.sample(load);
    if (after !== before) this.applyInterval(after);
  }

  private writeOut(target: Outbound<O>, metric: number): void {
    const bytes = target.queuedBytes;
    if (bytes === 0) return;
    const owner = target.owner;
    const socket = owner.socket;
    const single = target.single;
    const outbox = target.outbox;
    target.single = null;
    target.outbox = null;
    target.queuedBytes = 0;
    target.pace.lastBytes = bytes;
    this.queued -= bytes;
    if (single !== null) {
      // One frame: written as is (it is shared with the other recipients and never mutated).
      if (owner.open) {
        const before = socket.writableLength;
        socket.write(single);
        this.metrics.values[metric]! += 1;
        if (socket.writableLength !== 0) this.backlogs.noteBacklog(owner, socket.writableLength - before);
      }
      return;
    }
    if (owner.open) {
      const before = socket.writableLength;
      socket.write(outbox!.subarray(0, bytes));
      this.metrics.values[metric]! += 1;
      // Nothing left in the socket's buffer means libuv wrote it all inside
      // write() (uv_try_write): the kernel has the bytes and the slab is free.
      // Otherwise the stream still references it, and it leaves with the write.
      if (socket.writableLength === 0) this.slabs.give(outbox!);
      else this.backlogs.noteBacklog(owner, socket.writableLength - before);
    } else {
      this.slabs.give(outbox!);
    }
  }
}
