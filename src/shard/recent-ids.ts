/**
 * The ids of the server API requests a shard applied lately, so that it
 * applies each once: with federation the same request reaches a node over
 * HTTP and again over the bus (its own publication echoed back, a
 * redelivery). Bounded: the newest {@link RECENT_IDS} ids are kept, oldest
 * forgotten first, in a ring beside a set.
 */

/** Ids remembered per shard: minutes of API traffic; an echo arrives within milliseconds. */
export const RECENT_IDS = 16_384;

export class RecentIds {
  private readonly ring: (string | undefined)[];
  private readonly seen = new Set<string>();
  private next = 0;

  constructor(capacity = RECENT_IDS) {
    this.ring = new Array<string | undefined>(capacity);
  }

  /** Remember `id`: true the first time, false when it is among the ids remembered. */
  add(id: string): boolean {
    if (this.seen.has(id)) return false;
    const oldest = this.ring[this.next];
    if (oldest !== undefined) this.seen.delete(oldest);
    this.ring[this.next] = id;
    this.seen.add(id);
    this.next = (this.next + 1) % this.ring.length;
    return true;
  }
}
