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
    // A moodio-rt server names each refusal's reason (refused_<reason>); another server leaves the general note.
    const permission = (errors.refused_permission_unavailable ?? 0) + (errors.refused_permission_busy ?? 0);
    if (permission > 0) {
      notes.push({
        errors: ['refused_permission_unavailable', 'refused_permission_busy'].filter((kind) => (errors[kind] ?? 0) > 0),
        count: permission,
        options: ['--permission-api-base', '--permission-concurrency', '--permission-queue'],
        text:
          `The server could not ask its permission API (${permission} connection${permission === 1 ? '' : 's'} refused with 503 ` +
          'permission_unavailable or permission_busy; its log says so): the app at its --permission-api-base did not answer in time, ' +
          'failed, or had more lookups waiting than --permission-queue allows. This is not a full room. Start the permission API, ' +
          'or run the server under test with --permissions-from-token (the token decides) or --dev.',
      });
    }
    const named: [string, string][] = [
      ['refused_too_many_pending_from_address', '--max-pending-per-address (request heads being read from one address)'],
      ['refused_room_full', '--max-room-size (a full room)'],
      ['refused_worker_full', '--max-connections-per-worker (a full worker)'],
    ];
    const seen = named.filter(([kind]) => (errors[kind] ?? 0) > 0);
    const explained = permission + seen.reduce((sum, [kind]) => sum + errors[kind]!, 0);
    if (seen.length > 0) {
      notes.push({
        errors: seen.map(([kind]) => kind),
        count: explained - permission,
        options: seen.map(([, text]) => text.split(' ')[0]!),
        text: `The server refused ${explained - permission} connection${explained - permission === 1 ? '' : 's'} with 503 because of its ${seen.map(([kind, text]) => `${text}: ${errors[kind]}`).join('; ')}.`,
      });
    }
    if (explained < refused503) {
      notes.push({
        errors: ['connect_503'],
        count: refused503 - explained,
        options: ['--max-pending-per-address', '--max-room-size', '--max-connections-per-worker'],
        text:
          `The server refused ${refused503 - explained} connection${refused503 - explained === 1 ? '' : 's'} with 503: its --max-pending-per-address ` +
          '(64 request heads still being read 1 s after their connect, from one address, by default) or a full room or worker (--max-room-size, --max-connections-per-worker).',
      });
    }
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
