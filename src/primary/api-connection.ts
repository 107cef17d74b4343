/**
 * One HTTP/1.1 connection of the server API. The primary reads a
 * connection's first head from the descriptor like any other (head-reader.ts);
 * once the router sees `/api/v1/`, the socket will never be handed to a
 * shard, so from then on it is read the ordinary way: the rest of the body,
 * then, with keep-alive, the next requests. An app calling the API through a
 * keep-alive pool (undici, fetch) then pays one TCP handshake per
 * connection, not per call.
 *
 * What a connection may make the primary hold is bounded: one request at a
 * time (pipelined bytes wait unread), a head of at most `--max-head-size`, a
 * body of at most 64 KiB declared up front with `Content-Length` (chunked
 * bodies are refused, 411), a whole request within `--handshake-timeout` of
 * its first byte, and an idle keep-alive connection for
 * {@link KEEP_ALIVE_IDLE_MS}. The number of connections is api-server.ts's.
 */
import type { Socket } from 'node:net';
import { API_PREFIX, ApiRefusals, MAX_API_BODY_BYTES, type ApiRefusal } from '../protocol/api.ts';
import { findHeadEnd, headerHasToken, httpResponse, parseRequestHead, type RequestHead } from '../protocol/http.ts';
import { endWithResponse } from '../linger.ts';

/** An idle keep-alive connection is closed after this long. */
export const KEEP_ALIVE_IDLE_MS = 5000;

const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';
const JSON_TYPE = 'application/json';
const EMPTY = Buffer.alloc(0);

/** An answer: status, JSON body, extra headers. */
export interface ApiAnswer {
  status: number;
  body: string;
  headers?: Record<string, string>;
}

/** The `{"code","message"}` answer of a refusal, with `Retry-After` when it has one. */
export function refusalAnswer(refusal: ApiRefusal, message: string, headers: Record<string, string> = {}, retryAfterS = refusal.retryAfterS): ApiAnswer {
  const all = retryAfterS === undefined ? headers : { ...headers, 'Retry-After': String(retryAfterS) };
  return { status: refusal.status, body: JSON.stringify({ code: refusal.code, message }), headers: all };
}

/** What a connection asks of the API server. */
export interface ApiHandler {
  /**
   * Decide on a request from its head alone (key, endpoint, limits): an
   * answer refuses it, and the connection closes after it, since its body
   * is not read; null reads the body and calls {@link respond}.
   */
  screen(head: RequestHead): ApiAnswer | null;
  respond(head: RequestHead, body: Buffer): Promise<ApiAnswer>;
  /** May the connection stay open after an answer (not shutting down)? */
  keepAlive(): boolean;
  /** An answer of `status` is being written (for metrics). */
  answered(status: number): void;
  /** A request outside /api/v1/ on a kept-alive connection: the connection is no longer the API's; answer it as any other. */
  elsewhere(socket: Socket, head: RequestHead): void;
  /** The connection is gone. */
  closed(connection: ApiConnection): void;
}

export interface ApiConnectionOptions {
  maxHeadBytes: number;
  /** From a request's first byte to its last. */
  requestTimeoutMs: number;
}

type State = 'head' | 'body' | 'busy' | 'closed';

export class ApiConnection {
  private readonly socket: Socket;
  private readonly handler: ApiHandler;
  private readonly options: ApiConnectionOptions;
  private state: State = 'head';
  private buffered: Buffer = EMPTY;
  private head: RequestHead | null = null;
  private bodyLength = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly onData = (chunk: Buffer): void => this.read(chunk);
  /** No request underway: between requests of a kept-alive connection. */
  idle = false;

  constructor(socket: Socket, handler: ApiHandler, options: ApiConnectionOptions) {
    this.socket = socket;
    this.handler = handler;
    this.options = options;
  }

  /** Take over the socket with its first request, whose head the primary parsed; `rest` is what followed the head. */
  start(head: RequestHead, rest: Buffer): void {
    this.socket.on('data', this.onData);
    this.socket.once('close', () => this.onClose());
    this.buffered = rest.length === 0 ? EMPTY : rest;
    this.arm(this.options.requestTimeoutMs);
    this.begin(head);
    if (this.state !== 'closed') this.socket.resume();
  }

  /** Close now if idle (shutdown, or room for a newer connection); true when it was. */
  closeIfIdle(): boolean {
    if (!this.idle || this.state === 'closed') return false;
    this.socket.destroy();
    this.onClose();
    return true;
  }

