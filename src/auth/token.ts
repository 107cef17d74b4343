/**
 * Access tokens: HS256 JWTs issued by the Next.js app (claims `userId`,
 * `firstName`, `email`), verified with `jsonwebtoken` with the algorithm
 * pinned, so `alg: none` and RS/HS confusion are rejected by construction.
 */
import { createSecretKey, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { AuthError, AuthErrorCode } from '../errors.ts';

/** Who a verified token speaks for. */
export interface Identity {
  userId: string;
  firstName: string;
  email: string;
  /** The `permission` claim, consulted only in dev mode. */
  permissionClaim: string | undefined;
}

/** Longest accepted identity claim; they are stamped on every relayed event. */
export const MAX_CLAIM_LENGTH = 256;
/** Tolerated clock skew for `iat` in the future. */
export const IAT_SKEW_SECONDS = 60;

function optionalString(claims: Record<string, unknown>, name: string): string {
  const value = claims[name];
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string' || value.length > MAX_CLAIM_LENGTH) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, `claim ${name} must be a string of at most ${MAX_CLAIM_LENGTH} characters`);
  }
  return value;
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
  let decoded: unknown;
  try {
    decoded = jwt.verify(token, secret, { algorithms: ['HS256'], clockTimestamp: Math.floor(nowMs / 1000) });
  } catch (err) {
    if (err instanceof jwt.TokenExpiredError) throw new AuthError(AuthErrorCode.EXPIRED, 'token expired', { cause: err });
    throw new AuthError(AuthErrorCode.INVALID_TOKEN, `invalid token: ${(err as Error).message}`, { cause: err });
  }
  if (typeof decoded !== 'object' || decoded === null) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token payload is not an object');
  }
  const claims = decoded as Record<string, unknown>;
  // A token without exp would never expire; the app always sets one.
  if (typeof claims.exp !== 'number') throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token has no exp claim');
  if (typeof claims.iat === 'number' && claims.iat > nowMs / 1000 + IAT_SKEW_SECONDS) {
    throw new AuthError(AuthErrorCode.INVALID_TOKEN, 'token issued in the future');
  }
  const userId = claims.userId;
  if (typeof userId !== 'string' || userId.length === 0 || userId.length > MAX_CLAIM_LENGTH) {
    throw new AuthError(AuthErrorCode.BAD_CLAIMS, 'token has no valid userId claim');
  }
  const permission = claims.permission;
  return {
    userId,
    firstName: optionalString(claims, 'firstName'),
    email: optionalString(claims, 'email'),
    permissionClaim: typeof permission === 'string' ? permission : undefined,
  };
}

export interface TokenClaims {
  userId: string;
  firstName?: string;
  email?: string;
  permission?: string;
}

/** Mint an HS256 access token (used by `moodio-rt token`, dev mode, tests and the load generator). */
export function signAccessToken(claims: TokenClaims, secret: string, ttlSeconds: number): string {
  return jwt.sign({ ...claims }, secret, { algorithm: 'HS256', expiresIn: ttlSeconds });
}
