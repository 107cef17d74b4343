/** Access tokens for tests, including deliberately broken ones. */
import { createHmac } from 'node:crypto';
import { signAccessToken, type TokenClaims } from '../../src/auth/token.ts';
import { TEST_SECRET } from './server.ts';

let counter = 0;

/** A distinct, realistic user (ids of 8+ characters). */
export function user(name: string, extra: Partial<TokenClaims> = {}): TokenClaims {
  counter++;
  return { userId: `user-${name.toLowerCase()}-${String(counter).padStart(4, '0')}`, firstName: name, email: `${name.toLowerCase()}@example.com`, ...extra };
}

export function token(claims: TokenClaims, secret = TEST_SECRET, ttlSeconds = 3600): string {
  return signAccessToken(claims, secret, ttlSeconds);
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/**
 * Sign an arbitrary header and payload with HMAC-SHA256 (to build tokens jsonwebtoken would refuse to make).
 * A string payload is taken as the JSON text itself, for what JSON.stringify cannot write (`1e400`).
 */
export function rawToken(header: Record<string, unknown>, payload: Record<string, unknown> | string, secret = TEST_SECRET): string {
  const body = typeof payload === 'string' ? Buffer.from(payload).toString('base64url') : b64(payload);
  const signingInput = `${b64(header)}.${body}`;
  return `${signingInput}.${createHmac('sha256', secret).update(signingInput).digest('base64url')}`;
}

/** An unsigned `alg: none` token. */
export function noneToken(payload: Record<string, unknown>): string {
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);
