/// <reference lib="dom" />
/**
 * The SDK as an app gets it: scripts/client-package.ts packs
 * `moodio-rt-client`, the tarball is installed with `ws` (packed from this
 * repository's node_modules) into a scratch project in the temp dir (npm
 * --offline, with an empty cache of its own: no network, no machine state), and then
 * - the publish command of docs/client.md, with --dry-run --offline,
 *   packs the built folder and contacts no registry;
 * - the install holds the two packages and no Node runtime;
 * - the package has no dependencies and imports nothing but its own files;
 * - TypeScript resolves its types from the app, as Node and as a bundler;
 * - a Node script of the app, with `ws`, talks to the real server;
 * - Chromium loads it from the app's node_modules (resolved through its
 *   `exports`) on another origin and talks to the real server, with the
 *   token in the WebSocket protocol.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { buildClientPackage, CLIENT_PACKAGE_NAME, npmEnv, packClientPackage, REACT_RANGE } from '../scripts/client-package.ts';
import { launchChromium } from './helpers/chromium.ts';
import { join as joinRoom } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const run = promisify(execFile);
const ROOT = new URL('..', import.meta.url).pathname;
const WS_VERSION = (JSON.parse(readFileSync(join(ROOT, 'node_modules/ws/package.json'), 'utf8')) as { version: string }).version;
const cleanup = new Cleanup();
let app: string;
/** The built package (dist/moodio-rt-client/, built apart) and the folder that holds it. */
let built: string;
let work: string;
let server: ServerProcess;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'moodio-rt-client-app-'));
  // Built apart from dist/: the browser test's demo reads the SDK there while this runs beside it.
  built = buildClientPackage(join(work, CLIENT_PACKAGE_NAME));
  const tarball = packClientPackage(work, built);
  app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', private: true, type: 'module' }));
  // ws comes packed from this repository's own node_modules, and npm gets a cache of its
  // own, empty: the install needs neither the network nor whatever this machine cached
  // (`ws@<version>` from the cache failed with ENOTCACHED on a fresh machine).
  const env = { ...npmEnv(), npm_config_cache: join(work, 'npm-cache') };
  const ws = await packFolder(join(ROOT, 'node_modules', 'ws'), work, env);
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball, ws], { cwd: app, env });
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base });
});
after(() => cleanup.run());

/** `npm pack` an installed package's folder into `destination`; returns the tarball's path. */
async function packFolder(folder: string, destination: string, env: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await run('npm', ['pack', '--offline', '--json', '--ignore-scripts', '--pack-destination', destination, folder], {
    cwd: destination,
    env,
  });
  const [packed] = JSON.parse(stdout) as { filename: string }[];
  return join(destination, packed!.filename);
}

const installed = () => join(app, 'node_modules', CLIENT_PACKAGE_NAME);

