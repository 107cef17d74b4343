/**
 * One reconnecting socket: the machinery both clients share (the
 * per-desktop `connect()` and the multiplexed `connectTopics()`). It asks
 * for the token before every attempt, dials, and after a close decides when
 * to come back: the backoff, a refusal's `Retry-After` (Node with `ws`),
 * 4001 at once (once), 4003 as final, and a reset of the backoff only after
 * a session stayed joined for `stableAfterMs`. Given several URLs (every
 * node of a fleet), each attempt dials the next one (urls.ts), and a close
 * that sends the client away (1001, 1012) is answered at the short wait,
 * once per URL until a session is stable. What the frames mean is the
 * owner's business: the link hands them over and is told when the session
 * counts as joined.
 */
import { SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } from '../protocol/events.ts';
import { afterClose, backoffDelay, retryAfterMs, type BackoffOptions } from './backoff.ts';
import { ClientError } from './errors.ts';
import { askToken, checkTokenOption, type TokenOption } from './token.ts';
import type { ClientState, Retry, WebSocketConstructor, WebSocketLike } from './types.ts';
import { Urls, type UrlOption } from './urls.ts';

/** The options of the link, as both clients take them (see ConnectOptions for each one's meaning and default). */
export interface LinkOptions {
  token?: TokenOption;
  tokenVia?: 'protocol' | 'bearer';
  WebSocket?: WebSocketConstructor;
  minDelayMs?: number;
  maxDelayMs?: number;
  stableAfterMs?: number;
  failingAfter?: number;
  random?: () => number;
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (timer: unknown) => void;
}

/** What the link tells its owner. */
export interface LinkOwner {
  /** The state changed (the owner emits `state`). */
  state(state: ClientState): void;
  /** A reconnect is scheduled. */
  retry(value: Retry): void;
  /** Node with `ws`: the handshake was refused with this status. */
  rejected(value: { status: number }): void;
  /** The token could not be had for an attempt (`ERR_TOKEN`). */
  tokenError(error: ClientError): void;
  /** The socket opened (the handshake was accepted). */
  opened(socket: WebSocketLike): void;
  /** A frame from the open socket. */
  frame(data: unknown): void;
  /** The socket is gone, and another attempt may follow: what belonged to it (presence, subscriptions) is stale. */
  lost(): void;
  /** Closed with 4003: final. Comes before the state `closed`. */
  revoked(value: { code: number; reason: string }): void;
  /** No more attempts (a refusal, a revocation), before the state `closed`: drop what was queued. */
  ended(): void;
}

const OPEN = 1;

export class Link {
  state: ClientState = 'connecting';
  /** Delay of the scheduled reconnect, or null when none is scheduled. */
  nextRetryInMs: number | null = null;
  /** Whether a session was ever joined (the next state after a loss is `reconnecting`). */
  everJoined = false;
  /** The socket of the current attempt, open or not. */
  socket: WebSocketLike | null = null;

  /** The path of each attempt (a function: the per-desktop client adds where to resume from). */
  private readonly path: () => string;
  private readonly owner: LinkOwner;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly token: TokenOption;
  private readonly tokenVia: 'protocol' | 'bearer';
  private readonly urls: Urls;
  private readonly stableAfterMs: number;
  private readonly failingAfter: number;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (timer: unknown) => void;
  private readonly backoff: BackoffOptions;
  /** The backoff's step: the next delay's ceiling is minDelayMs·2^attempt. Back to 0 only after a stable session or retryNow(). */
  private attempt = 0;
  /** When the session was joined (options.now), or null while not joined. */
  private joinedAt: number | null = null;
  /** A 4001 has had its retry at once; the next one backs off, until a session is stable again. */
  private immediateSpent = false;
  /** Closes 1001/1012 answered with the short wait since the last stable session (counted with several URLs only). */
  private hops = 0;
  /** Attempts since the last join, for the `retry` event. */
  private retries = 0;
  private failedOpens = 0;
  private timer: unknown = null;

