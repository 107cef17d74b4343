/**
 * Sessions per user across every shard, for --max-connections-per-user,
 * without messages: a SharedArrayBuffer holding, per shard, a count-min
 * sketch (two rows of Int32 counters, each indexed by a different hash of
 * the userId) updated with Atomics. A user's count is the sum over shards of
 * the smaller of its two counters: it can only be over-estimated, and only if
 * both of its slots collide with other users'.
 *
 * Per-shard tables let the primary zero a dead shard's sessions. Two
 * handshakes of one user racing on two shards may both pass the check, so
 * the limit can be exceeded by the number of shards at most.
 */
import { fnv1a32 } from './hash.ts';

const ROW_BITS = 16;
const ROW = 1 << ROW_BITS;
const TABLE = 2 * ROW;

function hash1(text: string): number {
  return fnv1a32(text) & (ROW - 1);
}

function hash2(text: string): number {
  let h = 0x9747b28c;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x5bd1e995);
    h ^= h >>> 15;
  }
  return ROW + ((h >>> 0) & (ROW - 1));
}

export function createUserConnectionsBuffer(shards: number): SharedArrayBuffer {
  return new SharedArrayBuffer(shards * TABLE * Int32Array.BYTES_PER_ELEMENT);
}

export class UserConnections {
  private readonly all: Int32Array;
  private readonly shards: number;
  private readonly own: number;

  /** `shard` is the table this thread writes (-1 for the primary, which only clears). */
  constructor(buffer: SharedArrayBuffer, shards: number, shard: number) {
    this.all = new Int32Array(buffer);
    this.shards = shards;
    this.own = shard * TABLE;
  }

  /** Sessions of `userId` over all shards (an upper bound). */
  count(userId: string): number {
    const a = hash1(userId);
    const b = hash2(userId);
    let total = 0;
    for (let s = 0; s < this.shards; s++) {
      const base = s * TABLE;
      total += Math.min(Atomics.load(this.all, base + a), Atomics.load(this.all, base + b));
    }
    return total;
  }

  add(userId: string, delta: 1 | -1): void {
    Atomics.add(this.all, this.own + hash1(userId), delta);
    Atomics.add(this.all, this.own + hash2(userId), delta);
  }

  /** Forget every session of a shard (it died). */
  clearShard(shard: number): void {
    this.all.fill(0, shard * TABLE, (shard + 1) * TABLE);
  }
}
