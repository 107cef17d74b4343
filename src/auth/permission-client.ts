/**
 * Asks the Next.js app what a user may do on a desktop:
 * `GET {base}/api/desktop/{desktopId}/permission?userId={userId}` (on a
 * production table: `/api/production-table/{tableId}/permission`), forwarding
 * the handshake's cookies. One keep-alive `undici` pool per shard, bounded by
 * `--permission-concurrency`, each request bounded by `--permission-timeout`.
 */
import { Pool } from 'undici';
import { PermissionError, PermissionErrorCode } from '../errors.ts';
import { PERMISSIONS, type Permission } from '../protocol/events.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { TopicNamespace } from '../protocol/topics.ts';
import type { Identity } from './token.ts';

/** Decides the permission of a session at handshake time. */
export interface PermissionSource {
  /** @throws {PermissionError} when the session must not be admitted. */
  check(desktopId: string, identity: Identity, cookieHeader: string | undefined): Promise<Permission>;
  close(): Promise<void>;
}

/** The app's permission endpoint for a legacy room key: `/api/desktop/{id}/permission`, or `/api/production-table/{id}/permission` for `production-table:{id}`. */
export function permissionPath(roomKey: string): string {
  const table = `${TopicNamespace.PRODUCTION_TABLE}:`;
  if (roomKey.startsWith(table)) return `/api/production-table/${encodeURIComponent(roomKey.slice(table.length))}/permission`;
  return `/api/desktop/${encodeURIComponent(roomKey)}/permission`;
}

/** Largest permission response body read. */
export const MAX_PERMISSION_BODY = 16 * 1024;

export interface HttpPermissionOptions {
  /** Base URL, no trailing slash (validated by config). */
  base: string;
  timeoutMs: number;
  concurrency: number;
  /** Lookups that may wait for one of the `concurrency` connections; past it they fail fast with BUSY. */
  queue: number;
  metrics: MetricsSlot;
}

const ERROR_METRIC: Record<string, number> = {
  [PermissionErrorCode.UNAVAILABLE]: Metric.PERMISSION_ERRORS_UNAVAILABLE,
  [PermissionErrorCode.DENIED]: Metric.PERMISSION_ERRORS_DENIED,
  [PermissionErrorCode.BAD_RESPONSE]: Metric.PERMISSION_ERRORS_BAD_RESPONSE,
};

export class HttpPermissionSource implements PermissionSource {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly timeoutMs: number;
  private readonly metrics: MetricsSlot;
  /** Requests sent or waiting for a connection; undici's own queue has no bound. */
  private pending = 0;
  private readonly maxPending: number;