  /**
   * Validate the options; nothing is dialled before start().
   * @throws {ClientError} ERR_NO_WEBSOCKET, ERR_INVALID_OPTION.
   */
  constructor(url: UrlOption, path: string | (() => string), options: LinkOptions, owner: LinkOwner) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) throw new ClientError('ERR_NO_WEBSOCKET', 'no WebSocket implementation: pass options.WebSocket');
    const tokenVia = options.tokenVia ?? 'protocol';
    if (tokenVia !== 'protocol' && tokenVia !== 'bearer')
      throw new ClientError('ERR_INVALID_OPTION', `options.tokenVia must be 'protocol' or 'bearer', not ${JSON.stringify(tokenVia)}`);
    checkTokenOption(options.token, tokenVia);
    const random = options.random ?? Math.random;
    this.urls = new Urls(url, random);
    this.WebSocketImpl = WebSocketImpl;
    this.path = typeof path === 'string' ? () => path : path;
    this.owner = owner;
    this.token = options.token;
    this.tokenVia = tokenVia;
    this.stableAfterMs = options.stableAfterMs ?? 5_000;
    this.failingAfter = options.failingAfter ?? 5;
    this.now = options.now ?? Date.now;
    this.setTimer = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout ?? ((t) => clearTimeout(t as ReturnType<typeof setTimeout>));
    this.backoff = { minDelayMs: options.minDelayMs ?? 500, maxDelayMs: options.maxDelayMs ?? 4_000, random };
  }

  /** The socket, when it is open. */
  get openSocket(): WebSocketLike | null {
    return this.socket?.readyState === OPEN ? this.socket : null;
  }

  /** The first attempt. */
  start(): void {
    this.open();
  }

  /** The owner's session is joined: the backoff may reset once it has lasted `stableAfterMs`. */
  joined(): void {
    this.everJoined = true;
    this.joinedAt = this.now();
    this.retries = 0;
    this.failedOpens = 0;
  }

  setState(state: ClientState): void {
    if (this.state === state) return;
    this.state = state;
    this.owner.state(state);
  }

  /**
   * Reconnect at once instead of waiting for the scheduled attempt; the
   * backoff starts again from its floor. Does nothing while open or while
   * an attempt is in flight.
   * @throws {ClientError} ERR_CLOSED after close() or a refusal.
   */
  retryNow(): void {
    if (this.state === 'closed') throw new ClientError('ERR_CLOSED', 'client is closed');
    if (this.timer === null) return;
    this.stopTimer();
    this.attempt = 0;
    this.owner.retry({ inMs: 0, attempt: this.retries, url: this.urls.upcoming, code: null });
    this.open();
  }

  /** Close for good: no reconnect. */
  close(): void {
    this.stopTimer();
    const socket = this.socket;
    this.socket = null;
    this.setState('closed');
    if (socket) {
      // Nothing from this socket may reach the owner any more: a frame
      // already in flight would otherwise reopen it. onerror stays a no-op,
      // as `ws` throws on an 'error' nobody listens to.
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = () => {};
      socket.close(1000, 'client closed');
    }
  }

  private stopTimer(): void {
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    this.nextRetryInMs = null;
  }

  /**
   * One attempt: ask for the token (a function is asked every time, and may
   * answer with a Promise), then dial. While the answer is pending no timer
   * is set, so retryNow() waits for it; after close() it is dropped.
   */
  private open(): void {
    this.timer = null;
    this.nextRetryInMs = null;
    askToken(
      this.token,
      this.tokenVia,
      (token) => {
        if (this.state !== 'closed') this.dial(token);
      },
      (error) => {
        if (this.state === 'closed') return;
        this.owner.tokenError(error);
        // An error handler may have closed the client.
        if ((this.state as ClientState) === 'closed') return;
        this.scheduleReconnect(false, 'backoff', null, null);
      },
    );
  }

  private dial(token: string | null | undefined): void {
    const url = this.urls.take() + this.path();
    const socket = !token
      ? new this.WebSocketImpl(url)
      : this.tokenVia === 'bearer'
        ? new this.WebSocketImpl(url, { headers: { Authorization: `Bearer ${token}` } })
        : new this.WebSocketImpl(url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]);
    this.socket = socket;
    let opened = false;
    let done = false;
    const finish = (code: number, reason: string, refusedWith: number, retryAfter: number | null) => {
      if (done || this.socket !== socket) return;
      done = true;
      this.socket = null;
      if (refusedWith !== 0) this.owner.rejected({ status: refusedWith });
      if (refusedWith === 401 || refusedWith === 403) return this.end();
      const next = afterClose(code, opened);
      if (next === 'final') {
        this.owner.revoked({ code, reason });
        return this.end();
      }
      this.owner.lost();
      this.scheduleReconnect(opened, next, retryAfter, code);
    };
    // ws leaves aborting a refused handshake to whoever listens here. Only
    // here (Node with ws) can the client see the status and Retry-After: a
    // browser's WebSocket shows a refusal as a close 1006 and nothing more.
    socket.on?.('unexpected-response', (req, res) => {
      req.destroy();
      finish(1006, '', res.statusCode ?? 0, retryAfterMs(res.headers?.['retry-after'], Date.now()));
    });
    socket.onopen = () => {
      opened = true;
      if (this.socket === socket) this.owner.opened(socket);
    };
    socket.onerror = () => {};
    socket.onmessage = (event) => {
      if (this.socket === socket) this.owner.frame(event.data);
    };
    socket.onclose = (event) => finish(event.code, event.reason, 0, null);
  }

  /** No more attempts (a refusal, a revocation). */
  private end(): void {
    this.owner.ended();
    this.setState('closed');
  }

  /**
   * Schedule the next attempt. The backoff is reset by a session that stayed
   * joined for `stableAfterMs`, never by a socket merely opening: a server
   * that accepts and closes at once (with 4001, 1012, 4008…) would otherwise
   * bring the client back at the floor's pace forever. With several URLs, a
   * close 1001/1012 past the floor still takes the short wait, once per URL
   * until a session is stable: the next attempt is another node, which has
   * no reason to turn the client away, while a fleet that keeps sending it
   * away falls back to the backoff after one round.
   */
  private scheduleReconnect(opened: boolean, next: 'now' | 'soon' | 'backoff', retryAfter: number | null, code: number | null): void {
    if (opened) this.failedOpens = 0;
    else this.failedOpens++;
    const { minDelayMs, random } = this.backoff;
    if (this.joinedAt !== null && this.now() - this.joinedAt >= this.stableAfterMs) {
      this.attempt = 0;
      this.immediateSpent = false;
      this.hops = 0;
    }
    this.joinedAt = null;
    let delay: number;
    if (next === 'now' && !this.immediateSpent) {
      // Logged out, token expired: at once, with the credential asked for
      // again. Not a step of the backoff, but spent until a stable session.
      delay = 0;
      this.immediateSpent = true;
    } else if (next === 'soon' && (this.attempt === 0 || (this.urls.several && this.hops < this.urls.list.length))) {
      // Shutdown, restart after a stable session, or to another node: a
      // short wait, jittered over the whole floor so that a node's clients
      // come back spread out.
      if (this.urls.several) this.hops++;
      delay = Math.floor(random() * minDelayMs);
      this.attempt++;
    } else {
      delay = backoffDelay(this.attempt++, this.backoff);
    }
    // A refusal that said when to come back (429/503, seen in Node only):
    // not before, and jittered so that the refused do not return together.
    if (retryAfter !== null) delay = Math.max(delay, retryAfter + Math.floor(random() * minDelayMs));
    this.retries++;
    this.setState(this.failedOpens >= this.failingAfter ? 'failing' : this.everJoined ? 'reconnecting' : 'connecting');
    this.nextRetryInMs = delay;
    this.timer = this.setTimer(() => this.open(), delay);
    this.owner.retry({ inMs: delay, attempt: this.retries, url: this.urls.upcoming, code });
  }
}
