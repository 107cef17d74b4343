/**
 * Where a handshake carries its access token, tried in this order:
 *
 * 1. `Sec-WebSocket-Protocol: moodio.v1, moodio.token.<jwt>`: the one a page
 *    sets for this connection alone (browsers can set no other header), so
 *    it wins over a cookie shared by every tab of the site;
 * 2. the `moodio_access_token` cookie (browsers, through nginx, as the Go
 *    server read it);
 * 3. `Authorization: Bearer <jwt>` (other clients).
 *
 * The token protocol counts only when `moodio.v1` is offered beside it: the
 * server answers with that name ({@link selectProtocol}), never with the
 * token, and a client that offered protocols refuses an answer without one.
 */
import { parseCookie } from 'cookie';
import { ACCESS_TOKEN_COOKIE, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } from '../protocol/events.ts';
import { bearerToken } from '../protocol/http.ts';

/** Which header the token came from. */
export type CredentialSource = 'protocol' | 'cookie' | 'bearer';

export interface Credentials {
  token: string;
  source: CredentialSource;
}

/** The token of a request, or null when it carries none. */
export function extractCredentials(headers: Record<string, string>): Credentials | null {
  const offered = protocolToken(headers['sec-websocket-protocol']);
  if (offered !== null) return { token: offered, source: 'protocol' };
  const cookieHeader = headers.cookie;
  if (cookieHeader !== undefined) {
    const token = parseCookie(cookieHeader)[ACCESS_TOKEN_COOKIE];
    if (token) return { token, source: 'cookie' };
  }
  const token = bearerToken(headers.authorization);
  return token === null ? null : { token, source: 'bearer' };
}

/**
 * The token of the first `moodio.token.<jwt>` in a `Sec-WebSocket-Protocol`
 * header (duplicate header lines arrive joined by commas), or null when there
 * is none or `moodio.v1` is not offered with it.
 */
export function protocolToken(header: string | undefined): string | null {
  if (header === undefined) return null;
  let token: string | null = null;
  let versioned = false;
  for (const part of header.split(',')) {
    const offered = part.trim();
    if (offered === SUBPROTOCOL) versioned = true;
    else if (token === null && offered.startsWith(TOKEN_SUBPROTOCOL_PREFIX) && offered.length > TOKEN_SUBPROTOCOL_PREFIX.length) {
      token = offered.slice(TOKEN_SUBPROTOCOL_PREFIX.length);
    }
  }
  return versioned ? token : null;
}

/**
 * `ws`'s `handleProtocols`: answer `moodio.v1` when it is offered, else no
 * protocol at all. Without it, `ws` would answer the first offered protocol,
 * which may be the token.
 */
export function selectProtocol(protocols: ReadonlySet<string>): string | false {
  return protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false;
}
