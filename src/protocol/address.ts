/**
 * What the per-address limits count a client address as. Shared by the
 * primary (pending heads, handshake rate) and the shards (ping sockets per
 * address, shard/ping-route.ts), so that both count the same clients.
 */

/** An IPv4-mapped IPv6 address as plain IPv4. */
export const normalizeAddress = (a: string): string => (a.startsWith('::ffff:') ? a.slice(7) : a);

/**
 * What --max-pending-per-address counts: an IPv4 address, or the /64 of an
 * IPv6 one. A subscriber usually gets a whole /64 and may use any address in
 * it, so a per-address limit on IPv6 would be a limit on nothing.
 */
export function addressKey(address: string): string {
  if (!address.includes(':')) return address;
  const plain = address.split('%', 1)[0]!.toLowerCase();
  const gap = plain.indexOf('::');
  const left = gap === -1 ? plain.split(':') : plain.slice(0, gap).split(':').filter(Boolean);
  const groups = gap === -1 || left.length >= 4 ? left : [...left, ...Array(4 - left.length).fill('0')];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
