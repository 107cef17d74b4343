/**
 * The demo desktop, served by the primary in dev mode only: the page
 * (src/demo/index.html), the built client SDK (dist/) under /demo/client/,
 * and /demo/token, which mints a dev token and sets it as the
 * moodio_access_token cookie so that the page never sees a secret and its
 * WebSocket handshake authenticates the way production browsers do.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { signAccessToken } from '../auth/token.ts';
import { ACCESS_TOKEN_COOKIE } from '../protocol/events.ts';
import { httpResponse, type RequestHead } from '../protocol/http.ts';

const ASSETS: Record<string, URL> = {
  '/demo/client/client/index.js': new URL('../../dist/moodio-rt-client/client/index.js', import.meta.url),
  '/demo/client/client/backoff.js': new URL('../../dist/moodio-rt-client/client/backoff.js', import.meta.url),
  '/demo/client/protocol/events.js': new URL('../../dist/moodio-rt-client/protocol/events.js', import.meta.url),
};
const PAGE = new URL('../demo/index.html', import.meta.url);

/** Answer a /demo request; `secret` signs the dev tokens. */
export function demoResponse(head: RequestHead, secret: string): string {
  if (head.path === '/demo' || head.path === '/demo/') {
    return httpResponse(200, readFileSync(PAGE, 'utf8'), { 'Cache-Control': 'no-store' }, 'text/html; charset=utf-8');
  }
  if (head.path === '/demo/token') {
    const query = new URLSearchParams(head.url.slice(head.url.indexOf('?') + 1 || head.url.length));
    const firstName = (query.get('name') ?? 'Guest').slice(0, 40);
    const permission = query.get('as') === 'viewer' ? 'viewer' : 'editor';
    const userId = `demo-${randomUUID()}`;
    const token = signAccessToken({ userId, firstName, email: `${firstName.toLowerCase().replace(/\W+/g, '')}@demo.invalid`, permission }, secret, 12 * 3600);
    const body = JSON.stringify({ userId, firstName, permission });
    return httpResponse(200, body, { 'Set-Cookie': `${ACCESS_TOKEN_COOKIE}=${token}; Path=/; HttpOnly; SameSite=Lax`, 'Cache-Control': 'no-store' }, 'application/json');
  }
  const asset = ASSETS[head.path];
  if (asset) {
    try {
      return httpResponse(200, readFileSync(asset, 'utf8'), { 'Cache-Control': 'no-store' }, 'text/javascript; charset=utf-8');
    } catch {
      return httpResponse(503, 'the client SDK is not built: run npm run build\n');
    }
  }
  return httpResponse(404, 'not found\n');
}
