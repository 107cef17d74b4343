/**
 * Large frames, shared rather than copied. A frame of at least
 * {@link SHARED_FRAME_BYTES} (a server API publish of up to 64 KiB, or a
 * client frame when `--max-message-size` allows one) is written to each
 * recipient's socket by reference, at once, never copied into a session's
 * outbox: 200 recipients of a 64 KiB publish hold one 64 KiB buffer, not
 * 12.5 MiB of copies. Copying is what made 200 such publishes to a
 * 200-member room take the process from 0.3 to 2.8 GiB (issue 19).
 *
 * Such a frame is real memory once, however many sockets still hold it, and
 * that is how it counts toward `--max-outbound-memory`: this ledger knows
 * how many sockets hold each one, from the callback of each write (a
 * socket calls it once the kernel has the bytes, or with an error once it
 * is destroyed, so every hold ends). A session's own budget still counts
 * every byte its socket holds, shared or not.
 *
 * Below the threshold a frame costs less to copy (a few µs for 16 KiB) than
 * the syscall it saves, so small frames stay on the coalescer's path: one
 * write per socket per turn.
 */

/** Frames at least this large are written by reference at once, and count once toward the process cap. */
export const SHARED_FRAME_BYTES = 16 * 1024;

/** The shared frames one socket was given and has not handed to the kernel yet, oldest first. */
export interface SharedQueue {
  readonly frames: Buffer[];
  /** Their bytes. */
  bytes: number;
  /** The write callback of each of them: the oldest is done (socket writes complete in order). */
  readonly done: () => void;
}

export class SharedFrames {
  /** Sockets holding each frame. */
  private readonly holders = new Map<Buffer, number>();
  /** Bytes of the distinct frames some socket still holds. */
  bytes = 0;

  /** A queue for one socket. */
  newQueue(): SharedQueue {
    const queue: SharedQueue = {
      frames: [],
      bytes: 0,
      done: () => {
        // Empty once let go of (release): the callbacks of a cut socket's writes still come.
        const frame = queue.frames.shift();
        if (frame === undefined) return;
        queue.bytes -= frame.length;
        this.unhold(frame);
      },
    };
    return queue;
  }

  /** `frame` is about to be written to the socket of `queue`; pass `queue.done` as the write's callback. */
  hold(queue: SharedQueue, frame: Buffer): void {
    const held = this.holders.get(frame) ?? 0;
    this.holders.set(frame, held + 1);
    if (held === 0) this.bytes += frame.length;
    queue.frames.push(frame);
    queue.bytes += frame.length;
  }

  /** Stop counting what `queue`'s socket holds (it was cut, and is no longer counted anywhere). */
  release(queue: SharedQueue): void {
    for (const frame of queue.frames) this.unhold(frame);
    queue.frames.length = 0;
    queue.bytes = 0;
  }

  /** Distinct frames held (tests). */
  get size(): number {
    return this.holders.size;
  }

  private unhold(frame: Buffer): void {
    const held = this.holders.get(frame)!;
    if (held > 1) {
      this.holders.set(frame, held - 1);
    } else {
      this.holders.delete(frame);
      this.bytes -= frame.length;
    }
  }
}
