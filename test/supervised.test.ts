/**
 * The supervised command (scripts/moodio-rt-serve) is the server process
 * itself: a supervisor's SIGTERM reaches it, sessions are closed with 1012,
 * and it exits 0 with nothing left listening. (Under `npx moodio-rt serve`,
 * SIGTERM to npm orphaned the server, which kept running without draining.)
 * The example systemd unit runs that command and passes systemd's checks.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join as pathJoin } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { resolveServeConfig } from '../src/config.ts';
import { STOP_TIMEOUT_MS } from '../src/primary/shard-pool.ts';
import { CloseCode, SERVICE_RESTART_REASON } from '../src/protocol/events.ts';
import { join } from './helpers/client.ts';
import { desktop } from './helpers/scope.ts';
import { devSecretEnv, ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVE = pathJoin(ROOT, 'scripts', 'moodio-rt-serve');
const UNIT = pathJoin(ROOT, 'scripts', 'moodio-rt.service');

/** Resolves true when something accepts a TCP connection on the port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

test('SIGTERM to the supervised command drains the sessions with 1012 and exits 0', async (t) => {
  const env: Record<string, string | undefined> = { ...process.env, NODE_OPTIONS: undefined, ...devSecretEnv() };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  // As a supervisor runs it: the script itself, no npm and no Node of ours in front.
  const child = spawn(SERVE, ['--dev', '--host', '127.0.0.1', '--port', '0', '--workers', '1'], {
    env: env as NodeJS.ProcessEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = new ServerProcess(child);
  t.after(() => server.stop());
  server.port = (await server.waitForLog((l) => l.event === 'listening', 20_000)).port as number;

  // The pid the supervisor holds is the server's: exec replaced the shell.
  if (existsSync(`/proc/${child.pid}/cmdline`)) {
    const argv = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(argv.includes(pathJoin(ROOT, 'cli', 'moodio-rt.mjs')) && argv.includes('serve'), argv.join(' '));
    assert.ok(argv.includes('--max-semi-space-size=4'), "the bin's Node flag is passed");
  }

  const { client } = await join(t, server.wsUrl(desktop()), { token: token(user('Sup')) });
  child.kill('SIGTERM');
  assert.deepEqual(await client.closed, { code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON });
  assert.deepEqual(await server.exited, { code: 0, signal: null });
  assert.ok(
    server.logs.some((l) => l.event === 'shutdown'),
    'the server itself got the signal',
  );
  assert.equal(await listening(server.port), false, 'nothing is left listening');
});

test("a drain at the default options ends before the example unit's TimeoutStopSec would SIGKILL", () => {
  const stopSec = Number(/^TimeoutStopSec=(\d+)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1]);
  const config = resolveServeConfig({ jwtSecret: 's' });
  // The last close frame at the end of the spread, the closing handshakes' deadline after it, then the bus link's close.
  const worstMs = config.drainSpreadMs + config.drainTimeoutMs + STOP_TIMEOUT_MS;
  assert.ok(worstMs < stopSec * 1000, `a drain may take ${worstMs} ms, and systemd kills after ${stopSec} s`);
});

test('the example systemd unit runs the supervised command and passes systemd-analyze verify', async (t) => {
  const unit = readFileSync(UNIT, 'utf8');
  const execStart = /^ExecStart=(\S+)/m.exec(unit)?.[1];
  assert.equal(execStart, '/srv/moodio-rt/scripts/moodio-rt-serve');
  assert.match(unit, /^KillSignal=SIGTERM$/m);
  assert.match(unit, /^LimitNOFILE=\d+$/m);
  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
  if (!analyze) return t.skip('systemd-analyze is not installed');
  // Installed where the unit expects it: this checkout for /srv/moodio-rt, this user for moodio.
  const me = userInfo().username;
  const local = unit
    .replaceAll('/srv/moodio-rt', ROOT.replace(/\/$/, ''))
    .replace(/^User=.*$/m, `User=${me}`)
    .replace(/^Group=.*$/m, '')
    .replace(/^EnvironmentFile=.*$/m, 'EnvironmentFile=/dev/null');
  const path = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-unit-')), 'moodio-rt.service');
  writeFileSync(path, local);
  const { stderr } = await promisify(execFile)(analyze, ['verify', path]);
  assert.equal(stderr.trim(), '');
});
