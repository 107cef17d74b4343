// Mutation testing (issue 15): `npm run mutants`. Too slow for every CI run
// (each mutant runs the test files that exercise its module), so it is
// incremental: reports/ keeps what was killed, and a run only tries mutants
// whose code or tests changed.
//
// MUTANTS_SCOPE=<name> narrows a run to one entry of SCOPES (its module and
// its tests), e.g. `MUTANTS_SCOPE=rate-limiter npm run mutants`.
//
// A mutant only ever runs the test files that reached it *in the test
// process* during the dry run: the TAP runner reports per-test coverage even
// with coverageAnalysis 'off', and Stryker then filters by it. Code reached
// only inside a real server's child process counts as not covered, so a
// file that only talks to a real server never runs against a mutant (it
// would catch it: the child inherits the active mutant). Scopes therefore
// list the files that call their module in process, unit tests first (a
// killed mutant stops at the first failing file).

import { readFileSync } from 'node:fs';

const read = (file) => readFileSync(new URL(file, import.meta.url), 'utf8');

// What a scope mutates: a whole file (its path), or a part of one found by its text, so that the
// range follows the file as it changes: `{ file, what, lines(text) }`, where `lines` gives the part's
// first and last line (1-based) in `text`, or null when `text` has no such part. Besides the
// `mutate` patterns, test/mutation-reports.test.ts reads these to compare the code a report was
// recorded on with today's (a part's own lines only: the rest of its file may change freely).

/**
 * The lines of the part of `text` that begins at the first line matching
 * `start` and ends at the first later line at its indentation that closes it
 * (`}`, `})`, `},`); null when there is none.
 */
export function partLines(text, start) {
  const lines = text.split('\n');
  const first = lines.findIndex((line) => start.test(line));
  if (first === -1) return null;
  const indent = /^ */.exec(lines[first])[0];
  const last = lines.findIndex((line, i) => i > first && line.startsWith(`${indent}}`));
  return last === -1 ? null : [first + 1, last + 1];
}

/** The line of `field` in the option-table entry of `key` (src/config.ts's text); null when there is none. */
export function optionFieldLine(text, key, field) {
  const lines = text.split('\n');
  const at = lines.findIndex((line) => line === `    key: '${key}',`);
  if (at === -1) return null;
  const end = lines.findIndex((line, i) => i > at && line === '  },');
  for (let i = at; i < end; i++) if (lines[i].startsWith(`    ${field}: `)) return [i + 1, i + 1];
  return null;
}

/** A part of a larger file ({@link partLines}). */
function part(file, start) {
  return { file, what: `the part starting at ${start}`, lines: (text) => partLines(text, start) };
}

/** The lines of the option-table entry of `key` in src/config.ts whose field is one of `fields`. */
function optionLines(key, fields) {
  return fields.map((field) => ({ file: 'src/config.ts', what: `option ${key}'s ${field}`, lines: (text) => optionFieldLine(text, key, field) }));
}

/** The code of `text` that `spec` mutates: all of it for a whole file, the part's lines for a part (null when `text` lacks it). */
export function codeOf(spec, text) {
  if (typeof spec === 'string') return text;
  const range = spec.lines(text);
  return range === null
    ? null
    : text
        .split('\n')
        .slice(range[0] - 1, range[1])
        .join('\n');
}

/** Stryker's `mutate` pattern for `spec`: the file, or `file:first-last` in today's text. */
export function mutatePattern(spec) {
  if (typeof spec === 'string') return spec;
  const range = spec.lines(read(spec.file));
  if (range === null) throw new Error(`${spec.file}: ${spec.what} is not there`);
  return `${spec.file}:${range[0]}-${range[1]}`;
}

