/**
 * `serve` runs with what it can only get at process start (src/process-setup.ts):
 * glibc's mmap threshold fixed, so that large buffers freed after a burst go
 * back to the system, and V8 collecting on the allocating thread when
 * `--gc-threads` asks for it. It re-executes itself in place
 * (same pid) when either is missing, and leaves an operator's own values alone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type TestContext, test } from 'node:test';
import { join } from 'node:path';
import { availableParallelism, tmpdir } from 'node:os';
import {
  ALLOCATOR_ENV,
  lowerV8Helpers,
  MARKING_TRIGGERS,
  missingSetup,
  profiled,
  SINGLE_THREADED_GC,
  singleThreadedGc,
  V8_HELPER_COMM,
} from '../src/process-setup.ts';
import { type ServerOptions, startServer } from './helpers/server.ts';

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

const nodeFlagsOf = (pid: number): string[] => {
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
  // Node's own flags come before the script (the first argument ending in .ts or .mjs).
  return argv.slice(
    1,
    argv.findIndex((a) => /\.(ts|mjs)$/.test(a)),
  );
};

test('--gc-threads single: the listening process (the pid that was started) runs with --single-threaded-gc; parallel: without it', {
  skip: process.platform !== 'linux',
}, async (t) => {
  const single = await startServer(t, { workers: 1, args: ['--gc-threads', 'single'] });
  assert.ok(nodeFlagsOf(single.child.pid!).includes(SINGLE_THREADED_GC), nodeFlagsOf(single.child.pid!).join(' '));
  assert.equal(single.logs.find((l) => l.event === 'listening')?.gcThreads, 'single');
  assert.equal((await fetch(`http://127.0.0.1:${single.port}/health`)).status, 200);
  const parallel = await startServer(t, { workers: 1, args: ['--gc-threads', 'parallel'] });
  assert.ok(!nodeFlagsOf(parallel.child.pid!).includes(SINGLE_THREADED_GC), nodeFlagsOf(parallel.child.pid!).join(' '));
  assert.equal(parallel.logs.find((l) => l.event === 'listening')?.gcThreads, 'parallel');
});

test('--gc-threads auto: single when the shards are at least the cores, parallel with a core to spare; the default is parallel', {
  skip: process.platform !== 'linux',
}, async (t) => {
  const cores = availableParallelism();
  const byDefault = await startServer(t, { workers: cores });
  assert.ok(!nodeFlagsOf(byDefault.child.pid!).includes(SINGLE_THREADED_GC), 'no flag without --gc-threads');
  assert.equal(byDefault.logs.find((l) => l.event === 'listening')?.gcThreads, 'parallel');
  const full = await startServer(t, { workers: cores, args: ['--gc-threads', 'auto'] });
  assert.ok(nodeFlagsOf(full.child.pid!).includes(SINGLE_THREADED_GC), `${cores} shards on ${cores} cores`);
  assert.equal(full.logs.find((l) => l.event === 'listening')?.gcThreads, 'single');
  if (cores > 1) {
    const spare = await startServer(t, { workers: cores - 1, args: ['--gc-threads', 'auto'] });
    assert.ok(!nodeFlagsOf(spare.child.pid!).includes(SINGLE_THREADED_GC), `${cores - 1} shards on ${cores} cores`);
    assert.equal(spare.logs.find((l) => l.event === 'listening')?.gcThreads, 'parallel');
  }
});

test("V8's marking triggers: the listening process runs with both by default; an operator's own value of one is kept and the other added", {
  skip: process.platform !== 'linux',
}, async (t) => {
  const byDefault = await startServer(t, { workers: 1 });
  for (const trigger of MARKING_TRIGGERS) assert.ok(nodeFlagsOf(byDefault.child.pid!).includes(trigger), nodeFlagsOf(byDefault.child.pid!).join(' '));
  assert.equal((await fetch(`http://127.0.0.1:${byDefault.port}/health`)).status, 200);
  const own = await startServer(t, { workers: 1, nodeArgs: ['--incremental_marking_soft_trigger=30'] });
  const flags = nodeFlagsOf(own.child.pid!);
  assert.ok(flags.includes('--incremental_marking_soft_trigger=30'), flags.join(' '));
  assert.ok(!flags.includes(MARKING_TRIGGERS[0]), `ours replaced the operator's: ${flags.join(' ')}`);
  assert.ok(flags.includes(MARKING_TRIGGERS[1]), flags.join(' '));
});

test('an invalid --gc-threads is refused at start, naming the option', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const { CLI } = await import('./helpers/server.ts');
  const run = spawnSync(process.execPath, [CLI, 'serve', '--dev', '--port', '0', '--gc-threads', 'two'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(run.status, 2);
  assert.match(run.stderr, /--gc-threads/);
  t.diagnostic(run.stderr.trim());
});

test('singleThreadedGc and missingSetup decide from the mode, the shards and the cores, and leave what is set alone', () => {
  assert.equal(singleThreadedGc('auto', 2, 2), true);
  assert.equal(singleThreadedGc('auto', 3, 2), true);
  assert.equal(singleThreadedGc('auto', 1, 2), false);
  assert.equal(singleThreadedGc('single', 1, 8), true);
  assert.equal(singleThreadedGc('parallel', 8, 1), false);
  const set = { MALLOC_MMAP_THRESHOLD_: '65536' };
  const triggers = [...MARKING_TRIGGERS];
  assert.deepEqual(missingSetup('single', 1, set, [SINGLE_THREADED_GC, ...triggers]), { env: {}, nodeFlags: [] });
  assert.deepEqual(missingSetup('single', 1, set, ['--max-semi-space-size=4']).nodeFlags, [SINGLE_THREADED_GC, ...triggers]);
  assert.deepEqual(missingSetup('parallel', 1, set, []).nodeFlags, triggers);
  // An operator's --single-threaded-gc stays even with parallel: nothing is removed.
  assert.deepEqual(missingSetup('parallel', 1, set, [SINGLE_THREADED_GC, ...triggers]), { env: {}, nodeFlags: [] });
  // A trigger the operator set, with dashes or underscores, is theirs.
  assert.deepEqual(missingSetup('parallel', 1, set, ['--incremental-marking-hard-trigger=90']).nodeFlags, [MARKING_TRIGGERS[0]]);
  assert.deepEqual(missingSetup('parallel', 1, set, ['--incremental_marking_soft_trigger=10', '--max-semi-space-size=4']).nodeFlags, [MARKING_TRIGGERS[1]]);
  if (process.platform === 'linux') assert.deepEqual(missingSetup('parallel', 1, {}, []).env, ALLOCATOR_ENV);
});

/**
 * A server started under a sampling profiler (`profile` puts it in Node's flags or in NODE_OPTIONS, in `dir`):
 * it runs as started (ours not added by a re-exec), answers `/health`, and says it lacks the setup; its warning is returned.
 * The profile file Node writes at exit is not asserted: once, in a loaded full run, the NODE_OPTIONS case left none
 * (cause not found: 8 of 8 starts and stops under two busy loops wrote theirs); what is the server's is asserted here.
 */
