/**
 * A real HTTP server standing in for the Next.js permission API. Each test
 * decides the answer per request and can read what was asked.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Scope } from './scope.ts';

export interface PermissionRequest {
  method: string;
  /** Raw path and query as received. */
  url: string;
  /** Which endpoint: a desktop's or a production table's permission, or the multiplexed route's authorize. */
  endpoint: 'desktop' | 'production-table' | 'authorize' | 'other';
  /** The desktop id, or the table id of a production-table call ('' for authorize). */
  desktopId: string;
  /** `?userId=`, or for authorize the `userId` claim of the bearer JWT. */
  userId: string | null;
  cookie: string | undefined;
  /** authorize: `?topic=`, decoded. */
  topic: string | null;
  /** The Authorization header as received. */
  authorization: string | undefined;
}

/** Decides the response; return `'hang'` to never answer. */
export type PermissionHandler = (req: PermissionRequest, res: ServerResponse) => void | 'hang';

export interface PermissionStub {
  base: string;
  requests: PermissionRequest[];
  /** Replace the handler (default: editor for everyone). */
  handle(handler: PermissionHandler): void;
}

const PATH = /^\/api\/desktop\/([^/]+)\/permission$/;
const TABLE_PATH = /^\/api\/production-table\/([^/]+)\/permission$/;
const AUTHORIZE_PATH = '/api/realtime/authorize';

/** The claims of a `Bearer <jwt>` header, unverified (the test checks the signature itself when it matters). */
export function bearerClaims(authorization: string | undefined): Record<string, unknown> | null {
  const token = authorization?.startsWith('Bearer ') ? authorization.slice(7) : null;
  const body = token?.split('.')[1];
  if (body === undefined) return null;
  try {
    return JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return null;
  }
}

/** Answer `{"permission": role}` with 200. */
export function grant(role: string): PermissionHandler {
  return (_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ permission: role }));
  };
}

/** Roles by userId; unknown users get 403. */
export function rolesByUser(roles: Record<string, string>): PermissionHandler {
  return (req, res) => {
    const role = req.userId === null ? undefined : roles[req.userId];
    if (role === undefined) {
      res.statusCode = 403;
      res.end('{"error":"forbidden"}');
      return;
    }
    grant(role)(req, res);
  };
}

export async function startPermissionStub(t: Scope, handler: PermissionHandler = grant('editor')): Promise<PermissionStub> {
  let current = handler;
  const requests: PermissionRequest[] = [];
  const hanging = new Set<ServerResponse>();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://stub');
    const desktop = PATH.exec(url.pathname);
    const table = TABLE_PATH.exec(url.pathname);
    const authorize = url.pathname === AUTHORIZE_PATH;
    const match = desktop ?? table;
    const claimed = authorize ? bearerClaims(req.headers.authorization)?.userId : undefined;
    const record: PermissionRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      endpoint: desktop ? 'desktop' : table ? 'production-table' : authorize ? 'authorize' : 'other',
      desktopId: match ? decodeURIComponent(match[1]!) : '',
      userId: authorize ? (typeof claimed === 'string' ? claimed : null) : url.searchParams.get('userId'),
      cookie: req.headers.cookie,
      topic: authorize ? url.searchParams.get('topic') : null,
      authorization: req.headers.authorization,
    };
    requests.push(record);
    if (!match && !authorize) {
      res.statusCode = 404;
      res.end();
      return;
    }
    if (current(record, res) === 'hang') hanging.add(res);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const res of hanging) res.destroy();
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as AddressInfo;
  return { base: `http://127.0.0.1:${port}`, requests, handle: (h) => (current = h) };
}
