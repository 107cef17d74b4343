/**
 * Reading an HTTP request head without starting a libuv read.
 *
 * Node ≥ 26.10 can move a connected `net.Socket` to a worker thread with
 * `postMessage(msg, [socket])`, but only while its handle has never read:
 * once `readStart()` ran, the transfer throws ERR_WORKER_HANDLE_NOT_TRANSFERABLE.
 * Yet the primary must see the request path to pick the shard.
 *
 * So the listening server uses `pauseOnConnect` (no readStart), and this
 * module reads the head with `fs.readSync()` on the socket's file descriptor.
 * The descriptor is non-blocking, so an empty socket answers EAGAIN at once
 * and the event loop never blocks on a slow client. Nothing tells us when
 * bytes arrive (libuv's poll is not exposed), so a socket with no data is
 * polled again on a backoff schedule: twice on the next loop turns, every
 * 1 ms for 4 ms, then 2, 2, 4, 8 … ms apart, at most every
 * {@link MAX_POLL_INTERVAL_MS}. A request
 * usually arrives with the ACK that completed the TCP handshake, so the first
 * or second attempt finds it; a slowloris costs one ~3 µs syscall per 100 ms.
 *
 * When a partial head arrives, the schedule steps back only
 * {@link PROGRESS_STEP_BACK} steps: the rest may be in flight, but restarting
 * at the fastest step let a client that dribbles bytes pull its polls back to
 * every loop turn (300 sockets at 500 B/s took 99% of the primary). So polls
 * settle near the rate the bytes arrive at. A head that has started must also
 * keep up {@link MIN_HEAD_BYTES_PER_SECOND} once {@link HEAD_RATE_GRACE_MS}
 * passed since its first byte, or it ends as `too-slow`, long before the
 * handshake timeout. Silent sockets are left to the timeout (and to the
 * primary's shedding): they cost one poll per 100 ms.
 *
 * The bytes read are handed over with the socket: the kernel has consumed
 * them, so whoever continues must treat them as the start of the stream.
 */
import { readSync } from 'node:fs';
import type { Socket } from 'node:net';
import { HeadReaderUnsupportedError } from '../errors.ts';
import { findHeadEnd } from '../protocol/http.ts';

export type HeadReadResult =
  /** A complete head; `bytes` may continue past `headLength` (early frames). `polls` counts read attempts. */
  | { kind: 'head'; bytes: Buffer; headLength: number; polls: number }
  /** `maxBytes` read and no end of head among them. */
  | { kind: 'too-large' }
  /** The deadline passed before the head was complete. */
  | { kind: 'timeout'; received: number }
  /** The head arrived slower than {@link MIN_HEAD_BYTES_PER_SECOND}. */
  | { kind: 'too-slow'; received: number }
  /** The peer closed or reset the connection, or the socket was destroyed. */
  | { kind: 'closed'; received: number }
  /** An unexpected read error. */
  | { kind: 'error'; error: Error };

export interface HeadReaderOptions {
  /** Most bytes read before giving up with `too-large`. */
  maxBytes: number;
  /** Milliseconds from the call until `timeout`. */
  timeoutMs: number;
}

/** A read in progress; `cancel()` stops polling without calling back. */
export interface PendingHead {
  /** Bytes of the head read so far (as of the last poll). */
  readonly received: number;
  /** Poll now, out of schedule; may call back synchronously. */
  pollNow(): void;
  cancel(): void;
}

/** Longest wait between two polls of a silent socket. */
export const MAX_POLL_INTERVAL_MS = 100;
/**
 * Slowest a head may arrive, in bytes per second since its first byte. A
 * head is ~0.5–2 KiB and normally arrives in one segment; even a 2G link
 * sends 2.5 KiB/s, while a dribbler that keeps under this is cut.
 */
export const MIN_HEAD_BYTES_PER_SECOND = 1024;
/**
 * How long after its first byte a head is exempt from the minimum rate: a
 * head split over segments, one of them lost, waits a retransmission
 * timeout, which on a slow mobile link can exceed a second.
 */
export const HEAD_RATE_GRACE_MS = 2000;
/**
 * Steps back on the poll schedule after a read that made progress. With 1,
 * a poll that found bytes keeps its delay; with 2 the next poll is one step
 * faster, as the rest is likely in flight. Each empty poll moves one step
 * slower, so a steady dribble settles at a few polls per segment (about
 * three for segments 25 ms apart, where restarting the schedule took eleven).
 */
export const PROGRESS_STEP_BACK = 2;
// 0 = next loop turn (setImmediate); others are timer delays in ms. Heads
// usually land within a few ms of the accept, so the schedule stays at 1 ms
// steps for 4 ms before backing off: a pure doubling schedule made a head
// that arrived at 3 ms wait until 7 ms, and handshakes under a connect storm
// waited tens of ms on polls while both server threads sat idle.
const BACKOFF_MS = [0, 0, 1, 1, 1, 1, 2, 2, 4, 8, 16, 32, 64, MAX_POLL_INTERVAL_MS];

// One scratch buffer serves every read: the primary is single-threaded and a
// read completes synchronously. Most heads arrive in one read and are copied
// out at their exact size; only a partial head gets a buffer of its own.
let scratch = Buffer.allocUnsafe(16 * 1024);

interface HandleWithFd {
  fd?: number;
}

function fdOf(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: HandleWithFd | null })._handle;
  return handle && typeof handle.fd === 'number' ? handle.fd : -1;
}

