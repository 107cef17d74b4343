/**
 * The history a fleet shares (`--history-stream`): one NATS JetStream stream
 * that captures every room subject (`room.>`, the Go relay's wire as it is),
 * so that a client that was on node A resumes on node B. The stream's
 * sequence is the offset of an event (strictly increasing per subject, not
 * consecutive), and the stream's identity (name and creation time) is the
 * epoch: every node reads the same one, and a recreated stream is a new one.
 *
 * How events reach nodes, in stream order and with their sequence: a node
 * follows a room it holds members of with an ordered consumer filtered to
 * the room's subject ({@link RoomStream.follow}), starting right after the
 * sequence it last delivered. The client's ordered consumer hands each
 * message on once, in order, and recreates itself from the next sequence
 * when it sees a gap. A stream that republishes (RePublish) was measured
 * first and dropped: on nats-server 2.9.10 it stores about 2,800 messages a
 * second and slows core delivery on `room.>` for everyone, Go relays
 * included (docs/performance.md).
 *
 * The rule for a resume at (epoch, N), exact and never a wrong replay:
 * recovered iff the epoch is the stream's and the stream's first sequence,
 * read after the replay was fetched, is at most N + 1. The stream only ever
 * discards from its front (limits with `discard: old`, no per-subject
 * limit), so then nothing after N was discarded, of any subject. A message
 * deleted or a subject purged by hand breaks that; recreate the stream
 * instead (a new epoch).
 *
 * Everything read here is as untrusted as the bus: callers validate and
 * authenticate it exactly as a core message (its original subject and
 * headers are kept).
 */
import type { MsgHdrs, NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type StreamConfig, type StreamInfo } from '@nats-io/jetstream';
import { ROOM_SUBJECT_PREFIX } from '../../protocol/bus.ts';

/** What the stream keeps (`--history-stream*` options). */
export interface HistoryStreamConfig {
  /** The stream's name (letters, digits, `-`, `_`). */
  name: string;
  /** `memory`: fast, lost with a nats-server restart (a new epoch); `file`: kept on its disk. */
  storage: 'memory' | 'file';
  /** Messages older than this are discarded (ms). */
  maxAgeMs: number;
  /** Bytes the whole stream keeps, oldest discarded first. */
  maxBytes: number;
  /** Messages the whole stream keeps, oldest discarded first. */
  maxMsgs: number;
  /** The largest message stored (a bus message: --max-message-size plus the envelope). */
  maxMsgSize: number;
}

/** A message as the stream stored it: its original subject and headers, for the bus's validation and signatures. */
export interface StoredEvent {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers: MsgHdrs | undefined;
}

/** Why a replay is refused. */
export const ReplayRefusal = {
  /** The epoch is not the stream's (another stream, a recreated one, or a node's local epoch). */
  EPOCH: 'epoch',
  /** The offset is past what the stream holds for the room. */
  AHEAD: 'ahead',
  /** Something after the offset may have been discarded (age, bytes, count). */
  DISCARDED: 'discarded',
  /** More than the replay's bounds (events or bytes): the client reloads instead. */
  TOO_LARGE: 'too_large',
  /** The stream could not be read (NATS or JetStream down, a time-out). */
  UNAVAILABLE: 'unavailable',
} as const;
export type ReplayRefusalValue = (typeof ReplayRefusal)[keyof typeof ReplayRefusal];

export type ReplayResult = { ok: true; events: StoredEvent[] } | { ok: false; reason: ReplayRefusalValue };

/** Bounds of one replay. */
export interface ReplayBounds {
  maxEvents: number;
  maxBytes: number;
  /** How long the fetch may take in all (ms). */
  timeoutMs: number;
}

/** A stream name JetStream takes and a subject token can carry. */
export const STREAM_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * The epoch of a stream: its name and creation time, the same on every node,
 * new when it is recreated. In the characters and length an epoch has on
 * the wire (protocol/resume.ts): `{name}~{creation time's digits}`, the
 * name cut to 36 characters.
 */
export function epochOf(info: Pick<StreamInfo, 'created'> & { config: Pick<StreamConfig, 'name'> }): string {
  return `${info.config.name.slice(0, 36)}~${String(info.created)
    .replace(/[^0-9]/g, '')
    .slice(0, 27)}`;
}

