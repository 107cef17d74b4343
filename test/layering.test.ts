/**
 * The layering rules hold (.dependency-cruiser.cjs, run by dependency-cruiser
 * over src/ and cli/), and protocol/ keeps no runtime state: no module-level
 * `let` or `var`, so that the tables it exports are the same on every thread
 * and in every test.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

async function cruise(paths: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await run(
      process.execPath,
      [
        join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruiser.mjs'),
        ...paths,
        '--config',
        '.dependency-cruiser.cjs',
        '--output-type',
        'err',
      ],
      { cwd: ROOT },
    );
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, out: e.stdout };
  }
}

test('dependency-cruiser: primary and shard never import each other, protocol/ and the SDK import nothing of the server, no cycles', async () => {
  const { code, out } = await cruise(['src', 'cli']);
  assert.equal(code, 0, out);
});

test('the rules bite: a shard module importing the primary is an error', async () => {
  // A fixture outside src/ would not be under the rules; test/fixtures/layering/src mirrors the layout.
  const { code, out } = await cruise(['test/fixtures/layering/src']);
  assert.notEqual(code, 0);
  assert.match(out, /shard-not-primary/);
  assert.match(out, /protocol-is-leaf/);
});

test('protocol/ keeps no module-level mutable state', () => {
  const dir = join(ROOT, 'src', 'protocol');
  const offenders: string[] = [];
  for (const file of readdirSync(dir)) {
    if (!file.endsWith('.ts')) continue;
    readFileSync(join(dir, file), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (/^(export\s+)?(let|var)\s/.test(line)) offenders.push(`src/protocol/${file}:${i + 1}: ${line.trim()}`);
      });
  }
  assert.deepEqual(offenders, []);
});
