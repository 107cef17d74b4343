/**
 * One connected tab: its identity, permission, room and sockets. Identity
 * JSON is serialized once at join, since it is stamped on every event the
 * session sends; its SessionInfo JSON (presence) is made from it when asked.
 *
 * Strings built from parts are ropes in V8 (a node per part, and the parts
 * kept): the id and the stamp are flattened once built, which halves what
 * they hold for the session's life (see {@link flat}).
 *
 * The state other modules keep per session lives in objects those modules
 * make and alone touch: `out` (write-coalescer.ts), `budget`
 * (backpressure.ts), `rate` (rate-limiter.ts, shared by the user's sessions
 * on the shard), `slot` (room-index.ts) and `reads` (socket-reads.ts). The
 * session writes only its own fields.
 */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { Permission } from '../protocol/events.ts';
import type { RateState } from './rate-limiter.ts';
import { newRoomSlot, type RoomSlot } from './room-index.ts';
import { newReadState, type ReadState } from './socket-reads.ts';
import type { BudgetState } from './backpressure.ts';
import type { ReplayJob } from './replay.ts';
import type { Outbound } from './write-coalescer.ts';

export interface SessionOptions {
  desktopId: string;
  identity: { userId: string; firstName: string; email: string };
  permission: Permission;
  ws: WebSocket;
  socket: Socket;
  /** The user's rate-limit bucket (rate-limiter.ts). */
  rate: RateState;
  /** Makes the session's outbound queue (the shard's write coalescer). */
  outbound: (session: Session) => Outbound<Session>;
  /** The session's outbound budget state (the shard's backpressure policy). */
  budget: BudgetState;
}

export class Session {
  readonly id: string;
  readonly desktopId: string;
  readonly userId: string;
  readonly firstName: string;
  readonly email: string;
  private role: Permission;
  readonly ws: WebSocket;
  /** The raw socket under `ws`; broadcasts write pre-built frames to it. */
  readonly socket: Socket;
  readonly connectedAt: number;
  /** `,"sessionId":…,"userId":…,"firstName":…,"email":…` — spliced into every event this session causes. */
  readonly stamp: string;
  /** Its place in its room (room-index.ts). */
  readonly slot: RoomSlot = newRoomSlot();
  /** What the write coalescer holds for this socket. */
  readonly out: Outbound<Session>;
  /** Where this session stands against its outbound budget (backpressure.ts). */
  readonly budget: BudgetState;
  /** Heard from (pong or message) since the last liveness ping. */
  alive = true;
  /** Inbound rate-limit bucket, shared with the user's other sessions on this shard (rate-limiter.ts). */
  readonly rate: RateState;
  /** Whether its socket is being read (socket-reads.ts). */
  readonly reads: ReadState = newReadState();
  /** Its replay while it resumes (recovery.ts): its room's live events skip it until the replay catches up. */
  replay: ReplayJob | null = null;
  /**
   * Closed by a drain (1012, shard.ts): the client may have sent frames
   * before it read the close frame. Its permission still holds, so they are
   * handled until its own close frame ends the handshake, and an event is
   * never lost to a hand-over. Every other close by the server drops them.
   */
  handingOver = false;

  constructor(options: SessionOptions) {
    const { identity } = options;
    this.rate = options.rate;
    this.budget = options.budget;
    this.id = flat(`session_${randomUUID()}`);
    this.desktopId = options.desktopId;
    this.userId = identity.userId;
    this.firstName = identity.firstName;
    this.email = identity.email;
    this.role = options.permission;
    this.ws = options.ws;
    this.socket = options.socket;
    this.connectedAt = Date.now();
    this.stamp = flat(
      `,"sessionId":${JSON.stringify(this.id)},"userId":${JSON.stringify(this.userId)}` +
        `,"firstName":${JSON.stringify(this.firstName)},"email":${JSON.stringify(this.email)}`,
    );
    this.out = options.outbound(this);
  }

  /** editor or viewer. The relay reads it on every frame, so a change applies from the session's next frame. */
  get permission(): Permission {
    return this.role;
  }

  /** JSON of this session's SessionInfo (protocol/events.ts), current permission included: `{"sessionId":…,"userId":…,"firstName":…,"email":…,"permission":…}`. */
  get infoJson(): string {
    return this.describeAs(this.role);
  }

  /** SessionInfo JSON of this session with `permission`. */
  describeAs(permission: Permission): string {
    return '{' + this.stamp.slice(1) + ',"permission":"' + permission + '"}';
  }

  /** Change the permission (server API, permission recheck): only session-control.ts calls this, and tells the session and its room. */
  setPermission(permission: Permission): void {
    this.role = permission;
  }

  /** True while frames may be written (not closing or closed). */
  get open(): boolean {
    return this.ws.readyState === 1;
  }

  /** True while the client's frames are handled: open, or closing for a drain ({@link handingOver}). */
  get acceptsFrames(): boolean {
    const state = this.ws.readyState;
    return state === 1 || (state === 2 && this.handingOver);
  }
}

/** The characters read by {@link flat}, kept so that no compiler drops the read as unused. */
let _flattened = 0;

/**
 * `text`, flattened: V8 keeps a string built by concatenation as a rope
 * (a 32-byte node per join, holding both parts). Reading a character makes
 * it one flat string in place, and the next GC drops the rope's nodes and
 * parts. For strings kept as long as a
 * session lives.
 */
export function flat(text: string): string {
  _flattened ^= text.charCodeAt(0);
  return text;
}
