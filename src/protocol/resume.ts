/**
 * Resume positions on the wire (issue 21): an epoch and an offset.
 *
 * - The legacy route takes them as the query `?epoch=E&offset=N` of
 *   `/ws/desktop/{id}` and `/ws/production-table/{id}`. The primary checks
 *   them before anything else of the handshake (a bad pair is `400`
 *   `invalid_resume`, and never a replay), and the shard reads them again
 *   from the head it is handed.
 * - The multiplexed route takes them as a subscribe's
 *   `"recover":{"epoch":E,"offset":N}`; a bad one is `bad_recover`.
 *
 * An epoch is 1 to 64 characters of `[A-Za-z0-9_.~-]`, the URL's
 * unreserved characters, so that it travels in a query as it is. An offset
 * is an integer from 0 to 2^53 − 1 (a JSON number keeps it exact); in a
 * query, decimal digits only. Other query members are ignored (a client may
 * add its own); `epoch` without `offset`, or the reverse, or either twice,
 * is refused.
 */

/** The longest epoch accepted. */
export const MAX_EPOCH_LENGTH = 64;

const EPOCH_PATTERN = /^[A-Za-z0-9_.~-]{1,64}$/;
const DIGITS = /^[0-9]{1,16}$/;

/** Where a client was in a room's sequence: the room's epoch and the last offset it received (0: none). */
export interface ResumePosition {
  epoch: string;
  offset: number;
}

/** What a handshake's query asks: nothing, a resume from a position, or something refused (with why). */
export type ResumeQuery = { kind: 'none' } | { kind: 'resume'; position: ResumePosition } | { kind: 'bad'; detail: string };

const NONE: ResumeQuery = { kind: 'none' };

/** Whether `value` is an epoch as the server makes them and accepts them back. */
export function validEpoch(value: unknown): value is string {
  return typeof value === 'string' && EPOCH_PATTERN.test(value);
}

/** Whether `value` is an offset: an integer from 0 to 2^53 − 1. */
export function validOffset(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** The resume parameters of a request target (`/ws/desktop/x?epoch=…&offset=…`). */
export function parseResumeQuery(url: string): ResumeQuery {
  const q = url.indexOf('?');
  if (q === -1) return NONE;
  let epoch: string | undefined;
  let offset: string | undefined;
  for (const part of url.slice(q + 1).split('&')) {
    const eq = part.indexOf('=');
    const key = eq === -1 ? part : part.slice(0, eq);
    if (key !== 'epoch' && key !== 'offset') continue;
    if ((key === 'epoch' ? epoch : offset) !== undefined) return { kind: 'bad', detail: `${key} given twice` };
    const value = eq === -1 ? '' : part.slice(eq + 1);
    if (key === 'epoch') epoch = value;
    else offset = value;
  }
  if (epoch === undefined && offset === undefined) return NONE;
  if (epoch === undefined || offset === undefined) return { kind: 'bad', detail: 'epoch and offset go together' };
  // Only unreserved characters are accepted, so there is nothing to percent-decode: a `%` is refused.
  if (!EPOCH_PATTERN.test(epoch)) return { kind: 'bad', detail: `epoch must be 1 to ${MAX_EPOCH_LENGTH} characters of [A-Za-z0-9_.~-]` };
  const n = DIGITS.test(offset) ? Number(offset) : -1;
  if (!validOffset(n)) return { kind: 'bad', detail: 'offset must be an integer from 0 to 2^53 - 1' };
  return { kind: 'resume', position: { epoch, offset: n } };
}

/** A subscribe's `recover` member: the position, or null when it is not `{epoch, offset}` as {@link validEpoch} and {@link validOffset} say. */
export function parseRecover(value: unknown): ResumePosition | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const { epoch, offset } = value as Record<string, unknown>;
  return validEpoch(epoch) && validOffset(offset) ? { epoch, offset } : null;
}

/** The members a join answer (`room_joined`, `subscribed`) carries: `,"epoch":…,"offset":…`, and `,"recovered":…` when a resume was asked. */
export function positionMembers(latest: ResumePosition, recovered: boolean | undefined): string {
  return `,"epoch":${JSON.stringify(latest.epoch)},"offset":${latest.offset}${recovered === undefined ? '' : `,"recovered":${recovered}`}`;
}
