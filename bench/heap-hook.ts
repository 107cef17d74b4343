/**
 * Bench only, never part of the server: a collection or a heap snapshot in
 * every thread of a running server, without `--inspect` and without an admin
 * route. bench/idle-memory.ts preloads it with `--require` (Node runs
 * `--require` preloads in every worker thread too, and the allocator
 * re-exec keeps the flag) and sets MOODIO_BENCH_HOOK_DIR.
 *
 * SIGUSR2 to the process: the primary reads `<command> <tag>` from
 * `<dir>/request` and passes it on a BroadcastChannel; each thread, the
 * primary included, then
 * - `gc`: runs one memory-reducing collection (V8's last-resort GC, the one
 *   src/memory-release.ts makes after a crowd left), or
 * - `snapshot`: writes `<dir>/<tag>-thread<threadId>.heapsnapshot`,
 *
 * and then writes an empty `<dir>/<tag>-thread<threadId>.done`. The channel
 * is unref'd: it keeps no thread alive.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BroadcastChannel, isMainThread, threadId } from 'node:worker_threads';

const dir = process.env.MOODIO_BENCH_HOOK_DIR;
if (dir !== undefined && dir !== '') {
  const channel = new BroadcastChannel('moodio-bench-hook');
  channel.unref();
  const run = (request: string) => {
    const [command, tag] = request.trim().split(' ');
    const file = join(dir, `${tag}-thread${threadId}`);
    if (command === 'snapshot') writeHeapSnapshot(file + '.heapsnapshot');
    else {
      setFlagsFromString('--expose-gc');
      (runInNewContext('gc') as (options: object) => void)({ type: 'major', flavor: 'last-resort' });
    }
    writeFileSync(file + '.done', '');
  };
  channel.onmessage = (event) => run(String((event as MessageEvent).data));
  if (isMainThread) {
    process.on('SIGUSR2', () => {
      const request = readFileSync(join(dir, 'request'), 'utf8');
      channel.postMessage(request);
      run(request);
    });
  }
}
