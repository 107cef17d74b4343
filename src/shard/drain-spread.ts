/**
 * A drain's close frames, spread over a window (`--drain-spread`).
 *
 * Every session of a draining node must reconnect somewhere. Closed all at
 * once, they land on the other nodes as one stampede of handshakes,
 * permission lookups and presence syncs, and every room of the node loses
 * all its members in the same instant. As NATS's lame-duck mode and
 * AnyCable's slow drain do, the closes are spread evenly over a window, in a
 * random order: a room loses its members one by one, and the other nodes
 * take the reconnects at a steady rate.
 *
 * Each shard spreads its own sessions over the same window, so together
 * they are spread as evenly, with no coordination between threads.
 */

/** Shuffle `items` in place (Fisher–Yates) and return it. */
export function shuffle<T>(items: T[], random: () => number = Math.random): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const held = items[i]!;
    items[i] = items[j]!;
    items[j] = held;
  }
  return items;
}

/**
 * When the `index`-th (from 0) of `count` closes is due, in ms into a
 * `windowMs` window: evenly, the first at once and the last at
 * (count − 1) / count of the window.
 */
export function closeAt(index: number, count: number, windowMs: number): number {
  return count === 0 ? 0 : (index * windowMs) / count;
}

/**
 * Call `close` for each of `items` in a random order, spread evenly over
 * `windowMs` (all at once when it is 0); resolves once the last was called.
 * One timer at a time: a tick calls every close that is due, so a window
 * shorter than one ms per item closes several per tick.
 */
export function closeSpread<T>(items: readonly T[], windowMs: number, close: (item: T) => void, random: () => number = Math.random): Promise<void> {
  const order = shuffle([...items], random);
  const count = order.length;
  const started = performance.now();
  let next = 0;
  return new Promise((resolve) => {
    const tick = (): void => {
      const elapsed = performance.now() - started;
      // The same comparison the timer was set by: a close is never found early, nor skipped.
      while (next < count && closeAt(next, count, windowMs) <= elapsed) close(order[next++]!);
      if (next >= count) {
        resolve();
        return;
      }
      setTimeout(tick, Math.max(1, started + closeAt(next, count, windowMs) - performance.now()));
    };
    tick();
  });
}
