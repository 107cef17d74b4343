/**
 * bench/rolling-restart.ts end to end, without the restarts: a nats-server,
 * two real nodes, four SDK clients in one desktop. With no node going away
 * nothing may be lost or duplicated, whatever the server's resume work
 * does, and the bench must print its context and its one line.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const BENCH = fileURLToPath(new URL('../bench/rolling-restart.ts', import.meta.url));

test('with no restart, every tick of four clients on two nodes reaches the other three exactly once, and the bench prints its line', async (t) => {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = spawn(process.execPath, [BENCH, '--quick', '--clients', '4', '--desktops', '1', '--no-restart', '--hold', '1'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.kill('SIGINT'));
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, stderr);
  const lines = stdout.trimEnd().split('\n');
  assert.match(lines.at(-1)!, /^lost 0, duplicated 0, presence converged in \d+ ms$/);
  const counts = /ticks sent (\d+) .*deliveries owed (\d+), made (\d+), lost 0 .*duplicated 0, reordered 0/.exec(stdout);
  assert.ok(counts, stdout);
  const [sent, owed, made] = counts.slice(1).map(Number) as [number, number, number];
  assert.ok(sent >= 8, `at least 2 s at 5/s from 4 clients, got ${sent}`);
  assert.equal(owed, sent * 3);
  assert.equal(made, owed);
  assert.match(stdout, /restarts: none \(--no-restart\)/);
  assert.match(stdout, /closes seen by clients: none/);
});
