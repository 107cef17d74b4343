/**
 * Slow consumers and outbound memory. A session's backlog is the bytes
 * waiting in its socket (`writableLength`, what the kernel has not taken
 * yet) plus the frames the write coalescer still holds for it. Three bounds
 * apply to it:
 *
 * - **Soft budget** (`--max-buffered-bytes`). A recipient within it gets
 *   every frame at once; a slow one never delays the others (each socket
 *   buffers on its own). Over it, transient events (asset_dragging,
 *   `--coalesce-types`) are held back, the newest per (sender, type)
 *   replacing the previous, and written when the socket drains. Ordered
 *   events (everything else, presence and error frames included) are never
 *   dropped: they are written and buffered. A recipient that stays over
 *   budget for `--slow-consumer-timeout` is taken out of its room and
 *   closed with 4008, so its client reconnects and resyncs.
 * - **Hard cap** (`--max-session-backlog`). Once the bytes a socket still
 *   holds from earlier turns are over it, the next frame a client sent for
 *   it is not queued: the recipient is cut at once (4008).
 *   Without it, one user with a few sessions that never read could make
 *   the process buffer hundreds of MB per second until the timeout. The
 *   server's own frames (API publishes and user events, from this node or
 *   the bus, and role changes) never trigger it: they are not the
 *   member's doing, and the API bounds what a desktop is sent
 *   (`--api-publish-rate`, in the primary), so a member that reads drains
 *   them. One that does not read still goes, by the timeout or the
 *   process cap.
 * - **Process cap** (`--max-outbound-memory`), held as frames are queued.
 *   The shard's figure is the bytes its sockets hold from earlier writes
 *   (counted at each write that leaves some, recounted exactly at most once
 *   a turn and at every sweep), plus the bytes queued in the coalescer,
 *   plus the shared frames (shared-frames.ts) that sockets hold, each
 *   counted once. Every frame queued adds to it at once; the shard
 *   publishes it in the shared metrics buffer at the end of each turn
 *   that queued anything (and at each recount), and reads the other
 *   shards' figures from there once a turn. When a frame takes the process
 *   over the cap, the shard recounts, and if still over cuts its own
 *   largest backlogs first (by what their sockets hold: the peers that are
 *   not reading) until the sum, as it knows it, is below. The 100 ms sweep
 *   does the same.
 *
 * A cut session leaves its room at once (session_left), told to the code
 * that can take it out, never called back from inside a delivery (see
 * {@link Delivery}). Its coalesced
 * frames are dropped, a 4008 close frame is queued behind what the socket
 * already holds, nothing more is read from it, and the socket is destroyed
 * 2 s later (socket-reads.ts) if the peer has not read its way to that
 * close frame: the memory comes back within that grace whatever the peer
 * does.
 */
import type { Logger } from '../log.ts';
import { CloseCode } from '../protocol/events.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import type { Session } from './session.ts';
import { closeAndCut } from './socket-reads.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

/** How often backlogs are recounted and the slow-consumer deadline checked. */
export const SWEEP_MS = 100;

export interface BackpressureOptions {
  maxBufferedBytes: number;
  slowConsumerTimeoutMs: number;
  maxSessionBacklogBytes: number;
  maxOutboundBytes: number;
  /** Bytes every shard of the process holds, from the shared metrics (this shard's last published figure included). */
  processOutbound: () => number;
  /** Memory was under pressure and is being let go (a cut, or a large backlog drained): memory-release.ts. */
  onRelease: () => void;
}

/** A shard backlog this large, once drained, is worth a full GC to give its buffers back. */
export const LARGE_BACKLOG_BYTES = 32 * 1024 * 1024;

/**
 * What one {@link Backpressure.deliver} did to the session it delivered to:
 * a small int, so that the hot path allocates nothing.
 *
 * - `SENT`: queued for writing (or written, a large frame).
 * - `HELD`: not queued now: a transient frame held back while the session
 *   is over its budget (written when it drains), or a frame for a session
 *   already closing, dropped.
 * - `CUT`: this delivery cut the session (its hard cap, or the process cap
 *   this frame crossed chose it). It is closing; the caller takes it out of
 *   its room(s) itself.
 *
 * Other sessions the process cap cut meanwhile are not the caller's to know
 * of: they wait in a list that {@link Backpressure.settleCuts} hands to the
 * shard's cut handler, which the caller runs after its loop.
 */
export const Delivery = { SENT: 0, HELD: 1, CUT: 2 } as const;
export type Delivery = (typeof Delivery)[keyof typeof Delivery];

/** Takes a cut session out of its room(s) (session_left to the others): the shard's, registered once with {@link Backpressure.attach}. */
export type CutHandler = (session: Session) => void;

