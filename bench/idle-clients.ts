/**
 * The idle clients of bench/idle-memory.ts, in a process of their own: the
 * server may hold up to its descriptor limit (20,000 here) only if its
 * clients do not count against the same process's.
 *
 * Driven over IPC by its parent: `{ kind: 'open', port, count, secret }`
 * opens `count` more sessions (rooms of 10, a distinct user each, 100
 * handshakes at a time) and answers `{ kind: 'opened', total }` (or
 * `{ kind: 'failed', message }`); `{ kind: 'close' }` destroys them all and
 * exits. It exits too when its parent goes.
 */
import type { RawWebSocket } from '../src/loadtest/ws-client.ts';
import { openMany } from './connections.ts';

export type ClientCommand = { kind: 'open'; port: number; count: number; secret: string } | { kind: 'close' };
export type ClientAnswer = { kind: 'opened'; total: number } | { kind: 'failed'; message: string };

const clients: RawWebSocket[] = [];
const send = (answer: ClientAnswer) => process.send!(answer);

process.on('message', (command: ClientCommand) => {
  if (command.kind === 'close') {
    for (const c of clients) c.destroy();
    process.exit(0);
  }
  openMany(command.port, command.count, 100, command.secret, 10).then(
    (opened) => {
      clients.push(...opened);
      send({ kind: 'opened', total: clients.length });
    },
    (err: unknown) => send({ kind: 'failed', message: err instanceof Error ? err.message : String(err) }),
  );
});
process.on('disconnect', () => process.exit(0));
