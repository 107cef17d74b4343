/**
 * Replays: the events a resuming client missed, written to its socket as
 * fast as it reads them and no faster (issue 21).
 *
 * A replay is a cursor into the room's history (room-log.ts) and the
 * socket it writes to. While it runs, the room's live events skip its
 * target (the delivering loops check `replay`): they are in the history
 * too, and the cursor reaches them in order. When the cursor has read the
 * last event ({@link ReplayJob.done}, called in the same turn as that
 * read), live events flow again: none is lost or sent twice, and none
 * overtakes a replayed one. Presence frames are not in the history and
 * are never held back.
 *
 * Flow control. Every replay is stepped from one queue, once per turn at
 * most: a step writes up to {@link REPLAY_CHUNK_BYTES} through the outbound
 * budget (backpressure.ts, like live frames), and a turn writes at most
 * {@link REPLAY_TURN_BYTES} for all replays of the shard, round robin. A
 * target whose socket has not drained (`writableNeedDrain`), or that holds
 * {@link REPLAY_WINDOW_BYTES} or more, is not written to: it waits for its
 * socket's `drain` (or the next turn). So a replay holds at most a window
 * and a chunk per client, whatever the history holds, and a thousand
 * clients resuming at once cost the shard about a turn's budget a turn.
 *
 * A replay whose next event the history let go of (it read too slowly, or
 * the history was over a bound) cannot be made whole: {@link ReplayJob.lost}
 * ends it (the legacy route closes with 4009; a subscription ends with
 * `recovery_lost`), and a resume from the last offset received then says
 * `recovered: false`.
 */
import type { Socket } from 'node:net';
import { encodeTextFrame } from '../protocol/frame.ts';
import type { LogCursor, LogEntry } from './room-log.ts';

/** Bytes one replay writes in one step. */
export const REPLAY_CHUNK_BYTES = 16 * 1024;
/** A target holding this much (socket plus queue) gets no more replay until it drains. */
export const REPLAY_WINDOW_BYTES = 64 * 1024;
/** Bytes all the shard's replays write in one turn. */
export const REPLAY_TURN_BYTES = 512 * 1024;

/** Where a replay writes: a session's socket and what the coalescer holds for it. */
export interface ReplayTarget {
  readonly socket: Socket;
  readonly open: boolean;
  readonly out: { readonly queuedBytes: number };
}

export interface ReplayJob<T extends ReplayTarget = ReplayTarget> {
  readonly target: T;
  readonly cursor: LogCursor;
  /** The frame text of `entry` for this target: its framing, its offset. */
  render(entry: LogEntry): string;
  /** The cursor caught up: live events go to the target from now on. */
  done(): void;
  /** The history let go of an event the target had not had. */
  lost(): void;
  /** The target no longer wants the replay (its socket closed, it left the room). */
  cancelled(): boolean;
  /** The replay ended, however: done, lost, cancelled, or its target closed. Called last, once. */
  ended?(): void;
}

interface Running {
  job: ReplayJob;
  /** An entry read while the replay was not being stepped (an answer from another shard), written first. */
  pending: LogEntry | null;
}

export class Replays {
  private readonly deliver: (target: ReplayTarget, frame: Buffer) => void;
  private ready: Running[] = [];
  private scheduled = false;
  private running = 0;

  /** `deliver` writes a frame through the outbound budget (backpressure.ts). */
  constructor(deliver: (target: ReplayTarget, frame: Buffer) => void) {
    this.deliver = deliver;
  }

  /** Replays under way (for the tests and /stats). */
  get active(): number {
    return this.running;
  }

  /** Start `job`; its first step comes after what the caller queues in this turn (the `room_joined` or the ack). */
  start(job: ReplayJob): void {
    const run: Running = { job, pending: null };
    this.running++;
    job.cursor.onReady = () => this.ready_(run);
    this.wake(run);
  }

  /** The cursor's wait is over: read at once, so that a caught-up cursor ends the replay before any live event can come in. */
  private ready_(run: Running): void {
    const { job } = run;
    if (this.finishIfCancelled(run)) return;
    const read = job.cursor.read();
    if (read === 'wait') return;
    if (read === null) return this.finish(run, 'done');
    if (read === 'gone') return this.finish(run, 'lost');
    run.pending = read;
    this.wake(run);
  }

  private wake(run: Running): void {
    this.ready.push(run);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.turn);
    }
  }

  private readonly turn = (): void => {
    this.scheduled = false;
    const runs = this.ready;
    this.ready = [];
    let budget = REPLAY_TURN_BYTES;
    for (const run of runs) {
      if (budget <= 0) this.wake(run);
      else budget -= this.step(run, Math.min(budget, REPLAY_CHUNK_BYTES));
    }
  };

  /** Write up to `limit` bytes of `run`'s replay; the bytes written. */
  private step(run: Running, limit: number): number {
    const { job } = run;
    if (this.finishIfCancelled(run)) return 0;
    const target = job.target;
    const socket = target.socket;
    if (socket.writableNeedDrain) {
      // A socket that closes instead of draining ends the replay at its next step.
      const resume = (): void => {
        socket.off('drain', resume);
        socket.off('close', resume);
        this.wake(run);
      };
      socket.once('drain', resume);
      socket.once('close', resume);
      return 0;
    }
    if (socket.writableLength + target.out.queuedBytes >= REPLAY_WINDOW_BYTES) {
      this.wake(run);
      return 0;
    }
    let sent = 0;
    while (sent < limit) {
      let read: LogEntry | null | 'gone' | 'wait';
      if (run.pending !== null) {
        read = run.pending;
        run.pending = null;
      } else read = job.cursor.read();
      if (read === 'wait') return sent;
      if (read === null) {
        this.finish(run, 'done');
        return sent;
      }
      if (read === 'gone') {
        this.finish(run, 'lost');
        return sent;
      }
      const frame = encodeTextFrame(job.render(read));
      this.deliver(target, frame);
      sent += frame.length;
    }
    this.wake(run);
    return sent;
  }

  private finishIfCancelled(run: Running): boolean {
    if (!run.job.cancelled() && run.job.target.open) return false;
    this.finish(run, null);
    return true;
  }

  private finish(run: Running, how: 'done' | 'lost' | null): void {
    run.job.cursor.onReady = null;
    this.running--;
    if (how === 'done') run.job.done();
    else if (how === 'lost') run.job.lost();
    run.job.ended?.();
  }
}
