/** Calls to the server API (/api/v1/) of a test server, and desktops placed on a chosen shard. */
import type { TokenClaims } from '../../src/auth/token.ts';
import { shardFor } from '../../src/primary/router.ts';
import { join, type TestClient } from './client.ts';
import { desktop, type Scope } from './scope.ts';
import type { ServerProcess } from './server.ts';
import { token } from './tokens.ts';

/** The API key test servers are started with. */
export const API_KEY = 'api-key-for-tests-0123456789abcdef';

export interface ApiResponse {
  status: number;
  headers: Headers;
  /** The parsed JSON body. */
  body: any;
}

export interface CallOptions {
  /** The bearer key (default {@link API_KEY}; null = no Authorization header). */
  key?: string | null;
  /** The body as sent, when it is not an object to serialize. */
  raw?: string;
}

/** `method` `path` (under /api/v1/) with `body` serialized as JSON, through fetch's keep-alive pool. */
export async function api(server: ServerProcess, method: string, path: string, body?: unknown, options: CallOptions = {}): Promise<ApiResponse> {
  const key = options.key === undefined ? API_KEY : options.key;
  const headers: Record<string, string> = {};
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const text = options.raw ?? (body === undefined ? undefined : JSON.stringify(body));
  if (text !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`http://127.0.0.1:${server.port}/api/v1/${path}`, { method, headers, ...(text === undefined ? {} : { body: text }) });
  const received = await res.text();
  return { status: res.status, headers: res.headers, body: received === '' ? undefined : JSON.parse(received) };
}

/** A fresh desktop id whose room lives on `shard` of `workers`. */
export function desktopOnShard(shard: number, workers = 2, prefix = 'api'): string {
  for (;;) {
    const id = desktop(`${prefix}${shard}`);
    if (shardFor(id, workers) === shard) return id;
  }
}

export interface Member {
  client: TestClient;
  sessionId: string;
  userId: string;
  desktopId: string;
}

/**
 * Open a session for each of `people` on `desktopId`, in order; members
 * already there read each newcomer's `session_joined`, so every inbox is
 * empty when it resolves.
 */
export async function fill(t: Scope, server: ServerProcess, desktopId: string, people: TokenClaims[]): Promise<Member[]> {
  const members: Member[] = [];
  for (const claims of people) {
    const { client, joined } = await join(t, server.wsUrl(desktopId), { token: token(claims) });
    for (const earlier of members) await earlier.client.expect('session_joined');
    members.push({ client, sessionId: joined.sessionId, userId: claims.userId, desktopId });
  }
  return members;
}
