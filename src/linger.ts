/**
 * Answered sockets, between the final HTTP response and their close: the
 * response written ({@link endWithResponse}), then the socket drained until
 * the client closes or its deadline passes.
 *
 * After `endWithResponse` a socket is read and drained until the client
 * closes (see protocol/http.ts), but only until an absolute deadline,
 * {@link LINGER_MS} after the answer: an idle timeout, as we had, was
 * restarted by every byte, so a client that dribbled a byte a second after
 * its 404 held the socket forever. At most {@link MAX_LINGERING} sockets
 * linger per thread; past that the oldest is destroyed.
 *
 * Why the oldest, rather than ending the newcomer without lingering: a
 * well-behaved client reads its answer and closes within a round trip, so the
 * sockets still lingering longest are the ones most likely held on purpose,
 * and they are the nearest to their deadline anyway; destroying the newcomer
 * right after the write would risk an RST that loses its response.
 *
 * Every deadline is the same delay from the answer, so the map's insertion
 * order is deadline order and one timer per thread serves them all.
 *
 * State is per thread (module-level): the primary and each shard have their
 * own, and report it into their own metrics slot ({@link reportLingeringTo}).
 */
import type { Socket } from 'node:net';
import { Metric, type MetricsSlot } from './protocol/metrics.ts';

/** How long an answered socket may take to flush and close, from the answer. */
export const LINGER_MS = 2000;

/**
 * Most answered sockets lingering at once, per thread. Legitimate ones close
 * within a round trip, so even thousands of answers a second stay far below
 * it; at ~1 KiB of kernel and Node state each, 1,024 is a bounded cost.
 */
export const MAX_LINGERING = 1024;

/** Socket → deadline (performance.now() ms), in answer order. */
const lingering = new Map<Socket, number>();
let timer: NodeJS.Timeout | null = null;
let metrics: MetricsSlot | null = null;

/** Count this thread's lingering sockets in `slot` (LINGERING, LINGER_CUT). Call once per thread. */
export function reportLingeringTo(slot: MetricsSlot): void {
  metrics = slot;
  publish();
}

function publish(): void {
  metrics?.set(Metric.LINGERING, lingering.size);
}

function cut(socket: Socket): void {
  lingering.delete(socket);
  metrics?.add(Metric.LINGER_CUT);
  socket.destroy();
}

function onLingerClose(this: Socket): void {
  if (lingering.delete(this)) publish();
}

function arm(delay: number): void {
  timer = setTimeout(sweep, Math.max(0, Math.ceil(delay)));
  // The sockets keep the thread alive while they are open; the timer need not.
  timer.unref();
}

function sweep(): void {
  timer = null;
  const now = performance.now();
  for (const [socket, deadline] of lingering) {
    if (deadline > now) {
      arm(deadline - now);
      break;
    }
    cut(socket);
  }
  publish();
}

/**
 * Track an answered socket until it closes, destroying it at its deadline
 * (or sooner, when {@link MAX_LINGERING} newer ones are lingering).
 */
export function linger(socket: Socket): void {
  if (lingering.has(socket)) return;
  if (lingering.size >= MAX_LINGERING) cut(lingering.keys().next().value!);
  lingering.set(socket, performance.now() + LINGER_MS);
  socket.once('close', onLingerClose);
  if (timer === null) arm(LINGER_MS);
  publish();
}

/**
 * Write a final HTTP response and close. The socket is not going to be handed
 * on, so it may now be read: unread request bytes are drained, because closing
 * a socket with unread data makes the kernel send RST, which can destroy the
 * response before the client reads it. The draining ends at an absolute
 * deadline, whatever the client keeps sending (below).
 */
export function endWithResponse(socket: Socket, response: string): void {
  if (socket.destroyed) return;
  socket.end(response);
  socket.resume();
  linger(socket);
}