async function startProfiled(t: TestContext, profile: (dir: string) => Pick<ServerOptions, 'nodeArgs' | 'env'>): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-prof-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { nodeArgs, env } = profile(dir);
  const server = await startServer(t, { workers: 1, nodeArgs, env: { MALLOC_MMAP_THRESHOLD_: undefined, ...env } });
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/health`)).status, 200);
  const flags = nodeFlagsOf(server.child.pid!);
  assert.ok(!flags.includes(MARKING_TRIGGERS[0]), `re-executed: ${flags.join(' ')}`);
  const warned = await server.waitForLog((l) => l.event === 'process_setup_incomplete');
  assert.equal(warned?.reason, 'profiler');
  await server.stop();
  return warned!;
}

test('under --cpu-prof serve runs as started (a re-exec could die of a pending SIGPROF) and logs what it lacks', {
  skip: process.platform !== 'linux',
}, async (t) => {
  // A 50 µs sampling interval: with a re-exec, a SIGPROF pending at the execve killed the new image ("Profiling timer expired").
  const warned = await startProfiled(t, (dir) => ({ nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-interval', '50'] }));
  assert.deepEqual(warned.lacking, [`MALLOC_MMAP_THRESHOLD_=${ALLOCATOR_ENV.MALLOC_MMAP_THRESHOLD_}`, ...MARKING_TRIGGERS]);
});

test('under NODE_OPTIONS=--cpu-prof too, serve runs as started: the re-executed image inherits the variable, and a pending SIGPROF killed it', {
  skip: process.platform !== 'linux',
}, async (t) => {
  // Node takes --cpu-prof from NODE_OPTIONS (not --prof): it is not in process.execArgv, and the re-exec kept it.
  await startProfiled(t, (dir) => ({ env: { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir="${dir}" --cpu-prof-interval=50` } }));
});

test('profiled: the sampling profilers, with dashes or underscores, with or without a value', () => {
  assert.equal(profiled(['--cpu-prof']), true);
  assert.equal(profiled(['--max-semi-space-size=4', '--cpu_prof']), true);
  assert.equal(profiled(['--prof']), true);
  assert.equal(profiled(['--heap-prof']), false);
  assert.equal(profiled(['--cpu-prof-dir=/tmp', '--max-semi-space-size=4']), false);
  assert.equal(profiled([]), false);
  // NODE_OPTIONS, which execArgv does not show: the flag alone, quoted, with underscores; a profiler's other flags are not one.
  assert.equal(profiled([], '--max-old-space-size=512 --cpu-prof'), true);
  assert.equal(profiled([], '"--cpu_prof" --cpu-prof-dir="/tmp/a b"'), true);
  assert.equal(profiled([], '--cpu-prof-dir=/tmp --heap-prof'), false);
  assert.equal(profiled([], ''), false);
});