  private arm(ms: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.onTimeout(), ms);
    this.timer.unref();
  }

  private disarm(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private onTimeout(): void {
    this.timer = null;
    if (this.state === 'closed' || this.state === 'busy') return;
    if (this.idle) {
      this.socket.destroy();
      this.onClose();
      return;
    }
    this.answer(refusalAnswer(ApiRefusals.BODY_TIMEOUT, `the request did not arrive within ${this.options.requestTimeoutMs} ms`), true);
  }

  private read(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    if (this.state === 'busy') {
      // Pipelined: read on once the answer is out.
      this.socket.pause();
      return;
    }
    if (this.state === 'body') this.tryBody();
    else this.nextHead();
  }

  private onClose(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.disarm();
    this.buffered = EMPTY;
    this.handler.closed(this);
  }

  /** Parse the next request's head from what was read, if it is all there. */
  private nextHead(): void {
    if (this.buffered.length === 0) return;
    if (this.idle) {
      // A new request's first byte: it has the request deadline from now.
      this.idle = false;
      this.arm(this.options.requestTimeoutMs);
    }
    const end = findHeadEnd(this.buffered);
    if (end === -1) {
      if (this.buffered.length > this.options.maxHeadBytes) this.answer(refusalAnswer(ApiRefusals.HEAD_TOO_LARGE, 'the request head is too large'), true);
      return;
    }
    if (end > this.options.maxHeadBytes) {
      this.answer(refusalAnswer(ApiRefusals.HEAD_TOO_LARGE, 'the request head is too large'), true);
      return;
    }
    const parsed = parseRequestHead(this.buffered, end);
    if (!parsed.ok) {
      this.answer(refusalAnswer(ApiRefusals.BAD_REQUEST, parsed.reason), true);
      return;
    }
    this.buffered = this.buffered.subarray(end);
    this.begin(parsed.head);
  }

  private begin(head: RequestHead): void {
    this.head = head;
    if (!head.path.startsWith(API_PREFIX)) {
      this.detach();
      this.handler.elsewhere(this.socket, head);
      return;
    }
    if (head.headers['transfer-encoding'] !== undefined) {
      this.answer(refusalAnswer(ApiRefusals.LENGTH_REQUIRED, 'send the body with Content-Length'), true);
      return;
    }
    const declared = head.headers['content-length'];
    if (declared !== undefined && !/^\d{1,15}$/.test(declared)) {
      this.answer(refusalAnswer(ApiRefusals.BAD_REQUEST, 'invalid Content-Length'), true);
      return;
    }
    const length = declared === undefined ? 0 : Number(declared);
    if (length > MAX_API_BODY_BYTES) {
      this.answer(refusalAnswer(ApiRefusals.BODY_TOO_LARGE, `the body is over ${MAX_API_BODY_BYTES} bytes`), true);
      return;
    }
    const refused = this.handler.screen(head);
    if (refused !== null) {
      this.answer(refused, true);
      return;
    }
    this.bodyLength = length;
    this.state = 'body';
    if (length > this.buffered.length && headerHasToken(head.headers.expect, '100-continue')) this.socket.write(CONTINUE);
    this.tryBody();
  }

  private tryBody(): void {
    if (this.buffered.length < this.bodyLength) return;
    const body = Buffer.from(this.buffered.subarray(0, this.bodyLength));
    const rest = this.buffered.subarray(this.bodyLength);
    this.buffered = rest.length === 0 ? EMPTY : rest;
    this.state = 'busy';
    this.disarm();
    const head = this.head!;
    this.handler.respond(head, body).then(
      (answer) => this.answer(answer, false),
      () => this.answer({ status: 500, body: JSON.stringify({ code: 'internal_error', message: 'the server failed to handle this request' }) }, true),
    );
  }

  /** Stop reading for the API: the connection is being answered and closed. */
  private detach(): void {
    this.state = 'closed';
    this.disarm();
    this.buffered = EMPTY;
    this.socket.off('data', this.onData);
    this.handler.closed(this);
  }

  /** Write `answer`; the connection stays open for the next request unless `close`, HTTP/1.0, `Connection: close` or shutdown says otherwise. */
  private answer(answer: ApiAnswer, close: boolean): void {
    if (this.state === 'closed') return;
    this.handler.answered(answer.status);
    const head = this.head;
    const keep = !close && head !== null && head.version === '1.1' && !headerHasToken(head.headers.connection, 'close') && this.handler.keepAlive();
    const response = httpResponse(answer.status, answer.body + '\n', answer.headers, JSON_TYPE, keep);
    if (!keep) {
      this.detach();
      endWithResponse(this.socket, response);
      return;
    }
    this.socket.write(response);
    this.state = 'head';
    this.head = null;
    this.idle = true;
    this.arm(KEEP_ALIVE_IDLE_MS);
    this.socket.resume();
    this.nextHead();
  }
}
