/**
 * Waiting for something, at most so long: used by the shard's drain (its
 * sessions' closing handshakes) and the primary's (its shards' reports).
 */

/** Resolves when `work` settles or `ms` have passed, whichever is first; true when `work` won. The timer is cleared either way. */
export async function withDeadline(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, ms, false);
  });
  try {
    return await Promise.race([work.then(() => true), deadline]);
  } finally {
    clearTimeout(timer);
  }
}
