/**
 * docs/testing.md's mutation scores say what the committed reports say: a
 * score only for a scope whose code is what its report was recorded on,
 * "stale" once that code changed, "not yet run" without a report (see
 * test/helpers/mutation-reports.ts). Runs in milliseconds: it reads the
 * reports and the sources, and runs nothing.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { SCOPES, optionFieldLine, partLines, type MutateSpec } from '../stryker.config.mjs';
import { changedCode, claimOf, mutationScore, reportPath, scoreRows, verdict, type IncrementalReport } from './helpers/mutation-reports.ts';

const root = new URL('../', import.meta.url);
const readToday = (file: string): string | null => {
  const url = new URL(file, root);
  return existsSync(url) ? readFileSync(url, 'utf8') : null;
};

describe('docs/testing.md against reports/mutants/', () => {
  const rows = scoreRows(readFileSync(new URL('docs/testing.md', root), 'utf8'));

  test('the scores table has one row per scope of stryker.config.mjs, and no other', () => {
    const named = rows.flatMap((row) => row.scopes);
    assert.deepEqual([...named].sort(), Object.keys(SCOPES).sort());
    assert.equal(new Set(named).size, named.length, 'a scope has two rows');
  });

  for (const [scope, { mutate }] of Object.entries(SCOPES)) {
    test(`${scope}: the table says what its report says`, () => {
      const row = rows.find((r) => r.scopes.includes(scope));
      assert.ok(row, `${scope} has no row in the scores table of docs/testing.md`);
      const path = new URL(reportPath(scope), root);
      const report = existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as IncrementalReport) : null;
      const changed = report === null ? [] : changedCode(mutate, report, readToday);
      const wrong = verdict(scope, claimOf(row.score), report, changed);
      if (wrong !== null) assert.fail(wrong);
    });
  }
});

describe('the comparison', () => {
  const SOURCE = ['export class A {', '  one() {', '    return 1;', '  }', '', '  two() {', '    return 2;', '  }', '}', ''].join('\n');
  const report = (files: Record<string, string>, statuses: string[] = ['Killed']): IncrementalReport => ({
    files: Object.fromEntries(Object.entries(files).map(([file, source]) => [file, { source, mutants: statuses.map((status) => ({ status })) }])),
  });
  const reading = (files: Record<string, string>) => (file: string) => files[file] ?? null;
  const two: MutateSpec = { file: 'a.ts', what: 'two()', lines: (text) => partLines(text, /^  two\(\)/) };

  test('a file unchanged since its report passes; one changed by a character is caught, by name', () => {
    assert.deepEqual(changedCode(['a.ts'], report({ 'a.ts': SOURCE }), reading({ 'a.ts': SOURCE })), []);
    assert.deepEqual(changedCode(['a.ts'], report({ 'a.ts': SOURCE }), reading({ 'a.ts': SOURCE.replace('return 1', 'return 0') })), ['a.ts']);
    assert.deepEqual(
      changedCode(['a.ts', 'b.ts'], report({ 'a.ts': SOURCE, 'b.ts': 'x' }), reading({ 'a.ts': SOURCE, 'b.ts': 'y' })),
      ['b.ts'],
      'only the file that changed',
    );
  });

  test('a file the report lacks, or one gone today, counts as changed', () => {
    assert.deepEqual(changedCode(['a.ts', 'b.ts'], report({ 'a.ts': SOURCE }), reading({ 'a.ts': SOURCE, 'b.ts': 'x' })), ['b.ts']);
    assert.deepEqual(changedCode(['a.ts'], report({ 'a.ts': SOURCE }), reading({})), ['a.ts']);
  });

  test('a part: changes elsewhere in its file pass, even ones that move it; a change inside it, or its loss, is caught', () => {
    const recorded = report({ 'a.ts': SOURCE });
    const moved = '// a new first line\n' + SOURCE.replace('return 1', 'return 0');
    assert.deepEqual(changedCode([two], recorded, reading({ 'a.ts': moved })), []);
    assert.deepEqual(changedCode([two], recorded, reading({ 'a.ts': SOURCE.replace('return 2', 'return 3') })), ['a.ts (two())']);
    assert.deepEqual(changedCode([two], recorded, reading({ 'a.ts': SOURCE.replace('  two()', '  three()') })), ['a.ts (two())']);
  });

  test('an option line of src/config.ts: found by key and field, and only that line counts', () => {
    const config = ['  {', "    key: 'a',", "    default: '1',", '  },', '  {', "    key: 'b',", "    default: '2',", '    parse: intIn(1, 9),', '  },'].join(
      '\n',
    );
    assert.deepEqual(optionFieldLine(config, 'b', 'default'), [7, 7]);
    assert.equal(optionFieldLine(config, 'a', 'parse'), null, "not the next entry's field");
    const spec: MutateSpec = { file: 'src/config.ts', what: "b's default", lines: (text) => optionFieldLine(text, 'b', 'default') };
    const recorded = report({ 'src/config.ts': config });
    assert.deepEqual(changedCode([spec], recorded, reading({ 'src/config.ts': config.replace("'1'", "'5'") })), []);
    assert.deepEqual(changedCode([spec], recorded, reading({ 'src/config.ts': config.replace("'2'", "'5'") })), ["src/config.ts (b's default)"]);
  });

  test('the score is killed and timed out over killed, timed out, survived and without coverage', () => {
    assert.equal(mutationScore(report({ 'a.ts': SOURCE }, ['Killed', 'Timeout', 'Survived', 'NoCoverage', 'Ignored', 'CompileError'])), 50);
    assert.equal(mutationScore(report({ 'a.ts': SOURCE }, [])), null);
  });

  test("the table's rows and what each Score cell claims", () => {
    const markdown = [
      'text',
      '  | Scope | Score | Survivors |',
      '  |---|---|---|',
      '  | `relay` (`src/shard/relay.ts`) | stale (was 96.6%) | `a \\|\\| b` → `false` |',
      '  | `router` (`src/primary/router.ts`) | 100% (218 killed) | |',
      '  | `api-request`, `bus` | not yet run | |',
      '',
      '| after | the table |',
    ].join('\n');
    assert.deepEqual(scoreRows(markdown), [
      { scopes: ['relay'], score: 'stale (was 96.6%)' },
      { scopes: ['router'], score: '100% (218 killed)' },
      { scopes: ['api-request', 'bus'], score: 'not yet run' },
    ]);
    assert.deepEqual(claimOf('stale (was 96.6%)'), { kind: 'stale' });
    assert.deepEqual(claimOf('not yet run'), { kind: 'not-run' });
    assert.deepEqual(claimOf('handshake 95.7% (87 killed); user-admission 100%'), { kind: 'score', percents: [95.7, 100] });
  });

  test('the verdict: a score for changed code fails, naming the scope, the file and the command; "stale" passes', () => {
    const recorded = report({ 'a.ts': SOURCE }, ['Killed', 'Killed', 'Survived']);
    const failure = verdict('relay', { kind: 'score', percents: [66.7] }, recorded, ['src/shard/relay.ts']);
    assert.ok(failure !== null);
    assert.match(failure, /^relay: /);
    assert.match(failure, /src\/shard\/relay\.ts changed since reports\/mutants\/relay\.incremental\.json was recorded/);
    assert.match(failure, /`MUTANTS_SCOPE=relay npm run mutants`/);
    assert.equal(verdict('relay', { kind: 'stale' }, recorded, ['src/shard/relay.ts']), null);
    assert.match(verdict('relay', { kind: 'not-run' }, recorded, ['src/shard/relay.ts'])!, /says "not yet run"/);
  });

  test('the verdict on unchanged code: the report\'s score passes (to 0.05), another or "stale" fails', () => {
    const recorded = report({ 'a.ts': SOURCE }, ['Killed', 'Killed', 'Survived']);
    assert.equal(verdict('s', { kind: 'score', percents: [66.7] }, recorded, []), null);
    assert.equal(verdict('s', { kind: 'score', percents: [50, 66.67] }, recorded, []), null);
    assert.match(verdict('s', { kind: 'score', percents: [70] }, recorded, [])!, /scores 66\.67%/);
    assert.match(verdict('s', { kind: 'score', percents: [] }, recorded, [])!, /no percentage/);
    assert.match(verdict('s', { kind: 'stale' }, recorded, [])!, /matches today's code \(66\.67%\).*record its score/);
  });

  test('the verdict without a report: only "not yet run" passes', () => {
    assert.equal(verdict('s', { kind: 'not-run' }, null, []), null);
    assert.match(
      verdict('s', { kind: 'score', percents: [90] }, null, [])!,
      /reports\/mutants\/s\.incremental\.json does not exist: re-run `MUTANTS_SCOPE=s npm run mutants`/,
    );
    assert.match(verdict('s', { kind: 'stale' }, null, [])!, /does not exist/);
  });
});
