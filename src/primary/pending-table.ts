/**
 * The connections whose request heads the primary is reading, kept so that a
 * flood of idle connections is answered cheaply:
 *
 * - how many are *slow* from one address (--max-pending-per-address): a
 *   connection counts against its address only once its head has been pending
 *   for the table's `slowAfterMs`. A burst of complete heads from one address
 *   (an office behind one NAT opening its tabs) is never counted: each head
 *   is read within milliseconds. Counting every pending connection, as we
 *   did, refused 18–136 of 200 such tabs though none was slow;
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
 *
 * Connections not yet slow wait in a third insertion-ordered map, so that
 * {@link PendingTable.age} finds those that turned slow from its front.
 */

/** What the table needs to know of a read in progress. */
export interface Progress {
  /** Bytes received so far; never decreases. */
  readonly received: number;
}

interface Entry<V> {
  value: V;
  /** Counted against this address once slow, or null (not limited). */
  address: string | null;
  /** When it was added (ms, the caller's clock). */
  addedAt: number;
  /** Counted in its address's slow connections. */
  counted: boolean;
}

export interface PendingTableOptions {
  /** A connection pending this long (ms) counts against its address. */
  slowAfterMs: number;
  /** Slow connections one address may hold (0 = no limit). */
  maxSlowPerAddress: number;
}

export class PendingTable<K, V extends Progress> {
  private readonly slowAfterMs: number;
  private readonly maxSlowPerAddress: number;
  /** Every pending connection, oldest first. */
  private readonly all = new Map<K, Entry<V>>();
  /** Pending connections that had sent nothing when last looked at, oldest first. */
  private readonly silent = new Map<K, V>();
  /** Limited connections not yet slow, oldest first. */
  private readonly young = new Map<K, Entry<V>>();
  /** Slow connections per address. */
  private readonly perAddress = new Map<string, number>();

  constructor(options: PendingTableOptions) {
    this.slowAfterMs = options.slowAfterMs;
    this.maxSlowPerAddress = options.maxSlowPerAddress;
  }

  get size(): number {
    return this.all.size;
  }

  has(key: K): boolean {
    return this.all.has(key);
  }

  get(key: K): V | undefined {
    return this.all.get(key)?.value;
  }

  /** Add a connection at `now`; `address` = count it against that address once slow (null = exempt). */
  add(key: K, value: V, address: string | null, now: number): void {
    const entry: Entry<V> = { value, address, addedAt: now, counted: false };
    this.all.set(key, entry);
    if (value.received === 0) this.silent.set(key, value);
    if (address !== null) this.young.set(key, entry);
  }

  /** Remove a connection; returns its value, or undefined if it was not pending. */
  delete(key: K): V | undefined {
    const entry = this.all.get(key);
    if (entry === undefined) return undefined;
    this.all.delete(key);
    this.silent.delete(key);
    this.young.delete(key);
    if (entry.counted) {
      const left = this.perAddress.get(entry.address!)! - 1;
      if (left === 0) this.perAddress.delete(entry.address!);
      else this.perAddress.set(entry.address!, left);
    }
    return entry.value;
  }

  /** Slow connections pending from `address` (only those added with it). */
  fromAddress(address: string): number {
    return this.perAddress.get(address) ?? 0;
  }

  /** Whether `address` holds as many slow connections as it may: a newcomer from it is refused. */
  addressFull(address: string): boolean {
    return this.maxSlowPerAddress > 0 && this.fromAddress(address) >= this.maxSlowPerAddress;
  }

  /**
   * Count the connections pending for `slowAfterMs` at `now` against their
   * addresses, oldest first. Those that find their address full are removed
   * from the table and returned, for the caller to refuse.
   */
  age(now: number): [K, V][] {
    const over: [K, V][] = [];
    for (const [key, entry] of this.young) {
      if (now - entry.addedAt < this.slowAfterMs) break;
      this.young.delete(key);
      const address = entry.address!;
      if (this.addressFull(address)) {
        this.delete(key);
        over.push([key, entry.value]);
        continue;
      }
      entry.counted = true;
      this.perAddress.set(address, this.fromAddress(address) + 1);
    }
    return over;
  }

  /** When the oldest connection not yet slow turns slow (the caller's clock), or undefined if none waits. */
  nextSlowAt(): number | undefined {
    for (const entry of this.young.values()) return entry.addedAt + this.slowAfterMs;
    return undefined;
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
    this.young.clear();
    this.perAddress.clear();
  }
}