test('the documented publish command names the built folder: with --dry-run --offline it packs it and contacts no registry', async (t) => {
  const lines = [...readFileSync(join(ROOT, 'docs/client.md'), 'utf8').matchAll(/^npm (publish [^#\n]*?)\s*(?:#|$)/gm)].map((m) => m[1]!.split(/\s+/));
  assert.equal(lines.length, 2, 'docs/client.md shows the publish command and its dry run');
  for (const args of lines) {
    // npm reads `dist/moodio-rt-client` as the GitHub repository dist/moodio-rt-client, and runs git.
    assert.match(args.at(-1)!, /^\.{0,2}\//, `${args.join(' ')}: a path npm takes as a folder`);
  }
  const dryRun = lines.find((args) => args.includes('--dry-run'));
  assert.ok(dryRun?.includes('--offline'), 'the dry run says --offline');
  // Run where the docs run it: a checkout whose dist/ holds the built package.
  const checkout = mkdtempSync(join(work, 'checkout-'));
  cpSync(built, join(checkout, 'dist', CLIENT_PACKAGE_NAME), { recursive: true });
  // The registry is a loopback server that notes every request: the dry run must make none. (npm 11's
  // --dry-run alone still GETs the package's document, to see whether the version exists: --offline stops that.)
  const requests: string[] = [];
  const registry = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    res.writeHead(404, { 'content-type': 'application/json' }).end('{}');
  });
  await new Promise<void>((resolve) => registry.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => registry.close(resolve)));
  const env = {
    ...npmEnv(),
    npm_config_registry: `http://127.0.0.1:${(registry.address() as { port: number }).port}/`,
    npm_config_cache: join(checkout, 'npm-cache'),
    npm_config_userconfig: join(checkout, 'npmrc'),
    // npm's own weekly check for a newer npm (GET /npm, with an empty cache) is not the publish's doing.
    npm_config_update_notifier: 'false',
  };
  const { stdout, stderr } = await run('npm', dryRun, { cwd: checkout, env, timeout: 60_000 });
  assert.match(stdout, new RegExp(`^\\+ ${CLIENT_PACKAGE_NAME}@\\d+\\.\\d+\\.\\d+$`, 'm'));
  assert.match(stderr, /npm notice .*client\/index\.js/, 'the built files are in the tarball');
  assert.match(stderr, /\(dry-run\)/);
  assert.deepEqual(requests, []);
});

test('the install holds the SDK and ws only: no Node runtime, no .bin/node', () => {
  const modules = readdirSync(join(app, 'node_modules')).filter((name) => !name.startsWith('.'));
  assert.deepEqual(modules.sort(), [CLIENT_PACKAGE_NAME, 'ws']);
  assert.equal(JSON.parse(readFileSync(join(app, 'node_modules', 'ws', 'package.json'), 'utf8')).version, WS_VERSION, "the project's own ws");
  assert.equal(existsSync(join(app, 'node_modules', '.bin', 'node')), false);
});

test('the package has no dependencies (React is an optional peer, of the /react entry only) and its modules import only each other', () => {
  const manifest = JSON.parse(readFileSync(join(installed(), 'package.json'), 'utf8')) as Record<string, unknown>;
  for (const field of ['dependencies', 'optionalDependencies', 'bin', 'scripts', 'engines']) assert.equal(manifest[field], undefined, field);
  assert.deepEqual(manifest.peerDependencies, { react: REACT_RANGE });
  assert.deepEqual(manifest.peerDependenciesMeta, { react: { optional: true } });
  assert.deepEqual((manifest.exports as Record<string, unknown>)['./react'], { types: './client/react.d.ts', default: './client/react.js' });
  assert.equal(manifest.type, 'module');
  const files = readdirSync(installed(), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(installed().length + 1));
  assert.deepEqual(files.filter((f) => !/\.(js|d\.ts)$/.test(f)).sort(), ['README.md', 'package.json']);
  for (const file of files.filter((f) => f.endsWith('.js') || f.endsWith('.d.ts'))) {
    const text = readFileSync(join(installed(), file), 'utf8');
    const specifiers = [...text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)].map((m) => m[1]!);
    // The React entry imports React; nothing else does, so the core entry needs no install of it.
    const outside = file.startsWith('client/react.') ? ['react'] : [];
    for (const specifier of specifiers) if (!outside.includes(specifier)) assert.match(specifier, /^\.{1,2}\/.*\.js$/, `${file} imports ${specifier}`);
    assert.doesNotMatch(text, /\bprocess\.|require\(/, `${file} uses Node`);
  }
});

test("TypeScript finds the package's types from the app, with Node's resolution and a bundler's", async () => {
  writeFileSync(
    join(app, 'check.ts'),
    `import { connect, connectTopics, isServerEvent, ClientError, type AssetPayload, type RelayedEvent, type TopicEvent } from '${CLIENT_PACKAGE_NAME}';
const client = connect({ url: 'wss://example.invalid', desktopId: 'd', token: 't' });
client.onEvent('asset_moved', (e: RelayedEvent<'asset_moved', AssetPayload | undefined>) => {
  const x: number | undefined = e.payload?.x;
  void x;
  // A server API publish has no firstName: the type says so, and isServerEvent narrows it away.
  // @ts-expect-error firstName is not on a server-sent event
  void e.firstName;
  if (!isServerEvent(e)) void e.firstName.toUpperCase();
});
client.on('retry', ({ inMs }) => inMs.toFixed());
client.on('error', (e) => void (e instanceof ClientError ? e.code satisfies string : e.retryAfterMs));
// @ts-expect-error a relayed type is not a lifecycle event
client.on('asset_moved', () => {});
const role: 'editor' | 'viewer' | null = client.permission;
void role;
// The token may come from an async refresh.
connect({ url: 'wss://example.invalid', desktopId: 'd', token: async () => 'fresh' }).close();
// An app's own events, checked; the built-in seven keep their types.
interface MyEvents { cursor: { x: number; y: number } }
const typed = connect<MyEvents>({ url: 'wss://example.invalid', desktopId: 'd' });
typed.onEvent('cursor', (e) => e.payload.x.toFixed());
typed.send('cursor', { x: 1, y: 2 });
// @ts-expect-error x must be a number
typed.send('cursor', { x: 'left', y: 2 });
// @ts-expect-error a cursor has no z
typed.onEvent('cursor', (e) => e.payload.z);
typed.onEvent('asset_moved', (e) => e.payload?.id.toUpperCase());
// @ts-expect-error an asset event needs its id
typed.send('asset_moved', { x: 1 });
typed.send('anything_else', 42);
// One socket, many topics: a topic handle takes the same event map.
const conn = connectTopics({ url: 'wss://example.invalid', token: async () => 'fresh' });
const table = conn.subscribe<MyEvents>('production-table:t1');
table.onEvent('cursor', (e: TopicEvent<'cursor', { x: number; y: number }>) => e.payload.x.toFixed() + e.topic);
// @ts-expect-error x must be a number
table.send('cursor', { x: 'left', y: 2 });
const topicState: 'subscribing' | 'subscribed' | 'refused' | 'unsubscribed' = table.state;
void topicState;
conn.close();
`,
  );
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  for (const [module, resolution] of [
    ['nodenext', 'nodenext'],
    ['esnext', 'bundler'],
  ]) {
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module,
          moduleResolution: resolution,
          target: 'es2022',
          lib: ['es2022', 'dom'],
          types: [],
          strict: true,
          noEmit: true,
          skipLibCheck: false,
        },
        files: ['check.ts'],
      }),
    );
    const result = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app }).then(
      () => '',
      (err: { stdout: string }) => err.stdout,
    );
    assert.equal(result, '', `${resolution}: ${result}`);
  }
});