/** Niceness of each thread of `pid` named `comm` (field 19 of /proc/<pid>/task/<tid>/stat). */
const niceOf = (pid: number, comm: string): number[] =>
  readdirSync(`/proc/${pid}/task`)
    .filter((tid) => readFileSync(`/proc/${pid}/task/${tid}/comm`, 'latin1').trim() === comm)
    .map((tid) => Number(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1').split(') ')[1]!.split(' ')[16]));

test("V8's helper threads run at niceness 10 by default, the shards and the primary at 0; --v8-helper-nice 0 leaves them alone, 19 is taken", {
  skip: process.platform !== 'linux',
}, async (t) => {
  const byDefault = await startServer(t, { workers: 2 });
  const helpers = niceOf(byDefault.child.pid!, V8_HELPER_COMM);
  assert.ok(helpers.length > 0, 'no V8 helper thread found');
  assert.deepEqual(
    helpers,
    helpers.map(() => 10),
  );
  assert.deepEqual(niceOf(byDefault.child.pid!, 'moodio-rt shard'), [0, 0]);
  assert.deepEqual(niceOf(byDefault.child.pid!, 'node-MainThread'), [0]);
  const listening = byDefault.logs.find((l) => l.event === 'listening');
  assert.equal(listening?.v8HelperNice, 10);
  assert.equal(listening?.v8HelpersLowered, helpers.length);
  const left = await startServer(t, { workers: 1, args: ['--v8-helper-nice', '0'] });
  assert.deepEqual(
    niceOf(left.child.pid!, V8_HELPER_COMM),
    helpers.map(() => 0),
  );
  assert.equal(left.logs.find((l) => l.event === 'listening')?.v8HelpersLowered, 0);
  const lowest = await startServer(t, { workers: 1, env: { MOODIO_RT_V8_HELPER_NICE: '19' } });
  assert.deepEqual(
    niceOf(lowest.child.pid!, V8_HELPER_COMM),
    helpers.map(() => 19),
  );
});

test('an out-of-range --v8-helper-nice is refused at start, naming the option', async () => {
  const { spawnSync } = await import('node:child_process');
  const { CLI } = await import('./helpers/server.ts');
  for (const bad of ['20', '-1', 'low']) {
    const run = spawnSync(process.execPath, [CLI, 'serve', '--dev', '--port', '0', '--v8-helper-nice', bad], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(run.status, 2, bad);
    assert.match(run.stderr, /--v8-helper-nice/);
  }
});

/** Whether this process may hide /proc from a child (root, util-linux's unshare, mount namespaces allowed). */
const canHideProc = (): boolean => {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false;
  return spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /proc'], { timeout: 5000 }).status === 0;
};

test("in a container that hides /proc, serve runs with V8's helpers as Node started them and warns why, once", { skip: !canHideProc() }, async (t) => {
  // A mount namespace of its own, /proc covered by an empty tmpfs: no task list to find the helpers in.
  const server = await startServer(t, {
    workers: 1,
    prefix: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /proc && exec "$0" "$@"'],
  });
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/health`)).status, 200);
  assert.equal(server.logs.find((l) => l.event === 'listening')?.v8HelpersLowered, 0);
  const warned = await server.waitForLog((l) => l.event === 'v8_helpers_not_lowered');
  assert.equal(warned.level, 'warn');
  assert.equal(warned.reason, 'no_task_list');
  assert.equal(warned.v8HelperNice, 10);
  assert.equal(server.logs.filter((l) => l.event === 'v8_helpers_not_lowered').length, 1);
});

test('lowerV8Helpers: 0 leaves every thread alone; a task directory it cannot read, a thread that ended, or none named for V8 is no error, and says which', () => {
  assert.deepEqual(lowerV8Helpers(0), { lowered: 0, failure: null });
  assert.deepEqual(lowerV8Helpers(19, '/nonexistent/task'), { lowered: 0, failure: 'no_task_list' });
  const dir = mkdtempSync('/tmp/moodio-rt-task-');
  try {
    // A listing whose entry vanished: its read fails, none is set, nothing throws.
    mkdirSync(`${dir}/123456789`);
    assert.deepEqual(lowerV8Helpers(19, dir), { lowered: 0, failure: 'none_found' });
    // A helper by name whose thread is gone (no such id): setpriority fails.
    writeFileSync(`${dir}/123456789/comm`, `${V8_HELPER_COMM}\n`);
    assert.deepEqual(lowerV8Helpers(19, dir), { lowered: 0, failure: 'refused' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
