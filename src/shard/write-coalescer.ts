/**
 * Coalesces writes per socket within one event-loop turn.
 *
 * A busy room produces many frames per turn for each member (one per
 * incoming message). Writing each one is one syscall per frame per member.
 * Instead the first write of a turn corks the socket and the socket joins a
 * dirty list; one `setImmediate` (the check phase, right after the poll phase
 * that delivered this turn's messages) uncorks them all, so each socket gets
 * a single `writev` carrying every frame of the turn.
 */
import type { Socket } from 'node:net';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';

export interface CoalescedTarget {
  readonly socket: Socket;
  corked: boolean;
}

export class WriteCoalescer {
  private dirty: CoalescedTarget[] = [];
  private spare: CoalescedTarget[] = [];
  private scheduled = false;
  private readonly metrics: MetricsSlot;

  constructor(metrics: MetricsSlot) {
    this.metrics = metrics;
  }

  /** Queue `frame` on `target`'s socket; flushed at the end of this turn. The buffer must not change afterwards. */
  write(target: CoalescedTarget, frame: Buffer): void {
    if (!target.corked) {
      target.corked = true;
      target.socket.cork();
      this.dirty.push(target);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    }
    target.socket.write(frame);
    const values = this.metrics.values;
    values[Metric.DELIVERIES]! += 1;
    values[Metric.OUTBOUND_BYTES]! += frame.length;
  }

  /** Uncork every socket written this turn. */
  readonly flush = (): void => {
    this.scheduled = false;
    // Swap lists so writes made while flushing (none today) land in the next turn.
    const dirty = this.dirty;
    this.dirty = this.spare;
    for (let i = 0; i < dirty.length; i++) {
      const target = dirty[i]!;
      target.corked = false;
      target.socket.uncork();
    }
    dirty.length = 0;
    this.spare = dirty;
  };
}