  constructor(options: HttpPermissionOptions) {
    this.metrics = options.metrics;
    this.maxPending = options.concurrency + options.queue;
    const url = new URL(options.base);
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.timeoutMs = options.timeoutMs;
    this.pool = new Pool(url.origin, {
      connections: options.concurrency,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connectTimeout: options.timeoutMs,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
  }

  async check(desktopId: string, identity: Identity, cookieHeader: string | undefined): Promise<Permission> {
    if (this.pending >= this.maxPending) {
      this.metrics.add(Metric.PERMISSION_QUEUE_FULL);
      throw new PermissionError(PermissionErrorCode.BUSY, `${this.pending} permission lookups are already waiting`);
    }
    this.pending++;
    const started = performance.now();
    try {
      return await this.ask(desktopId, identity, cookieHeader);
    } catch (err) {
      const metric = err instanceof PermissionError ? ERROR_METRIC[err.code] : undefined;
      if (metric !== undefined) this.metrics.add(metric);
      throw err;
    } finally {
      this.pending--;
      this.metrics.permissionLatency((performance.now() - started) / 1000);
    }
  }

  private async ask(desktopId: string, identity: Identity, cookieHeader: string | undefined): Promise<Permission> {
    const path = `${this.basePath}${permissionPath(desktopId)}?userId=${encodeURIComponent(identity.userId)}`;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (cookieHeader !== undefined) headers.cookie = cookieHeader;
    let text: string;
    let status: number;
    try {
      const res = await this.pool.request({ method: 'GET', path, headers, signal: AbortSignal.timeout(this.timeoutMs) });
      status = res.statusCode;
      if (status !== 200) {
        await res.body.dump();
        const code = status >= 500 ? PermissionErrorCode.UNAVAILABLE : PermissionErrorCode.DENIED;
        throw new PermissionError(code, `permission API answered ${status}`, { status });
      }
      text = await readLimited(
        res.body,
        MAX_PERMISSION_BODY,
        () => new PermissionError(PermissionErrorCode.BAD_RESPONSE, `permission API response larger than ${MAX_PERMISSION_BODY} bytes`),
      );
    } catch (err) {
      if (err instanceof PermissionError) throw err;
      throw new PermissionError(PermissionErrorCode.UNAVAILABLE, `permission API unreachable: ${(err as Error).message}`, { cause: err });
    }
    let permission: unknown;
    try {
      permission = (JSON.parse(text) as { permission?: unknown } | null)?.permission;
    } catch {
      throw new PermissionError(PermissionErrorCode.BAD_RESPONSE, 'permission API answered with invalid JSON');
    }
    if (typeof permission !== 'string' || !PERMISSIONS.has(permission)) {
      throw new PermissionError(PermissionErrorCode.BAD_RESPONSE, `permission API answered an unknown permission`);
    }
    return permission as Permission;
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/**
 * An HTTP answer's body as text, read only up to `limit` bytes: past it the
 * body is destroyed and `tooLarge()` thrown (the permission API and the
 * authorize endpoint each throw their own typed error).
 */
export async function readLimited(body: AsyncIterable<Uint8Array> & { destroy(): unknown }, limit: number, tooLarge: () => Error): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Most entries a token's `desktops` claim may hold; a larger claim is refused, not searched. */
export const MAX_DESKTOPS_CLAIM_ENTRIES = 1000;

/**
 * No permission API: the token decides (dev mode, and `--permissions-from-token`).
 *
 * - A `desktops` claim, an object from desktop id to role with `"*"` for any
 *   other desktop, gives the role on each desktop; a desktop it does not
 *   name (and no `"*"`) is refused (403).
 * - Otherwise the flat `permission` claim applies to every desktop.
 * - A token with neither gets `fallback`: `editor` in dev mode, nothing (403)
 *   with `--permissions-from-token`.
 *
 * Any role other than editor or viewer is refused.
 */
export class ClaimPermissionSource implements PermissionSource {
  private readonly fallback: Permission | null;

  constructor(fallback: Permission | null = 'editor') {
    this.fallback = fallback;
  }

  async check(desktopId: string, identity: Identity): Promise<Permission> {
    const claim = identity.desktopsClaim !== undefined ? desktopRole(identity.desktopsClaim, desktopId) : (identity.permissionClaim ?? this.fallback);
    if (claim === null) throw new PermissionError(PermissionErrorCode.DENIED, 'the token grants no permission on this desktop');
    if (!PERMISSIONS.has(claim)) throw new PermissionError(PermissionErrorCode.DENIED, `unknown permission claim ${JSON.stringify(claim.slice(0, 32))}`);
    return claim as Permission;
  }

  async close(): Promise<void> {}
}

/** The role a `desktops` claim gives on `desktopId` (null: none); a claim of the wrong shape gives none. */
function desktopRole(claim: unknown, desktopId: string): string | null {
  if (typeof claim !== 'object' || claim === null || Array.isArray(claim)) return null;
  const entries = claim as Record<string, unknown>;
  // Own properties only: `__proto__` or `toString` as a desktop id must not find Object.prototype's.
  if (Object.keys(entries).length > MAX_DESKTOPS_CLAIM_ENTRIES) return null;
  const role = Object.hasOwn(entries, desktopId) ? entries[desktopId] : Object.hasOwn(entries, '*') ? entries['*'] : undefined;
  return typeof role === 'string' ? role : null;
}
