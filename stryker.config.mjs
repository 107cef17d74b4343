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

/** Each module where a silent bug is a security or protocol bug, with the in-process tests that must catch it. */
export const SCOPES = {
  'json-member': { mutate: ['src/protocol/json-member.ts'], tests: ['test/json-member.test.ts'] },
  'rate-limiter': { mutate: ['src/shard/rate-limiter.ts'], tests: ['test/rate-limiter.test.ts', 'test/rate-limit.test.ts'] },
  relay: { mutate: ['src/shard/relay.ts'], tests: ['test/relay.unit.test.ts'] },
  backpressure: { mutate: ['src/shard/backpressure.ts'], tests: ['test/backpressure.unit.test.ts', 'test/relay.unit.test.ts'] },
  token: { mutate: ['src/auth/token.ts', 'src/auth/credentials.ts'], tests: ['test/token.test.ts', 'test/auth.test.ts'] },
  handshake: { mutate: ['src/shard/handshake.ts'], tests: ['test/auth.test.ts', 'test/permission.test.ts', 'test/limits.test.ts', 'test/permission-storm.test.ts'] },
  router: { mutate: ['src/primary/router.ts'], tests: ['test/routing.test.ts', 'test/units.test.ts', 'test/origins.test.ts'] },
  'head-reader': { mutate: ['src/primary/head-reader.ts'], tests: ['test/head-reader.test.ts', 'test/slow-heads.test.ts'] },
  'user-connections': { mutate: ['src/protocol/user-connections.ts'], tests: ['test/limits.test.ts'] },
};

const scope = process.env.MUTANTS_SCOPE;
const chosen = scope ? [SCOPES[scope]] : Object.values(SCOPES);
if (chosen.includes(undefined)) throw new Error(`MUTANTS_SCOPE must be one of ${Object.keys(SCOPES).join(', ')}`);

export default {
  mutate: chosen.flatMap((s) => s.mutate),
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
  concurrency: 2,
  // Beyond 1.5 × the covering files' own time: a unit file runs in seconds, so a mutant 20 s over that hangs.
  timeoutMS: 20_000,
  incremental: true,
  incrementalFile: `reports/mutants/${scope ?? 'all'}.incremental.json`,
  reporters: ['clear-text', 'json', 'progress'],
  jsonReporter: { fileName: `reports/mutants/${scope ?? 'all'}.json` },
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