/** Each module where a silent bug is a security or protocol bug, with the in-process tests that must catch it. */
export const SCOPES = {
  'json-member': { mutate: ['src/protocol/json-member.ts'], tests: ['test/json-member.test.ts'] },
  'json-scan': { mutate: ['src/protocol/json-scan.ts'], tests: ['test/json-scan.test.ts'] },
  'rate-limiter': { mutate: ['src/shard/rate-limiter.ts'], tests: ['test/rate-limiter.test.ts', 'test/rate-limit.test.ts'] },
  relay: { mutate: ['src/shard/relay.ts'], tests: ['test/relay.unit.test.ts'] },
  backpressure: { mutate: ['src/shard/backpressure.ts'], tests: ['test/backpressure.unit.test.ts', 'test/relay.unit.test.ts'] },
  token: { mutate: ['src/auth/token.ts', 'src/auth/credentials.ts'], tests: ['test/token.test.ts', 'test/auth.test.ts'] },
  handshake: { mutate: ['src/shard/handshake.ts', 'src/shard/user-admission.ts'], tests: ['test/handshake.unit.test.ts'] },
  router: { mutate: ['src/primary/router.ts'], tests: ['test/router.unit.test.ts', 'test/units.test.ts'] },
  'head-reader': { mutate: ['src/primary/head-reader.ts'], tests: ['test/head-reader.unit.test.ts', 'test/head-reader.test.ts'] },
  // The sketch, and the shard's admission check that reads it (with the per-worker and per-room limits beside it).
  'user-connections': {
    mutate: ['src/protocol/user-connections.ts', part('src/shard/shard.ts', /^  private checkLimits\(/)],
    tests: ['test/user-connections.unit.test.ts'],
  },
  // The seed's 4096-byte limit: its default and bounds in the option table (the flag, env and wording are the CLI's), and the shard's ws server built with it.
  'max-message-size': {
    mutate: [...optionLines('maxMessageSize', ['default', 'parse']), part('src/shard/shard.ts', /^      const wss = new WebSocketServer\(\{$/)],
    tests: ['test/max-message-size.unit.test.ts', 'test/units.test.ts'],
  },
  // Server API (issue 13): request validation, the recheck's schedule, the ids a shard applied.
  'api-request': { mutate: ['src/primary/api-request.ts', 'src/shard/permission-recheck.ts', 'src/shard/recent-ids.ts'], tests: ['test/api-units.test.ts'] },
  // Federation (issue 12): the bus wire format, its signatures, and API requests from the bus.
  bus: { mutate: ['src/protocol/bus.ts', 'src/protocol/bus-signature.ts'], tests: ['test/bus.test.ts'] },
  // One write per socket per turn, flushNow before a close, pacing; the relay and backpressure unit tests write through it too.
  'write-coalescer': {
    mutate: ['src/shard/write-coalescer.ts'],
    tests: ['test/write-coalescer.test.ts', 'test/backpressure.unit.test.ts', 'test/relay.unit.test.ts'],
  },
  // The one owner of a live session's permission, and the server's closes for the user's sake (revoked, logged out, expired).
  'session-control': { mutate: ['src/shard/session-control.ts'], tests: ['test/session-control.unit.test.ts', 'test/commands.unit.test.ts'] },
  // Server API requests on a shard: who each kind reaches, each id applied once.
  commands: { mutate: ['src/shard/commands.ts'], tests: ['test/commands.unit.test.ts'] },
  // The server API on the primary: the key, the shards a call needs, the answers; and its HTTP/1.1 connections.
  'api-server': {
    mutate: ['src/primary/api-server.ts', 'src/primary/api-connection.ts'],
    tests: ['test/api-server.unit.test.ts', 'test/api-server-gaps.unit.test.ts'],
  },
  // One shard's link to the other nodes, driven in process over a real nats-server the test starts.
  federation: {
    mutate: [
      'src/shard/federation/bus-api.ts',
      'src/shard/federation/index.ts',
      'src/shard/federation/link.ts',
      'src/shard/federation/peers.ts',
      'src/shard/federation/presence-sync.ts',
      'src/shard/federation/room-events.ts',
      'src/shard/federation/rooms.ts',
    ],
    tests: ['test/federation-shutdown.unit.test.ts', 'test/bus.test.ts'],
  },
};

const scope = process.env.MUTANTS_SCOPE;
const chosen = scope ? [SCOPES[scope]] : Object.values(SCOPES);
if (chosen.includes(undefined)) throw new Error(`MUTANTS_SCOPE must be one of ${Object.keys(SCOPES).join(', ')}`);

export default {
  mutate: chosen.flatMap((s) => s.mutate.map(mutatePattern)),
  testRunner: 'tap',
  tap: {
    testFiles: [...new Set(chosen.flatMap((s) => s.tests))],
    // TAP for the runner to read (Node 26's default reporter is spec, piped or not).
    nodeArgs: ['--import', 'tsx', '--test-reporter=tap', '-r', '{{hookFile}}', '{{testFile}}'],
    // Let a failing test file end normally: a hard exit would skip its t.after() and leave its servers running.
    forceBail: false,
  },
  // No type checking of mutants: TypeScript 7's native compiler has no JavaScript API for Stryker's
  // checker (nor for its tsconfig rewriting, skipped by naming no tsconfig). A mutant that would not
  // compile runs as plain JavaScript (Node strips the types), and the tests judge it like any other.
  tsconfigFile: 'no-tsconfig-for-stryker.json',
  // Named, but the TAP runner filters by the coverage it collects anyway (see the top of this file).
  coverageAnalysis: 'off',
  // Two cores, shared: one mutant at a time (`npm run mutants -- --concurrency 2` on a machine of your own).
  concurrency: 1,
  // Beyond 1.5 × the covering files' own time. A unit file runs in seconds, but one whose every test
  // waits out a 2 s frame timeout (a mutant that stops all delivery) takes about 30: that is a kill, not a hang.
  timeoutMS: 45_000,
  incremental: true,
  incrementalFile: `reports/mutants/${scope ?? 'all'}.incremental.json`,
  reporters: ['clear-text', 'json', 'progress'],
  jsonReporter: { fileName: `reports/mutants/${scope ?? 'all'}.json` },
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
