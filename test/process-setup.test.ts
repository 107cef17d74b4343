/**
 * `serve` runs with glibc's mmap threshold fixed (src/allocator.ts), so
 * that large buffers freed after a burst go back to the system: it
 * re-executes itself in place (same pid) when the variable is not set, and
 * leaves an operator's own value alone.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ALLOCATOR_ENV } from '../src/allocator.ts';
import { startServer } from './helpers/server.ts';

const environOf = (pid: number): Map<string, string> =>
  new Map(
    readFileSync(`/proc/${pid}/environ`, 'latin1')
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );

test('serve runs with MALLOC_MMAP_THRESHOLD_ fixed, in the process that was started', { skip: process.platform !== 'linux' }, async (t) => {
  const server = await startServer(t, { workers: 1, env: { MALLOC_MMAP_THRESHOLD_: undefined } });
  // The pid the test spawned is the one listening: re-executed in place, not forked.
  assert.equal(environOf(server.child.pid!).get('MALLOC_MMAP_THRESHOLD_'), ALLOCATOR_ENV.MALLOC_MMAP_THRESHOLD_);
  const res = await fetch(`http://127.0.0.1:${server.port}/health`);
  assert.equal(res.status, 200);
});

test("an operator's own MALLOC_MMAP_THRESHOLD_ is kept", { skip: process.platform !== 'linux' }, async (t) => {
  const server = await startServer(t, { workers: 1, env: { MALLOC_MMAP_THRESHOLD_: '65536' } });
  assert.equal(environOf(server.child.pid!).get('MALLOC_MMAP_THRESHOLD_'), '65536');
});
