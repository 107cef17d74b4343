/**
 * The credential of one attempt: `options.token` as a string, or asked of
 * the app's function (sync or async) before every attempt, and checked to be
 * something a WebSocket protocol (or an Authorization header) can carry.
 */
import { ClientError } from './errors.ts';

/** `options.token`: a token, or a function answering one (or a Promise of one); null, undefined or '' mean none (the cookie goes). */
export type TokenOption = string | (() => string | null | undefined | PromiseLike<string | null | undefined>) | null | undefined;

/** Characters of an HTTP token (RFC 9110 `tchar`): what a WebSocket protocol may hold. A JWT is one. */
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What an HTTP header value may not hold. */
const NOT_IN_HEADER = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * Why `token` cannot travel `via` the protocol or the Authorization header,
 * or null when it can (the empty string means no token: the cookie goes).
 * A browser's WebSocket would throw a SyntaxError on it, from a timer.
 */
export function tokenProblem(token: string, via: 'protocol' | 'bearer'): string | null {
  if (token === '') return null;
  if (via === 'protocol' ? TOKEN_CHARS.test(token) : !NOT_IN_HEADER.test(token)) return null;
  return via === 'protocol' ? 'a string that a WebSocket protocol cannot carry (a JWT can)' : 'a string that an HTTP header cannot carry';
}

/**
 * Check a static `options.token` once, at connect().
 * @throws {ClientError} ERR_INVALID_OPTION when it is neither a string, a function nor absent, or a string `via` cannot carry.
 */
export function checkTokenOption(token: unknown, via: 'protocol' | 'bearer'): void {
  if (token === undefined || token === null || typeof token === 'function') return;
  if (typeof token !== 'string') throw new ClientError('ERR_INVALID_OPTION', `options.token must be a string or a function, not ${describe(token)}`);
  const problem = tokenProblem(token, via);
  if (problem !== null) throw new ClientError('ERR_INVALID_OPTION', `options.token is ${problem}`);
}

/**
 * This attempt's token. `use` gets it at once when it is at hand (a string,
 * or a function answering one synchronously), else when its Promise settles.
 * `fail` gets a ClientError `ERR_TOKEN` when the function throws, rejects
 * or answers what is not a token, always a microtask or more later: the
 * first attempt runs inside connect(), before the app could listen to `error`.
 * Every rejection is handled here: none is left for `unhandledrejection`.
 */
export function askToken(
  token: TokenOption,
  via: 'protocol' | 'bearer',
  use: (token: string | null | undefined) => void,
  fail: (error: ClientError) => void,
): void {
  if (typeof token !== 'function') return use(token);
  let answer: unknown;
  try {
    answer = token();
  } catch (err) {
    answer = Promise.reject(err);
  }
  if (!isThenable(answer)) {
    if (answerProblem(answer, via) === null) return use(answer as string | null | undefined);
    answer = Promise.resolve(answer);
  }
  (answer as PromiseLike<unknown>).then(
    (value) => {
      const problem = answerProblem(value, via);
      if (problem === null) use(value as string | null | undefined);
      else fail(new ClientError('ERR_TOKEN', `options.token answered ${problem}`));
    },
    (err: unknown) => fail(new ClientError('ERR_TOKEN', `options.token failed: ${describe(err)}`, { cause: err })),
  );
}

/** Why the function's answer is not a token, or null when it is one (or none). */
function answerProblem(value: unknown, via: 'protocol' | 'bearer'): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string') return `${describe(value)}, not a string (or a Promise of one)`;
  return tokenProblem(value, via);
}

/** A Promise, or anything with a `then` (an app's own promise library). */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
}

/** A thrown value or an answer, for a message. */
function describe(value: unknown): string {
  if (value instanceof Error) return value.message;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return typeof value === 'string' ? JSON.stringify(value) : `${typeof value} ${String(value)}`;
}
