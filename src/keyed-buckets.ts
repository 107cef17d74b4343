/**
 * Token buckets by key (a user, an address, a desktop), for rates of events
 * a peer can cause at will: `rate` a second, `burst` at once. A take may
 * cost more than one token (the bytes of an API publish). A key whose
 * bucket has refilled is forgotten at the next sweep, so the map holds only
 * the keys seen in the last burst/rate seconds.
 */

/** Sweep forgotten keys at most this often (on take). */
const FORGET_EVERY_MS = 5000;

interface Bucket {
  tokens: number;
  refilledAt: number;
}

export class KeyedBuckets {
  private readonly perMs: number;
  private readonly burst: number;
  private readonly refillMs: number;
  private readonly buckets = new Map<string, Bucket>();
  private forgotAt = 0;

  /** `rate` tokens a second (0 = no limit: every take passes), `burst` deep. */
  constructor(rate: number, burst: number) {
    this.perMs = rate / 1000;
    this.burst = burst;
    this.refillMs = rate > 0 ? burst / this.perMs : 0;
  }

  /**
   * Take `cost` tokens (at most `burst`) for `key` at `now` (ms): 0 when
   * taken, else the ms until that many are back; nothing is taken then.
   */
  take(key: string, now: number, cost = 1): number {
    if (this.perMs === 0) return 0;
    if (now - this.forgotAt >= FORGET_EVERY_MS) this.forget(now);
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      bucket = { tokens: this.burst, refilledAt: now };
      this.buckets.set(key, bucket);
    } else {
      bucket.tokens = Math.min(this.burst, bucket.tokens + (now - bucket.refilledAt) * this.perMs);
      bucket.refilledAt = now;
    }
    if (bucket.tokens < cost) return Math.ceil((cost - bucket.tokens) / this.perMs);
    bucket.tokens -= cost;
    return 0;
  }

  private forget(now: number): void {
    this.forgotAt = now;
    for (const [key, bucket] of this.buckets) if (now - bucket.refilledAt >= this.refillMs) this.buckets.delete(key);
  }
}
