/**
 * Giving memory back after an attack or a burst. The bytes a shard queues
 * for sockets live in ArrayBuffers outside the V8 heap (slabs, frames, the
 * write requests of a socket that was cut). Once unreferenced they are only
 * freed by a full GC, and V8 starts one when the heap or external memory
 * *grows*: a shard that goes quiet after buffering hundreds of MB keeps them
 * for good (measured: 183 MiB of array buffers held by an idle shard with no
 * session left, its heap at 14 MiB). So the shard asks for one full GC once
 * things have settled after a cut or a large backlog.
 *
 * The `gc` function comes from `--expose-gc`, set at run time for this
 * isolate (a flag change made once, before any use; Node documents such
 * changes as to be used with care, and this one only adds a global). Where
 * that is refused, release() does nothing and memory goes back at the next
 * GC V8 starts itself.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Wait this long after the last request before collecting: cut sockets are destroyed within 2 s. */
export const SETTLE_MS = 3000;
/** Collect at most this long after the first request, even if requests keep coming. */
export const MAX_WAIT_MS = 30_000;

function exposeGc(): (() => void) | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : null;
  } catch {
    return null;
  }
}

export class MemoryRelease {
  private readonly gc = exposeGc();
  private timer: NodeJS.Timeout | null = null;
  private firstAt = 0;
  private lastAt = 0;

  /** Ask for a full GC once the shard has been free of new requests for {@link SETTLE_MS}. */
  request(now = Date.now()): void {
    if (this.gc === null) return;
    this.lastAt = now;
    if (this.timer !== null) return;
    this.firstAt = now;
    this.arm(SETTLE_MS);
  }

  private arm(ms: number): void {
    this.timer = setTimeout(this.fire, ms);
    this.timer.unref();
  }

  private readonly fire = (): void => {
    this.timer = null;
    const now = Date.now();
    const quietFor = now - this.lastAt;
    if (quietFor < SETTLE_MS && now - this.firstAt < MAX_WAIT_MS) {
      this.arm(SETTLE_MS - quietFor);
      return;
    }
    this.gc!();
  };

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
