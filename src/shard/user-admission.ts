/**
 * Per-user limits on opening sessions, per shard: how often a user may
 * connect (`--connect-rate`, `--connect-burst`: a token bucket) and how many
 * of its handshakes may wait for the permission API at once
 * (`--max-handshakes-per-user`). They are checked once the token is
 * verified and before the permission API is asked, so a user who churns
 * connections costs neither the app nor the rooms (each join and leave is a
 * frame to every member) more than the rate allows.
 */
import { KeyedBuckets } from '../keyed-buckets.ts';

export interface UserAdmissionOptions {
  /** Connects per second per user; 0 = no limit. */
  connectRate: number;
  connectBurst: number;
  /** Handshakes in flight per user; 0 = no limit. */
  maxInFlight: number;
}

export type AdmissionRefusal = { limit: 'connect_rate' | 'in_flight'; retryAfterSeconds: number };

export class UserAdmission {
  private readonly maxInFlight: number;
  private readonly connects: KeyedBuckets;
  /** Handshakes in flight per user; a user leaves the map when its last one ends. */
  private readonly inFlight = new Map<string, number>();

  constructor(options: UserAdmissionOptions) {
    this.maxInFlight = options.maxInFlight;
    this.connects = new KeyedBuckets(options.connectRate, options.connectBurst);
  }

  /**
   * Start a handshake of `userId` at `now` (ms): null = go on, and call
   * {@link leave} once when it is over; else the refusal (429).
   */
  enter(userId: string, now: number): AdmissionRefusal | null {
    const inFlight = this.inFlight.get(userId) ?? 0;
    if (this.maxInFlight > 0 && inFlight >= this.maxInFlight) return { limit: 'in_flight', retryAfterSeconds: 1 };
    const waitMs = this.connects.take(userId, now);
    if (waitMs > 0) return { limit: 'connect_rate', retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)) };
    this.inFlight.set(userId, inFlight + 1);
    return null;
  }

  leave(userId: string): void {
    const inFlight = this.inFlight.get(userId);
    if (inFlight === undefined) return;
    if (inFlight <= 1) this.inFlight.delete(userId);
    else this.inFlight.set(userId, inFlight - 1);
  }
}
