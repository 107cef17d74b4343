/**
 * The rooms of a shard that follow the fleet's stream (`--history-stream`,
 * issue 21): their relayed events, this node's own included, reach their
 * members from the stream (room-stream.ts), in stream order, with the
 * stream's sequence as their offset, so that every node gives an event the
 * same offset and a client resumes on any node.
 *
 * - A room follows the stream from its first local member on (a member
 *   joins once the follow started: its `room_joined` carries the stream's
 *   epoch and the last sequence delivered), until the federation drops it.
 * - A relayed event is only published: the stream captures it (`room.>`),
 *   and this node's consumer hands it back. Heard on the core subscription,
 *   it is left to the stream (room-events.ts). Presence stays on core NATS
 *   (it is in no history, and carries no offset).
 * - This node's own events are told from forgeries by their bytes: each
 *   one published is awaited back once; a message with our node id that is
 *   not one of them is dropped as forged, as on the bus.
 * - A resume from a position older than the room's window here is read
 *   from the stream first ({@link StreamRooms.prepare}), validated as the
 *   bus is, and put in front of the window; the join then replays it
 *   through the core's replay machinery (replay.ts).
 * - The stream recreated (a memory stream after a nats-server restart: a
 *   new epoch), or a follow that finds the stream's front past what it
 *   delivered: the room's members are closed to resume (`lost`), and learn
 *   `recovered: false`.
 */
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import type { ResumePosition } from '../../protocol/resume.ts';
import type { Room } from '../room-index.ts';
import type { StreamLog } from '../stream-log.ts';
import type { NatsLink } from './link.ts';
import { RoomStream, type HistoryStreamConfig, type StoredEvent } from './room-stream.ts';
import type { RoomEvents } from './room-events.ts';
import type { RemoteRooms } from './rooms.ts';
import type { FedRoom } from './types.ts';

/** Published events of a room awaited back from the stream; past this, the oldest are given up (they never reached the stream). */
const MAX_OWN_PENDING = 4096;
/** How long a resume's read of the stream may take. */
export const STREAM_REPLAY_TIMEOUT_MS = 5000;

export interface StreamRoomsOptions {
  link: NatsLink;
  rooms: RemoteRooms;
  events: RoomEvents;
  log: StreamLog;
  config: HistoryStreamConfig;
  /** A resume reads at most this many events and bytes from the stream (else `recovered: false`). */
  replayEvents: number;
  replayBytes: number;
  /** A relayed event to the room's members here but `exceptId`, with its offset. */
  deliver: (room: Room, legacyText: string, transientKey: string | undefined, offset: number, exceptId: string, exceptUserId: string | undefined) => void;
  /** The room's members here cannot be kept whole (a new epoch, a gap): close them so that they resume. */
  lost: (roomKey: string) => void;
  transientTypes: ReadonlySet<string>;
}

interface Follow {
  readonly room: FedRoom;
  ready: Promise<void>;
  handle: { stop(): void } | null;
  stopped: boolean;
  /** What this node published on the room's subject and has not had back, oldest first. */
  own: string[];
  /** The epoch of the stream it follows, once read (null while starting). */
  epoch: string | null;
}

const decoder = new TextDecoder();
/** The `sessionId` of the server's own events (server API publishes). */
const SERVER_ID = 'server';

export class StreamRooms {
  private readonly options: StreamRoomsOptions;
  private stream: RoomStream | null = null;
  private ensuring: Promise<string | null> | null = null;
  /** Room key → its follow (starting or live). */
  private readonly follows = new Map<string, Follow>();
  /** Room key → the read from the stream under way for a resume (the furthest back), which later resumes from after it wait for. */
  private readonly reading = new Map<string, { from: number; done: Promise<void> }>();
  /** Subject → the follow, for this node's publishes. */
  private readonly bySubject = new Map<string, Follow>();

  constructor(options: StreamRoomsOptions) {
    this.options = options;
    options.events.streamed = (room) => this.follows.get(room.desktopId)?.room === room;
    // While the bus is down, a room's events are delivered here without an offset (nothing published would come back).
    options.log.busUp = () => options.link.connected && !options.link.closing;
    options.link.onSent = (subject, data) => {
      const follow = this.bySubject.get(subject);
      if (follow === undefined) return;
      follow.own.push(data);
      if (follow.own.length > MAX_OWN_PENDING) follow.own.shift();
    };
  }

