/**
 * Benchmark baseline, not a product: the Moodio desktop protocol served the
 * naive way, on one thread — `ws` attached to an http.Server, every broadcast
 * scanning every session of the process and calling `ws.send` per recipient
 * (one JSON.stringify and one frame per recipient). Auth is the same HS256
 * token; the permission comes from the token's claim, as in `serve --dev`.
 *
 *   JWT_ACCESS_SECRET=… node bench/naive-server.ts [--port N]
 * Prints `{"event":"listening","port":N}` on stdout once listening.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseCookie } from 'cookie';
import { WebSocketServer, type WebSocket } from 'ws';
import { verifyAccessToken } from '../src/auth/token.ts';
import { DEFAULT_MUTATION_TYPES } from '../src/protocol/events.ts';

const MUTATION_TYPES: ReadonlySet<string> = new Set(DEFAULT_MUTATION_TYPES);

interface NaiveSession {
  ws: WebSocket;
  room: string;
  info: { sessionId: string; userId: string; firstName: string; email: string; permission: string };
}

const secret = process.env.JWT_ACCESS_SECRET ?? '';
const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
const sessions = new Set<NaiveSession>();
const server = createServer((_req, res) => {
  res.statusCode = 404;
  res.end();
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 4096 });

wss.on('connection', (ws, req) => {
  const room = /^\/ws\/desktop\/([A-Za-z0-9_-]{1,128})$/.exec(req.url ?? '')?.[1];
  const token = parseCookie(req.headers.cookie ?? '').moodio_access_token;
  let identity: ReturnType<typeof verifyAccessToken>;
  try {
    if (!room || !token) throw new Error('no room or token');
    identity = verifyAccessToken(token, secret);
  } catch {
    ws.close(1008);
    return;
  }
  const self: NaiveSession = {
    ws,
    room,
    info: {
      sessionId: `session_${randomUUID()}`,
      userId: identity.userId,
      firstName: identity.firstName,
      email: identity.email,
      permission: identity.permissionClaim ?? 'editor',
    },
  };
  const others = [...sessions].filter((s) => s.room === room);
  ws.send(JSON.stringify({ type: 'room_joined', sessionId: self.info.sessionId, sessions: others.map((s) => s.info) }));
  sessions.add(self);
  const stamp = (type: string, payload: unknown) => ({ type, ...self.info, permission: undefined, timestamp: Date.now(), payload });
  const broadcast = (event: object) => {
    for (const s of sessions) if (s !== self && s.room === room) s.ws.send(JSON.stringify(event));
  };
  broadcast(stamp('session_joined', self.info));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg: { type?: unknown; payload?: unknown };
    try {
      msg = JSON.parse(data.toString());
    } catch {
      return;
    }
    if (typeof msg?.type !== 'string') return;
    if (self.info.permission === 'viewer' && MUTATION_TYPES.has(msg.type)) return;
    broadcast(stamp(msg.type, msg.payload));
  });
  ws.on('close', () => {
    sessions.delete(self);
    broadcast(stamp('session_left', self.info));
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ level: 'info', event: 'listening', worker: 'naive', port: (server.address() as AddressInfo).port }) + '\n');
});
process.on('SIGTERM', () => {
  for (const s of sessions) s.ws.terminate();
  server.close(() => process.exit(0));
});
