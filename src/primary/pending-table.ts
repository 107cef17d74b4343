/**
 * The connections whose request heads the primary is reading, kept so that a
 * flood of idle connections is answered cheaply:
 *
 * - how many are pending from one address (--max-pending-per-address), and
 * - which one to shed when the table is full (--max-pending-handshakes): the
 *   one that has sent the fewest bytes for longest. Refusing the newcomer
 *   instead, as we did, let 1,000 connections that never send a byte turn
 *   every client away, `GET /health` included.
 *
 * Connections that have sent nothing are the usual victims, so they are also
 * kept in an insertion-ordered map of their own: its first entry is the
 * oldest silent one. Entries that have since received bytes are dropped from
 * it lazily, when they reach its front; each is dropped at most once. Only
 * when no pending connection is silent does a victim cost a scan.
 */

/** What the table needs to know of a read in progress. */
export interface Progress {
  /** Bytes received so far; never decreases. */
  readonly received: number;
}

interface Entry<V> {
  value: V;
  /** Counted against this address, or null (not limited). */
  address: string | null;
}

export class PendingTable<K, V extends Progress> {
  /** Every pending connection, oldest first. */
  private readonly all = new Map<K, Entry<V>>();
  /** Pending connections that had sent nothing when last looked at, oldest first. */
  private readonly silent = new Map<K, V>();
  private readonly perAddress = new Map<string, number>();

  get size(): number {
    return this.all.size;
  }

  has(key: K): boolean {
    return this.all.has(key);
  }

  get(key: K): V | undefined {
    return this.all.get(key)?.value;
  }

  /** Add a connection; `address` = count it against that address (null = exempt). */
  add(key: K, value: V, address: string | null): void {
    this.all.set(key, { value, address });
    if (value.received === 0) this.silent.set(key, value);
    if (address !== null) this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
  }

  /** Remove a connection; returns its value, or undefined if it was not pending. */
  delete(key: K): V | undefined {
    const entry = this.all.get(key);
    if (entry === undefined) return undefined;
    this.all.delete(key);
    this.silent.delete(key);
    if (entry.address !== null) {
      const left = this.perAddress.get(entry.address)! - 1;
      if (left === 0) this.perAddress.delete(entry.address);
      else this.perAddress.set(entry.address, left);
    }
    return entry.value;
  }

  /** Connections pending from `address` (only those added with it). */
  fromAddress(address: string): number {
    return this.perAddress.get(address) ?? 0;
  }

  /**
   * The connection to shed: fewest bytes received, ties to the oldest.
   * Undefined when the table is empty.
   */
  leastProgress(): K | undefined {
    for (const [key, value] of this.silent) {
      if (value.received === 0) return key;
      this.silent.delete(key);
    }
    let victim: K | undefined;
    let least = Infinity;
    for (const [key, { value }] of this.all) {
      if (value.received < least) {
        least = value.received;
        victim = key;
      }
    }
    return victim;
  }

  /** Every pending connection, oldest first. */
  *entries(): IterableIterator<[K, V]> {
    for (const [key, { value }] of this.all) yield [key, value];
  }

  clear(): void {
    this.all.clear();
    this.silent.clear();
    this.perAddress.clear();
  }
}
