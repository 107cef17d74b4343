// Types of what stryker.config.mjs exports, for test/mutation-reports.test.ts.

/** A part of a larger file, found by its text. */
export interface PartSpec {
  file: string;
  /** Says which part, in messages. */
  what: string;
  /** First and last line (1-based) of the part in `text`, or null when `text` has none. */
  lines(text: string): [number, number] | null;
}

/** What a scope mutates: a whole file (its path), or a part of one. */
export type MutateSpec = string | PartSpec;

export interface Scope {
  mutate: MutateSpec[];
  tests: string[];
}

export const SCOPES: Record<string, Scope>;
export function partLines(text: string, start: RegExp): [number, number] | null;
export function optionFieldLine(text: string, key: string, field: string): [number, number] | null;
export function codeOf(spec: MutateSpec, text: string): string | null;
export function mutatePattern(spec: MutateSpec): string;

declare const config: Record<string, unknown>;
export default config;
