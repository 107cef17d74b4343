/**
 * Where a handshake carries its access token: the `moodio_access_token`
 * cookie (browsers, through nginx), else `Authorization: Bearer` (other clients).
 */
import { parseCookie } from 'cookie';
import { ACCESS_TOKEN_COOKIE } from '../protocol/events.ts';
import { bearerToken } from '../protocol/http.ts';

export interface Credentials {
  token: string;
}

/** The token of a request, or null when it carries none. */
export function extractCredentials(headers: Record<string, string>): Credentials | null {
  const cookieHeader = headers.cookie;
  if (cookieHeader !== undefined) {
    const token = parseCookie(cookieHeader)[ACCESS_TOKEN_COOKIE];
    if (token) return { token };
  }
  const token = bearerToken(headers.authorization);
  return token === null ? null : { token };
}
