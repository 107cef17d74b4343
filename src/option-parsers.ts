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
