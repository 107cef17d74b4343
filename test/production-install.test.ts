/**
 * A production install, as docs/operations.md gives it, from a copy of this
 * checkout: `npm ci --omit=dev` succeeds without the dev dependencies (the
 * SDK build, which needs TypeScript, is skipped), the supervised command
 * serves `/health` and a real session, `scripts/moodio-rt` runs the CLI from
 * another directory with only the system Node on PATH, and the unit that
 * `scripts/moodio-rt-unit` prints for that install passes systemd-analyze.
 *
 * npm reads the packages from the cache that installing this checkout
 * filled (`--prefer-offline`): .ci/run installs it first, with an empty
 * cache, so a fresh machine is no different.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { npmEnv } from '../scripts/client-package.ts';
import { join as joinRoom } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { ServerProcess, TEST_SECRET } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

/** The checkout's files (tracked, and new ones not ignored) copied into a fresh directory, as a clone would have them. */
function copyCheckout(): string {
  const to = mkdtempSync(join(tmpdir(), 'moodio-rt-prod-'));
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' }).split('\0');
  for (const file of files) {
    if (file === '' || !existsSync(join(ROOT, file))) continue;
    mkdirSync(dirname(join(to, file)), { recursive: true });
    copyFileSync(join(ROOT, file), join(to, file));
  }
  return to;
}

test('npm ci --omit=dev installs a server that runs: /health, a session, the CLI from anywhere, a unit that verifies', { timeout: 240_000 }, async (t) => {
  const dir = copyCheckout();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const env = npmEnv();
  await run('npm', ['ci', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir, env, maxBuffer: 16 << 20 });

  assert.ok(existsSync(join(dir, 'node_modules', '.bin', 'node')), 'the Node 26 runtime is a dependency');
  assert.ok(existsSync(join(dir, 'node_modules', 'ws')), 'runtime dependencies are installed');
  for (const dev of ['typescript', 'tsx', '@stryker-mutator', 'playwright-core'])
    assert.ok(!existsSync(join(dir, 'node_modules', dev)), `${dev} is not installed`);
  assert.ok(!existsSync(join(dir, 'dist', 'moodio-rt-client')), 'the SDK build was skipped, not half done');

  // The supervised command, as the unit runs it.
  const stub = await startPermissionStub(t);
  const child = spawn(join(dir, 'scripts', 'moodio-rt-serve'), ['--host', '127.0.0.1', '--port', '0', '--workers', '1'], {
    cwd: tmpdir(),
    env: { PATH: '/usr/bin:/bin', HOME: tmpdir(), JWT_ACCESS_SECRET: TEST_SECRET, PERMISSION_API_BASE: stub.base },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = new ServerProcess(child);
  t.after(() => server.stop());
  server.port = (await server.waitForLog((l) => l.event === 'listening', 30_000)).port as number;
  const health = await fetch(`http://127.0.0.1:${server.port}/health`);
  assert.equal(health.status, 200);
  const room = desktop();
  const { joined } = await joinRoom(t, server.wsUrl(room), { token: token(user('Prod')) });
  assert.deepEqual(joined.sessions, []);

  // The CLI from another directory, through a link on PATH, with the system Node first on PATH.
  const bin = mkdtempSync(join(tmpdir(), 'moodio-rt-bin-'));
  t.after(() => rmSync(bin, { recursive: true, force: true }));
  symlinkSync(join(dir, 'scripts', 'moodio-rt'), join(bin, 'moodio-rt'));
  const minted = await run('moodio-rt', ['token', '--user', 'ops-0001', '--name', 'Ops', '--email', 'ops@example.com'], {
    cwd: tmpdir(),
    env: { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`, HOME: tmpdir(), JWT_ACCESS_SECRET: TEST_SECRET },
  });
  assert.match(minted.stdout.trim(), /^[\w-]+\.[\w-]+\.[\w-]+$/, 'it prints a token');
  const { joined: again } = await joinRoom(t, server.wsUrl(room), { token: minted.stdout.trim() });
  assert.equal((again.sessions as { firstName: string }[])[0]?.firstName, 'Prod', 'the minted token joins the same room');

  // The unit for this install: its paths are the install's, and systemd accepts it.
  const printed = spawnSync(join(dir, 'scripts', 'moodio-rt-unit'), { encoding: 'utf8' });
  const unit = printed.stdout;
  // The copy lives in the temp directory, which the unit's PrivateTmp hides from the service: it says so.
  assert.match(printed.stderr, /warning: .* hides from the service/);
  assert.ok(unit.includes(`ExecStart=${join(dir, 'scripts', 'moodio-rt-serve')} `), unit);
  assert.ok(unit.includes(`WorkingDirectory=${dir}\n`));
  assert.match(unit, /^User=moodio$/m);
  assert.deepEqual(
    unit.split('\n').filter((line) => !line.startsWith('#') && line.includes('/srv/moodio-rt')),
    [],
    "every path is the install's",
  );
  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
  if (!analyze) return t.skip('systemd-analyze is not installed');
  const unitFile = join(mkdtempSync(join(tmpdir(), 'moodio-rt-unit-')), 'moodio-rt.service');
  // The secrets file of step 4 stands in empty (EnvironmentFile= must exist for the unit to start, not to verify).
  writeFileSync(unitFile, unit);
  const { stderr } = await run(analyze, ['verify', unitFile]);
  assert.equal(stderr.trim(), '');
});
