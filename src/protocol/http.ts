/**
 * HTTP/1.1 request heads as they cross the primary → shard boundary.
 *
 * The primary reads the head straight from a socket's file descriptor (see
 * primary/head-reader.ts), so no `http.Server` ever parses it; both threads
 * use this small, strict parser instead. Strict on purpose: anything a proxy
 * could read differently from us (bare LF, obs-fold, duplicated
 * routing-relevant headers, control bytes) is a 400, never a guess.
 */

/** A parsed request head. Header names are lower-case. */
export interface RequestHead {
  method: string;
  /** The request-target exactly as sent (origin-form). */
  url: string;
  /** Path part of `url` (before `?`). */
  path: string;
  version: '1.0' | '1.1';
  headers: Record<string, string>;
  /** Bytes taken by the head, including the final CRLFCRLF. */
  length: number;
}

export type ParseResult = { ok: true; head: RequestHead } | { ok: false; status: 400 | 431 | 505; reason: string };

/** Most header lines accepted in one head. */
export const MAX_HEADER_COUNT = 100;

// Headers that decide routing, authentication or framing: a second copy is an
// ambiguity an attacker could exploit between nginx and us, so it is rejected.
const SINGLETON_HEADERS: ReadonlySet<string> = new Set([
  'host',
  'upgrade',
  'authorization',
  'content-length',
  'transfer-encoding',
  'sec-websocket-key',
  'sec-websocket-version',
  'origin',
]);

// RFC 9110 token characters, as a 128-entry lookup table.
const TOKEN = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
  TOKEN[c.charCodeAt(0)] = 1;
}

function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || TOKEN[c] === 0) return false;
  }
  return true;
}

/**
 * Index just past the CRLFCRLF that ends the head, or -1 if it has not
 * arrived yet. `from` lets a caller that appends data skip what it already
 * scanned (pass the previous length minus 3).
 */
export function findHeadEnd(buf: Uint8Array, from = 0): number {
  for (let i = Math.max(0, from); i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i + 4;
  }
  return -1;
}

function fail(status: 400 | 431 | 505, reason: string): ParseResult {
  return { ok: false, status, reason };
}

/**
 * Parse a complete request head. `buf` must contain the whole head (see
 * {@link findHeadEnd}); bytes after it are ignored.
 */
export function parseRequestHead(buf: Uint8Array, headEnd = findHeadEnd(buf)): ParseResult {
  if (headEnd < 0) return fail(400, 'incomplete request head');
  // latin1 keeps one char per byte, so obs-text in values survives and every
  // control byte stays visible to the checks below.
  const text = Buffer.from(buf.buffer, buf.byteOffset, headEnd - 4).toString('latin1');
  const lines = text.split('\r\n');

  const requestLine = lines[0]!;
  const sp1 = requestLine.indexOf(' ');
  const sp2 = requestLine.indexOf(' ', sp1 + 1);
  if (sp1 <= 0 || sp2 < 0 || requestLine.indexOf(' ', sp2 + 1) !== -1) {
    return fail(400, 'malformed request line');
  }
  const method = requestLine.slice(0, sp1);
  const url = requestLine.slice(sp1 + 1, sp2);
  const versionText = requestLine.slice(sp2 + 1);
  if (!isToken(method)) return fail(400, 'malformed method');
  if (url.length === 0 || url.charCodeAt(0) !== 47 /* / */) return fail(400, 'request target must be a path');
  for (let i = 0; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return fail(400, 'invalid byte in request target');
  }
  let version: '1.0' | '1.1';
  if (versionText === 'HTTP/1.1') version = '1.1';
  else if (versionText === 'HTTP/1.0') version = '1.0';
  else if (versionText.startsWith('HTTP/')) return fail(505, 'unsupported HTTP version');
  else return fail(400, 'malformed HTTP version');

  if (lines.length - 1 > MAX_HEADER_COUNT) return fail(431, 'too many header fields');
  const headers: Record<string, string> = Object.create(null);
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (colon <= 0) return fail(400, 'malformed header line');
    const name = line.slice(0, colon);
    if (!isToken(name)) return fail(400, 'malformed header name');
    const value = line.slice(colon + 1).trim();
    for (let j = 0; j < value.length; j++) {
      const c = value.charCodeAt(j);
      // CR, LF and NUL (header injection), other controls except HTAB, DEL.
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) return fail(400, 'invalid byte in header value');
    }
    const key = name.toLowerCase();
    const previous = headers[key];
    if (previous === undefined) {
      headers[key] = value;
    } else if (SINGLETON_HEADERS.has(key)) {
      return fail(400, `duplicate ${key} header`);
    } else {
      headers[key] = previous + (key === 'cookie' ? '; ' : ', ') + value;
    }
  }

  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  return { ok: true, head: { method, url, path, version, headers, length: headEnd } };
}

const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * The token of an `Authorization: Bearer <token>` header, or null. The
 * scheme is case-insensitive (RFC 9110 §11.1); the token is what the caller
 * compares or verifies.
 */
export function bearerToken(authorization: string | undefined): string | null {
  if (authorization === undefined) return null;
  const match = BEARER.exec(authorization);
  return match === null ? null : match[1]!;
}

/** `true` when a comma-separated header value lists `token` (case-insensitive). */
export function headerHasToken(value: string | undefined, token: string): boolean {
  if (value === undefined) return false;
  for (const part of value.split(',')) {
    if (part.trim().toLowerCase() === token) return true;
  }
  return false;
}

const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  202: 'Accepted',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  411: 'Length Required',
  413: 'Content Too Large',
  426: 'Upgrade Required',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported',
};

/**
 * A complete HTTP/1.1 response with a text body and `Connection: close`
 * (`keep-alive` only for the server API's connections, api-connection.ts).
 * Used for every answer that is not a WebSocket upgrade.
 */
export function httpResponse(
  status: number,
  body: string,
  headers: Record<string, string | number> = {},
  contentType = 'text/plain; charset=utf-8',
  keepAlive = false,
): string {
  let out = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Unknown'}\r\n`;
  for (const name of Object.keys(headers)) out += `${name}: ${headers[name]}\r\n`;
  // A 204 has no content, and may not say how long it is (RFC 9110 §8.6).
  if (status === 204) return `${out}Connection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n`;
  out += `Content-Type: ${contentType}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n`;
  return out + body;
}