/** The stream configuration a node wants: every node computes the same from the same options. */
export function streamConfig(config: HistoryStreamConfig): Partial<StreamConfig> & { name: string } {
  return {
    name: config.name,
    subjects: [`${ROOM_SUBJECT_PREFIX}>`],
    retention: 'limits' as StreamConfig['retention'],
    storage: config.storage as StreamConfig['storage'],
    // Oldest first and never per subject: what is kept is always a suffix of the sequence (the recovery rule rests on it).
    discard: 'old' as StreamConfig['discard'],
    max_age: config.maxAgeMs * 1_000_000,
    max_bytes: config.maxBytes,
    max_msgs: config.maxMsgs,
    max_msgs_per_subject: -1,
    max_msg_size: config.maxMsgSize,
    num_replicas: 1,
    allow_direct: true,
    // Nodes publish without a message id: no duplicate window to keep.
    duplicate_window: 1_000_000_000,
  };
}

/** The fields {@link streamConfig} manages that differ in `have` (empty: nothing to update). */
function differences(want: Partial<StreamConfig>, have: StreamConfig): string[] {
  const out: string[] = [];
  const keys = [
    'subjects',
    'storage',
    'discard',
    'max_age',
    'max_bytes',
    'max_msgs',
    'max_msgs_per_subject',
    'max_msg_size',
    'allow_direct',
    'republish',
  ] as const;
  for (const key of keys) {
    const a = JSON.stringify(want[key] ?? null);
    const b = JSON.stringify(
      key === 'republish' && have.republish !== undefined ? { src: have.republish.src, dest: have.republish.dest } : (have[key] ?? null),
    );
    if (a !== b) out.push(key);
  }
  return out;
}

export class RoomStream {
  readonly config: HistoryStreamConfig;
  private readonly nc: NatsConnection;
  private readonly js: JetStreamClient;
  private jsmPromise: Promise<JetStreamManager> | null = null;
  private currentEpoch: string | null = null;

  constructor(nc: NatsConnection, config: HistoryStreamConfig) {
    this.nc = nc;
    this.config = config;
    this.js = jetstream(nc);
  }

  /** The stream's epoch as last read ({@link ensure}), or null before. */
  get epoch(): string | null {
    return this.currentEpoch;
  }

  private jsm(): Promise<JetStreamManager> {
    if (this.jsmPromise === null) {
      this.jsmPromise = jetstreamManager(this.nc, { checkAPI: false });
      this.jsmPromise.catch(() => (this.jsmPromise = null));
    }
    return this.jsmPromise;
  }

  /**
   * Create the stream, or bring an existing one to this node's limits, and
   * read its epoch. Idempotent, and racing nodes agree: JetStream creates a
   * stream once, answering the same configuration as success, and every
   * node reads the epoch from the stream it finds. Returns what changed
   * (`created`, `updated`, or `kept`).
   */
  async ensure(): Promise<{ epoch: string; outcome: 'created' | 'updated' | 'kept'; fields: string[] }> {
    const jsm = await this.jsm();
    const want = streamConfig(this.config);
    let info: StreamInfo | null = await jsm.streams.info(this.config.name).catch((err: unknown) => {
      if (isStreamNotFound(err)) return null;
      throw err;
    });
    let outcome: 'created' | 'updated' | 'kept' = 'kept';
    let fields: string[] = [];
    if (info === null) {
      try {
        info = await jsm.streams.add(want);
        outcome = 'created';
      } catch (err) {
        // Another node created it first, perhaps with other limits: take it as found (else the refusal stands, e.g. subjects another stream captures).
        info = await jsm.streams.info(this.config.name).catch(() => {
          throw err;
        });
      }
    }
    fields = differences(want, info.config);
    if (fields.length > 0) {
      info = await jsm.streams.update(this.config.name, want);
      outcome = outcome === 'created' ? 'created' : 'updated';
    }
    this.currentEpoch = epochOf(info);
    return { epoch: this.currentEpoch, outcome, fields };
  }

  /** The stream's epoch and first sequence now. */
  async state(): Promise<{ epoch: string; firstSeq: number; lastSeq: number }> {
    const jsm = await this.jsm();
    const info = await jsm.streams.info(this.config.name);
    return { epoch: epochOf(info), firstSeq: info.state.first_seq, lastSeq: info.state.last_seq };
  }

  /** The sequence of the last message stored on `subject` (0 when none is). */
  async latest(subject: string): Promise<number> {
    const jsm = await this.jsm();
    const msg = await jsm.direct.getMessage(this.config.name, { last_by_subj: subject }).catch((err: unknown) => {
      if (isNotFound(err)) return null;
      throw err;
    });
    return msg === null ? 0 : msg.seq;
  }

