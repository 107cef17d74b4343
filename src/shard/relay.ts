/**
 * The protocol inside a room: presence events on join and leave, and client
 * events validated, stamped with the sender's identity and relayed to every
 * other member. The hot path is {@link Relay.onMessage}: one scan of the
 * JSON (json-scan.ts), one string build, one frame, the same bytes written
 * to each recipient.
 */
import type { Logger } from '../log.ts';
import { CloseCode, ErrorCode, LOGGED_TYPES, MAX_TYPE_LENGTH, RESERVED_TYPES, type ErrorCodeValue } from '../protocol/events.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { JsonScanner, Scan } from '../protocol/json-scan.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { legacyErrorText, legacyEventText, legacyText, roomJoinedText, withOffset, type RoomEvent } from '../protocol/event-frames.ts';
import type { ResumePosition } from '../protocol/resume.ts';
import { Delivery, type Backpressure } from './backpressure.ts';
import type { RateLimiter } from './rate-limiter.ts';
import type { Room, RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';
import { closeAndCut, pauseReads } from './socket-reads.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

export interface RelayOptions {
  rooms: RoomIndex;
  out: WriteCoalescer<Session>;
  log: Logger;
  limiter: RateLimiter;
  metrics: MetricsSlot;
  backpressure: Backpressure;
  /** Types a recipient over its budget only needs the newest of (asset_dragging, --coalesce-types). */
  transientTypes: ReadonlySet<string>;
  /** Types a viewer may not send (`--mutation-types`): dropped with one Set lookup. */
  mutationTypes: ReadonlySet<string>;
  /** The rooms' multiplexed subscribers (shard/topic-rooms.ts), here and on other shards. */
  topics?: TopicFanout;
  /** Offsets, history and resumes (shard/recovery.ts). */
  recovery?: RelayRecovery;
}

/** What the relay needs of recovery (recovery.ts): an offset for each event it relays, and the position a joiner starts from. */
export interface RelayRecovery {
  /** Events are kept: an event that reaches nobody now is still stamped, for those who resume. */
  readonly recording: boolean;
  /** The offset of a relayed event of `roomKey` (`text`: its legacy framing, no offset). */
  stamp(roomKey: string, text: string, nullPayload: boolean): number;
  /** The legacy frame, with its offset, of the event just stamped: built from the bytes the history keeps, or null when it keeps none. */
  newestFrame(roomKey: string, offset: number): Buffer | null;
  /** `room_joined`'s position members for `session`, whose replay starts when it resumed from a position that can be served. */
  joinLegacy(session: Session, resume: ResumePosition | undefined): string;
  /** Whether the room's relayed events come back from the fleet's stream, to every member here (`--history-stream`). */
  streamed(roomKey: string): boolean;
  /** The fleet shares a stream (`--history-stream`): null without it. */
  readonly stream: object | null;
}

/** What the relay needs of a room's multiplexed subscribers: listed in room_joined, and every event fanned out to them in their framing. */
export interface TopicFanout {
  /** Comma-separated SessionInfo JSON of everyone in `room` but `exceptId` (legacy members, subscribers, other nodes' sessions). */
  sessionsJson(room: Room, exceptId: string): string;
  /** `event` to the room's multiplexed subscribers but `exceptId`; `transientKey` '' for an ordered event. */
  fanOut(room: Room, event: RoomEvent, exceptId: string, transientKey: string): void;
  /** An event the server made (finished legacy JSON) for the room's multiplexed subscribers, in their framing. */
  serverEvent(roomKey: string, legacyText: string, exceptUserId: string | undefined): void;
}

/** What the relay needs of the federation link: its sessions in room_joined, and every event it delivers published. */
export interface RelayBus {
  /** Comma-separated SessionInfo JSON of the room's sessions on other nodes, or ''. */
  remoteSessionsJson(desktopId: string): string;
  /** Publish an event's exact frame text (legacy framing) to the other nodes; `event`, its parts, frames the topic copy. */
  publish(desktopId: string, eventJson: string, event?: RoomEvent): void;
  /** The room's last local session left. */
  roomEmptied(desktopId: string): void;
}

export class Relay {
  private readonly rooms: RoomIndex;
  private readonly out: WriteCoalescer<Session>;
  private readonly log: Logger;
  private readonly limiter: RateLimiter;
  private readonly metrics: MetricsSlot;
  private readonly backpressure: Backpressure;
  private readonly transientTypes: ReadonlySet<string>;
  private readonly mutationTypes: ReadonlySet<string>;
  /** Other nodes (shard/federation/), when federation is on: set once by {@link useBus}. */
  private bus: RelayBus | undefined = undefined;
  private readonly topics: TopicFanout | undefined;
  private readonly recovery: RelayRecovery | undefined;
  /** `--history-stream`: a followed room's events are only published, and delivered here when the stream hands them back. */
  private shared = false;
  /** Reads each client frame once (its nesting stack and the members it found are reused from frame to frame). */
  private readonly scanner = new JsonScanner();

  constructor(options: RelayOptions) {
    this.recovery = options.recovery;
    this.topics = options.topics;
    this.rooms = options.rooms;
    this.out = options.out;
    this.log = options.log;
    this.limiter = options.limiter;
    this.metrics = options.metrics;
    this.backpressure = options.backpressure;
    this.transientTypes = options.transientTypes;
    this.mutationTypes = options.mutationTypes;
  }

  /**
   * The link to other nodes. Set once, after construction: the federation
   * delivers other nodes' events through this relay, and this relay
   * publishes through it, so one of the two is built first.
   */
  useBus(bus: RelayBus): void {
    this.bus = bus;
    this.shared = this.recovery !== undefined && this.recovery.stream !== null;
  }

  /**
   * Admit `session`: `room_joined` to it (listing the others, and the room's
   * position), then `session_joined` to the others. With `resume`, the
   * events it missed follow `room_joined` when they can all be given.
   */
  join(session: Session, resume?: ResumePosition): void {
    const room = this.rooms.get(session.desktopId);
    const existing = room?.members ?? [];
    let sessions = '';
    if (this.topics !== undefined) sessions = room === undefined ? '' : this.topics.sessionsJson(room, session.id);
    else for (let i = 0; i < existing.length; i++) sessions += (i === 0 ? '' : ',') + existing[i]!.infoJson;
    // sessionsJson lists other nodes' sessions too.
    if (this.bus !== undefined && (this.topics === undefined || room === undefined)) {
      const remote = this.bus.remoteSessionsJson(session.desktopId);
      if (remote !== '') sessions += (sessions === '' ? '' : ',') + remote;
    }
    // Through the budget like any ordered frame: in a large room it is a large frame.
    // `permission` (the joiner's own role) is an addition to the reference's frame: a client learns its role without waiting for a change.
    const position = this.recovery === undefined ? '' : this.recovery.joinLegacy(session, resume);
    const joined = this.backpressure.deliver(session, encodeTextFrame(roomJoinedText(session.id, session.permission, sessions, position)), undefined);
    this.backpressure.settleCuts();
    // Cut by its own room_joined (the process cap): it never joins, and nobody hears of it.
    if (joined === Delivery.CUT) return;
    this.presence(this.rooms.join(session), session, 'session_joined');
  }

  /** Remove `session` and tell the rest of its room with `session_left`. */
  leave(session: Session): void {
    session.replay = null;
    const room = this.rooms.leave(session);
    if (room === null) return;
    this.presence(room, session, 'session_left');
    if (room.members.length === 0) this.bus?.roomEmptied(room.id);
  }

  private presence(room: Room, session: Session, type: 'session_joined' | 'session_left'): void {
    const alone = room.size === 0 || (room.size === 1 && room.members[0] === session);
    if (alone && this.bus === undefined) return;
    const event: RoomEvent = { type, stamp: session.stamp, timestamp: Date.now(), payload: session.infoJson };
    const text = legacyEventText(event);
    if (!alone) {
      if (room.members.length > 1 || (room.members.length === 1 && room.members[0] !== session)) this.broadcast(room, session, encodeTextFrame(text));
      if (room.subs.length > 0 || room.peers !== null) this.topics?.fanOut(room, event, session.id, '');
    }
    this.bus?.publish(room.id, text, event);
  }

  /** An event the server made about a room (e.g. `session_updated`), for its multiplexed subscribers on every shard but `exceptId`. */
  toSubscribers(roomKey: string, event: RoomEvent, exceptId: string): void {
    const room = this.rooms.get(roomKey);
    if (room !== undefined && (room.subs.length > 0 || room.peers !== null)) this.topics?.fanOut(room, event, exceptId, '');
  }

  /** An event the server made about a session of this node (e.g. `session_updated`), for the other nodes' members of its room. */
  publishToOtherNodes(desktopId: string, eventJson: string): void {
    this.bus?.publish(desktopId, eventJson);
  }

  /**
   * An event from another node, or from the fleet's stream: to every local
   * member of `room` but `exceptId` (the sender, when it is here) and the
   * sessions of `exceptUserId` (a server API publish); `offset` 0 for presence.
   */
  deliverRemote(room: Room, frame: Buffer, transientKey?: string, offset = 0, exceptId = '', exceptUserId?: string): void {
    // Pinned: a member this cuts leaves the room without making the loop skip another (room-index.ts).
    const members = this.rooms.pin(room);
    for (let i = 0; i < members.length; i++) {
      const member = members[i]!;
      // A member catching up gets the event from its replay (replay.ts).
      if (
        member.open &&
        (offset === 0 || member.replay === null) &&
        member.id !== exceptId &&
        member.userId !== exceptUserId &&
        this.backpressure.deliver(member, frame, transientKey) === Delivery.CUT
      )
        this.leave(member);
    }
    this.rooms.unpin(room, members);
    this.backpressure.settleCuts();
  }

  /**
   * Write `frame` to every open member of `room` except `sender`, through the
   * backpressure policy; `transientKey` marks an event a slow member only needs the newest of.
   * A member catching up (replay.ts) skips an event with an offset: its replay has it.
   */
  private broadcast(room: Room, sender: Session, frame: Buffer, transientKey?: string, offset = 0): void {
    // Pinned, not copied: the hot path allocates nothing, and a member cut by
    // its delivery leaves the room without making the loop skip the member
    // swapped into its slot (room-index.ts).
    const members = this.rooms.pin(room);
    for (let i = 0; i < members.length; i++) {
      const member = members[i]!;
      if (
        member !== sender &&
        member.open &&
        (offset === 0 || member.replay === null) &&
        this.backpressure.deliver(member, frame, transientKey) === Delivery.CUT
      ) {
        this.leave(member);
      }
    }
    this.rooms.unpin(room, members);
    // Members the process cap cut aside (not the one a frame was for) leave now.
    this.backpressure.settleCuts();
  }

  /** Send `{"type":"error"}` to one session; the frame was not relayed. */
  sendError(session: Session, code: ErrorCodeValue, message: string): void {
    this.metrics.add(Metric.DROPPED_INVALID);
    this.writeError(session, code, message);
  }

  /** Write an error frame; `extra` is appended JSON members (e.g. `,"retryAfterMs":40`). */
  private writeError(session: Session, code: ErrorCodeValue, message: string, extra = ''): void {
    if (!session.open) return;
    // Through the outbound budget like any ordered event: a session that sends bad frames and never reads is cut, not buffered for.
    if (this.backpressure.deliver(session, encodeTextFrame(legacyErrorText(code, message, extra)), undefined) === Delivery.CUT) this.leave(session);
    this.backpressure.settleCuts();
  }

  /** Handle one client frame. Never throws: a failure is answered to the sender alone. */
  onMessage(session: Session, data: Buffer, isBinary: boolean): void {
    this.metrics.add(Metric.MESSAGES_RECEIVED);
    // Closed by the server (revoked, disconnected, cut) while frames were on
    // their way: none of them is relayed. A drain's close is the exception
    // (Session.handingOver): what the client sent before it read the close is.
    if (!session.acceptsFrames) return;
    if (this.limiter.enabled && !this.admit(session)) {
      this.metrics.add(Metric.DROPPED_RATE_LIMIT);
      return;
    }
    try {
      this.handle(session, data, isBinary);
    } catch (err) {
      this.log.error('message_failed', { sessionId: session.id, desktopId: session.desktopId, err });
      this.sendError(session, ErrorCode.INTERNAL_ERROR, 'the server failed to handle this message');
    }
  }

  /**
   * Rate limit: false when the frame must be dropped (the sender was told or
   * closed as needed). A frame without a token also stops the reading of
   * the sender's socket for a while: frames it sends meanwhile wait in TCP
   * (which pushes back on it) instead of costing this shard a parse each.
   */
  private admit(session: Session): boolean {
    const verdict = this.limiter.take(session.rate, Date.now());
    if (verdict.kind === 'pass') return true;
    if (verdict.kind !== 'close') this.pause(session, this.limiter.pauseMs(session.rate));
    switch (verdict.kind) {
      case 'drop':
        return false;
      case 'notify':
        this.log.info('rate_limited', { sessionId: session.id, desktopId: session.desktopId });
        this.writeError(session, ErrorCode.RATE_LIMITED, 'too many messages; slow down', `,"retryAfterMs":${verdict.retryAfterMs}`);
        return false;
      case 'close':
        // Frames keep arriving until the closing handshake ends: close (and count) once.
        if (!session.open) return false;
        this.log.warn('rate_limit_close', { sessionId: session.id, desktopId: session.desktopId });
        this.metrics.add(Metric.CLOSED_RATE_LIMIT);
        this.out.flushNow(session.out);
        closeAndCut(session, CloseCode.POLICY_VIOLATION, 'rate limit exceeded');
        return false;
    }
  }

  /** Stop reading an over-limit user's session for `ms` (no-op while already paused). */
  private pause(session: Session, ms: number): void {
    if (!pauseReads(session, ms)) return;
    session.rate.pauses++;
    this.metrics.add(Metric.RATE_PAUSES);
  }

  /**
   * Bytes read from `session`'s socket: every frame counts, control frames
   * and message fragments included, which the message bucket alone does not
   * see (a flood of unsolicited pongs or of empty fragments). Over the
   * user's byte budget, its reads pause.
   */
  onBytes(session: Session, bytes: number): void {
    this.metrics.values[Metric.INBOUND_BYTES]! += bytes;
    if (!this.limiter.enabled || this.limiter.takeBytes(session.rate, bytes, Date.now())) return;
    // Over the budget. Once the session is closing, `ws` reads on (and
    // resumes the socket itself after a client's close frame) until the
    // closing handshake ends: a peer that keeps sending then is cut.
    if (session.open) this.pause(session, this.limiter.bytePauseMs(session.rate));
    else session.ws.terminate();
  }

  /** A control frame (ping or pong) from `session`: it costs a message token, and is never relayed. */
  onControlFrame(session: Session): void {
    if (this.limiter.enabled && !this.admit(session)) this.metrics.add(Metric.DROPPED_RATE_LIMIT);
  }

  private handle(session: Session, data: Buffer, isBinary: boolean): void {
    if (isBinary) {
      this.sendError(session, ErrorCode.UNSUPPORTED_BINARY, 'binary frames are not supported; send JSON text');
      return;
    }
    const json = data.toString('utf8');
    // One pass that decides what JSON.parse would and finds `type` and `payload`, building nothing (json-scan.ts).
    const verdict = this.scanner.scan(json);
    if (verdict !== Scan.OBJECT) {
      this.sendError(session, ErrorCode.INVALID_MESSAGE, verdict === Scan.INVALID ? 'message is not valid JSON' : 'message must be a JSON object');
      return;
    }
    const type = this.scanner.type(json);
    if (type === undefined || type.length === 0 || type.length > MAX_TYPE_LENGTH) {
      this.sendError(session, ErrorCode.INVALID_MESSAGE, `"type" must be a non-empty string of at most ${MAX_TYPE_LENGTH} characters`);
      return;
    }
    if (RESERVED_TYPES.has(type)) {
      this.sendError(session, ErrorCode.RESERVED_TYPE, `"${type}" is sent by the server only`);
      return;
    }
    if (session.permission === 'viewer' && this.mutationTypes.has(type)) {
      // Silently dropped, as the reference server does: viewers' UIs should not send these.
      this.metrics.add(Metric.DROPPED_VIEWER);
      if (this.log.enabled('debug')) this.log.debug('viewer_mutation_dropped', { sessionId: session.id, type });
      return;
    }
    const room = this.rooms.get(session.desktopId);
    const recovery = this.recovery;
    // Alone on this node, an event still goes to the other nodes, and to the history for those who resume.
    if (room === undefined || (room.size < 2 && this.bus === undefined && recovery?.recording !== true)) return;

    // Identity fields a client may have put in the frame are ignored: only
    // `type` and `payload` are read, the rest comes from the session. The
    // payload is forwarded as the text the client sent (the scan above
    // validated it): re-serializing could make it larger (`1e20`).
    const timestamp = Date.now();
    const payload = this.scanner.payload(json);
    // `text` has no offset: the history keeps it so, and other nodes stamp their own.
    const text = legacyText(type, session.stamp, timestamp, payload);
    if (this.shared && recovery!.streamed(session.desktopId)) {
      // Every member here, and on every node, gets it from the stream with its sequence as offset (stream-rooms.ts).
      this.bus!.publish(session.desktopId, text, { type, stamp: session.stamp, timestamp, payload });
      this.metrics.add(Metric.MESSAGES_RELAYED);
      return;
    }
    const offset = recovery === undefined ? 0 : recovery.stamp(session.desktopId, text, payload === undefined);
    const transientKey = this.transientTypes.has(type) ? `${session.id}\n${type}` : undefined;
    if (room.members.length > 1) {
      // With an offset, the frame comes from the bytes the history just kept: the text is encoded once, not twice.
      const frame = offset === 0 ? encodeTextFrame(text) : (recovery!.newestFrame(session.desktopId, offset) ?? encodeTextFrame(withOffset(text, offset)));
      this.broadcast(room, session, frame, transientKey, offset);
    }
    // Multiplexed subscribers of the room get it in their framing (encoded there, once).
    if (room.subs.length > 0 || room.peers !== null) {
      const event: RoomEvent = { type, stamp: session.stamp, timestamp, payload };
      if (offset !== 0) event.offset = offset;
      this.topics?.fanOut(room, event, session.id, transientKey ?? '');
    }
    if (this.bus !== undefined) this.bus.publish(session.desktopId, text, { type, stamp: session.stamp, timestamp, payload });
    // Kept for those who resume is not relayed: a lone session's event counts once it reaches someone.
    if (room.size > 1 || this.bus !== undefined) this.metrics.add(Metric.MESSAGES_RELAYED);

    if (LOGGED_TYPES.has(type) && this.log.enabled('debug')) {
      this.log.debug('event', { type, sessionId: session.id, desktopId: session.desktopId, userId: session.userId });
    }
  }
}