  /** The bus is up (first time): make or find the stream, read its epoch. */
  connected(nc: NatsConnection): void {
    this.stream = new RoomStream(nc, this.options.config);
    this.ensuring = null;
    void this.ensure();
  }

  /** Back from an outage: the stream may be another one now (a memory stream after a nats-server restart). */
  reconnected(): void {
    this.ensuring = null;
    void this.ensure();
  }

  private ensure(): Promise<string | null> {
    const stream = this.stream;
    if (stream === null) return Promise.resolve(null);
    if (this.ensuring === null) {
      this.ensuring = stream.ensure().then(
        ({ epoch, outcome }) => {
          this.epochRead(epoch, outcome);
          return epoch;
        },
        (err: unknown) => {
          this.ensuring = null;
          this.options.link.log.warn('history_stream_unavailable', { stream: this.options.config.name, message: (err as Error).message });
          return null;
        },
      );
    }
    return this.ensuring;
  }

  /**
   * The stream was read (at connect, after every reconnect). A new epoch
   * voids every position handed out before; a room that does not follow
   * this stream (its follow failed, or it began with another) follows it
   * now, and its members here are closed to resume (`recovered: false`,
   * and the epoch they need).
   */
  private epochRead(epoch: string, outcome: string): void {
    const before = this.options.log.epoch;
    if (this.options.log.setEpoch(epoch)) this.options.link.log.info('history_stream_epoch', { stream: this.options.config.name, epoch, outcome, before });
    for (const room of [...this.options.rooms.byId.values()]) {
      const known = this.follows.get(room.desktopId);
      // Still starting (it reads this epoch), or following this stream already.
      if (known !== undefined && known.room === room && (known.epoch === null || known.epoch === epoch)) continue;
      if (known !== undefined) this.stop(known);
      if (this.options.rooms.localRoom(room) !== undefined) this.options.lost(room.desktopId);
      void this.follow(room).catch(() => undefined);
    }
  }

  /**
   * Before a member joins `room`: it follows the stream, and a resume from
   * a position the window here does not reach is read from the stream.
   * Never rejects: what could not be done shows as `recovered: false`.
   */
  async prepare(room: FedRoom, resume: ResumePosition | undefined): Promise<void> {
    try {
      await this.follow(room);
      if (resume === undefined) return;
      const log = this.options.log;
      const key = room.desktopId;
      if (resume.epoch !== log.epoch || log.covers(key, resume)) return;
      // A crowd resuming one room reads the stream once: a read from this position or before, under way, serves them all.
      const pending = this.reading.get(key);
      if (pending !== undefined && pending.from <= resume.offset) {
        await pending.done;
        if (log.covers(key, resume)) return;
      }
      const upTo = log.base(key);
      if (upTo === null || resume.offset >= upTo || this.stream === null) return;
      const read = { from: resume.offset, done: this.read(room, resume, upTo) };
      if (pending === undefined || read.from < pending.from) this.reading.set(key, read);
      try {
        await read.done;
      } finally {
        if (this.reading.get(key) === read) this.reading.delete(key);
      }
    } catch (err) {
      // The stream could not be read: the join says recovered: false.
      this.options.link.log.warn('history_stream_replay_failed', { room: room.desktopId, message: (err as Error).message });
    }
  }

  /** Read (resume, upTo] of `room` from the stream, checked as the bus is, into the front of its window. */
  private async read(room: FedRoom, resume: ResumePosition, upTo: number): Promise<void> {
    const key = room.desktopId;
    const result = await this.stream!.replay(room.subject, resume.epoch, resume.offset, upTo, {
      maxEvents: this.options.replayEvents,
      maxBytes: this.options.replayBytes,
      timeoutMs: STREAM_REPLAY_TIMEOUT_MS,
    });
    if (!result.ok) {
      this.options.link.log.info('history_stream_replay_refused', { room: key, reason: result.reason });
      return;
    }
    const entries: { offset: number; text: string }[] = [];
    for (const event of result.events) {
      const taken = this.options.events.fromStream(room, asMsg(event), false, true);
      if (taken !== null) entries.push({ offset: event.seq, text: taken.text });
    }
    this.options.log.prepend(key, resume.offset, upTo, entries);
    this.options.link.log.info('history_stream_read', { room: key, after: resume.offset, upTo, events: entries.length });
  }

