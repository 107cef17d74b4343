/**
 * The demo desktop, served by the primary in dev mode only: the page
 * (src/demo/index.html), its icon, the built client SDK
 * (dist/moodio-rt-client/) under /demo/client/, and /demo/token, which mints
 * a dev token for a name.
 *
 * The token goes back in the body, not in a cookie: a cookie is shared by
 * every window of the browser, so after a reconnect each window would have
 * come back as the last name minted. The page keeps its token for itself
 * (sessionStorage) and offers it as the `moodio.token.<jwt>` WebSocket
 * protocol, so each window keeps its own identity.
 */
import { readFileSync } from 'node:fs';
import { signAccessToken } from '../auth/token.ts';
import { httpResponse, type RequestHead } from '../protocol/http.ts';

const SDK = new URL('../../dist/moodio-rt-client/', import.meta.url);
/** The SDK's modules the page loads (index.js and what it imports), by their path under the built package. */
const SDK_FILES = [
  'client/index.js',
  'client/backoff.js',
  'client/errors.js',
  'client/handlers.js',
  'client/link.js',
  'client/presence.js',
  'client/resume.js',
  'client/send-queue.js',
  'client/token.js',
  'client/topic.js',
  'client/topic-types.js',
  'client/topics.js',
  'client/urls.js',
  'protocol/events.js',
  'protocol/topics.js',
];
const ASSETS: Record<string, URL> = Object.fromEntries(SDK_FILES.map((file) => [`/demo/client/${file}`, new URL(file, SDK)]));
const PAGE = new URL('../demo/index.html', import.meta.url);
/** A card of the demo, so that no request for an icon ends in a 404. */
const FAVICON =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect x="3" y="7" width="18" height="13" rx="3" fill="#e4572e"/><rect x="11" y="13" width="18" height="13" rx="3" fill="#17bebb"/></svg>';
/** Lifetime of a demo token: a working day, so that a window left open keeps working. */
const DEMO_TOKEN_TTL_SECONDS = 12 * 3600;

/** The demo user of a name: the same name is the same user (and colour) in every window and after a reload. */
function demoUserId(firstName: string): string {
  const slug = firstName
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return `demo-${slug || 'guest'}`;
}

/** Answer a /demo request; `secret` signs the dev tokens. */
export function demoResponse(head: RequestHead, secret: string): string {
  if (head.path === '/demo' || head.path === '/demo/') {
    return httpResponse(200, readFileSync(PAGE, 'utf8'), { 'Cache-Control': 'no-store' }, 'text/html; charset=utf-8');
  }
  if (head.path === '/demo/favicon.svg') {
    return httpResponse(200, FAVICON, { 'Cache-Control': 'max-age=86400' }, 'image/svg+xml');
  }
  if (head.path === '/demo/token') {
    const query = new URLSearchParams(head.url.slice(head.url.indexOf('?') + 1 || head.url.length));
    const firstName = (query.get('name') ?? 'Guest').slice(0, 40);
    const permission = query.get('as') === 'viewer' ? 'viewer' : 'editor';
    const userId = demoUserId(firstName);
    const token = signAccessToken({ userId, firstName, email: `${userId.slice('demo-'.length)}@demo.invalid`, permission }, secret, DEMO_TOKEN_TTL_SECONDS);
    return httpResponse(200, JSON.stringify({ token, userId, firstName, permission }), { 'Cache-Control': 'no-store' }, 'application/json');
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
