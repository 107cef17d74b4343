/**
 * Re-wrapping a transferred socket's handle in a fresh `net.Socket`.
 *
 * The `net.Socket` that `postMessage` delivers to a worker (Node 26.10) is
 * rebuilt by deserialization and ends up in V8's dictionary mode ("slow"
 * properties): its property store is a hash table of ~1.5 KiB, and every
 * property access on it (write, writableLength — the broadcast hot path) is a
 * hash lookup. A socket built by the constructor has fast properties. So the
 * shard takes the handle out of the delivered object and builds a new socket
 * around it; `initSocketHandle` (run by the constructor) points the handle's
 * owner and read callback at the new object. Measured: live heap per socket
 * 2,239 → 942 bytes.
 *
 * `handle` and `manualStart` are the options `net` itself uses to wrap
 * existing handles; `manualStart` keeps the handle from reading until a
 * consumer (ws, or a rejection's drain) resumes the stream.
 *
 * The new socket is a {@link SessionTcpSocket}: it has room for the session
 * it will carry (session-socket.ts), so that its listeners need no closure.
 */
import type { Socket } from 'node:net';
import { SessionTcpSocket } from './session-socket.ts';

interface SocketInternals {
  _handle: unknown;
}

/** Take over `transferred`'s handle in a new, fast-properties socket. `transferred` is left empty. */
export function adoptSocket(transferred: Socket): Socket {
  const internals = transferred as unknown as SocketInternals;
  const handle = internals._handle;
  if (handle === null || handle === undefined) return transferred;
  internals._handle = null;
  return new SessionTcpSocket({ handle, manualStart: true } as unknown as ConstructorParameters<typeof Socket>[0]);
}
