/**
 * `.ci/run`, staged with a stand-in `npm` that records how it was called:
 * CI installs with the caller's environment, then runs exactly the README's
 * test command in a fresh, empty HOME with an empty npm cache, so that a test
 * leaning on this machine's cache fails in CI as it would on a fresh clone.
 * Nothing is installed or tested for real here.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('CI runs npm ci as called, then npm test in a fresh empty HOME and npm cache, removed afterwards', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-ci-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'bin');
  const log = join(dir, 'npm.log');
  const home = join(dir, 'home');
  // One line per call: its arguments, HOME, the cache it was given, and how many entries HOME and that cache hold.
  const npm = `#!/bin/sh
cache="\${npm_config_cache:-$HOME/.npm}"
echo "$*|$HOME|\${npm_config_cache:-}|$(ls -A "$HOME" 2>/dev/null | wc -l)|$(ls -A "$cache" 2>/dev/null | wc -l)" >> "${log}"
`;
  const standIns: Record<string, string> = { npm, chromium: '#!/bin/sh\n', 'nats-server': '#!/bin/sh\n', go: '#!/bin/sh\n' };
  await run('mkdir', ['-p', bin, join(home, '.npm')]);
  // The caller's cache is not empty: CI must not hand it to the tests.
  writeFileSync(join(home, '.npm', 'cached'), 'x');
  for (const [name, text] of Object.entries(standIns)) {
    writeFileSync(join(bin, name), text);
    chmodSync(join(bin, name), 0o755);
  }
  const env = { PATH: `${bin}:/usr/bin:/bin`, HOME: home, TMPDIR: dir, npm_config_cache: join(home, '.npm') };
  await run('bash', [join(ROOT, '.ci', 'run')], { env, timeout: 30_000 });

  const calls = readFileSync(log, 'utf8')
    .trim()
    .split('\n')
    .map((line) => line.split('|'));
  assert.deepEqual(
    calls.map(([args]) => args),
    ['ci --no-audit --no-fund', 'test'],
    "the install, then exactly the README's test command",
  );
  const [install, tests] = calls as [string[], string[]];
  assert.deepEqual(install.slice(1, 3), [home, join(home, '.npm')], 'npm ci runs with the caller’s HOME and cache');
  const [, testHome, testCache, homeEntries, cacheEntries] = tests;
  assert.notEqual(testHome, home);
  assert.ok(testHome!.startsWith(dir), `${testHome} is a temp dir`);
  assert.equal(testCache, join(testHome!, '.npm'), 'the cache is the fresh HOME’s, whatever the caller set');
  assert.deepEqual([homeEntries, cacheEntries], ['0', '0'], 'HOME and the cache are empty when the tests start');
  assert.equal(existsSync(testHome!), false, 'the fresh HOME is removed when CI ends');
});
