/**
 * Signatures on the federation bus (`--federation-key`). NATS itself lets
 * any client with publish rights say anything on any subject; a shared key
 * lets a node tell its fleet's messages from anyone else's. Every message a
 * moodio-rt node publishes carries, in NATS headers (which the Go relay
 * ignores, so the wire format stays its own):
 *
 *   Moodio-Stamp      <ms since the epoch>.<id unique to this message>
 *   Moodio-Signature  HMAC-SHA256 of subject, stamp, roster header and payload
 *
 * The stamp is inside what is signed: a receiver refuses a stamp outside its
 * window and an id it has seen (shard/bus-replay.ts), so a captured message
 * cannot be played again.
 *
 * What a node requires a signature for (shard/federation/): everything,
 * unless `--federation-unsigned-rooms admit` lets room events in unsigned
 * from nodes that never signed (Go relays).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'Moodio-Signature';
export const STAMP_HEADER = 'Moodio-Stamp';

/** A message's time (its sender's clock, ms since the epoch) and id. */
export interface Stamp {
  time: number;
  id: string;
}

const STAMP_PATTERN = /^(\d{1,15})\.([A-Za-z0-9_-]{1,64})$/;

/** The `Moodio-Stamp` value for `time` and `id` (`id`: 1–64 of `A-Za-z0-9_-`). */
export function formatStamp(time: number, id: string): string {
  return `${time}.${id}`;
}

/** A `Moodio-Stamp` value read back, or null when it is not one. */
export function parseStamp(value: string | undefined): Stamp | null {
  if (value === undefined || value.length > 80) return null;
  const match = STAMP_PATTERN.exec(value);
  return match === null ? null : { time: Number(match[1]), id: match[2]! };
}

export class BusSigner {
  private readonly key: Buffer;

  constructor(key: string) {
    this.key = Buffer.from(key, 'utf8');
  }

  private mac(subject: string, data: string | Uint8Array, stamp: string, roster: string): Buffer {
    // None of subject, stamp and roster can hold a newline (NATS subjects and header values), so the input reads back one way only.
    const hmac = createHmac('sha256', this.key);
    hmac.update(subject);
    hmac.update('\n');
    hmac.update(stamp);
    hmac.update('\n');
    hmac.update(roster);
    hmac.update('\n');
    hmac.update(data);
    return hmac.digest();
  }

  /** The signature of a message on `subject` with payload `data`, its `Moodio-Stamp` value `stamp`, and `roster` (a header it covers). */
  sign(subject: string, data: string | Uint8Array, stamp: string, roster = ''): string {
    return this.mac(subject, data, stamp, roster).toString('base64url');
  }

  /** True when `signature` is this key's for the message (compared in constant time). */
  verify(subject: string, data: Uint8Array, signature: string | undefined, stamp: string, roster = ''): boolean {
    if (signature === undefined || signature.length !== 43) return false;
    const given = Buffer.from(signature, 'base64url');
    const expected = this.mac(subject, data, stamp, roster);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }
}
