/**
 * The URL space of the server, shared by the primary (routing) and the
 * shards (which re-derive the desktop id from the request they are handed).
 */
import { DESKTOP_ID_PATTERN, WS_PATH_PREFIX } from './events.ts';
import { CONNECTION_PATH, PRODUCTION_TABLE_PATH_PREFIX, TopicNamespace } from './topics.ts';

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

/** A WebSocket route: a legacy room (desktop or production table, by room key), the multiplexed connection, or neither. */
export type WsPath = { kind: 'room'; roomKey: string } | { kind: 'connection' } | { kind: 'bad-id' } | { kind: 'other' };

/**
 * Classify a WebSocket request path: `/ws/desktop/{id}` (room key `id`),
 * `/ws/production-table/{id}` (room key `production-table:{id}`), or
 * `/ws/connection`.
 */
export function parseWsPath(path: string): WsPath {
  if (path === CONNECTION_PATH) return { kind: 'connection' };
  const desktop = parseDesktopPath(path);
  if (desktop.kind === 'desktop') return { kind: 'room', roomKey: desktop.desktopId };
  if (desktop.kind === 'bad-id') return desktop;
  if (!path.startsWith(PRODUCTION_TABLE_PATH_PREFIX)) return { kind: 'other' };
  const id = path.slice(PRODUCTION_TABLE_PATH_PREFIX.length);
  if (id.includes('/')) return { kind: 'other' };
  return DESKTOP_ID_PATTERN.test(id) ? { kind: 'room', roomKey: `${TopicNamespace.PRODUCTION_TABLE}:${id}` } : { kind: 'bad-id' };
}
