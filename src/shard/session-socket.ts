/**
 * A session's sockets and their listeners, with no closure per session.
 *
 * Each session used to register six closures on its `ws` and socket, all
 * sharing one context with everything its admission held: the head's
 * strings (the cookie header kept the whole request head alive), the
 * identity object, the admission record. About 1.4 KB of heap per idle
 * session (bench/idle-memory.ts --heap). Now the `ws` socket and the TCP
 * socket each carry a `session` field, and every session of a route shares
 * one set of listener functions, made once per shard: a listener finds its
 * session through `this`, the emitter Node calls it on. This is how `ws`
 * wires its own sockets (`socketOnData` and the like, with
 * `socket[kWebSocket]`).
 *
 * `ws` makes its sockets through the servers' `WebSocket` option (public
 * API: a class that extends its own), and adopt-socket.ts makes the TCP
 * socket. Both declare the field in their constructor, so it is an
 * in-object property from the start.
 */
import { Socket } from 'node:net';
import { WebSocket } from 'ws';
import type { Logger } from '../log.ts';
import type { Session } from './session.ts';

/** The `ws` socket of a session (the servers' `WebSocket` option). */
export class SessionWebSocket extends WebSocket {
  /** Set once the session exists (listen()). */
  session: Session | null = null;

  // ws's server makes it as `new WebSocket(null, undefined, options)`; every argument goes on as given.
  constructor(...args: unknown[]) {
    super(...(args as [null]));
    // EventEmitter starts its listener table as `{ __proto__: null }`, an
    // object V8 keeps in dictionary mode: with a session's five events it
    // held a 256-byte hash table. A table with those events' slots from the
    // start is a small fast object, as Node's own streams make theirs
    // (lib/internal/streams/readable.js); EventEmitter reads a slot left
    // undefined as no listener.
    (this as unknown as { _events: object })._events = { message: undefined, pong: undefined, ping: undefined, error: undefined, close: undefined };
  }
}

/** A session's TCP socket (adopt-socket.ts). */
export class SessionTcpSocket extends Socket {
  /** Set once the session exists (listen()). */
  session: Session | null = null;
}

/** What a route does with its sessions' events. */
export interface SessionEvents<S extends Session> {
  /** A data frame (the session was marked alive). */
  message(session: S, data: Buffer, isBinary: boolean): void;
  /** A ping or a pong (a pong marked the session alive). */
  control(session: S): void;
  /** Bytes read from the socket, any frame. */
  bytes(session: S, bytes: number): void;
  /** The `ws` socket closed (`ws` emits 'close' once). */
  closed(session: S, code: number, reason: Buffer): void;
}

/** One set of listeners for every session of a route (see the module comment). */
export interface SessionListeners {
  message(this: WebSocket, data: Buffer, isBinary: boolean): void;
  pong(this: WebSocket): void;
  ping(this: WebSocket): void;
  error(this: WebSocket, err: Error & { code?: string }): void;
  close(this: WebSocket, code: number, reason: Buffer): void;
  data(this: Socket, chunk: Buffer): void;
}

/** The session a `ws` socket of ours carries. */
function sessionOf<S extends Session>(ws: WebSocket): S {
  return (ws as SessionWebSocket).session as S;
}

/** Make a route's listeners; `events` is called with the session each emitter carries. */
export function sessionListeners<S extends Session>(events: SessionEvents<S>, log: Logger): SessionListeners {
  return {
    message(data, isBinary) {
      const session = sessionOf<S>(this);
      session.alive = true;
      events.message(session, data, isBinary);
    },
    pong() {
      const session = sessionOf<S>(this);
      session.alive = true;
      events.control(session);
    },
    ping() {
      events.control(sessionOf<S>(this));
    },
    error(err) {
      log.info('session_protocol_error', { sessionId: sessionOf(this).id, code: err.code, message: err.message });
    },
    close(code, reason) {
      events.closed(sessionOf<S>(this), code, reason);
    },
    data(chunk) {
      // A socket that is not ours, or not yet a session's, counts nothing.
      const session = (this as Partial<SessionTcpSocket>).session;
      if (session !== null && session !== undefined) events.bytes(session as S, chunk.length);
    },
  };
}

/** Wire `session`'s sockets to `listeners`. Its `ws` must be a {@link SessionWebSocket}. */
export function listen(session: Session, listeners: SessionListeners): void {
  const ws = session.ws as SessionWebSocket;
  ws.session = session;
  if (session.socket instanceof SessionTcpSocket) session.socket.session = session;
  ws.on('message', listeners.message);
  ws.on('pong', listeners.pong);
  ws.on('ping', listeners.ping);
  // Every byte read counts against the user's byte budget (control frames and fragments too).
  session.socket.on('data', listeners.data);
  ws.on('error', listeners.error);
  ws.on('close', listeners.close);
}
