/**
 * Slow consumers. Each session has an outbound budget: the bytes waiting in
 * its socket (`writableLength`, what the kernel has not taken yet) plus the
 * frames the write coalescer still holds for it.
 *
 * - A recipient within budget gets every frame at once; a slow one never
 *   delays the others (each socket buffers on its own).
 * - Over budget, transient events (asset_dragging, `--coalesce-types`) are
 *   held back, the newest per (sender, type) replacing the previous, and
 *   written when the socket drains.
 * - Ordered events (everything else, presence included) are never dropped:
 *   they are written and buffered. A recipient that stays over budget for
 *   `--slow-consumer-timeout` is taken out of its room and closed with 4008,
 *   so its client reconnects and resyncs.
 */
import type { Logger } from '../log.ts';
import { CloseCode } from '../protocol/events.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import type { Session } from './session.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

export interface BackpressureOptions {
  maxBufferedBytes: number;
  slowConsumerTimeoutMs: number;
}

export class Backpressure {
  private readonly options: BackpressureOptions;
  private readonly out: WriteCoalescer;
  private readonly metrics: MetricsSlot;
  private readonly log: Logger;
  /** Sessions currently over budget. */
  private readonly over = new Set<Session>();
  private readonly sweeper: NodeJS.Timeout;
  /** Set by the shard: take a session out of its room (session_left). */
  onSlowConsumer: (session: Session) => void = () => {};

  constructor(options: BackpressureOptions, out: WriteCoalescer, metrics: MetricsSlot, log: Logger) {
    this.options = options;
    this.out = out;
    this.metrics = metrics;
    this.log = log;
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, Math.max(50, options.slowConsumerTimeoutMs / 4)));
    this.sweeper.unref();
  }

  /**
   * Deliver `frame` to `member`. `transientKey` (sender + type) marks a
   * transient event, which is held back while `member` is over budget.
   */
  deliver(member: Session, frame: Buffer, transientKey: string | undefined): void {
    if (member.socket.writableLength + member.queuedBytes > this.options.maxBufferedBytes) {
      if (member.overBudgetSince === 0) this.markOver(member);
      if (transientKey !== undefined) {
        const held = (member.coalesced ??= new Map());
        if (held.has(transientKey)) this.metrics.add(Metric.DROPPED_COALESCED);
        held.set(transientKey, frame);
        return;
      }
    }
    this.out.write(member, frame);
  }

  private markOver(member: Session): void {
    member.overBudgetSince = Date.now();
    this.over.add(member);
    // 'drain' comes only after a write that returned false; the sweep also
    // notices a session back within budget, so one listener at a time is enough.
    if (!member.awaitingDrain) {
      member.awaitingDrain = true;
      member.socket.once('drain', () => {
        member.awaitingDrain = false;
        this.drained(member);
      });
    }
  }

  private drained(member: Session): void {
    if (member.overBudgetSince === 0) return;
    member.overBudgetSince = 0;
    this.over.delete(member);
    const held = member.coalesced;
    member.coalesced = null;
    if (held !== null && member.open) for (const frame of held.values()) this.out.write(member, frame);
  }

  /** Close sessions over budget for longer than the timeout. */
  private sweep(): void {
    if (this.over.size === 0) return;
    const now = Date.now();
    for (const member of this.over) {
      if (!member.open) {
        this.over.delete(member);
      } else if (member.socket.writableLength + member.queuedBytes <= this.options.maxBufferedBytes) {
        this.drained(member);
      } else if (now - member.overBudgetSince >= this.options.slowConsumerTimeoutMs) {
        this.over.delete(member);
        member.coalesced = null;
        this.metrics.add(Metric.CLOSED_SLOW_CONSUMER);
        this.log.warn('slow_consumer_close', {
          sessionId: member.id,
          desktopId: member.desktopId,
          bufferedBytes: member.socket.writableLength,
          overForMs: now - member.overBudgetSince,
        });
        this.onSlowConsumer(member);
        // The close frame queues behind the backlog; ws cuts the socket if it never drains.
        this.out.flushNow(member);
        member.ws.close(CloseCode.SLOW_CONSUMER, 'slow consumer');
      }
    }
  }

  stop(): void {
    clearInterval(this.sweeper);
  }
}
