/**
 * The Node requirement is checked by the binary that runs the code, with a
 * clear message, and `npm install` on an older system Node (which runs npm,
 * never this code) prints no EBADENGINE warning blocks.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { accessSync, constants, readFileSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { MIN_NODE, nodeVersionProblem } from '../cli/node-version.mjs';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'cli', 'moodio-rt.mjs');

/** The first `name` on PATH outside any node_modules/.bin (npm puts the project's Node 26 first). */
function systemBinary(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '' || dir.includes('node_modules')) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return null;
}

/** A Node older than MIN_NODE on this machine (the system's, which runs npm), or null. */
async function olderNode(): Promise<{ path: string; version: string } | null> {
  const path = systemBinary('node');
  if (path === null) return null;
  const version = (await run(path, ['-p', 'process.versions.node'])).stdout.trim();
  return nodeVersionProblem(version, path) === null ? null : { path, version };
}

test('versions older than the minimum are refused with what to run instead; the minimum and newer pass', () => {
  for (const old of ['20.20.2', '22.18.0', '26.9.9', 'v25.99.0']) {
    const problem = nodeVersionProblem(old, '/usr/bin/node');
    assert.ok(problem !== null, old);
    assert.match(problem, new RegExp(`needs Node ${MIN_NODE.replaceAll('.', '\\.')} or newer, and this is Node ${old} \\(/usr/bin/node\\)`));
    assert.match(
      problem,
      /npx moodio-rt …, npm start\), as node_modules\/\.bin\/node cli\/moodio-rt\.mjs …, or under a supervisor with scripts\/moodio-rt-serve/,
    );
  }
  for (const ok of [MIN_NODE, '26.10.1', '26.11.0', '27.0.0', '30.1.2']) assert.equal(nodeVersionProblem(ok, '/x/node'), null, ok);
});

test('the minimum is the version of the Node the project brings (the pinned `node` package)', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.dependencies?.node ?? pkg.devDependencies?.node, MIN_NODE);
  assert.equal(JSON.parse(readFileSync(join(ROOT, 'node_modules', 'node', 'package.json'), 'utf8')).version, MIN_NODE);
});

test('the moodio-rt binary runs on the project Node, and an older Node gets the message and exit 1, not a TypeScript loading error', async (t) => {
  const { stdout } = await run(process.execPath, [BIN, 'token', '--user', 'node-check-01', '--secret', 'x'.repeat(32)]);
  assert.match(stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/);

  const old = await olderNode();
  if (old === null) return t.skip('no Node older than the minimum on this machine');
  for (const entry of [BIN, join(ROOT, 'cli', 'moodio-rt.ts')]) {
    const err: { code: number; stderr: string } = await run(old.path, [entry, 'serve', '--dev']).then(
      () => assert.fail(`Node ${old.version} ran ${entry}`),
      (e: { code: number; stderr: string }) => e,
    );
    if (entry.endsWith('.ts') && /ERR_UNKNOWN_FILE_EXTENSION/.test(err.stderr)) continue; // a Node that cannot load .ts at all: hence the .mjs binary
    assert.equal(err.code, 1, entry);
    assert.match(
      err.stderr,
      new RegExp(`^moodio-rt needs Node ${MIN_NODE.replaceAll('.', '\\.')} or newer, and this is Node ${old.version.replaceAll('.', '\\.')} `),
      entry,
    );
  }
});

test('npm install on an older system Node prints no EBADENGINE warning', async (t) => {
  const old = await olderNode();
  const npm = systemBinary('npm');
  if (old === null || npm === null) return t.skip('no npm on a Node older than the minimum on this machine');
  // npm's own script, run by the old Node as on a fresh machine (inside `npm test`, `npm` would find the project's Node 26 first).
  const npmCli = join(dirname(realpathSync(npm)), 'npm-cli.js');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: (process.env.PATH ?? '')
      .split(delimiter)
      .filter((d) => !d.includes('node_modules'))
      .join(delimiter),
  };
  for (const key of Object.keys(env)) if (key.startsWith('npm_')) delete env[key];
  const { stdout, stderr } = await run(old.path, [npmCli, 'install', '--dry-run', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], {
    cwd: ROOT,
    env,
    maxBuffer: 16 * 1024 * 1024,
  });
  assert.doesNotMatch(stdout + stderr, /EBADENGINE/);
});
