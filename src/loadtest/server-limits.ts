/**
 * What the server's own protections did to a load test, in plain words. A
 * server guards itself against one client address and one user, and a load
 * generator is both: with a moodio-rt server's defaults, the light preset's
 * 500 msgs/s senders meet `--rate-limit 100`, and most deliveries "fail"
 * because of a limit, not because of the server's speed. The run's errors
 * tell which limit it was; this module names it and says how to run the
 * server for a benchmark.
 */

/** The flags that turn off the limits a load generator trips (`moodio-rt serve …`). */
export const BENCHMARK_SERVE_FLAGS = '--rate-limit 0 --max-pending-per-address 0 --handshake-rate-per-address 0';

export interface ServerLimitNote {
  /** The error kinds (as in `report.errors`) this note explains. */
  errors: string[];
  /** How many of them the run saw. */
  count: number;
  /** The server options that caused them. */
  options: string[];
  /** The explanation, one sentence or two. */
  text: string;
}

/**
 * Notes for the limits `errors` show (empty when none): the rate limit
 * (`server_rate_limited`, and sessions closed with 1008 for staying over it),
 * connects refused with 429 or 503.
 * @param senderRate messages per second each sender sends.
 */
export function serverLimitNotes(errors: Readonly<Record<string, number>>, senderRate: number): ServerLimitNote[] {
  const notes: ServerLimitNote[] = [];
  const limited = errors.server_rate_limited ?? 0;
  if (limited > 0) {
    const closed = errors.closed_1008 ?? 0;
    notes.push({
      errors: closed > 0 ? ['server_rate_limited', 'closed_1008'] : ['server_rate_limited'],
      count: limited + closed,
      options: ['--rate-limit', '--rate-limit-burst'],
      text:
        `The server rate-limited the generator (${limited} rate_limited error${limited === 1 ? '' : 's'}` +
        (closed > 0 ? `, ${closed} session${closed === 1 ? '' : 's'} closed with 1008 for staying over the limit` : '') +
        `): its --rate-limit (100 messages/s per user by default, after a --rate-limit-burst of 200) drops what a user sends past it, ` +
        `and each sender here sends ${senderRate}/s. Missing deliveries then measure that limit, not the server's speed.`,
    });
  }
  const refused429 = errors.connect_429 ?? 0;
  if (refused429 > 0) {
    notes.push({
      errors: ['connect_429'],
      count: refused429,
      options: ['--handshake-rate-per-address', '--connect-rate'],
      text:
        `The server refused ${refused429} connection${refused429 === 1 ? '' : 's'} with 429: its --handshake-rate-per-address ` +
        '(100 handshakes/s from one address by default) held back the generator, which connects from one address; ' +
        'with a --token-file of few users, its --connect-rate (5/s per user after a burst of 30) may have too.',
    });
  }
  const refused503 = errors.connect_503 ?? 0;
  if (refused503 > 0) {
    notes.push({
      errors: ['connect_503'],
      count: refused503,
      options: ['--max-pending-per-address', '--max-room-size', '--max-connections-per-worker'],
      text:
        `The server refused ${refused503} connection${refused503 === 1 ? '' : 's'} with 503: its --max-pending-per-address ` +
        '(64 request heads still being read 1 s after their connect, from one address, by default) or a full room or worker (--max-room-size, --max-connections-per-worker).',
    });
  }
  return notes;
}

/** The advice printed under the notes. */
export function benchmarkAdvice(): string {
  return (
    `For a benchmark, run the server under test with \`moodio-rt serve ${BENCHMARK_SERVE_FLAGS}\` ` +
    '(and --connect-rate 0 with a --token-file of few users); see "Load testing" in docs/operations.md.'
  );
}
