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
  desktopId: string;
  userId: string | null;
  cookie: string | undefined;
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
    const match = PATH.exec(url.pathname);
    const record: PermissionRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      desktopId: match ? decodeURIComponent(match[1]!) : '',
      userId: url.searchParams.get('userId'),
      cookie: req.headers.cookie,
    };
    requests.push(record);
    if (!match) {
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
