/**
 * Signatures on the federation bus (`--federation-key`). NATS itself lets
 * any client with publish rights say anything on any subject; a shared key
 * lets a node tell its fleet's messages from anyone else's. Every message a
 * moodio-rt node publishes carries an HMAC-SHA256 of its subject, payload
 * and roster header in a NATS header, which the Go relay ignores, so the
 * wire format stays its own.
 *
 * What a node requires a signature for (shard/federation.ts): heartbeats,
 * server API calls and their answers, and presence-sync session lists.
 * Room events are taken unsigned from nodes that never sent a signed
 * heartbeat (a Go relay), and must be signed once a node is known as a
 * moodio-rt peer.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'Moodio-Signature';

export class BusSigner {
  private readonly key: Buffer;

  constructor(key: string) {
    this.key = Buffer.from(key, 'utf8');
  }

  private mac(subject: string, data: string | Uint8Array, extra: string): Buffer {
    const hmac = createHmac('sha256', this.key);
    hmac.update(subject);
    hmac.update('\n');
    hmac.update(extra);
    hmac.update('\n');
    hmac.update(data);
    return hmac.digest();
  }

  /** The signature of a message on `subject` with payload `data` (and `extra`, a header it covers). */
  sign(subject: string, data: string | Uint8Array, extra = ''): string {
    return this.mac(subject, data, extra).toString('base64url');
  }

  /** True when `signature` is this key's for the message (compared in constant time). */
  verify(subject: string, data: Uint8Array, signature: string | undefined, extra = ''): boolean {
    if (signature === undefined || signature.length !== 43) return false;
    const given = Buffer.from(signature, 'base64url');
    const expected = this.mac(subject, data, extra);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }
}
