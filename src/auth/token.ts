/**
 * Access tokens: HS256 JWTs issued by the Next.js app (claims `userId`,
 * `firstName`, `email`), verified with `jsonwebtoken` with the algorithm
 * pinned, so `alg: none` and RS/HS confusion are rejected by construction.
 * What jsonwebtoken leaves open is checked here: a `crit` header, time
 * claims that are not finite numbers, identity claims that are not
 * well-formed Unicode.
 */
import { createSecretKey, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { AuthError, AuthErrorCode } from '../errors.ts';

/** Who a verified token speaks for. */
export interface Identity {
  userId: string;
  firstName: string;
  email: string;
  /** The `permission` claim, consulted only in dev mode and with `--permissions-from-token`. */
  permissionClaim: string | undefined;
  /**
   * The `desktops` claim as the token carries it (validated where it is
   * used, ClaimPermissionSource), present only when the token has one:
   * consulted only with `--permissions-from-token`.
   */
  desktopsClaim?: unknown;
  /** When the token expires, in ms since the epoch (its `exp`): `--enforce-token-expiry` closes the session then. */
  expiresAt: number;
}

/** Longest accepted identity claim; they are stamped on every relayed event. */
export const MAX_CLAIM_LENGTH = 256;
/**
 * Longest identity claim once JSON-encoded, as it is stamped: a claim of 256
 * control characters would encode to 1.5 KB, sent with every event its
 * sessions cause and listed in every room_joined.
 */
export const MAX_ENCODED_CLAIM_LENGTH = 384;
/** Tolerated clock skew for `iat` in the future. */
export const IAT_SKEW_SECONDS = 60;

function optionalString(claims: Record<string, unknown>, name: string): string {
  const value = claims[name];
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string' || value.length > MAX_CLAIM_LENGTH) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, `claim ${name} must be a string of at most ${MAX_CLAIM_LENGTH} characters`);
  }
  wellFormed(value, name);
  compactWhenEncoded(value, name);
  return value;
}

/**
 * Identity claims go into URLs (the permission API's `?userId=`), where
 * encodeURIComponent throws on a lone UTF-16 surrogate, and into every
 * relayed event: refuse them here, where identities are validated.
 */
function wellFormed(value: string, name: string): void {
  if (!value.isWellFormed()) throw new AuthError(AuthErrorCode.BAD_CLAIMS, `claim ${name} is not well-formed Unicode (lone surrogate)`);
}

/** A claim must stay small once JSON-encoded (escapes included), as it is stamped on every event. */
function compactWhenEncoded(value: string, name: string): void {
  if (JSON.stringify(value).length - 2 > MAX_ENCODED_CLAIM_LENGTH) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, `claim ${name} takes more than ${MAX_ENCODED_CLAIM_LENGTH} characters once JSON-encoded`);
  }
}

/**
 * jsonwebtoken checks the type of `exp` and `nbf`, not that they are finite
 * (`1e400` parses to Infinity: a token that never expires), and checks `iat`
 * only with `maxAge`. A time claim, when present, must be a finite number.
 */
function timeClaim(claims: Record<string, unknown>, name: 'exp' | 'iat' | 'nbf'): void {
  const value = claims[name];
  if (value !== undefined && !Number.isFinite(value)) throw new AuthError(AuthErrorCode.BAD_CLAIMS, `claim ${name} must be a number of seconds`);
}

/**
 * The secret as a KeyObject, built once: given a string, jsonwebtoken builds
 * a key on every verify (createSecretKey/createPublicKey were 7% of a shard's
 * CPU in a connect storm).
 */
export function secretKey(secret: string): KeyObject {
  return createSecretKey(Buffer.from(secret, 'utf8'));
}

/**
 * Verify an access token and extract its identity.
 * @throws {AuthError} `ERR_AUTH_EXPIRED`, `ERR_AUTH_INVALID_TOKEN` or `ERR_AUTH_BAD_CLAIMS`.
 */
