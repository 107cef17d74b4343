/**
 * 32-bit FNV-1a over a string's UTF-16 code units (ids are ASCII, so code
 * units are bytes). Stable across processes, versions and platforms: the
 * router sends the same desktop to the same shard for a given worker count,
 * and the per-user connection sketch indexes one of its rows with it.
 */
export function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}
