/**
 * The C allocator's part in giving memory back. A shard's socket buffers
 * come from malloc (Buffers' backing stores). glibc serves a large request
 * (≥ 128 KiB) with mmap and returns it to the system when freed, but each
 * time it frees such a chunk it raises that threshold to the chunk's size
 * (up to 32 MiB), so after a burst the large buffers that follow land in the
 * heap arenas, where freeing them returns nothing. Measured after an attack
 * that left every buffer collectable (bench/abuse.ts): RSS stayed +165 MiB
 * over its baseline; with the threshold fixed at 128 KiB, +25 MiB.
 *
 * `MALLOC_MMAP_THRESHOLD_` fixes it (and, as glibc documents, turns the
 * dynamic adjustment off), but glibc reads it once, at start. So `serve`
 * re-executes itself with it when it is not set: `process.execve` keeps the
 * pid, the open descriptors and the arguments, so a supervisor sees one
 * process. An operator's own value (any value) is left alone; other C
 * libraries ignore the variable.
 */

/** The environment `serve` runs under. */
export const ALLOCATOR_ENV = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) } as const;

/** Re-execute this process with {@link ALLOCATOR_ENV} unless it is set already; returns only when it does not re-execute. */
export function ensureAllocatorEnv(): void {
  if (process.platform !== 'linux' || process.env.MALLOC_MMAP_THRESHOLD_ !== undefined) return;
  if (typeof process.execve !== 'function') return;
  process.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, ...ALLOCATOR_ENV });
}
