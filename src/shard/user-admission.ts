/**
 * Per-user limits on opening sessions, per shard: how often a user may
 * connect (`--connect-rate`, `--connect-burst`: a token bucket) and how many
 * of its handshakes may wait for the permission API at once
 * (`--max-handshakes-per-user`). They are checked once the token is
 * verified and before the permission API is asked, so a user who churns
 * connections costs neither the app nor the rooms (each join and leave is a
 * frame to every member) more than the rate allows.
 *
 * Entries of users with nothing in flight are forgotten once their bucket
 * would be full again, so the map holds the users seen in the last
 * burst/rate seconds at most.
 */

export interface UserAdmissionOptions {
  /** Connects per second per user; 0 = no limit. */
  connectRate: number;
  connectBurst: number;
  /** Handshakes in flight per user; 0 = no limit. */
  maxInFlight: number;
}

export type AdmissionRefusal = { limit: 'connect_rate' | 'in_flight'; retryAfterSeconds: number };

interface UserEntry {
  tokens: number;
  refilledAt: number;
  inFlight: number;
}

/** Sweep forgotten users at most this often. */
const FORGET_EVERY_MS = 5000;

export class UserAdmission {
  private readonly options: UserAdmissionOptions;
  private readonly perMs: number;
  private readonly users = new Map<string, UserEntry>();
  private forgotAt = 0;

  constructor(options: UserAdmissionOptions) {
    this.options = options;
    this.perMs = options.connectRate / 1000;
  }

  /**
   * Start a handshake of `userId` at `now` (ms): null = go on, and call
   * {@link leave} once when it is over; else the refusal (429).
   */
  enter(userId: string, now: number): AdmissionRefusal | null {
    if (now - this.forgotAt >= FORGET_EVERY_MS) this.forget(now);
    let entry = this.users.get(userId);
    if (entry === undefined) {
      entry = { tokens: this.options.connectBurst, refilledAt: now, inFlight: 0 };
      this.users.set(userId, entry);
    }
    if (this.options.maxInFlight > 0 && entry.inFlight >= this.options.maxInFlight) {
      return { limit: 'in_flight', retryAfterSeconds: 1 };
    }
    if (this.options.connectRate > 0) {
      entry.tokens = Math.min(this.options.connectBurst, entry.tokens + (now - entry.refilledAt) * this.perMs);
      entry.refilledAt = now;
      if (entry.tokens < 1) return { limit: 'connect_rate', retryAfterSeconds: Math.max(1, Math.ceil((1 - entry.tokens) / this.perMs / 1000)) };
      entry.tokens -= 1;
    }
    entry.inFlight++;
    return null;
  }

  leave(userId: string): void {
    const entry = this.users.get(userId);
    if (entry !== undefined && entry.inFlight > 0) entry.inFlight--;
  }

  /** Users tracked (for tests and /stats). */
  get size(): number {
    return this.users.size;
  }

  private forget(now: number): void {
    this.forgotAt = now;
    const refillMs = this.options.connectRate > 0 ? this.options.connectBurst / this.perMs : 0;
    for (const [userId, entry] of this.users) {
      if (entry.inFlight === 0 && now - entry.refilledAt >= refillMs) this.users.delete(userId);
    }
  }
}
