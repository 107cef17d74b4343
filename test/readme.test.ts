/**
 * The README's quick start, run as a user types it: `npx moodio-rt serve
 * --dev` from a shell on the system's Node (PATH without the project's
 * node_modules/.bin), a session with the token it prints, a second one with
 * a token from the README's `token` command, Ctrl-C. Only `npm install` is
 * left out (it needs the network; the suite runs on an installed tree).
 * The docs' links resolve, and packages are named, not linked to a registry.
 */
import assert from 'node:assert/strict';
import { exec as execCallback, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join as pathJoin, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { join } from './helpers/client.ts';
import { ServerProcess } from './helpers/server.ts';

const exec = promisify(execCallback);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(pathJoin(ROOT, 'README.md'), 'utf8');

/** The commands of the README's "Set up" section: its first code block, comments stripped. */
function setUpCommands(): string[] {
  const section = README.slice(README.indexOf('## Set up'));
  const block = /```bash\n([\s\S]*?)```/.exec(section)![1]!;
  return block
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter(Boolean);
}

/** A shell environment like a user's: the system's PATH (no node_modules/.bin), nothing of this test run's npm. */
function userEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: (process.env.PATH ?? '')
      .split(delimiter)
      .filter((d) => !d.includes('node_modules'))
      .join(delimiter),
  };
  for (const key of Object.keys(env)) if (key.startsWith('npm_') || key === 'NODE_OPTIONS' || key === 'JWT_ACCESS_SECRET' || key === 'HOST') delete env[key];
  return { ...env, ...extra };
}

function listening(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = netConnect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), done(true)));
    socket.once('error', () => done(false));
  });
}

test("the README's quick start: serve --dev, connect with the printed token, mint one with the token command, Ctrl-C", async (t) => {
  const [install, test_] = setUpCommands();
  assert.equal(test_, 'npm test');
  const [installStep, serveCommand] = install!.split(' && ');
  assert.equal(installStep, 'npm install');
  assert.equal(serveCommand, 'npx moodio-rt serve --dev');

  // As written, with three settings a test needs from the environment: a free port, one
  // shard (the machine is shared), and a secret file of its own (not the shared /tmp one).
  const env = userEnv({
    PORT: '0',
    MOODIO_RT_WORKERS: '1',
    MOODIO_RT_DEV_SECRET_FILE: pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-readme-')), 'secret'),
  });
  // Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
  const child = spawn('/bin/sh', ['-c', serveCommand!], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const allClosed = new Promise<void>((done) => child.stdout!.once('close', () => done()));
  const server = new ServerProcess(child);
  t.after(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // the group is gone already
    }
  });
  const listeningLine = await server.waitForLog((l) => l.event === 'listening', 30_000);
  assert.equal(listeningLine.host, '127.0.0.1', 'dev mode listens on this machine only');
  const port = listeningLine.port as number;

  // The banner's connect line: a cookie and a URL, as websocat sends them.
  const banner = await server.waitForStderr(/more tokens: .*\n/);
  const connectLine = /connect: {2}websocat -H 'Cookie: moodio_access_token=([\w.-]+)' (ws:\/\/\S+)/.exec(banner);
  assert.ok(connectLine, banner);
  const [, printedToken, url] = connectLine;
  assert.equal(url, `ws://127.0.0.1:${port}/ws/desktop/demo`);
  const { client: dev } = await join(t, url!, { token: printedToken! });

  // The README's token command, optional parts left out; it prints only the token.
  const tokenCommand = /`(npx moodio-rt token [^`]*)`/.exec(README)![1]!.replace(/\s*\[[^\]]*\]/g, '');
  assert.equal(tokenCommand, 'npx moodio-rt token --user alice-0001 --name Alice --email alice@example.com');
  const minted = await exec(tokenCommand, { cwd: ROOT, env });
  assert.match(minted.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/);
  const { client: alice, joined } = await join(t, url!, { token: minted.stdout.trim() });
  assert.deepEqual(
    joined.sessions.map((s: { userId: string }) => s.userId),
    ['dev-user-0001'],
  );
  assert.equal((await dev.expect('session_joined')).userId, 'alice-0001');

  // The banner's "then send" line, relayed to the other session with the sender's identity.
  const sendLine = /then send: (\{.*\})\n/.exec(banner)![1]!;
  alice.send(JSON.parse(sendLine));
  const moved = await dev.expect('asset_moved');
  assert.deepEqual([moved.userId, moved.firstName, moved.payload], ['alice-0001', 'Alice', { id: 'asset-1', x: 100, y: 200 }]);

  // No npm warnings greet the user (EBADENGINE blocks were printed by every npx).
  assert.doesNotMatch(server.stderr + minted.stderr, /npm warn/i);

  // Ctrl-C: the server drains (1012) and everything in the job exits.
  process.kill(-child.pid!, 'SIGINT');
  assert.equal((await dev.closed).code, 1012);
  await allClosed;
  assert.ok(server.logs.some((l) => l.event === 'shutdown'));
  assert.equal(await listening(port), false);
});

/** GitHub's anchors for a Markdown file's headings. */
function headingAnchors(markdown: string): Set<string> {
  const anchors = new Set<string>();
  for (const [, heading] of markdown.matchAll(/^#{1,6} (.+)$/gm)) {
    anchors.add(
      heading!
        .trim()
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\- _]/gu, '')
        .replace(/ /g, '-'),
    );
  }
  return anchors;
}

test('every relative link in the README and docs/ resolves (anchors included), and packages are named rather than linked to a registry', () => {
  const files = [
    'README.md',
    ...readdirSync(pathJoin(ROOT, 'docs'))
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ];
  for (const file of files) {
    const text = readFileSync(pathJoin(ROOT, file), 'utf8');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue;
      const [pathPart, anchor] = target!.split('#');
      const path = pathPart === '' ? pathJoin(ROOT, file) : resolve(dirname(pathJoin(ROOT, file)), pathPart!);
      assert.ok(existsSync(path), `${file} links to ${target}, which does not exist`);
      if (anchor !== undefined && path.endsWith('.md')) {
        assert.ok(headingAnchors(readFileSync(path, 'utf8')).has(anchor), `${file} links to ${target}: no such heading`);
      }
    }
    assert.doesNotMatch(text, /npmjs\.(com|org)|registry\.npmjs|packages\.debian\.org/, `${file} links a registry's page; name the package instead`);
  }
});