type CutReason = 'slow_consumer' | 'backlog_cap' | 'memory_cap';

const CUT_METRIC: Record<CutReason, number> = {
  slow_consumer: Metric.CLOSED_SLOW_CONSUMER,
  backlog_cap: Metric.CLOSED_BACKLOG_CAP,
  memory_cap: Metric.CLOSED_MEMORY_CAP,
};

/** A session's standing against its outbound budget, made by {@link Backpressure.newBudget} and touched by it alone. */
export interface BudgetState {
  /** When the session's socket went over its outbound budget (0 = within it). */
  overBudgetSince: number;
  /** A 'drain' listener is attached. */
  awaitingDrain: boolean;
  /** Newest transient frame per (sender, type), held while over budget. */
  coalesced: Map<string, Buffer> | null;
}

function backlogOf(session: Session): number {
  return session.socket.writableLength + session.out.queuedBytes;
}

/** Who sent a frame: a client (through the relay or the bus), or the server itself (commands, role changes). */
export type FrameSource = 'client' | 'server';

/** What `session`'s socket holds beyond the shared frames (those count once, in the coalescer). */
function ownSocketBytes(session: Session): number {
  const own = session.socket.writableLength - (session.out.shared === null ? 0 : session.out.shared.bytes);
  return own > 0 ? own : 0;
}

export class Backpressure {
  private readonly options: BackpressureOptions;
  private readonly out: WriteCoalescer<Session>;
  private readonly metrics: MetricsSlot;
  private readonly log: Logger;
  /** Sessions currently over the soft budget. */
  private readonly over = new Set<Session>();
  /** Sessions whose socket kept bytes after a write (the coalescer reports them); dropped once empty. */
  private readonly backlogged = new Set<Session>();
  private readonly sweeper: NodeJS.Timeout;
  /** The shard's backlog reached LARGE_BACKLOG_BYTES since memory was last let go. */
  private wasLarge = false;
  /**
   * Bytes the sockets of this shard hold from earlier writes, shared frames
   * apart: exact after a recount, then raised by each write that leaves
   * bytes (the kernel taking them is seen at the next recount).
   */
  private socketBytes = 0;
  /** The other shards' figures, read from the shared metrics once a turn. */
  private others = 0;
  /** This turn has read {@link others}; recounted; found no one left to cut (reset by {@link endTurn}). */
  private turnOpen = false;
  private recountedThisTurn = false;
  private exhaustedThisTurn = false;
  /** Sessions cut aside (by a shed, the sweep, or passed on with {@link passOn}) whose rooms have not heard yet; empty almost always. */
  private readonly cutAside: Session[] = [];
  /** {@link settleCuts} is running: a nested call leaves the list to it. */
  private settling = false;
  /** The session a delivery is for, while its frame may make the process cap shed: a shed that picks it reports it as the verdict, not in the list. */
  private delivering: Session | null = null;
  private deliveringCut = false;
  /** The shard's cut handler, once the parts that take a session out of its room exist. */
  private onCut: CutHandler | null = null;

