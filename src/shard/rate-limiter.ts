/**
 * Inbound rate limit: a token bucket (`--rate-limit` tokens per second,
 * `--rate-limit-burst` deep) per user and shard, shared by that user's
 * sessions on the shard and kept for a while after the last one closes, so
 * that reconnecting never starts a fresh bucket. A frame without a token is
 * dropped, and the relay stops reading the session's socket for a while
 * (TCP pushes back on the sender) instead of parsing a flood it would drop.
 *
 * The sender is told once per window, never once per dropped frame: an
 * `error` with code `rate_limited` when dropping starts, then at most one per
 * {@link NOTICE_WINDOW_MS}. Sustained abuse — drops no more than {@link STREAK_GAP_MS}
 * apart for `--rate-limit-close-after` — closes the session with 1008.
 */

/** At most one `rate_limited` notice per this many ms while dropping. */
export const NOTICE_WINDOW_MS = 1000;
/** Shortest pause of a session's reads once its bucket is empty; it doubles while the user stays over, up to {@link MAX_PAUSE_MS}. Each resume reads (and parses) one socket chunk, so a flooder costs a chunk or two a second. */
export const MIN_PAUSE_MS = 250;
export const MAX_PAUSE_MS = 1000;
/** Drops further apart than this end a streak (a paused session drops nothing while paused). */
export const STREAK_GAP_MS = NOTICE_WINDOW_MS + MAX_PAUSE_MS;

/** Bucket state, kept on each session. */
export interface RateState {
  tokens: number;
  refilledAt: number;
  /** Start of the current (or last) streak of drops: drops no more than STREAK_GAP_MS apart. */
  overSince: number;
  lastDropAt: number;
  lastNoticeAt: number;
  /** Pauses in the current streak (the next pause is twice as long, up to MAX_PAUSE_MS). */
  pauses: number;
  /** The byte bucket: every byte read counts, whatever frame it belongs to. */
  byteTokens: number;
  bytesRefilledAt: number;
}

export type RateVerdict =
  | { kind: 'pass' }
  | { kind: 'drop' }
  /** Drop, and tell the sender when a token will be there. */
  | { kind: 'notify'; retryAfterMs: number }
  /** Over the limit for too long: close the session. */
  | { kind: 'close' };

const PASS: RateVerdict = { kind: 'pass' };
const DROP: RateVerdict = { kind: 'drop' };
const CLOSE: RateVerdict = { kind: 'close' };

export interface RateLimitOptions {
  /** Tokens per second; 0 disables the limit. */
  perSecond: number;
  burst: number;
  closeAfterMs: number;
  /**
   * Bytes one message may take (--max-message-size): the byte bucket gives
   * `perSecond` of them a second, `burst` at once, so a user sending
   * full-size messages at the limit never meets it.
   */
  messageBytes: number;
}

export function newRateState(options: RateLimitOptions, now: number): RateState {
  return {
    tokens: options.burst,
    refilledAt: now,
    overSince: 0,
    lastDropAt: 0,
    lastNoticeAt: 0,
    pauses: 0,
    byteTokens: options.burst * options.messageBytes,
    bytesRefilledAt: now,
  };
}

interface UserEntry {
  state: RateState;
  sessions: number;
  /** When the last session left (0 while any is open). */
  idleSince: number;
}

/** Sweep forgotten users at most this often (on acquire). */
export const FORGET_EVERY_MS = 5000;

export class RateLimiter {
  private readonly perMs: number;
  private readonly options: RateLimitOptions;
  private readonly users = new Map<string, UserEntry>();
  /** How long an idle user's state is kept: until its bucket would be full and a streak over. */
  private readonly keepMs: number;
  private forgotAt = 0;

  constructor(options: RateLimitOptions) {
    this.options = options;
    this.perMs = options.perSecond / 1000;
    this.keepMs = options.perSecond > 0 ? Math.ceil(options.burst / this.perMs) + STREAK_GAP_MS : 0;
  }

  get enabled(): boolean {
    return this.options.perSecond > 0;
  }

  /** The bucket of `userId`, shared by its sessions: call once per session opened, and {@link release} once when it closes. */
  acquire(userId: string, now: number): RateState {
    if (now - this.forgotAt >= FORGET_EVERY_MS) this.forget(now);
    let entry = this.users.get(userId);
    if (entry === undefined) {
      entry = { state: newRateState(this.options, now), sessions: 0, idleSince: 0 };
      this.users.set(userId, entry);
    }
    entry.sessions++;
    entry.idleSince = 0;
    return entry.state;
  }

  release(userId: string, now: number): void {
    const entry = this.users.get(userId);
    if (entry === undefined) return;
    if (--entry.sessions === 0) entry.idleSince = now;
  }

  /** Users tracked (open sessions, or closed recently enough that a reconnect must not reset them). */
  get trackedUsers(): number {
    return this.users.size;
  }

  /** Drop users with no session whose bucket has refilled and whose streak is over. */
  private forget(now: number): void {
    this.forgotAt = now;
    for (const [userId, entry] of this.users) {
      if (entry.sessions === 0 && now - entry.idleSince >= this.keepMs) this.users.delete(userId);
    }
  }

  /** Take `bytes` read from the socket at `now`; false when the byte bucket is empty (it may go negative: the bytes were read already). */
  takeBytes(state: RateState, bytes: number, now: number): boolean {
    const elapsed = now - state.bytesRefilledAt;
    if (elapsed > 0) {
      state.byteTokens = Math.min(this.options.burst * this.options.messageBytes, state.byteTokens + elapsed * this.perMs * this.options.messageBytes);
      state.bytesRefilledAt = now;
    }
    state.byteTokens -= bytes;
    return state.byteTokens > 0;
  }

  /** How long to stop reading a session over its byte budget: until the budget is back above zero, at least MIN_PAUSE_MS. */
  bytePauseMs(state: RateState): number {
    return Math.max(MIN_PAUSE_MS, Math.ceil(-state.byteTokens / (this.perMs * this.options.messageBytes)));
  }

  /** How long to stop reading a session whose frame found no token: at least until a token is back. */
  pauseMs(state: RateState): number {
    const backoff = Math.min(MAX_PAUSE_MS, MIN_PAUSE_MS * 2 ** Math.min(state.pauses, 8));
    return Math.max(backoff, Math.ceil((1 - state.tokens) / this.perMs));
  }

  /** Take a token for one frame at `now` (ms). */
  take(state: RateState, now: number): RateVerdict {
    const elapsed = now - state.refilledAt;
    if (elapsed > 0) {
      state.tokens = Math.min(this.options.burst, state.tokens + elapsed * this.perMs);
      state.refilledAt = now;
    }
    if (state.tokens >= 1) {
      state.tokens -= 1;
      return PASS;
    }
    // A drop more than STREAK_GAP_MS after the previous one starts a new
    // streak, and the pauses start short again. Frames that pass between two
    // pauses do not end a streak: a flooder gets a few tokens back each pause.
    if (now - state.lastDropAt > STREAK_GAP_MS) {
      state.overSince = now;
      state.pauses = 0;
    }
    state.lastDropAt = now;
    if (now - state.overSince >= this.options.closeAfterMs) return CLOSE;
    if (now - state.lastNoticeAt >= NOTICE_WINDOW_MS) {
      state.lastNoticeAt = now;
      return { kind: 'notify', retryAfterMs: this.pauseMs(state) };
    }
    return DROP;
  }
}
