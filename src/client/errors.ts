/**
 * The SDK's own failures: one class with a stable `code`, thrown by misuse
 * (`send()` after close, a full queue, a bad option) and emitted as the
 * `error` event for what goes wrong in the background (a token that could
 * not be had). Apps test the code, not the wording.
 */

/** The codes of {@link ClientError}. */
export type ClientErrorCode =
  /** `send()` or `retryNow()` after `close()`, a refusal or a revocation. */
  | 'ERR_CLOSED'
  /** `send()` while away with `maxQueue` messages waiting. */
  | 'ERR_QUEUE_FULL'
  /** No `WebSocket` in this runtime and none passed. */
  | 'ERR_NO_WEBSOCKET'
  /** `on()` with a name that is not a lifecycle event. */
  | 'ERR_UNKNOWN_CLIENT_EVENT'
  /** An option of `connect()` is not valid; the message names it. */
  | 'ERR_INVALID_OPTION'
  /**
   * `send()` of a mutation type (`asset_moved`, …) while `permission` is
   * `viewer`: the server would drop it silently. As an `error` event: the
   * mutations queued while the role was unknown, dropped when the join named it viewer.
   */
  | 'ERR_VIEWER_MUTATION'
  /** `error` event: the `token` function threw, rejected, or answered what is not a token; the attempt is retried with backoff. */
  | 'ERR_TOKEN';

export class ClientError extends Error {
  readonly code: ClientErrorCode;
  constructor(code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClientError';
    this.code = code;
  }
}

/** A Promise, or anything with a `then` (an app's own promise library). */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
}

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

/** A thrown value or an answer, for a message. */
export function describe(value: unknown): string {
  if (value instanceof Error) return value.message;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return typeof value === 'string' ? JSON.stringify(value) : `${typeof value} ${String(value)}`;
}
