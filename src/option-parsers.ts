/**
 * Parsers for option values, shared by every command. Each throws
 * {@link ConfigError} naming the option it was given.
 */
import { ConfigError } from './errors.ts';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `250`, `250ms`, `10s`, `5m`, `1h` → milliseconds. */
export function parseDuration(raw: string, option: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) throw new ConfigError(option, `expected a duration such as 500ms, 10s or 1h, got ${JSON.stringify(raw)}`);
  const ms = Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
  if (ms <= 0 || !Number.isSafeInteger(ms)) throw new ConfigError(option, `must be a positive duration, got ${JSON.stringify(raw)}`);
  return ms;
}

/** A duration from `min` to `max` ms; `range` says them as a user would (`8ms to 1s`). */
export function durationIn(minMs: number, maxMs: number, range: string) {
  return (raw: string, option: string): number => {
    const ms = parseDuration(raw, option);
    if (ms < minMs || ms > maxMs) throw new ConfigError(option, `must be from ${range}, got ${JSON.stringify(raw)}`);
    return ms;
  };
}

export function intIn(min: number, max: number) {
  return (raw: string, option: string): number => {
    const n = /^-?\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(option, `must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
    }
    return n;
  };
}

export function oneOf<T extends string>(choices: readonly T[]) {
  return (raw: string, option: string): T => {
    if (!(choices as readonly string[]).includes(raw)) {
      throw new ConfigError(option, `must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
    }
    return raw as T;
  };
}

export function httpUrl(raw: string, option: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(option, `must be an http(s) URL, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(option, `must be an http(s) URL, got ${JSON.stringify(raw)}`);
  }
  if (url.search || url.hash) throw new ConfigError(option, 'must not carry a query or fragment');
  return url.href.replace(/\/+$/, '');
}

/** A number in [min, max] (fractions allowed). */
export function numberIn(min: number, max: number) {
  return (raw: string, option: string): number => {
    const n = /^-?\d+(\.\d+)?$/.test(raw.trim()) ? Number(raw) : Number.NaN;
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new ConfigError(option, `must be a number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
    }
    return n;
  };
}

/** One row of an option table (src/config.ts, src/loadtest/options.ts). */
export interface TableSpec<K extends string = string> {
  key: K;
  /** commander flag syntax, e.g. `--port <port>`. */
  flags: string;
  env?: string;
  description: string;
  /** Default as the raw string a user would type. */
  default?: string;
  parse: (raw: string, option: string) => unknown;
  /** Value when neither given nor defaulted (default: the empty string). */
  unset?: unknown;
}

/** The long flag of an option, for error messages (`--port`, `--no-progress`). */
export function optionName(spec: { flags: string }): string {
  return /--(?:no-)?[a-z0-9-]+/.exec(spec.flags)![0];
}

/**
 * Validate raw values (strings from flags or environment; booleans for
 * switches) against a table: given → parsed, else default → parsed, else the
 * spec's `unset`. Throws {@link ConfigError} naming the first invalid option.
 */
export function resolveTable<K extends string>(specs: readonly TableSpec<K>[], raw: Partial<Record<K, string | boolean | number>>): Record<K, unknown> {
  const out = {} as Record<K, unknown>;
  for (const spec of specs) {
    const value = raw[spec.key];
    const name = optionName(spec);
    if (typeof value === 'boolean') {
      if (spec.unset !== false && spec.unset !== true) throw new ConfigError(name, 'expects a value');
      out[spec.key] = value;
    } else if (value !== undefined) {
      out[spec.key] = spec.parse(String(value), name);
    } else if (spec.default !== undefined) {
      out[spec.key] = spec.parse(spec.default, name);
    } else {
      // A list's empty value is copied: one array shared by every option and every call would let one caller's push reach all.
      const unset = 'unset' in spec ? spec.unset : '';
      out[spec.key] = Array.isArray(unset) ? [...unset] : unset;
    }
  }
  return out;
}
