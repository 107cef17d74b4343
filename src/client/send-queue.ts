/**
 * Sends waiting for the connection (or, on a multiplexed connection, for
 * their topic's subscription), in order, bounded. Of a transient type only
 * the newest per type and `payload.id` is kept, so a drag while offline
 * queues one event per card, not a backlog.
 */
import { ClientError } from './errors.ts';

/** A send waiting; `key` is set for a transient type (type and asset id). */
export interface Queued {
  type: string;
  text: string;
  key: string | null;
}

export class SendQueue {
  private items: Queued[] = [];
  private readonly transient: ReadonlySet<string>;
  private readonly maxQueue: number;

  constructor(transient: ReadonlySet<string>, maxQueue: number) {
    this.transient = transient;
    this.maxQueue = maxQueue;
  }

  get length(): number {
    return this.items.length;
  }

  /**
   * Queue `text` (the frame of a send of `type`). `room` is how many more the
   * caller lets this queue hold (a multiplexed connection shares one bound
   * among its topics); by default the queue's own bound.
   * @throws {ClientError} ERR_QUEUE_FULL when the bound is reached.
   */
  push(type: string, payload: unknown, text: string, room = this.maxQueue - this.items.length): void {
    const key = this.transient.has(type) ? transientKey(type, payload) : null;
    if (key !== null) {
      // The queued one is stale: drop it, and queue the newest behind whatever was sent since.
      const stale = this.items.findIndex((queued) => queued.key === key);
      if (stale !== -1) {
        this.items.splice(stale, 1);
        room++;
      }
    }
    if (room <= 0) throw new ClientError('ERR_QUEUE_FULL', `more than ${this.maxQueue} messages queued while disconnected`);
    this.items.push({ type, text, key });
  }

  /** Remove the queued sends `drop` picks; returns their types. */
  dropWhere(drop: (queued: Queued) => boolean): string[] {
    const types: string[] = [];
    let kept = 0;
    for (const queued of this.items) {
      if (drop(queued)) types.push(queued.type);
      else this.items[kept++] = queued;
    }
    this.items.length = kept;
    return types;
  }

  /** Everything queued, oldest first; the queue is left empty. */
  take(): Queued[] {
    const items = this.items;
    this.items = [];
    return items;
  }

  clear(): void {
    this.items.length = 0;
  }
}

/** The queue key of a transient event: its type and asset id (`payload.id`), or its type alone. */
function transientKey(type: string, payload: unknown): string {
  const id = payload !== null && typeof payload === 'object' ? (payload as { id?: unknown }).id : undefined;
  return typeof id === 'string' || typeof id === 'number' ? `${type}\u0000${id}` : type;
}
