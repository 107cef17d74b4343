/**
 * Whether docs/testing.md's mutation scores still describe today's code.
 *
 * Stryker's incremental report (`reports/mutants/<scope>.incremental.json`)
 * keeps the source of each file it mutated as it was when the mutants ran.
 * A scope's code changed since when any of its files differs from that
 * source; for a scope that names a part of a file (`part()`,
 * `optionLines()` in stryker.config.mjs), only the part's own lines count,
 * found by the same text in both versions.
 *
 * The table's Score cell says one of three things, and must say what the
 * report says:
 *
 * | Report | Score cell |
 * |---|---|
 * | none | `not yet run` |
 * | its code unchanged | the score (a percentage within 0.05 of the report's) |
 * | its code changed since | `stale …` (the old figures may follow) |
 */
import { codeOf, type MutateSpec } from '../../stryker.config.mjs';

/** The part of a Stryker incremental report this check reads. */
export interface IncrementalReport {
  files: Record<string, { source: string; mutants: { status: string }[] }>;
}

/** What the Score cell of a scope's row claims. */
export type Claim = { kind: 'score'; percents: number[] } | { kind: 'stale' } | { kind: 'not-run' };

export interface ScoreRow {
  /** The scopes the row is about (`relay`; `api-request`, `bus`). */
  scopes: string[];
  /** The Score cell as written. */
  score: string;
}

/** The command that runs one scope's mutants. */
export const runCommand = (scope: string): string => `MUTANTS_SCOPE=${scope} npm run mutants`;

export const reportPath = (scope: string): string => `reports/mutants/${scope}.incremental.json`;

/**
 * The files of a scope whose mutated code is not what `report` recorded,
 * each with the part when the scope names one: a file the report lacks,
 * one that is gone today, a part missing from either version, or text that
 * differs.
 */
export function changedCode(mutate: MutateSpec[], report: IncrementalReport, read: (file: string) => string | null): string[] {
  const changed: string[] = [];
  for (const spec of mutate) {
    const file = typeof spec === 'string' ? spec : spec.file;
    const recorded = report.files[file]?.source;
    const today = read(file);
    const then = recorded === undefined ? null : codeOf(spec, recorded);
    const now = today === null ? null : codeOf(spec, today);
    if (then === null || now === null || then !== now) {
      const name = typeof spec === 'string' ? file : `${file} (${spec.what})`;
      if (!changed.includes(name)) changed.push(name);
    }
  }
  return changed;
}

/** The report's mutation score as Stryker counts it: killed and timed out over every mutant that ran or had no test. */
export function mutationScore(report: IncrementalReport): number | null {
  let detected = 0;
  let valid = 0;
  for (const { mutants } of Object.values(report.files)) {
    for (const { status } of mutants) {
      if (status === 'Killed' || status === 'Timeout') detected++;
      if (status === 'Killed' || status === 'Timeout' || status === 'Survived' || status === 'NoCoverage') valid++;
    }
  }
  return valid === 0 ? null : (100 * detected) / valid;
}

/** The rows of the `| Scope | Score | Survivors |` table in `markdown` (docs/testing.md). */
export function scoreRows(markdown: string): ScoreRow[] {
  const lines = markdown.split('\n').map((line) => line.trim());
  const header = lines.indexOf('| Scope | Score | Survivors |');
  if (header === -1) throw new Error('no "| Scope | Score | Survivors |" table');
  const rows: ScoreRow[] = [];
  for (let i = header + 2; i < lines.length && lines[i]!.startsWith('|'); i++) {
    // Cells split on `|` not escaped as `\|`.
    const cells = lines[i]!.slice(1)
      .split(/(?<!\\)\|/)
      .map((cell) => cell.trim());
    const names = /^`[a-z0-9-]+`(?:, `[a-z0-9-]+`)*/.exec(cells[0]!);
    if (names === null) throw new Error(`a row of the scores table names no scope first: ${lines[i]}`);
    rows.push({ scopes: names[0].split(', ').map((name) => name.slice(1, -1)), score: cells[1]! });
  }
  return rows;
}

/** What a Score cell claims: `stale …`, `not yet run`, or a score (its percentages). */
export function claimOf(cell: string): Claim {
  if (/^stale\b/.test(cell)) return { kind: 'stale' };
  if (/^not yet run\b/.test(cell)) return { kind: 'not-run' };
  return { kind: 'score', percents: [...cell.matchAll(/(\d+(?:\.\d+)?)%/g)].map((m) => Number(m[1])) };
}

/**
 * Whether `claim` says what the report says: null when it does, else what
 * is wrong and what to do, naming the scope, its files and the command.
 * `changed` is {@link changedCode}'s answer (unused without a report).
 */
export function verdict(scope: string, claim: Claim, report: IncrementalReport | null, changed: string[]): string | null {
  const rerun = `re-run \`${runCommand(scope)}\``;
  if (report === null) {
    if (claim.kind === 'not-run') return null;
    return `${scope}: docs/testing.md gives it a ${claim.kind === 'stale' ? 'stale ' : ''}score, but ${reportPath(scope)} does not exist: ${rerun} and commit the report, or write "not yet run"`;
  }
  if (changed.length > 0) {
    if (claim.kind === 'stale') return null;
    const said = claim.kind === 'score' ? 'claims a score' : 'says "not yet run"';
    return (
      `${scope}: docs/testing.md ${said}, but ${changed.join(', ')} changed since ${reportPath(scope)} was recorded: ` +
      `${rerun} and record the new score and survivors, or begin the row's Score cell with "stale"`
    );
  }
  const score = mutationScore(report);
  const figure = score === null ? 'no mutants' : `${score.toFixed(2)}%`;
  if (claim.kind !== 'score') {
    return `${scope}: ${reportPath(scope)} matches today's code (${figure}) but docs/testing.md says ${claim.kind === 'stale' ? '"stale"' : '"not yet run"'}: record its score and survivors`;
  }
  if (score === null || !claim.percents.some((p) => Math.abs(p - score) <= 0.05)) {
    return `${scope}: docs/testing.md gives ${claim.percents.map((p) => `${p}%`).join(', ') || 'no percentage'}, but ${reportPath(scope)} scores ${figure}: write the report's score`;
  }
  return null;
}
