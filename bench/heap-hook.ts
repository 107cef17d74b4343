/**
 * Bench only, never part of the server: heap snapshots of every thread of a
 * running server, without `--inspect` and without an admin route.
 * bench/idle-memory.ts preloads it with `--require` (Node runs `--require`
 * preloads in every worker thread too, and the allocator re-exec keeps the
 * flag) and sets MOODIO_BENCH_HEAP_DIR.
 *
 * SIGUSR2 to the process: the primary reads a tag from `<dir>/request` and
 * passes it on a BroadcastChannel; each thread, the primary included, writes
 * `<dir>/<tag>-thread<threadId>.heapsnapshot` and then an empty `.done`
 * beside it. The channel is unref'd: it keeps no thread alive.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeHeapSnapshot } from 'node:v8';
import { BroadcastChannel, isMainThread, threadId } from 'node:worker_threads';

const dir = process.env.MOODIO_BENCH_HEAP_DIR;
if (dir !== undefined && dir !== '') {
  const channel = new BroadcastChannel('moodio-bench-heap');
  channel.unref();
  const snapshot = (tag: string) => {
    const file = join(dir, `${tag}-thread${threadId}.heapsnapshot`);
    writeHeapSnapshot(file);
    writeFileSync(file + '.done', '');
  };
  channel.onmessage = (event) => snapshot(String((event as MessageEvent).data));
  if (isMainThread) {
    process.on('SIGUSR2', () => {
      const tag = readFileSync(join(dir, 'request'), 'utf8').trim();
      channel.postMessage(tag);
      snapshot(tag);
    });
  }
}
