#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * The `moodio-rt` binary: checks the Node version (node-version.mjs), then
 * runs the command line (moodio-rt.ts). Plain JavaScript, so that an old Node
 * gets a clear message instead of failing to load TypeScript.
 *
 * The shebang caps the primary isolate's semi-spaces at 4 MiB (shards get the
 * same through Worker resourceLimits, see src/primary/shard-pool.ts): under a
 * connect burst V8 otherwise grows them to 16 MiB and keeps them, which made
 * up ~6 KiB of the RSS per idle session. Running `node cli/moodio-rt.mjs`
 * directly skips it; pass --max-semi-space-size=4 yourself then, as
 * scripts/moodio-rt-serve does.
 */
import './node-version.mjs';

await import('./moodio-rt.ts');
