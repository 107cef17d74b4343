/**
 * What `serve` must be started with, which the process can only get from
 * its start: an environment variable the C allocator reads once, and V8
 * flags. When either is missing, `serve` re-executes itself with it
 * (`process.execve` keeps the pid, the open descriptors and the arguments,
 * so a supervisor sees one process); once both are in place it returns.
 *
 * **The C allocator's part in giving memory back.** A shard's socket
 * buffers come from malloc (Buffers' backing stores). glibc serves a large
 * request (≥ 128 KiB) with mmap and returns it to the system when freed, but
 * each time it frees such a chunk it raises that threshold to the chunk's
 * size (up to 32 MiB), so after a burst the large buffers that follow land
 * in the heap arenas, where freeing them returns nothing. Measured after an
 * attack that left every buffer collectable (bench/abuse.ts): RSS stayed
 * +165 MiB over its baseline; with the threshold fixed at 128 KiB, +25 MiB.
 * `MALLOC_MMAP_THRESHOLD_` fixes it (and, as glibc documents, turns the
 * dynamic adjustment off). An operator's own value (any value) is left
 * alone; other C libraries ignore the variable.
 *
 * **Where V8 collects** (`--gc-threads`). By default V8 scavenges and marks
 * with helper threads beside the thread that allocated. When every core this
 * process may use already has a shard to run, a helper can only take its
 * turn from a shard: at the ceiling (1M deliveries/s on one pinned core)
 * the helpers held 15–28% of the core, the shard waited for it, fell
 * behind, and the growing work in flight gave the helpers more to do
 * (docs/performance.md, The ceiling). With `--single-threaded-gc` the same
 * collections run on the shard's own thread, without the hand-offs. V8
 * reads the flag as it starts: set later (`v8.setFlagsFromString`), it is
 * either ignored or crashes the next isolate, so it is a start flag.
 * It is not the default (`parallel`): at light load the same change made
 * the tail longer (one pinned core, light preset, 4 runs each: p99 1.6–2.8 ms
 * against 0.4–2.6, median 2.1 against 0.7). `single` is for a node sized for
 * its ceiling; `auto` asks for it when the shards are at least the cores
 * (`os.availableParallelism()`, which counts the CPUs the process is pinned
 * to), since with a core to spare the helpers run beside the shards.
 *
 * **When V8 starts a full marking** ({@link MARKING_TRIGGERS}). V8 starts
 * one as soon as the old generation's room to its limit is smaller than the
 * young generation. A shard's old generation is small (~17 MB: sessions,
 * code), its limit about 1.7 times that, and its young generation 12 MB
 * (shard-pool.ts): the room is at that threshold from the moment a
 * collection ends, so V8 marked without pause. At 1M deliveries/s: 12 full
 * markings a second, their concurrent part 20–30% of the shard's core on
 * helper threads, for a heap that grew by a few hundred KB between them.
 * With the triggers, marking starts once half of the room is used (at
 * once past 80%): the same limit, so no more memory, and 3–5 markings in a
 * 7 s run instead of 15–60. An operator's own value of either flag is kept.
 *
 * **Under a profiler, no re-exec.** Node's sampling profilers (`--cpu-prof`,
 * `--prof`) signal the process with SIGPROF; one pending at the `execve`
 * kills the new image, whose SIGPROF action is the default
 * ("Profiling timer expired"). Started with one of them (as a flag, or in
 * `NODE_OPTIONS`, which the re-exec keeps), `serve` runs as it was started
 * and says what it lacks ({@link ensureProcessSetup}'s result): an operator
 * who profiles sets the variable and the flags himself.
 *
 * **V8's helper threads run after the shards** ({@link lowerV8Helpers},
 * `--v8-helper-nice`). Node's V8 platform has a few helper threads (four;
 * `node-V8Worker` on Linux) that every isolate of the process shares: they
 * run optimizing compiles and the parallel and concurrent parts of GC. On a
 * core a shard also needs, the kernel shares it between them: a TurboFan
 * job of 20–25 ms (a relay's hot functions, inlined, take that) left the
 * shard half of its core for 40–50 ms. At medium load on one pinned core,
 * that made the slowest deliveries of a fresh server's first seconds
 * 16–31 ms instead of 5–14, more so with history on, whose code is more to
 * compile. At a higher niceness a helper runs mostly in what the shards
 * leave, and at full speed on a core with nothing else to run.
 *
 * But a shard also waits for them: a scavenge is a job the shard joins,
 * and the join returns only once every helper that took part of the work
 * has finished it (V8's `DefaultJobState::Join`). The kernel weighs
 * niceness among the threads of one scheduling group: a session (with the
 * kernel's autogroups), a container (its cgroup), or else every process.
 * When something else of the group keeps the core busy, a helper at 19 (weight 15 against
 * 1024) gets ~1.5% of it while the shard waits: at light load beside a
 * spinning process of the server's session, p99 147–156 ms against
 * 4.6–5.6 at 0; the same process in a session of its own changed nothing.
 * At 10 (weight 110) the same runs kept p99 at 4.3–5.1 ms, and on a core
 * of its own 10 gains what 19 does: at medium load p99 2.6–4.0 ms against
 * 4.9–18.2 at 0 (19: 2.9–5.7), and no worse at 1M deliveries/s, where the
 * helpers must still finish their marking. Hence the default, 10
 * (docs/performance.md, V8's helpers after the shards).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism, setPriority } from 'node:os';
import type { GcThreadsMode } from './config.ts';

/** The environment `serve` runs under. */
export const ALLOCATOR_ENV = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) } as const;