/**
 * Copy into a buffer that owns an ArrayBuffer of exactly its size. `Buffer.from`
 * would return a view into Node's shared pool slab (64 KiB on Node 26), and
 * postMessage clones the *whole* underlying ArrayBuffer: every handshake
 * would ship, and the shard would allocate, 64 KiB.
 */
function exactCopy(source: Buffer): Buffer {
  const copy = Buffer.allocUnsafeSlow(source.length);
  source.copy(copy);
  return copy;
}

function isWouldBlock(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK';
}

function isPeerGone(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ECONNRESET' || code === 'EPIPE' || code === 'ENOTCONN' || code === 'ETIMEDOUT' || code === 'EBADF';
}

class HeadRead implements PendingHead {
  private readonly socket: Socket;
  private readonly fd: number;
  private readonly maxBytes: number;
  private readonly deadline: number;
  private readonly callback: (result: HeadReadResult) => void;
  private partial: Buffer | null = null;
  received = 0;
  /** When the first byte was read (ms since epoch); 0 before. */
  private firstByteAt = 0;
  private attempt = 0;
  private polls = 0;
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private done = false;

  constructor(socket: Socket, fd: number, options: HeadReaderOptions, callback: (result: HeadReadResult) => void) {
    this.socket = socket;
    this.fd = fd;
    this.maxBytes = options.maxBytes;
    this.deadline = Date.now() + options.timeoutMs;
    this.callback = callback;
  }

  cancel(): void {
    this.done = true;
    this.clearTimer();
  }

  pollNow(): void {
    if (this.done) return;
    this.clearTimer();
    this.poll();
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.immediate !== null) clearImmediate(this.immediate);
    this.timer = null;
    this.immediate = null;
  }

  private finish(result: HeadReadResult): void {
    this.done = true;
    this.clearTimer();
    this.partial = null;
    this.callback(result);
  }

  /** Read whatever is available; call back or schedule the next poll. */
  readonly poll = (): void => {
    this.timer = null;
    this.immediate = null;
    if (this.done) return;
    if (this.socket.destroyed || fdOf(this.socket) !== this.fd) {
      this.finish({ kind: 'closed', received: this.received });
      return;
    }
    for (;;) {
      const want = this.maxBytes - this.received;
      if (scratch.length < want) scratch = Buffer.allocUnsafe(want);
      let n: number;
      this.polls++;
      // EAGAIN is the common outcome of a poll; without a stack trace the
      // thrown error costs ~40% less.
      const stackTraceLimit = Error.stackTraceLimit;
      Error.stackTraceLimit = 0;
      try {
        n = readSync(this.fd, scratch, 0, want, null);
      } catch (err) {
        Error.stackTraceLimit = stackTraceLimit;
        if (isWouldBlock(err)) return this.schedule();
        if (isPeerGone(err)) return this.finish({ kind: 'closed', received: this.received });
        return this.finish({ kind: 'error', error: err as Error });
      }
      Error.stackTraceLimit = stackTraceLimit;
      if (n === 0) return this.finish({ kind: 'closed', received: this.received });

      const before = this.received;
      this.received += n;
      if (before === 0) this.firstByteAt = Date.now();
      if (this.partial === null && before === 0) {
        const end = findHeadEnd(scratch.subarray(0, n));
        if (end !== -1) return this.finish({ kind: 'head', bytes: exactCopy(scratch.subarray(0, n)), headLength: end, polls: this.polls });
        this.partial = Buffer.allocUnsafe(this.maxBytes);
      }
      scratch.copy(this.partial!, before, 0, n);
      const end = findHeadEnd(this.partial!.subarray(0, this.received), before - 3);
      if (end !== -1) {
        return this.finish({ kind: 'head', bytes: exactCopy(this.partial!.subarray(0, this.received)), headLength: end, polls: this.polls });
      }
      if (this.received >= this.maxBytes) return this.finish({ kind: 'too-large' });
      // More of the head may be in flight: poll a little sooner, not from the start.
      this.attempt = Math.max(0, this.attempt - PROGRESS_STEP_BACK);
    }
  };

  private schedule(): void {
    const now = Date.now();
    const remaining = this.deadline - now;
    if (remaining <= 0) {
      this.finish({ kind: 'timeout', received: this.received });
      return;
    }
    if (this.received > 0) {
      const elapsed = now - this.firstByteAt;
      if (elapsed >= HEAD_RATE_GRACE_MS && this.received * 1000 < MIN_HEAD_BYTES_PER_SECOND * elapsed) {
        this.finish({ kind: 'too-slow', received: this.received });
        return;
      }
    }
    const delay = Math.min(BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)]!, remaining);
    this.attempt++;
    if (delay === 0) this.immediate = setImmediate(this.poll);
    else this.timer = setTimeout(this.poll, delay);
  }
}

/**
 * Read the request head of a freshly accepted, never-read socket (a server
 * created with `pauseOnConnect: true`) straight from its file descriptor,
 * leaving the socket transferable. The first attempt runs synchronously, so
 * `callback` may be called before `readHead` returns; it is called exactly
 * once unless the read is cancelled.
 *
 * @throws {HeadReaderUnsupportedError} when the socket exposes no descriptor.
 */
export function readHead(socket: Socket, options: HeadReaderOptions, callback: (result: HeadReadResult) => void): PendingHead {
  const fd = fdOf(socket);
  if (fd < 0) throw new HeadReaderUnsupportedError();
  const read = new HeadRead(socket, fd, options, callback);
  read.poll();
  return read;
}
