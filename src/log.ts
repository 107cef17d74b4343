/**
 * Structured logs: one JSON object per line on stdout (`--log-format json`),
 * or an aligned line for humans (`--log-format pretty`). Every line carries
 * `level`, `ts`, `worker` (`primary` or the shard index) and `event`.
 *
 * Logged strings come from clients (close reasons, names, event types), so
 * neither format may let one break a line: both go through
 * {@link escapeControls} as a whole line.
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

/**
 * C0 controls, DEL, C1 controls (U+0085 NEL among them) and the Unicode line
 * and paragraph separators: whatever a terminal, `less` or a log shipper may
 * take for a line break or an escape sequence.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is this pattern's job (they are escaped in log lines).
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

function escapeControl(char: string): string {
  switch (char) {
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
    default:
      return `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`;
  }
}

/** `text` with every control character written as an escape (`\n`, `\u001b`, `\u2028`), so that it stays on one line. */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, escapeControl);
}

function errorFields(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, message: value.message, ...(code === undefined ? {} : { code }), stack: value.stack };
  }
  return value;
}

/**
 * At most `perSecond` lines a second for an event a peer can cause at will
 * (a refused handshake, a shed connection): a flood of them must not become
 * a flood of log writes on the thread that answers them. The first line let
 * through after some were skipped says how many, as `suppressed`.
 */
export class LogBudget {
  private readonly perSecond: number;
  private windowStart = 0;
  private used = 0;
  private suppressed = 0;

  constructor(perSecond: number) {
    this.perSecond = perSecond;
  }

  /** `fields` to log (with `suppressed` when lines were skipped), or null to skip this line. */
  take(fields: LogFields, now = Date.now()): LogFields | null {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used >= this.perSecond) {
      this.suppressed++;
      return null;
    }
    this.used++;
    if (this.suppressed > 0) {
      fields.suppressed = this.suppressed;
      this.suppressed = 0;
    }
    return fields;
  }
}

/** Lines a second, per thread, for `handshake_rejected`. */
export const REJECTION_LOG_PER_SECOND = 100;

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
      // JSON.stringify already escapes C0 (so no newline, no forged record: quotes are escaped
      // too), but leaves DEL, C1 and U+2028/2029 raw, which splitlines()-style readers break
      // lines at. Their \uXXXX escapes are valid JSON and parse back to the same string.
      write(escapeControls(JSON.stringify(record)) + '\n');
    } else {
      let line = `${ts} ${level.toUpperCase().padEnd(5)} [${worker}] ${event}`;
      if (fields) {
        for (const k of Object.keys(fields)) {
          const v = fields[k];
          line += ` ${k}=${v instanceof Error ? JSON.stringify(v.message) : typeof v === 'string' ? v : JSON.stringify(v)}`;
        }
      }
      // One pass over the whole line: keys, values and the event alike.
      write(escapeControls(line) + '\n');
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
