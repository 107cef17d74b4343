/**
 * Builds the client SDK as a package of its own, `moodio-rt-client`, from
 * src/client (and the wire types it imports from src/protocol), into
 * dist/moodio-rt-client/ with a generated package.json; `--pack DIR` also
 * packs it into DIR with `npm pack` and prints the tarball's path.
 *
 *   node scripts/client-package.ts              # npm run build
 *   node scripts/client-package.ts --pack dist  # npm run pack:client
 *
 * Why a package apart from the server's: the server's package.json pins the
 * Node 26 runtime (the `node` package, 219 MB, which also becomes the app's
 * node_modules/.bin/node) and the server's dependencies. An app needs none
 * of that: this package is browser-safe ESM with types, with no dependencies
 * and no Node binary, like socket.io-client beside socket.io. Its name says
 * so the same way.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The package's name on a registry and in an app's package.json. */
export const CLIENT_PACKAGE_NAME = 'moodio-rt-client';
/** The React versions `moodio-rt-client/react` works with: it uses hooks only (useState, useEffect, useRef, useCallback). */
export const REACT_RANGE = '>=16.8.0';
/** Where the package is built (tsconfig.client.json's outDir). */
export const CLIENT_PACKAGE_DIR = join(ROOT, 'dist', CLIENT_PACKAGE_NAME);

const README = `# ${CLIENT_PACKAGE_NAME}

The client SDK of moodio-rt, the Moodio desktop real-time relay: it connects
in the background, reconnects with a capped backoff, keeps the room's presence
(roles included, as the server changes them), types the events, and queues
sends while away (only the newest drag per card). A revoked permission (close
4003) ends it; a logout (4001) brings it back at once.
ESM with types, no dependencies (React only for \`/react\`); browsers and Node (Node before 22: pass the
\`ws\` package as \`WebSocket\`).

\`\`\`js
import { connect } from '${CLIENT_PACKAGE_NAME}';

const client = connect({ url: 'wss://moodio.example.com', desktopId: 'desk-1' });
client.on('state', (state) => console.log(state));
client.onEvent('asset_moved', (e) => console.log(e.sessionId, e.payload));
client.send('asset_moved', { id: 'asset-1', x: 100, y: 200 });
\`\`\`

One socket per tab for many desktops and tables (the \`/ws/connection\` route):

\`\`\`js
import { connectTopics } from '${CLIENT_PACKAGE_NAME}';

const conn = connectTopics({ url: 'wss://moodio.example.com', token: () => accessToken });
const table = conn.subscribe('production-table:t1');
table.onEvent('pt_cell_updated', (e) => setCell(e.payload));
table.send('pt_cell_updated', { id: 'r1:c1', value: 'done' });
table.unsubscribe();
\`\`\`

In React (an optional peer dependency, for this entry only):

\`\`\`js
import { useDesktop } from '${CLIENT_PACKAGE_NAME}/react';

const { state, others, permission, send } = useDesktop({ url, desktopId, token: () => accessToken });
\`\`\`

Without \`token\`, a browser's \`moodio_access_token\` cookie authenticates; with
\`token\`, it travels as the WebSocket protocol \`moodio.token.<token>\` beside
\`moodio.v1\`. The whole guide, with a Next.js example, is docs/client.md in the
moodio-rt repository.
`;

/**
 * Build the package afresh into `dir` (default dist/moodio-rt-client/, which
 * the demo serves); returns it. Tests build into a directory of their own,
 * so that a running demo never reads a half-built SDK.
 */
export function buildClientPackage(dir = CLIENT_PACKAGE_DIR): string {
  rmSync(dir, { recursive: true, force: true });
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.client.json'), '--outDir', dir], { stdio: 'inherit' });
  // tsc rewrites `.ts` specifiers in the JavaScript it emits, but not in
  // declarations: name the files the package ships (TypeScript before 5.0
  // refuses a `.ts` specifier, and resolves `.js` to the `.d.ts` beside it).
  for (const file of listFiles(dir)) {
    if (!file.endsWith('.d.ts')) continue;
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.replace(/(from\s+'\.{1,2}\/[^']+)\.ts'/g, "$1.js'"));
  }
  const root = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; license: string };
  const manifest = {
    name: CLIENT_PACKAGE_NAME,
    version: root.version,
    description: 'Browser and Node client for moodio-rt, the Moodio desktop real-time relay: reconnects, presence, typed events.',
    type: 'module',
    license: root.license,
    sideEffects: false,
    exports: {
      '.': { types: './client/index.d.ts', default: './client/index.js' },
      './react': { types: './client/react.d.ts', default: './client/react.js' },
      './package.json': './package.json',
    },
    // Only the `./react` entry imports React; the core entry has no dependency at all.
    peerDependencies: { react: REACT_RANGE },
    peerDependenciesMeta: { react: { optional: true } },
    types: './client/index.d.ts',
    files: ['client', 'protocol'],
    keywords: ['moodio', 'websocket', 'realtime', 'client'],
  };
  writeFileSync(join(dir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
  writeFileSync(join(dir, 'README.md'), README);
  return dir;
}

/** `npm pack` the package built in `dir` into `destination`; returns the tarball's path. */
export function packClientPackage(destination: string, dir = CLIENT_PACKAGE_DIR): string {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', resolve(destination)], { cwd: dir, encoding: 'utf8', env: npmEnv() });
  const [packed] = JSON.parse(out) as { filename: string }[];
  return join(resolve(destination), packed!.filename);
}

/**
 * The environment for a child npm: without the `npm_*` variables of an
 * enclosing `npm run`, which would point it at this repository's config and prefix.
 */
export function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.toLowerCase().startsWith('npm_')) env[key] = value;
  return env;
}

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name));
}

/** Whether the SDK's compiler is installed: it is a dev dependency, absent from a production install (`npm ci --omit=dev`). */
export function compilerInstalled(): boolean {
  return existsSync(join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'));
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // `--if-compiler` (the `prepare` script): a production install has no
  // TypeScript and needs no SDK (the server runs its sources as they are), so
  // it skips the build instead of failing the install.
  if (process.argv.includes('--if-compiler') && !compilerInstalled()) {
    console.log(
      'moodio-rt: client SDK not built (TypeScript is a dev dependency; a production install does not need the SDK). `npm install` with dev dependencies builds it.',
    );
    process.exit(0);
  }
  const dir = buildClientPackage();
  const at = process.argv.indexOf('--pack');
  if (at === -1) console.log(`built ${dir}`);
  else console.log(packClientPackage(process.argv[at + 1] ?? '.'));
}
