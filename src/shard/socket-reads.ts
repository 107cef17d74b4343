/**
 * Reading a session's socket, or not. Two things stop it (and a close made
 * for the user's sake keeps it, {@link closeWithGrace}):
 *
 * - the rate limit: a user over its bucket is not read for a while, so what
 *   it sends waits in TCP (which pushes back on it) instead of costing this
 *   shard a parse each ({@link pauseReads});
 * - a close the server makes itself (1008 for the rate limit, 4008 for a
 *   backlog): nothing the peer sends after that is worth parsing, and `ws`
 *   would otherwise read on until its close timeout (10 s), however fast the
 *   peer floods ({@link closeAndCut}).
 */
import type { Session } from './session.ts';

/** What this module keeps per session (`session.reads`): the timer that resumes a paused session. */
export interface ReadState {
  resumeTimer: NodeJS.Timeout | null;
}

export function newReadState(): ReadState {
  return { resumeTimer: null };
}

/** The session is gone: a pending resume has nothing left to do. */
export function cancelPause(session: Session): void {
  const reads = session.reads;
  if (reads.resumeTimer !== null) {
    clearTimeout(reads.resumeTimer);
    reads.resumeTimer = null;
  }
}

/** How long a session closed by the server may take to read its close frame before its socket is destroyed. */
export const CUT_GRACE_MS = 2000;

interface StreamHandle {
  reading: boolean;
  readStart(): number;
  readStop(): number;
}

function handleOf(session: Session): StreamHandle | null {
  return (session.socket as unknown as { _handle: StreamHandle | null })._handle;
}

/**
 * Pause `ws`, and stop the handle reading now: `Socket#pause()` alone only
 * stops the stream flowing, and libuv goes on reading until the stream's
 * buffer is full (another 64 KiB of frames to parse on resume). The
 * `reading` flag is the one lib/net.js keeps beside `readStart`/`readStop`.
 */
export function stopReading(session: Session): void {
  session.ws.pause();
  const handle = handleOf(session);
  if (handle !== null && handle.reading) {
    handle.reading = false;
    handle.readStop();
  }
}

function resumeReads(session: Session): void {
  session.reads.resumeTimer = null;
  // A session closed meanwhile stays unread (closeAndCut).
  if (!session.open) return;
  session.ws.resume();
  // The stream still counts its last read as in progress, so flowing again
  // does not call _read(): start the handle here.
  const handle = handleOf(session);
  if (handle !== null && !handle.reading) {
    handle.reading = true;
    handle.readStart();
  }
}

/** Stop reading `session` for `ms`, unless a pause is already running. True when this call paused it. */
export function pauseReads(session: Session, ms: number): boolean {
  if (session.reads.resumeTimer !== null || !session.open) return false;
  stopReading(session);
  session.reads.resumeTimer = setTimeout(resumeReads, ms, session);
  return true;
}

function terminateIfOpen(session: Session): void {
  if (!session.socket.destroyed) session.ws.terminate();
}

/**
 * Close `session` with `code`, read nothing more from it, and destroy its
 * socket {@link CUT_GRACE_MS} later if the closing handshake has not ended
 * by then. Queue what it must still receive before calling this.
 */
export function closeAndCut(session: Session, code: number, reason: string): void {
  session.ws.close(code, reason);
  stopReading(session);
  setTimeout(terminateIfOpen, CUT_GRACE_MS, session).unref();
}

/**
 * Close `session` with `code`, go on reading so that the peer's close frame
 * ends the closing handshake at once (the relay drops anything else it
 * sends: it is no longer open), and destroy the socket {@link CUT_GRACE_MS}
 * later if it has not. For sessions ended for the user's sake (revoked,
 * logged out, token expired), whose clients are not abusive and should
 * learn of the close without waiting for the cut.
 */
export function closeWithGrace(session: Session, code: number, reason: string): void {
  session.ws.close(code, reason);
  setTimeout(terminateIfOpen, CUT_GRACE_MS, session).unref();
}
