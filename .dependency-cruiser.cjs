/**
 * The layering of moodio-rt, checked by `npm test` (dependency-cruiser):
 * cli → server → primary | shard → protocol (plus auth, config, errors, log).
 * The thread boundary is a file boundary: primary and shard never import each
 * other. protocol/ is wire types and pure functions shared by both sides, the
 * SDK and the tests: it imports nothing of the server. The SDK imports only
 * itself and protocol/, so that it builds for browsers.
 */
module.exports = {
  forbidden: [
    { name: 'primary-not-shard', severity: 'error', comment: 'primary and shard run on different threads: they talk through protocol/messages.ts', from: { path: '(^|/)src/primary/' }, to: { path: '(^|/)src/shard/' } },
    { name: 'shard-not-primary', severity: 'error', comment: 'primary and shard run on different threads: they talk through protocol/messages.ts', from: { path: '(^|/)src/shard/' }, to: { path: '(^|/)src/primary/' } },
    {
      name: 'protocol-is-leaf',
      severity: 'error',
      comment: 'protocol/ holds wire types and pure functions: nothing of the server, its state or its threads',
      from: { path: '(^|/)src/protocol/' },
      to: { path: '(^|/)src/', pathNot: '(^|/)src/protocol/' },
    },
    {
      name: 'sdk-stands-alone',
      severity: 'error',
      comment: 'the SDK (moodio-rt-client) builds for browsers from src/client and src/protocol only',
      from: { path: '(^|/)src/client/' },
      to: { path: '(^|/)src/', pathNot: '(^|/)src/(client|protocol)/' },
    },
    {
      name: 'sdk-no-node-builtins',
      severity: 'error',
      comment: 'the SDK runs in browsers',
      from: { path: '(^|/)src/client/' },
      to: { dependencyTypes: ['core'] },
    },
    { name: 'server-not-cli', severity: 'error', comment: 'cli is the top layer', from: { path: '(^|/)src/' }, to: { path: '(^|/)cli/' } },
    { name: 'no-circular', severity: 'error', comment: 'cycles hide the direction of dependency', from: { path: '(^|/)src/' }, to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // swc parses the TypeScript: TypeScript 7.0 has no compiler API for dependency-cruiser. Type-only
    // imports are not followed (they cross no thread at run time), so cycles are runtime cycles.
    parser: 'swc',
    exclude: { path: '(^|/)src/demo/' },
  },
};
