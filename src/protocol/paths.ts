/**
 * The URL space of the server, shared by the primary (routing) and the
 * shards (which re-derive the desktop id from the request they are handed).
 */
import { DESKTOP_ID_PATTERN, WS_PATH_PREFIX } from './events.ts';

export type DesktopPath =
  | { kind: 'desktop'; desktopId: string }
  /** Under `/ws/desktop/` but the id is not `^[A-Za-z0-9_-]{1,128}$`. */
  | { kind: 'bad-id' }
  /** Not a desktop path at all. */
  | { kind: 'other' };

/** Classify a request path (no query string). */
export function parseDesktopPath(path: string): DesktopPath {
  if (!path.startsWith(WS_PATH_PREFIX)) return { kind: 'other' };
  const id = path.slice(WS_PATH_PREFIX.length);
  if (id.includes('/')) return { kind: 'other' };
  return DESKTOP_ID_PATTERN.test(id) ? { kind: 'desktop', desktopId: id } : { kind: 'bad-id' };
}

export const HEALTH_PATH = '/health';
export const METRICS_PATH = '/metrics';
export const STATS_PATH = '/stats';
/** The region probe (issue 20): `{"status":"ok","region":…}`, readable cross-origin. */
export const CHECK_PATH = '/check';
/** Unauthenticated WebSocket echo for latency probes (issue 20; shard/ping-route.ts). */
export const PING_PATH = '/ws/ping';
