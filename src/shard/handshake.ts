/**
 * Admission of a handed-over connection: parse its head, authenticate the
 * token, ask for the permission, then either answer an HTTP error or upgrade
 * with `ws`. Every rejection is a complete HTTP response naming the shard.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import type { WebSocket, WebSocketServer } from 'ws';
import { extractCredentials } from '../auth/credentials.ts';
import type { PermissionSource } from '../auth/permission-client.ts';
import { secretKey, verifyAccessToken, type Identity } from '../auth/token.ts';
import type { KeyObject } from 'node:crypto';
import { AuthError, AuthErrorCode, PermissionError, PermissionErrorCode, type RelayError } from '../errors.ts';
import { LogBudget, REJECTION_LOG_PER_SECOND, type Logger } from '../log.ts';
import { SHARD_HEADER, type Permission } from '../protocol/events.ts';
import { parseRequestHead } from '../protocol/http.ts';
import { endWithResponse } from '../linger.ts';
import { rejectionResponse, Rejections, type Rejection, type RejectionDetails } from '../protocol/rejections.ts';
import type { ConnectionMessage } from '../protocol/messages.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { parseWsPath } from '../protocol/paths.ts';
import { parseResumeQuery, type ResumePosition } from '../protocol/resume.ts';
import { adoptSocket } from './adopt-socket.ts';
import type { UserAdmission } from './user-admission.ts';

export interface Admitted {
  ws: WebSocket;
  socket: Socket;
  /** The room key of a legacy route (a desktop id, or `production-table:{id}`); '' for a multiplexed connection. */
  desktopId: string;
  /** `/ws/connection`: no room, no permission of its own (each topic is authorized on subscribe). */
  multiplexed: boolean;
  identity: Identity;
  permission: Permission;
  remoteAddress: string;
  /** The handshake's Cookie header, which a permission recheck forwards again. */
  cookie: string | undefined;
  /** A legacy route's `?epoch=…&offset=…` (the primary refused bad ones): where its replay starts. */
  resume: ResumePosition | undefined;
}

export interface HandshakeOptions {
  shardId: number;
  jwtSecret: string;
  permissions: PermissionSource;
  wss: WebSocketServer;
  /** The multiplexed route's server (its own message size limit); `wss` when absent. */
  connectionWss?: WebSocketServer;
  log: Logger;
  metrics: MetricsSlot;
  /** False once the shard drains: new connections get 503. */
  accepting: () => boolean;
  /** Connection limits for an authenticated user: null = admit. */
  admit: (identity: Identity, desktopId: string) => Rejection | null;
  /** Per-user connect rate and handshakes in flight (429). */
  users: UserAdmission;
}

function onSocketError(): void {}

/**
 * The refusal for each failure: 401 for auth, 403 when the permission API
 * refused or answered nonsense, 503 when it could not answer (unreachable,
 * timed out, 5xx) or too many lookups wait for it, so that clients retry
 * instead of concluding they lost access.
 */
function rejectionOf(err: AuthError | PermissionError): Rejection {
  if (err instanceof AuthError) return Rejections.UNAUTHORIZED;
  if (err.code === PermissionErrorCode.UNAVAILABLE) return Rejections.PERMISSION_UNAVAILABLE;
  if (err.code === PermissionErrorCode.BUSY) return Rejections.PERMISSION_BUSY;
  return Rejections.FORBIDDEN;
}

export class Handshake {
  private readonly options: HandshakeOptions;
  private readonly key: KeyObject;
  /** Refusals are caused at will by peers: logged at a bounded rate. */
  private readonly rejections = new LogBudget(REJECTION_LOG_PER_SECOND);

  constructor(options: HandshakeOptions) {
    this.options = options;
    this.key = secretKey(options.jwtSecret);
  }

