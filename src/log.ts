/**
 * Structured logs: one JSON object per line on stdout (`--log-format json`),
 * or an aligned line for humans (`--log-format pretty`). Every line carries
 * `level`, `ts`, `worker` (`primary` or the shard index) and `event`.
 */
import type { LogFormat, LogLevel } from './config.ts';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** True when `level` would be written; guard costly field building with it. */
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  level: LogLevel;
  format: LogFormat;
  worker: string | number;
  /** Where lines go; defaults to process.stdout. */
  write?: (line: string) => void;
}

function errorFields(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, message: value.message, ...(code === undefined ? {} : { code }), stack: value.stack };
  }
  return value;
}

export function createLogger(options: LoggerOptions): Logger {
  const threshold = RANK[options.level];
  const write = options.write ?? ((line: string) => process.stdout.write(line));
  const worker = options.worker;

  function emit(level: Exclude<LogLevel, 'silent'>, event: string, fields?: LogFields): void {
    if (RANK[level] < threshold) return;
    const ts = new Date().toISOString();
    if (options.format === 'json') {
      const record: LogFields = { level, ts, worker, event };
      if (fields) for (const k of Object.keys(fields)) record[k] = errorFields(fields[k]);
      write(JSON.stringify(record) + '\n');
    } else {
      let line = `${ts} ${level.toUpperCase().padEnd(5)} [${worker}] ${event}`;
      if (fields) {
        for (const k of Object.keys(fields)) {
          const v = fields[k];
          line += v instanceof Error ? ` ${k}=${JSON.stringify(v.message)}` : ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`;
        }
      }
      write(line + '\n');
    }
  }

  return {
    debug: (e, f) => emit('debug', e, f),
    info: (e, f) => emit('info', e, f),
    warn: (e, f) => emit('warn', e, f),
    error: (e, f) => emit('error', e, f),
    enabled: (level) => RANK[level] >= threshold && level !== 'silent',
  };
}