export function verifyAccessToken(token: string, secret: string | KeyObject, nowMs = Date.now()): Identity {
  let decoded: jwt.Jwt;
  try {
    decoded = jwt.verify(token, secret, { algorithms: ['HS256'], clockTimestamp: Math.floor(nowMs / 1000), complete: true });
  } catch (err) {
    if (err instanceof jwt.TokenExpiredError) throw new AuthError(AuthErrorCode.EXPIRED, 'token expired', { cause: err });
    throw new AuthError(AuthErrorCode.INVALID_TOKEN, `invalid token: ${(err as Error).message}`, { cause: err });
  }
  // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, or the
  // token rejected. We understand none, and jsonwebtoken ignores the header.
  if ((decoded.header as { crit?: unknown }).crit !== undefined) {
    throw new AuthError(AuthErrorCode.INVALID_TOKEN, 'token header has crit: no JWS extension is supported');
  }
  if (typeof decoded.payload !== 'object' || decoded.payload === null) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token payload is not an object');
  }
  const claims = decoded.payload as Record<string, unknown>;
  // A token without exp would never expire; the app always sets one.
  if (claims.exp === undefined) throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token has no exp claim');
  timeClaim(claims, 'exp');
  timeClaim(claims, 'iat');
  timeClaim(claims, 'nbf');
  if (typeof claims.iat === 'number' && claims.iat > nowMs / 1000 + IAT_SKEW_SECONDS) {
    throw new AuthError(AuthErrorCode.INVALID_TOKEN, 'token issued in the future');
  }
  const userId = claims.userId;
  if (typeof userId !== 'string' || userId.length === 0 || userId.length > MAX_CLAIM_LENGTH) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token has no valid userId claim');
  }
  wellFormed(userId, 'userId');
  compactWhenEncoded(userId, 'userId');
  const permission = claims.permission;
  const identity: Identity = {
    userId,
    firstName: optionalString(claims, 'firstName'),
    email: optionalString(claims, 'email'),
    permissionClaim: typeof permission === 'string' ? permission : undefined,
    expiresAt: (claims.exp as number) * 1000,
  };
  if (claims.desktops !== undefined) identity.desktopsClaim = claims.desktops;
  return identity;
}

/**
 * The `userId` claim of a token, read without verifying it (null when
 * unreadable): the primary places a multiplexed connection by it, and the
 * shard verifies the token.
 */
export function unverifiedUserId(token: string): string | null {
  const first = token.indexOf('.');
  const second = token.indexOf('.', first + 1);
  if (first < 0 || second < 0 || second - first > 8192) return null;
  try {
    const claims = JSON.parse(Buffer.from(token.slice(first + 1, second), 'base64url').toString('utf8')) as { userId?: unknown } | null;
    return typeof claims?.userId === 'string' ? claims.userId : null;
  } catch {
    return null;
  }
}

/** The JWT the relay mints for each authorize call: HS256, claims exactly `{userId, aud, iat, exp: iat + ttl}`. */
export function signInternalToken(userId: string, audience: string, ttlSeconds: number, secret: string | KeyObject, nowMs = Date.now()): string {
  const iat = Math.floor(nowMs / 1000);
  // jsonwebtoken keeps a given `iat` (and `noTimestamp` would drop it).
  return jwt.sign({ userId, aud: audience, iat, exp: iat + ttlSeconds }, secret, { algorithm: 'HS256' });
}

export interface TokenClaims {
  userId: string;
  firstName?: string;
  email?: string;
  permission?: string;
  /** Permission per desktop id, `"*"` for any other: read with `--permissions-from-token`. */
  desktops?: Record<string, string>;
}

/** Mint an HS256 access token (used by `moodio-rt token`, dev mode, tests and the load generator). */
export function signAccessToken(claims: TokenClaims, secret: string, ttlSeconds: number): string {
  return jwt.sign({ ...claims }, secret, { algorithm: 'HS256', expiresIn: ttlSeconds });
}