  /** Take over a connection from the primary; calls `onOpen` once upgraded. */
  async admit(message: ConnectionMessage, onOpen: (admitted: Admitted) => void): Promise<void> {
    const { remoteAddress } = message;
    const socket = adoptSocket(message.socket);
    socket.on('error', onSocketError);
    const bytes = Buffer.from(message.bytes.buffer, message.bytes.byteOffset, message.bytes.byteLength);
    const parsed = parseRequestHead(bytes, message.headLength);
    const path = parsed.ok ? parseWsPath(parsed.head.path) : null;
    if (!parsed.ok || path === null || (path.kind !== 'room' && path.kind !== 'connection')) {
      // The primary validated this head already; reaching here is a bug.
      this.reject(socket, Rejections.MALFORMED_HEAD, remoteAddress);
      return;
    }
    const { head } = parsed;
    const multiplexed = path.kind === 'connection';
    const desktopId = path.kind === 'room' ? path.roomKey : '';
    if (!this.options.accepting()) {
      this.reject(socket, Rejections.SHUTTING_DOWN, remoteAddress, desktopId);
      return;
    }

    let identity: Identity;
    let permission: Permission;
    try {
      const credentials = extractCredentials(head.headers);
      if (credentials === null) throw new AuthError(AuthErrorCode.MISSING_TOKEN, 'no access token in Sec-WebSocket-Protocol, cookie or Authorization header');
      identity = verifyAccessToken(credentials.token, this.key);
      // A user already at a connection limit must not cost the app a permission request.
      if (this.refuseOverLimit(socket, identity, remoteAddress, desktopId)) return;
      const userId = identity.userId;
      const refusal = this.options.users.enter(userId, Date.now());
      if (refusal !== null) {
        this.options.metrics.add(refusal.limit === 'connect_rate' ? Metric.REFUSED_CONNECT_RATE : Metric.REFUSED_HANDSHAKES_IN_FLIGHT);
        const rejection = refusal.limit === 'connect_rate' ? Rejections.TOO_MANY_CONNECTS_FOR_USER : Rejections.TOO_MANY_HANDSHAKES_FOR_USER;
        this.reject(socket, rejection, remoteAddress, desktopId, { retryAfterS: refusal.retryAfterSeconds });
        return;
      }
      try {
        // A multiplexed connection has no room: each of its topics is authorized on subscribe.
        permission = multiplexed ? 'viewer' : await this.options.permissions.check(desktopId, identity, head.headers.cookie);
      } finally {
        this.options.users.leave(userId);
      }
    } catch (err) {
      if (err instanceof AuthError || err instanceof PermissionError) {
        this.reject(socket, rejectionOf(err), remoteAddress, desktopId, {}, err);
        return;
      }
      this.options.log.error('handshake_failed', { desktopId, remote: remoteAddress, err });
      this.reject(socket, Rejections.INTERNAL_ERROR, remoteAddress, desktopId);
      return;
    }
    if (socket.destroyed) return;
    if (!this.options.accepting()) {
      this.reject(socket, Rejections.SHUTTING_DOWN, remoteAddress, desktopId);
      return;
    }
    // Again after the await: sessions may have opened meanwhile.
    if (this.refuseOverLimit(socket, identity, remoteAddress, desktopId)) return;

    // `ws` reads method, url and headers; nothing else of an IncomingMessage.
    const req = { method: head.method, url: head.url, headers: head.headers, socket } as unknown as IncomingMessage;
    const early = bytes.subarray(message.headLength);
    const wss = multiplexed ? (this.options.connectionWss ?? this.options.wss) : this.options.wss;
    wss.handleUpgrade(req, socket as Duplex, early, (ws) => {
      socket.off('error', onSocketError);
      const query = multiplexed ? null : parseResumeQuery(head.url);
      const resume = query?.kind === 'resume' ? query.position : undefined;
      onOpen({ ws, socket, desktopId, multiplexed, identity, permission, remoteAddress, cookie: head.headers.cookie, resume });
    });
  }

  /** Answer 429/503 when `identity` is over a connection limit; true when refused. */
  private refuseOverLimit(socket: Socket, identity: Identity, remote: string, desktopId: string): boolean {
    const refusal = this.options.admit(identity, desktopId);
    if (refusal === null) return false;
    this.reject(socket, refusal, remote, desktopId);
    return true;
  }

  /** Answer a refusal from the table; a typed error's code and message are logged with it, never sent. */
  private reject(socket: Socket, rejection: Rejection, remote: string, desktopId?: string, details: RejectionDetails = {}, err?: RelayError): void {
    const { status, reason } = rejection;
    this.options.metrics.handshake(status);
    const fields = this.rejections.take({
      status,
      reason,
      ...(err ? { code: err.code, detail: err.message } : {}),
      remote,
      ...(desktopId ? { desktopId } : {}),
    });
    if (fields !== null) this.options.log.info('handshake_rejected', fields);
    endWithResponse(socket, rejectionResponse(rejection, { ...details, headers: { [SHARD_HEADER]: String(this.options.shardId), ...details.headers } }));
  }
}