  /** Follow `room` (once): resolves once its window began, so that a joiner's position is the stream's. */
  follow(room: FedRoom): Promise<void> {
    const key = room.desktopId;
    const known = this.follows.get(key);
    if (known !== undefined && known.room === room) return known.ready;
    if (known !== undefined) this.stop(known);
    const follow: Follow = { room, ready: Promise.resolve(), handle: null, stopped: false, own: [], epoch: null };
    this.follows.set(key, follow);
    this.bySubject.set(room.subject, follow);
    follow.ready = (async () => {
      const epoch = await this.ensure();
      const stream = this.stream;
      if (epoch === null || stream === null) throw new Error('the history stream is unavailable');
      const after = await stream.latest(room.subject);
      if (follow.stopped) return;
      follow.epoch = this.options.log.epoch;
      this.options.log.begin(key, after);
      const handle = await stream.follow(room.subject, after, (event) => this.onEvent(follow, event));
      if (follow.stopped) handle.stop();
      else follow.handle = handle;
    })();
    follow.ready.catch((err: unknown) => {
      if (this.follows.get(key) !== follow) return;
      this.stop(follow);
      this.options.link.log.warn('history_stream_follow_failed', { room: key, message: (err as Error).message });
    });
    return follow.ready;
  }

  /** The federation dropped the room (no member here any more): its follow ends. */
  dropped(roomKey: string): void {
    const follow = this.follows.get(roomKey);
    if (follow !== undefined) this.stop(follow);
  }

  /** Closing: every follow ends. */
  close(): void {
    for (const follow of [...this.follows.values()]) this.stop(follow);
  }

  private stop(follow: Follow): void {
    follow.stopped = true;
    follow.handle?.stop();
    follow.handle = null;
    const key = follow.room.desktopId;
    if (this.follows.get(key) === follow) {
      this.follows.delete(key);
      this.options.log.end(key);
    }
    if (this.bySubject.get(follow.room.subject) === follow) this.bySubject.delete(follow.room.subject);
  }

  private onEvent(follow: Follow, event: StoredEvent): void {
    if (follow.stopped || this.options.link.closing) return;
    const link = this.options.link;
    link.receive(asMsg(event), (msg) => {
      const own = this.takeOwn(follow, event.data);
      const taken = this.options.events.fromStream(follow.room, msg, own, false);
      if (taken === null) return;
      const key = follow.room.desktopId;
      this.options.log.append(key, event.seq, taken.text, false);
      const local = this.options.rooms.localRoom(follow.room);
      if (local === undefined) return;
      const transientKey = this.options.transientTypes.has(taken.type) ? `${taken.sessionId}\n${taken.type}` : undefined;
      // The sender, when it is here, does not get its own event back (as on a single node); a server API publish may leave a user out.
      this.options.deliver(
        local,
        taken.text,
        transientKey,
        event.seq,
        own ? taken.sessionId : '',
        taken.sessionId === SERVER_ID ? exceptUserOf(msg.data) : undefined,
      );
    });
  }

  /** Whether `data` is one of this node's publishes awaited back (then it is taken off, with any older one that never came). */
  private takeOwn(follow: Follow, data: Uint8Array): boolean {
    if (follow.own.length === 0) return false;
    const text = decoder.decode(data);
    const index = follow.own.indexOf(text);
    if (index === -1) return false;
    follow.own.splice(0, index + 1);
    return true;
  }
}

/** The user a server API publish leaves out (`"x"` beside the envelope's event, Federation.publishToStream). */
function exceptUserOf(data: Uint8Array): string | undefined {
  try {
    const x = (JSON.parse(decoder.decode(data)) as { x?: unknown }).x;
    return typeof x === 'string' ? x : undefined;
  } catch {
    return undefined;
  }
}

function asMsg(event: StoredEvent): Msg {
  return { subject: event.subject, data: event.data, headers: event.headers, reply: '' } as unknown as Msg;
}
