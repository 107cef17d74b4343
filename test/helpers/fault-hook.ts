/**
 * Fault injection for the tests, kept out of the server: loaded with
 * `--import` into a test server (Node runs it in the primary and in every
 * worker thread), it makes the relay's message handler throw for a frame
 * that carries {@link FAULT_TYPE}, so that the failure path (catch, log with
 * the session id, answer `internal_error`, room unaffected) can be exercised
 * against the real server.
 */
import { fileURLToPath } from 'node:url';
import { Relay } from '../../src/shard/relay.ts';

export const FAULT_TYPE = '__moodio_rt_fault__';
/** For startServer's `nodeArgs`. */
export const FAULT_HOOK_ARGS = ['--import', fileURLToPath(import.meta.url)];

type Handle = (this: Relay, session: unknown, data: Buffer, isBinary: boolean) => void;
const proto = Relay.prototype as unknown as { handle: Handle };
const handle = proto.handle;
proto.handle = function (session, data, isBinary) {
  if (!isBinary && data.includes(FAULT_TYPE)) throw new Error('injected fault');
  return handle.call(this, session, data, isBinary);
};
