/**
 * `serve --dev` needs nothing else running: it generates (and keeps) a secret,
 * lets the token's permission claim decide, and `moodio-rt token` mints
 * tokens it accepts. Without --dev, missing or bad options fail at start.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
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
  return run(process.execPath, [CLI, ...args], { env: full as NodeJS.ProcessEnv });
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
  assert.deepEqual(joined.sessions.map((s: { userId: string; permission: string }) => [s.userId, s.permission]), [['alice-0001', 'editor']]);
  assert.equal((await editor.expect('session_joined')).payload.permission, 'viewer');

  viewer.send({ type: 'asset_moved', payload: { id: 'a' } });
  viewer.send({ type: 'cursor', payload: 1 });
  assert.equal((await editor.next()).type, 'cursor', "the viewer's mutation was dropped");
  editor.send({ type: 'asset_moved', payload: { id: 'b' } });
  const moved = await viewer.expect('asset_moved');
  assert.deepEqual([moved.userId, moved.firstName, moved.email], ['alice-0001', 'Alice', 'alice@example.com']);
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
