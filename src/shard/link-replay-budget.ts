/**
 * What the replays of subscribers here hold of other shards' histories
 * (recovery.ts `RemoteCursor`): each holds one batch of at most
 * REMOTE_BATCH_BYTES (and one event) until its client has read it, and a
 * client that stops reading holds its batch until liveness closes it. So
 * the batches are bounded per user and per shard: a batch is asked for only
 * while the user holds less than `perUser` and the shard less than
 * `perShard`. Each ask reserves a batch's worth ({@link acquire}), settled
 * to the batch's size when it arrives; a cursor over either bound waits its
 * turn, in order, and is given it, its reservation taken, when bytes are
 * let go. One user resuming many topics, or stalling
 * them, waits on itself; it takes others' turns only by filling the shard's
 * bound with users of its own.
 */

export interface BudgetWaiter {
  readonly user: string;
  /** Its turn: a batch's worth is reserved for it; it may ask now. */
  go(): void;
}

export class LinkReplayBudget {
  readonly perUser: number;
  readonly perShard: number;
  /** What an ask reserves: the most a batch holds, about. */
  readonly batchBytes: number;
  /** Bytes held and reserved, by the shard and by each user. */
  held = 0;
  private readonly byUser = new Map<string, number>();
  private readonly waiting: BudgetWaiter[] = [];

  constructor(perUser: number, perShard: number, batchBytes: number) {
    this.perUser = perUser;
    this.perShard = perShard;
    this.batchBytes = batchBytes;
  }

  /** Whether `user` may take a batch now. */
  admits(user: string): boolean {
    return this.held < this.perShard && (this.byUser.get(user) ?? 0) < this.perUser;
  }

  /** Reserve a batch's worth for `user`, if it is admitted now. */
  acquire(user: string): boolean {
    if (!this.admits(user)) return false;
    this.add(user, this.batchBytes);
    return true;
  }

  /** `bytes` more held by `user` (negative: let go of); letting go gives waiting cursors their turn. */
  take(user: string, bytes: number): void {
    if (bytes === 0) return;
    this.add(user, bytes);
    if (bytes < 0) this.pump();
  }

  private add(user: string, bytes: number): void {
    this.held += bytes;
    const mine = (this.byUser.get(user) ?? 0) + bytes;
    if (mine <= 0) this.byUser.delete(user);
    else this.byUser.set(user, mine);
  }

  /** Wait for a turn (once per waiter until it is called). */
  wait(waiter: BudgetWaiter): void {
    this.waiting.push(waiter);
  }

  /** A waiter that no longer waits (its replay ended). */
  leave(waiter: BudgetWaiter): void {
    const i = this.waiting.indexOf(waiter);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  /** Cursors waiting. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Give each waiter whose user is now admitted its turn, its reservation taken, in order; the others keep their place. */
  private pump(): void {
    for (let i = 0; i < this.waiting.length && this.held < this.perShard; ) {
      const waiter = this.waiting[i]!;
      if (!this.acquire(waiter.user)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      waiter.go();
    }
  }
}
