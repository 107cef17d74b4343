/**
 * Typed failures. Every error the server raises on purpose is a RelayError
 * with a stable `code`; logs and tests use the code, never the wording.
 */

export class RelayError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** An option has an invalid value; raised at start-up, naming the option. */
export class ConfigError extends RelayError {
  readonly option: string;
  constructor(option: string, message: string) {
    super('ERR_CONFIG', `${option}: ${message}`);
    this.option = option;
  }
}

export const AuthErrorCode = {
  MISSING_TOKEN: 'ERR_AUTH_MISSING_TOKEN',
  INVALID_TOKEN: 'ERR_AUTH_INVALID_TOKEN',
  EXPIRED: 'ERR_AUTH_EXPIRED',
  BAD_CLAIMS: 'ERR_AUTH_BAD_CLAIMS',
} as const;
export type AuthErrorCodeValue = (typeof AuthErrorCode)[keyof typeof AuthErrorCode];

/** The handshake carried no usable access token → HTTP 401. */
export class AuthError extends RelayError {
  declare readonly code: AuthErrorCodeValue;
  constructor(code: AuthErrorCodeValue, message: string, options?: ErrorOptions) {
    super(code, message, options);
  }
}

export const PermissionErrorCode = {
  /** The API answered, and the answer does not admit the user. */
  DENIED: 'ERR_PERMISSION_DENIED',
  /** The API answered 200 with something that is not a known permission. */
  BAD_RESPONSE: 'ERR_PERMISSION_BAD_RESPONSE',
  /** The API did not answer in time, refused the connection, or failed. */
  UNAVAILABLE: 'ERR_PERMISSION_UNAVAILABLE',
  /** Too many lookups already wait for the API (`--permission-queue`): refused without asking. */
  BUSY: 'ERR_PERMISSION_BUSY',
} as const;
export type PermissionErrorCodeValue = (typeof PermissionErrorCode)[keyof typeof PermissionErrorCode];

/** The permission check did not admit the session → HTTP 403. */
export class PermissionError extends RelayError {
  declare readonly code: PermissionErrorCodeValue;
  /** The permission API's HTTP status, when it answered with one (a recheck tells a revocation, 403/404, from an expired cookie, 401). */
  readonly status: number | undefined;
  constructor(code: PermissionErrorCodeValue, message: string, options?: ErrorOptions & { status?: number }) {
    super(code, message, options);
    this.status = options?.status;
  }
}

/** The platform cannot read a socket's file descriptor (e.g. Windows). */
export class HeadReaderUnsupportedError extends RelayError {
  constructor() {
    super('ERR_HEAD_READER_UNSUPPORTED', 'socket has no readable file descriptor on this platform');
  }
}

export const AuthorizeErrorCode = {
  /** The app answered 400: the topic is malformed for it. */
  BAD_REQUEST: 'ERR_AUTHORIZE_BAD_REQUEST',
  /** The app answered 401 or 403. */
  FORBIDDEN: 'ERR_AUTHORIZE_FORBIDDEN',
  /** The app answered 404: no such desktop or table. */
  NOT_FOUND: 'ERR_AUTHORIZE_NOT_FOUND',
  /** Anything else: another status, a timeout, a bad body, an unknown permission. */
  INTERNAL: 'ERR_AUTHORIZE_INTERNAL',
  /** Too many calls already wait for the app (`--permission-concurrency` + `--permission-queue` per worker): refused without asking. */
  BUSY: 'ERR_AUTHORIZE_BUSY',
} as const;
export type AuthorizeErrorCodeValue = (typeof AuthorizeErrorCode)[keyof typeof AuthorizeErrorCode];

/** A topic subscription the authorize call did not accept (auth/topic-authorizer.ts); the client gets the matching error code. */
export class AuthorizeError extends RelayError {
  declare readonly code: AuthorizeErrorCodeValue;
  /** The app's HTTP status, when it answered one (a permission recheck tells 403 and 404 from 401). */
  readonly status: number | undefined;
  constructor(code: AuthorizeErrorCodeValue, message: string, options?: ErrorOptions & { status?: number }) {
    super(code, message, options);
    this.status = options?.status;
  }
}