  constructor(options: BackpressureOptions, out: WriteCoalescer<Session>, metrics: MetricsSlot, log: Logger) {
    this.options = options;
    this.out = out;
    this.metrics = metrics;
    this.log = log;
    // The one cycle between the two: the policy writes through the coalescer, and needs to know which sockets kept
    // bytes. The coalescer is built first (it needs nothing of the policy); the policy, built on it, registers here.
    out.attach(this);
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  /** The budget state of a new session. */
  newBudget(): BudgetState {
    return { overBudgetSince: 0, awaitingDrain: false, coalesced: null };
  }

  /**
   * Register the shard's cut handler, once every part it calls exists. It
   * takes the sessions the sweep cuts, and those a delivery cut aside, when
   * {@link settleCuts} runs. Until then they wait in the list.
   */
  attach(onCut: CutHandler): void {
    this.onCut = onCut;
  }

  /** The coalescer wrote to `session` and its socket kept `keptBytes` of that write (0 for a shared frame). */
  noteBacklog(session: Session, keptBytes: number): void {
    this.backlogged.add(session);
    this.socketBytes += keptBytes;
  }

  /**
   * Deliver `frame` to `member`. `transientKey` (sender + type) marks a
   * transient event, which is held back while `member` is over budget.
   * A `server` frame never gets the member cut by the hard cap. Returns
   * what became of `member` ({@link Delivery}); a `CUT` member is the
   * caller's to take out of its room. Others cut meanwhile wait for
   * {@link settleCuts}.
   */
  deliver(member: Session, frame: Buffer, transientKey: string | undefined, source: FrameSource = 'client'): Delivery {
    const unwritten = member.socket.writableLength;
    const backlog = unwritten + member.out.queuedBytes;
    if (backlog > this.options.maxBufferedBytes) {
      // The hard cap looks at what the socket still holds from earlier turns:
      // a turn's own queue can be large for a healthy reader (libuv reads up
      // to 2 MB per socket per turn) and is handed to the kernel at its end.
      if (unwritten > this.options.maxSessionBacklogBytes && source === 'client') {
        return this.cut(member, 'backlog_cap', backlog) ? Delivery.CUT : Delivery.HELD;
      }
      if (member.budget.overBudgetSince === 0) this.markOver(member);
      if (transientKey !== undefined) {
        const held = (member.budget.coalesced ??= new Map());
        if (held.has(transientKey)) this.metrics.add(Metric.DROPPED_COALESCED);
        held.set(transientKey, frame);
        return Delivery.HELD;
      }
    }
    this.out.write(member.out, frame);
    if (!this.turnOpen) this.openTurn();
    if (this.shardTotal() + this.others <= this.options.maxOutboundBytes) return Delivery.SENT;
    // Over the process cap: the shed may pick `member` itself.
    this.delivering = member;
    this.deliveringCut = false;
    this.holdCap();
    this.delivering = null;
    return this.deliveringCut ? Delivery.CUT : Delivery.SENT;
  }

  /**
   * `session` was cut by a delivery of the caller's (its verdict was `CUT`),
   * and the caller cannot take it out of its room itself (the topic rooms:
   * their legacy members are the relay's, their connections the topic
   * ops'): the shard's cut handler will, at the next {@link settleCuts}.
   */
  passOn(session: Session): void {
    this.cutAside.push(session);
  }

  /**
   * Hand every session cut aside to the shard's cut handler, in the order
   * they were cut, and empty the list. Callers run it after their delivery
   * loop (the room's members array is then unpinned); the sweep runs it
   * too, so nothing waits longer than {@link SWEEP_MS}. Allocates nothing
   * when the list is empty, which it nearly always is.
   */
  settleCuts(): void {
    const cuts = this.cutAside;
    const onCut = this.onCut;
    if (cuts.length === 0 || this.settling || onCut === null) return;
    this.settling = true;
    try {
      // The handler's own deliveries (session_left) may cut more: they join the list, and this loop reaches them.
      for (let i = 0; i < cuts.length; i++) onCut(cuts[i]!);
    } finally {
      cuts.length = 0;
      this.settling = false;
    }
  }

  /** This shard's figure toward the process cap, current as of the last frame queued (published at the end of the turn). */
  get outboundBytes(): number {
    return this.shardTotal();
  }

  /** This shard's figure: socket bytes, queued bytes, shared frames once. */
  private shardTotal(): number {
    return this.socketBytes + this.out.queuedBytes + this.out.sharedBytes;
  }

  /** The first frame of a turn: read the other shards' figures, once, and publish this one at the turn's end. */
  private openTurn(): void {
    this.turnOpen = true;
    this.others = this.options.processOutbound() - this.metrics.values[Metric.OUTBOUND_BUFFERED]!;
    setImmediate(this.endTurn);
  }

  private readonly endTurn = (): void => {
    this.turnOpen = false;
    this.recountedThisTurn = false;
    this.exhaustedThisTurn = false;
    this.metrics.values[Metric.OUTBOUND_BUFFERED] = this.shardTotal();
  };

  /**
   * Queueing took the process over the cap: recount (once a turn; within a
   * turn the figure only grows by what is queued, which it counts exactly),
   * and cut this shard's largest backlogs while it is still over. Once no
   * candidate is left, the rest of the turn goes on without looking again:
   * what is over is this turn's own queue, written at its end.
   */
  private holdCap(): void {
    if (this.exhaustedThisTurn) return;
    if (!this.recountedThisTurn) {
      this.recountedThisTurn = true;
      this.recount();
      if (this.shardTotal() + this.others <= this.options.maxOutboundBytes) return;
    }
    if (!this.shed()) this.exhaustedThisTurn = true;
  }

  private markOver(member: Session): void {
    const budget = member.budget;
    budget.overBudgetSince = Date.now();
    this.over.add(member);
    // 'drain' comes only after a write that returned false; the sweep also
    // notices a session back within budget, so one listener at a time is enough.
    if (!budget.awaitingDrain) {
      budget.awaitingDrain = true;
      member.socket.once('drain', () => {
        budget.awaitingDrain = false;
        this.drained(member);
      });
    }
  }

  private drained(member: Session): void {
    const budget = member.budget;
    if (budget.overBudgetSince === 0) return;
    budget.overBudgetSince = 0;
    this.over.delete(member);
    const held = budget.coalesced;
    budget.coalesced = null;
    if (held !== null && member.open) for (const frame of held.values()) this.out.write(member.out, frame);
  }

  /**
   * Close `member` with 4008 (whoever gets its verdict or settles the list
   * takes it out of its room). For the soft budget's timeout the backlog is
   * flushed first (the peer is slow, not gone); over a cap, nothing more is
   * queued for it. False when it was not open.
   */
  private cut(member: Session, reason: CutReason, backlog: number): boolean {
    if (!member.open) return false;
    const counted = this.backlogged.delete(member);
    if (this.over.delete(member) || counted) this.socketBytes = Math.max(0, this.socketBytes - ownSocketBytes(member));
    member.budget.coalesced = null;
    this.metrics.add(CUT_METRIC[reason]);
    this.log.warn('slow_consumer_close', {
      sessionId: member.id,
      desktopId: member.desktopId,
      reason,
      backlogBytes: backlog,
      ...(member.budget.overBudgetSince === 0 ? {} : { overForMs: Date.now() - member.budget.overBudgetSince }),
    });
    this.options.onRelease();
    if (reason === 'slow_consumer') this.out.flushNow(member.out);
    // Nothing it still holds is counted from here: its queue is dropped, and
    // its socket, shared frames and all, is destroyed within the cut's grace.
    this.out.release(member.out);
    closeAndCut(member, CloseCode.SLOW_CONSUMER, 'slow consumer');
    this.metrics.values[Metric.OUTBOUND_BUFFERED] = this.shardTotal();
    return true;
  }

  /** `member` was cut aside, not by the caller's own delivery: its room hears at {@link settleCuts}. */
  private cutAsideOf(member: Session, reason: CutReason, backlog: number): void {
    if (!this.cut(member, reason, backlog)) return;
    if (member === this.delivering) this.deliveringCut = true;
    else this.cutAside.push(member);
  }

  /**
   * Count exactly what this shard's sockets hold (shared frames apart, the
   * coalescer counts those), forget the sessions that hold nothing, read the
   * other shards' figures and publish this one.
   */
  private recount(): void {
    let total = 0;
    for (const member of this.backlogged) {
      if (member.socket.destroyed) this.out.release(member.out);
      const backlog = member.socket.destroyed ? 0 : backlogOf(member);
      if (backlog === 0) this.backlogged.delete(member);
      else total += ownSocketBytes(member);
    }
    for (const member of this.over) if (!this.backlogged.has(member)) total += ownSocketBytes(member);
    this.socketBytes = total;
    // The other shards' figures, read before this shard publishes its own new one (else a rise counts twice).
    this.others = this.options.processOutbound() - this.metrics.values[Metric.OUTBOUND_BUFFERED]!;
    this.metrics.values[Metric.OUTBOUND_BUFFERED] = this.shardTotal();
  }

  /** Recount, publish, and apply the timeout and the process cap. */
  private sweep(): void {
    const now = Date.now();
    for (const member of this.over) {
      if (!member.open) {
        this.over.delete(member);
      } else if (backlogOf(member) <= this.options.maxBufferedBytes) {
        this.drained(member);
      } else if (now - member.budget.overBudgetSince >= this.options.slowConsumerTimeoutMs) {
        this.cutAsideOf(member, 'slow_consumer', backlogOf(member));
      }
    }
    // Their rooms hear before the recount, which then counts the session_left frames queued.
    this.settleCuts();
    this.recount();
    const total = this.shardTotal();
    if (total >= LARGE_BACKLOG_BYTES) {
      this.wasLarge = true;
    } else if (this.wasLarge && total < this.options.maxBufferedBytes) {
      this.wasLarge = false;
      this.options.onRelease();
    }
    if (total + this.others > this.options.maxOutboundBytes) this.shed();
    this.settleCuts();
  }

  /**
   * The process is over its cap: cut this shard's largest backlogs until it
   * is not, those whose sockets hold the most first (their peers are not
   * reading; a turn's queue goes to the kernel at its end). False when
   * candidates ran out while it was still over.
   */
  private shed(): boolean {
    const largest: { member: Session; held: number; backlog: number }[] = [];
    for (const member of this.backlogged) if (member.open) largest.push({ member, held: member.socket.writableLength, backlog: backlogOf(member) });
    for (const member of this.over) {
      if (member.open && !this.backlogged.has(member)) largest.push({ member, held: member.socket.writableLength, backlog: backlogOf(member) });
    }
    largest.sort((a, b) => b.held - a.held || b.backlog - a.backlog);
    for (const { member, backlog } of largest) {
      if (this.shardTotal() + this.others <= this.options.maxOutboundBytes) return true;
      if (backlog === 0) break;
      this.cutAsideOf(member, 'memory_cap', backlog);
    }
    return this.shardTotal() + this.others <= this.options.maxOutboundBytes;
  }

  stop(): void {
    clearInterval(this.sweeper);
  }
}
