/**
 * Outbound frames: one `write` (one syscall) per socket per turn, however
 * many frames the turn produced for it.
 *
 * On this path the kernel is the cost: a loopback TCP `write` costs 7–9 µs
 * of CPU whatever its size (bench/loopback.ts measures it), so one syscall
 * per delivery would cap a shard near 135k deliveries/s per core. Frames are
 * therefore queued per session: a session's first frame of a turn puts it
 * on the dirty list, and one `setImmediate` (the check phase, right after
 * the poll phase that delivered the turn's messages) writes each dirty
 * session's queue as one buffer. Under load the batches grow by themselves:
 * the busier the shard, the longer its turns and the more frames each write
 * carries (6–10 per write measured at the extreme preset).
 *
 * The queue bypasses the socket's stream buffer (no cork, no per-frame
 * `Writable.write` bookkeeping): the flush concatenates the frames and makes
 * a single `socket.write`. Frames still queued when a session's WebSocket
 * stops being open are dropped: after a close frame nothing may follow, and
 * a closing peer reads nothing more. Code that closes a session itself
 * calls {@link WriteCoalescer.flushNow} first.
 */
import type { Socket } from 'node:net';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';

export interface CoalescedTarget {
  readonly socket: Socket;
  /** True while data frames may still be written. */
  readonly open: boolean;
  /** Frames waiting for the end of the turn, in order. */
  queue: Buffer[];
  queuedBytes: number;
}

export class WriteCoalescer {
  private dirty: CoalescedTarget[] = [];
  private spare: CoalescedTarget[] = [];
  private scheduled = false;
  private readonly metrics: MetricsSlot;

  constructor(metrics: MetricsSlot) {
    this.metrics = metrics;
  }

  /** Queue `frame` for `target`; written at the end of this turn. The buffer must not change afterwards. */
  write(target: CoalescedTarget, frame: Buffer): void {
    if (target.queuedBytes === 0) {
      this.dirty.push(target);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    }
    target.queue.push(frame);
    target.queuedBytes += frame.length;
    const values = this.metrics.values;
    values[Metric.DELIVERIES]! += 1;
    values[Metric.OUTBOUND_BYTES]! += frame.length;
  }

  /** Write `target`'s queue now (before closing it, say). It stays on the dirty list; the flush finds it empty. */
  flushNow(target: CoalescedTarget): void {
    writeQueue(target);
  }

  /** Write every session queued this turn. */
  readonly flush = (): void => {
    this.scheduled = false;
    // Swap lists so frames queued while flushing (none today) wait for the next turn.
    const dirty = this.dirty;
    this.dirty = this.spare;
    for (let i = 0; i < dirty.length; i++) writeQueue(dirty[i]!);
    dirty.length = 0;
    this.spare = dirty;
  };
}

function writeQueue(target: CoalescedTarget): void {
  const queue = target.queue;
  const count = queue.length;
  if (count === 0) return;
  // One buffer, one `write`: a copy of a few KiB costs less than the
  // per-chunk stream bookkeeping of cork + N writes + writev it replaces.
  if (target.open) target.socket.write(count === 1 ? queue[0]! : Buffer.concat(queue, target.queuedBytes));
  // Emptying by pop keeps the array's backing store for the next turn
  // (`length = 0` drops it: ~85 ns to regrow); a store grown by a burst is released.
  if (count <= 16) for (let i = 0; i < count; i++) queue.pop();
  else queue.length = 0;
  target.queuedBytes = 0;
}