/** Node's flag for collecting on the allocating thread only. */
export const SINGLE_THREADED_GC = '--single-threaded-gc';

/** V8 starts a full marking once this share (%) of the old generation's room to its limit is used, and at once past the second. */
export const MARKING_TRIGGERS = ['--incremental-marking-soft-trigger=50', '--incremental-marking-hard-trigger=80'] as const;

/** The name of a `--flag=value` (the flag itself when it has no value), spelled with dashes as V8 also takes it with underscores. */
const flagName = (flag: string): string => flag.slice(0, flag.indexOf('=') >>> 0).replaceAll('_', '-');

/** Whether `mode` means collecting on the allocating thread, for `workers` shards on `cores` cores. */
export function singleThreadedGc(mode: GcThreadsMode, workers: number, cores = availableParallelism()): boolean {
  if (mode === 'auto') return workers >= cores;
  return mode === 'single';
}

/** What this process is missing to run `serve`: variables and Node flags; both empty when nothing. */
export function missingSetup(
  mode: GcThreadsMode,
  workers: number,
  env: NodeJS.ProcessEnv = process.env,
  execArgv: readonly string[] = process.execArgv,
): { env: Record<string, string>; nodeFlags: string[] } {
  const missingEnv: Record<string, string> = {};
  if (process.platform === 'linux' && env.MALLOC_MMAP_THRESHOLD_ === undefined) Object.assign(missingEnv, ALLOCATOR_ENV);
  const nodeFlags = singleThreadedGc(mode, workers) && !execArgv.includes(SINGLE_THREADED_GC) ? [SINGLE_THREADED_GC] : [];
  for (const trigger of MARKING_TRIGGERS) {
    const name = flagName(trigger);
    if (!execArgv.some((flag) => flagName(flag) === name)) nodeFlags.push(trigger);
  }
  return { env: missingEnv, nodeFlags };
}

/** Node flags that start a sampling profiler (SIGPROF): a re-exec under one can be killed by a pending signal. */
const PROFILER_FLAGS: ReadonlySet<string> = new Set(['--cpu-prof', '--prof']);

/**
 * Whether Node was started with a sampling profiler: in `execArgv`, or in
 * `NODE_OPTIONS`, which Node reads without showing it in `execArgv` and
 * which a re-exec keeps (flags with dashes or underscores, quoted or not,
 * with or without a value).
 */
export function profiled(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env.NODE_OPTIONS ?? ''): boolean {
  const fromEnv = nodeOptions.split(/\s+/).map((word) => word.replaceAll('"', ''));
  return [...execArgv, ...fromEnv].some((flag) => PROFILER_FLAGS.has(flagName(flag)));
}

/**
 * Re-execute this process with what {@link missingSetup} finds missing;
 * returns only when nothing is, or when it cannot re-execute: then the
 * server runs as it was started, and the result lists what it runs without
 * (for the caller to log) — the platform has no `execve`, or a profiler
 * runs (above). A flag the operator gave Node is never taken away:
 * `parallel` does not remove `--single-threaded-gc`.
 */
export function ensureProcessSetup(mode: GcThreadsMode, workers: number): string[] {
  const missing = missingSetup(mode, workers);
  const lacking = [...Object.entries(missing.env).map(([k, v]) => `${k}=${v}`), ...missing.nodeFlags];
  if (lacking.length === 0) return lacking;
  if (typeof process.execve !== 'function' || profiled()) return lacking;
  process.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing.nodeFlags, ...process.argv.slice(1)], { ...process.env, ...missing.env });
  return lacking; // not reached: execve replaces the process, or throws
}

/** What Linux calls the threads of Node's V8 platform (`/proc/<pid>/task/<tid>/comm`). */
export const V8_HELPER_COMM = 'node-V8Worker';

/** What {@link lowerV8Helpers} did: the threads it set, and why none was when none was. */
export interface HelpersLowered {
  lowered: number;
  /**
   * Null when a thread was set, or none was to be (`nice` 0, not Linux);
   * else `no_task_list` (no `/proc/self/task`: a container that hides it),
   * `refused` (`setpriority` failed for each: a seccomp policy) or
   * `none_found` (no thread named {@link V8_HELPER_COMM}: a Node that names
   * them otherwise).
   */
  failure: 'no_task_list' | 'refused' | 'none_found' | null;
}

/**
 * Set the niceness of this process's V8 helper threads to `nice` (0: leave
 * them). Linux only: a thread id is a pid to `setpriority`, and raising
 * one's own niceness needs no privilege. The helpers are made at process
 * start, before any shard, so one call covers them all. Nothing here stops
 * the server: the caller logs a failure.
 */
export function lowerV8Helpers(nice: number, taskDir = '/proc/self/task'): HelpersLowered {
  if (nice === 0 || process.platform !== 'linux') return { lowered: 0, failure: null };
  let tids: string[];
  try {
    tids = readdirSync(taskDir);
  } catch {
    return { lowered: 0, failure: 'no_task_list' };
  }
  let lowered = 0;
  let refused = false;
  for (const tid of tids) {
    let comm: string;
    try {
      comm = readFileSync(`${taskDir}/${tid}/comm`, 'latin1').trim();
    } catch {
      continue; // the thread ended since the listing
    }
    if (comm !== V8_HELPER_COMM) continue;
    try {
      setPriority(Number(tid), nice);
      lowered++;
    } catch {
      refused = true; // a seccomp policy, or the thread ended
    }
  }
  if (lowered > 0) return { lowered, failure: null };
  return { lowered, failure: refused ? 'refused' : 'none_found' };
}
