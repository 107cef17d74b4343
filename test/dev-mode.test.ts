/**
 * `serve --dev` needs nothing else running: it generates (and keeps) a secret,
 * lets the token's permission claim decide, and `moodio-rt token` mints
 * tokens it accepts. It never runs with a configured (production) secret, and
 * trusts its secret file only if no one else could have read or planted it.
 * Without --dev, missing or bad options fail at start.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as pathJoin } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { join } from './helpers/client.ts';
import { desktop } from './helpers/scope.ts';
import { CLI, startServer } from './helpers/server.ts';

const run = promisify(execFile);

function cli(args: string[], env: Record<string, string | undefined>) {
  const full: Record<string, string | undefined> = { ...process.env, NODE_OPTIONS: undefined, JWT_ACCESS_SECRET: undefined, ...env };
  for (const key of Object.keys(full)) if (full[key] === undefined) delete full[key];
  // The timeout ends a `serve` that starts when it should have refused to.
  return run(process.execPath, [CLI, ...args], { env: full as NodeJS.ProcessEnv, timeout: 20_000 });
}

async function cliFails(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stderr: string }> {
  const err = await cli(args, env).then(
    () => assert.fail(`expected ${args.join(' ')} to fail`),
    (e: { code: number; stderr: string }) => e,
  );
  return { code: err.code, stderr: err.stderr };
}

test('serve --dev + token work end to end with no secret and no permission API', async (t) => {
  const secretFile = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-dev-')), 'secret');
  const env = { MOODIO_RT_DEV_SECRET_FILE: secretFile, JWT_ACCESS_SECRET: undefined };
  const server = await startServer(t, { workers: 1, args: ['--dev', '--permission-api-base', 'http://127.0.0.1:9'], env });
  const banner = await server.waitForStderr(/websocat .*\n/);
  assert.match(banner, new RegExp(`websocat -H 'Cookie: moodio_access_token=[\\w.-]+' ws://127\\.0\\.0\\.1:${server.port}/ws/desktop/demo`));

  const { stdout: editorToken } = await cli(['token', '--user', 'alice-0001', '--name', 'Alice', '--email', 'alice@example.com'], env);
  const { stdout: viewerToken } = await cli(['token', '--user', 'victor-0002', '--name', 'Victor', '--permission', 'viewer', '--ttl', '10m'], env);
  assert.match(editorToken, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'token prints only the token');

  const room = desktop();
  const { client: editor } = await join(t, server.wsUrl(room), { token: editorToken.trim() });
  const { client: viewer, joined } = await join(t, server.wsUrl(room), { token: viewerToken.trim() });
  assert.deepEqual(
    joined.sessions.map((s: { userId: string; permission: string }) => [s.userId, s.permission]),
    [['alice-0001', 'editor']],
  );
  assert.equal((await editor.expect('session_joined')).payload.permission, 'viewer');

  viewer.send({ type: 'asset_moved', payload: { id: 'a' } });
  viewer.send({ type: 'cursor', payload: 1 });
  assert.equal((await editor.next()).type, 'cursor', "the viewer's mutation was dropped");
  editor.send({ type: 'asset_moved', payload: { id: 'b' } });
  const moved = await viewer.expect('asset_moved');
  assert.deepEqual([moved.userId, moved.firstName, moved.email], ['alice-0001', 'Alice', 'alice@example.com']);
});

test("serve --dev serves every module the demo page's SDK imports, from index.js down", async (t) => {
  const secretFile = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-dev-')), 'secret');
  const server = await startServer(t, { workers: 1, args: ['--dev'], env: { MOODIO_RT_DEV_SECRET_FILE: secretFile, JWT_ACCESS_SECRET: undefined } });
  const base = `http://127.0.0.1:${server.port}/demo/client/`;
  const seen = new Set<string>();
  const missing: string[] = [];
  const visit = async (path: string): Promise<void> => {
    if (seen.has(path)) return;
    seen.add(path);
    const res = await fetch(base + path);
    const text = await res.text();
    if (res.status !== 200) return void missing.push(`${path} (${res.status})`);
    for (const [, spec] of text.matchAll(/^(?:import|export)\b[^;]*?\bfrom '(\.{1,2}\/[^']+)'/gm))
      await visit(new URL(spec!, `http://x/${path}`).pathname.slice(1));
  };
  await visit('client/index.js');
  assert.deepEqual(missing, [], `modules the page cannot load (src/primary/demo.ts SDK_FILES)`);
  assert.ok(seen.size > 10, `walked ${[...seen].join(' ')}`);
});

test('serve --dev listens on 127.0.0.1 unless --host says otherwise, and says so', async (t) => {
  const env = {
    MOODIO_RT_DEV_SECRET_FILE: pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-dev-')), 'secret'),
    JWT_ACCESS_SECRET: undefined,
    HOST: undefined,
  };
  // As a user would start it: no --host (the helper's default adds one).
  const local = await startServer(t, { script: [CLI, 'serve', '--dev', '--port', '0', '--workers', '1'], env });
  assert.equal((await local.waitForLog((l) => l.event === 'listening')).host, '127.0.0.1');
  assert.match(await local.waitForStderr(/listening on .*\n/), new RegExp(`listening on 127\\.0\\.0\\.1:${local.port}: this machine only`));
  // A --host given wins (another loopback address, so that the test stays on this machine).
  const given = await startServer(t, { script: [CLI, 'serve', '--dev', '--host', '127.0.0.2', '--port', '0', '--workers', '1'], env });
  assert.equal((await given.waitForLog((l) => l.event === 'listening')).host, '127.0.0.2');
  assert.match(await given.waitForStderr(/websocat .*\n/), new RegExp(`ws://127\\.0\\.0\\.2:${given.port}/ws/desktop/demo`));
});

test('token without any secret fails and says how to get one', async () => {
  const missing = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-dev-')), 'none');
  const { code, stderr } = await cliFails(['token', '--user', 'u-00000001'], { MOODIO_RT_DEV_SECRET_FILE: missing });
  assert.equal(code, 2);
  assert.match(stderr, /JWT_ACCESS_SECRET/);
});

test('serve without --dev and without JWT_ACCESS_SECRET fails at start naming the variable', async () => {
  const { code, stderr } = await cliFails(['serve', '--port', '0']);
  assert.equal(code, 2);
  assert.match(stderr, /JWT_ACCESS_SECRET: is required/);
});

test('invalid option values fail at start naming the option', async () => {
  const env = { JWT_ACCESS_SECRET: 'x'.repeat(32) };
  const cases: [string[], RegExp][] = [
    [['--port', 'abc'], /--port: must be an integer from 0 to 65535/],
    [['--workers', '0'], /--workers: must be an integer from 1 to 256/],
    [['--handshake-timeout', 'soon'], /--handshake-timeout: expected a duration/],
    [['--permission-api-base', 'ftp://x'], /--permission-api-base: must be an http\(s\) URL/],
    [['--log-level', 'loud'], /--log-level: must be one of debug, info, warn, error, silent/],
    [['--max-message-size', '10'], /--max-message-size: must be an integer from 64/],
  ];
  for (const [args, pattern] of cases) {
    const { code, stderr } = await cliFails(['serve', ...args], env);
    assert.equal(code, 2, args.join(' '));
    assert.match(stderr, pattern);
  }
  const fromEnv = await cliFails(['serve'], { ...env, PORT: '70000' });
  assert.match(fromEnv.stderr, /--port: must be an integer from 0 to 65535, got "70000"/);
});

const freshDir = () => mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-dev-'));
const SERVE_DEV = ['serve', '--dev', '--host', '127.0.0.1', '--port', '0', '--workers', '1'];

test('serve --dev refuses a configured secret, so no demo token is ever signed with the production one', async () => {
  const env = { MOODIO_RT_DEV_SECRET_FILE: pathJoin(freshDir(), 'secret') };
  const fromEnv = await cliFails(SERVE_DEV, { ...env, JWT_ACCESS_SECRET: 'production-secret-0123456789-abcdefgh' });
  assert.equal(fromEnv.code, 2);
  assert.match(fromEnv.stderr, /JWT_ACCESS_SECRET: must not be set with --dev .*Unset it to use the dev secret in .*secret, or drop --dev/);
  const fromFlag = await cliFails([...SERVE_DEV, '--jwt-secret', 'production-secret-0123456789-abcdefgh'], env);
  assert.equal(fromFlag.code, 2);
  assert.match(fromFlag.stderr, /JWT_ACCESS_SECRET: must not be set with --dev/);
  assert.doesNotMatch(fromEnv.stderr + fromFlag.stderr, /moodio_access_token=/, 'no token printed either');
});

test('the dev secret file is created atomically with mode 0600, and trusted only if it is ours, private, regular and non-empty', async () => {
  // Creation: eight processes race to create it; all get the one secret that was published.
  const dir = freshDir();
  const file = pathJoin(dir, 'nested', 'secret');
  const startAt = Date.now() + 1500;
  const script = `while (Date.now() < ${startAt}); const m = await import(${JSON.stringify(new URL('../src/auth/dev-secret.ts', import.meta.url).href)}); process.stdout.write(m.loadOrCreateDevSecret(${JSON.stringify(file)}));`;
  const outputs = await Promise.all(
    Array.from({ length: 8 }, () => run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 20_000 })),
  );
  const secret = readFileSync(file, 'utf8').trim();
  assert.match(secret, /^[\w-]{43}$/, '32 random bytes, base64url');
  assert.deepEqual(new Set(outputs.map((o) => o.stdout)), new Set([secret]));
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(pathJoin(dir, 'nested')), ['secret'], 'no temporary file left behind');

  // Trust: each file below is refused by serve --dev and by token, naming the option and the file.
  const bad: [string, (path: string) => void, RegExp][] = [
    ['world-readable', (p) => writeFileSync(p, 'planted\n', { mode: 0o644 }), /has mode 0644/],
    ['group-readable', (p) => (writeFileSync(p, 'planted\n'), chmodSync(p, 0o640)), /has mode 0640/],
    ['a symlink', (p) => symlinkSync(file, p), /is a symbolic link/],
    ['a directory', (p) => mkdirSync(p), /is not a regular file/],
    ['empty', (p) => writeFileSync(p, '', { mode: 0o600 }), /is empty/],
  ];
  if (process.getuid?.() === 0) {
    // Only root can give a file away; elsewhere the owner check cannot be staged.
    bad.push([
      'owned by someone else',
      (p) => (writeFileSync(p, 'planted\n', { mode: 0o600 }), chownSync(p, 65534, 65534)),
      /is owned by uid 65534, not by this user/,
    ]);
  }
  for (const [what, make, pattern] of bad) {
    const path = pathJoin(freshDir(), 'secret');
    make(path);
    const env = { MOODIO_RT_DEV_SECRET_FILE: path };
    const served = await cliFails(SERVE_DEV, env);
    assert.equal(served.code, 2, `serve with a secret file that is ${what}: ${served.stderr}`);
    assert.ok(served.stderr.includes(`--dev-secret-file: ${path} `), served.stderr);
    assert.match(served.stderr, pattern);
    const minted = await cliFails(['token', '--user', 'u-00000001'], env);
    assert.equal(minted.code, 2, `token with a secret file that is ${what}`);
    assert.match(minted.stderr, pattern);
  }
});
