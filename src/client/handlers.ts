/** Sets of handlers by key, as both clients keep them for `on()` and `onEvent()`. */

export type Handler<T> = (value: T) => void;

/** Add `handler` under `key`; returns the function that removes it. */
export function addHandler<K, V>(map: Map<K, Set<Handler<V>>>, key: K, handler: Handler<V>): () => void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(handler);
  return () => set.delete(handler);
}

/** Call the handlers under `key` with `value`: a copy of the set, so that a handler may remove itself or add another. */
export function callHandlers<K, V>(map: Map<K, Set<Handler<V>>>, key: K, value: V): void {
  const set = map.get(key);
  if (set) for (const handler of [...set]) handler(value);
}
