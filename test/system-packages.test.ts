/**
 * `npm test`'s pretest (scripts/test-system-packages) installs the Debian
 * packages the tests need when they are missing; where it cannot (no root,
 * no passwordless sudo), it fails with the one command to run. Staged with a
 * PATH of stand-ins, so that nothing is installed here.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCRIPT = join(ROOT, 'scripts', 'test-system-packages');

/** A directory of executables that print `output`. */
function bin(programs: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-bin-'));
  for (const [name, output] of Object.entries(programs)) {
    writeFileSync(join(dir, name), `#!/bin/sh\necho ${output}\n`);
    chmodSync(join(dir, name), 0o755);
  }
  return dir;
}

async function script(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  return run('/bin/sh', [SCRIPT], { env }).then(
    ({ stderr }) => ({ code: 0, stderr }),
    (err: { code: number; stderr: string }) => ({ code: err.code, stderr: err.stderr }),
  );
}

test('npm test runs it first, and CI runs the same script', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.scripts.pretest, 'scripts/test-system-packages');
  assert.match(readFileSync(join(ROOT, '.ci', 'run'), 'utf8'), /^scripts\/test-system-packages$/m);
});

test('a missing package it cannot install: exit 1 and the one command to run', async () => {
  // Not root (id says 1000), no sudo on PATH, no chromium.
  const { code, stderr } = await script({ PATH: bin({ id: '1000' }) });
  assert.equal(code, 1);
  assert.match(stderr, /the tests need the Debian package\(s\) chromium/);
  // nats-server too, unless this machine has it in /usr/sbin or /sbin (which the script adds to PATH); Go's go is in /usr/bin.
  assert.match(stderr, /^ {2}sudo apt-get update && sudo apt-get install -y chromium( nats-server)? golang-go$/m);
});

test('nothing missing: exit 0 and silent, whoever runs it; CHROMIUM_PATH stands for chromium', async () => {
  assert.deepEqual(await script({ PATH: bin({ id: '1000', chromium: 'x', 'nats-server': 'x', go: 'x' }) }), { code: 0, stderr: '' });
  const browser = join(bin({ 'my-chromium': 'x' }), 'my-chromium');
  assert.deepEqual(await script({ PATH: bin({ id: '1000', 'nats-server': 'x', go: 'x' }), CHROMIUM_PATH: browser }), { code: 0, stderr: '' });
  const wrong = await script({ PATH: bin({ id: '1000', 'nats-server': 'x', go: 'x' }), CHROMIUM_PATH: '/nonexistent/chromium' });
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /CHROMIUM_PATH=\/nonexistent\/chromium is not an executable/);
});