test('a Node script of the app imports it and talks to the real server with ws', async (t) => {
  const room = desktop();
  const { client: peer } = await joinRoom(t, server.wsUrl(room), { token: token(user('Peer')) });
  writeFileSync(
    join(app, 'talk.js'),
    `import { connect } from '${CLIENT_PACKAGE_NAME}';
import WebSocket from 'ws';
const [url, desktopId, token] = process.argv.slice(2);
const client = connect({ url, desktopId, token, WebSocket });
client.onEvent('asset_moved', (e) => {
  console.log(JSON.stringify({ from: e.firstName, payload: e.payload }));
  client.close();
});
client.send('asset_moved', { id: 'from-node', x: 1, y: 2 });
`,
  );
  const child = run(process.execPath, ['talk.js', `ws://127.0.0.1:${server.port}`, room, token(user('Noda'))], { cwd: app, timeout: 60_000 });
  assert.equal((await peer.expect('session_joined', 30_000)).firstName, 'Noda');
  const sent = await peer.expect('asset_moved');
  assert.deepEqual([sent.firstName, sent.payload], ['Noda', { id: 'from-node', x: 1, y: 2 }]);
  peer.send({ type: 'asset_moved', payload: { id: 'from-peer', x: 3 } });
  const { stdout } = await child;
  assert.deepEqual(JSON.parse(stdout), { from: 'Peer', payload: { id: 'from-peer', x: 3 } });
});

test("Chromium loads it from the app's node_modules on another origin and joins with the token in the WebSocket protocol", async (t) => {
  const manifest = JSON.parse(readFileSync(join(installed(), 'package.json'), 'utf8')) as { exports: { '.': { default: string } } };
  const entry = `/node_modules/${CLIENT_PACKAGE_NAME}/${normalize(manifest.exports['.'].default)}`;
  writeFileSync(
    join(app, 'index.html'),
    `<!doctype html><meta charset="utf-8"><title>app</title>
<script type="importmap">${JSON.stringify({ imports: { [CLIENT_PACKAGE_NAME]: entry } })}</script>
<script type="module">
  import { connect } from '${CLIENT_PACKAGE_NAME}';
  const q = new URLSearchParams(location.search);
  const client = connect({ url: q.get('ws'), desktopId: q.get('desk'), token: q.get('token') });
  window.client = client;
  client.on('state', (s) => (document.body.dataset.state = s));
  client.onEvent('asset_moved', (e) => (document.body.dataset.got = e.firstName + ' ' + JSON.stringify(e.payload)));
</script>`,
  );
  const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript' };
  const http = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url!, 'http://x').pathname));
    const file = join(app, path === '/' ? 'index.html' : path);
    if (!file.startsWith(app) || !existsSync(file)) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => http.close(resolve)));
  const { port } = http.address() as { port: number };

  const room = desktop();
  const { client: peer } = await joinRoom(t, server.wsUrl(room), { token: token(user('Peer')) });
  const browser = await launchChromium(t);
  const page = await browser.newPage();
  const failures: string[] = [];
  page.on('pageerror', (err) => failures.push(err.message));
  page.on('response', (res) => res.status() >= 400 && failures.push(`${res.status()} ${res.url()}`));
  const query = new URLSearchParams({ ws: `ws://127.0.0.1:${server.port}`, desk: room, token: token(user('Brow')) });
  await page.goto(`http://127.0.0.1:${port}/?${query}`);
  await page.waitForFunction(() => document.body.dataset.state === 'open', undefined, { timeout: 30_000 });
  assert.equal((await peer.expect('session_joined')).firstName, 'Brow');
  await page.evaluate(() =>
    (window as unknown as { client: { send(type: string, payload: unknown): void } }).client.send('asset_moved', { id: 'from-browser', x: 5 }),
  );
  const sent = await peer.expect('asset_moved');
  assert.deepEqual([sent.firstName, sent.payload], ['Brow', { id: 'from-browser', x: 5 }]);
  peer.send({ type: 'asset_moved', payload: { id: 'from-peer', x: 6 } });
  await page.waitForFunction(() => document.body.dataset.got !== undefined, undefined, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.got), 'Peer {"id":"from-peer","x":6}');
  assert.deepEqual(failures, []);
});