  /**
   * Follow `subject` from the message after `after` (the sequence this node
   * last delivered, or {@link latest} when it starts): `onMessage` gets each
   * one, in stream order, once. One ordered consumer on the server per
   * followed room; `stop()` ends it (the server forgets it at once, or after
   * its inactivity threshold if this node is gone).
   */
  async follow(subject: string, after: number, onMessage: (event: StoredEvent) => void): Promise<{ stop(): void }> {
    // A single filter subject (filter_subjects as an array needs nats-server 2.10).
    const consumer = await this.js.consumers.get(this.config.name, { filter_subjects: subject, opt_start_seq: after + 1 });
    const messages = await consumer.consume({
      max_messages: 256,
      callback: (m) => onMessage({ seq: m.seq, subject: m.subject, data: m.data, headers: m.headers }),
    });
    return {
      stop: () => {
        void messages.close().catch(() => undefined);
        consumer.delete().catch(() => undefined);
      },
    };
  }

  /**
   * The messages of `subject` after `after`, up to and including `upTo` (the
   * last one the caller delivered), if the stream still holds every one of
   * them; otherwise why not. Never part of them.
   */
  async replay(subject: string, epoch: string, after: number, upTo: number, bounds: ReplayBounds): Promise<ReplayResult> {
    if (after > upTo) return { ok: false, reason: ReplayRefusal.AHEAD };
    const deadline = Date.now() + bounds.timeoutMs;
    try {
      const before = await this.state();
      if (before.epoch !== epoch) return { ok: false, reason: ReplayRefusal.EPOCH };
      if (before.firstSeq > after + 1) return { ok: false, reason: ReplayRefusal.DISCARDED };
      const events: StoredEvent[] = [];
      if (after < upTo) {
        const fetched = await this.fetch(subject, after, upTo, bounds, deadline, events);
        if (fetched !== null) return { ok: false, reason: fetched };
      }
      // Discarding runs from the front: if the front is still at or before after + 1 now, nothing after `after` went.
      const now = await this.state();
      if (now.epoch !== epoch) return { ok: false, reason: ReplayRefusal.EPOCH };
      if (now.firstSeq > after + 1) return { ok: false, reason: ReplayRefusal.DISCARDED };
      return { ok: true, events };
    } catch {
      return { ok: false, reason: ReplayRefusal.UNAVAILABLE };
    }
  }

  /** Fetch (after, upTo] of `subject` into `events` with an ordered consumer; a refusal, or null when all came. */
  private async fetch(
    subject: string,
    after: number,
    upTo: number,
    bounds: ReplayBounds,
    deadline: number,
    events: StoredEvent[],
  ): Promise<ReplayRefusalValue | null> {
    // A single filter subject (filter_subjects needs nats-server 2.10).
    const consumer = await this.js.consumers.get(this.config.name, { filter_subjects: subject, opt_start_seq: after + 1 });
    let bytes = 0;
    try {
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) return ReplayRefusal.UNAVAILABLE;
        const batch = await consumer.fetch({ max_messages: Math.min(256, bounds.maxEvents + 1), expires: Math.max(1000, Math.min(left, 30_000)) });
        let got = 0;
        let done = false;
        for await (const m of batch) {
          got++;
          if (m.seq > upTo) {
            done = true;
            break;
          }
          bytes += m.data.byteLength;
          if (events.length >= bounds.maxEvents || bytes > bounds.maxBytes) return ReplayRefusal.TOO_LARGE;
          events.push({ seq: m.seq, subject: m.subject, data: m.data, headers: m.headers });
          if (m.seq === upTo || m.info.pending === 0) {
            done = true;
            break;
          }
        }
        if (done) break;
        if (got === 0) break;
      }
    } finally {
      consumer.delete().catch(() => undefined);
    }
    // The caller delivered upTo itself: a stream that holds less than that is not the one it heard.
    if ((events.at(-1)?.seq ?? after) !== upTo) return ReplayRefusal.DISCARDED;
    return null;
  }
}

function isStreamNotFound(err: unknown): boolean {
  return (
    (err as { name?: string }).name === 'StreamNotFoundError' ||
    (err as { code?: number }).code === 10059 ||
    /stream not found/i.test(String((err as Error).message))
  );
}

function isNotFound(err: unknown): boolean {
  return isStreamNotFound(err) || (err as { code?: number | string }).code === 404 || /no message found|not found/i.test(String((err as Error).message));
}
