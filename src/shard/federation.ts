/**
 * One shard's link to the other nodes of a fleet, over NATS. Each shard
 * worker holds its own connection and subscribes to `room.{desktopId}` for
 * the rooms it owns while they have a local session, so rooms never cross
 * threads and the primary stays off the message path. The wire format is
 * the Go relay's (protocol/bus.ts).
 *
 * What it keeps, per room: the sessions of other nodes, learnt from their
 * `session_joined` / `session_left` (and from the answers to a
 * `presence_sync_request`); the table dies with the room. Per peer node and
 * shard: the last heartbeat. A peer shard silent for 3 intervals (or back
 * under a new incarnation) loses its sessions, and local members hear
 * `session_left` for each. Sessions of a node that never sent a heartbeat
 * (a Go relay) stay until that node says they left.
 *
 * While NATS is down, rooms keep relaying locally; nothing is buffered for
 * the bus. After a reconnect each room announces its local sessions again,
 * asks for everyone else's, and forgets the remote sessions nobody
 * confirmed.
 *
 * With --federation-key every message is signed and stamped, and every
 * message taken must be signed, fresh and new (shard/bus-replay.ts);
 * `--federation-unsigned-rooms admit` takes room events unsigned from nodes
 * that never signed, never in the name of a session a signed node holds.
 */
import { connect, credsAuthenticator, headers, type MsgHdrs, type Msg, type NatsConnection, type NodeConnectionOptions, type Subscription } from '@nats-io/transport-node';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { ServeConfig } from '../config.ts';
import { KeyedBuckets } from '../keyed-buckets.ts';
import { BusSigner, formatStamp, parseStamp, SIGNATURE_HEADER, STAMP_HEADER } from '../protocol/bus-signature.ts';
import { withDeadline } from '../deadline.ts';
import { LogBudget, type LogFields, type Logger } from '../log.ts';
import {
  API_DESKTOP_PREFIX,
  API_USERS_SUBJECT,
  BUS_OVERHEAD_BYTES,
  parseQueryAnswer,
  DROP_REASONS,
  DropReason,
  encodeHeartbeat,
  envelope,
  HEARTBEAT_SUBJECT,
  parseHeartbeat,
  parseRoomMessage,
  PRESENCE_SYNC_REQUEST,
  roomSubject,
  sessionInfoJson,
  sessionLeftJson,
  type BusSessionInfo,
  type DropReasonValue,
  type Heartbeat,
} from '../protocol/bus.ts';
import { apiSubject, desktopOf, MAX_API_BODY_BYTES, parseBusRequest, type ApiOutcome, type ApiRequest, type LiveSession } from '../protocol/api.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { fnv1a32 } from '../protocol/hash.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import type { FederationStats } from '../protocol/messages.ts';
import { beatOrder, nextHistory, ReplayGuard, type BeatHistory } from './bus-replay.ts';
import type { Room, RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';

/** The NATS header of a sync request listing the requesting node's sessions of the room. */
const ROSTER_HEADER = 'Moodio-Sessions';
/** A sync waits this long after the last answer for more, */
const SYNC_STALL_MS = 50;
/** and never longer than this in all (a Go relay answers but never says it is done). */
const SYNC_MAX_WAIT_MS = 500;
/** A room answers sync requests at most once per this interval; requests within it share the next answer. */
const SYNC_ANSWER_INTERVAL_MS = 100;
/** Wait between attempts to reach NATS before the first connection (the client reconnects by itself after). */
const FIRST_CONNECT_RETRY_MS = 1000;
/** A peer shard silent for this many heartbeat intervals is gone. */
const SILENT_INTERVALS = 3;
/** Peer nodes a shard keeps track of: heartbeats from more (forged ids) are dropped. */
const MAX_PEERS = 1024;
/** Peer shards a shard keeps track of, all peers together. */
const MAX_PEER_SHARDS = 8192;
/** A room whose last local session left keeps its subscription and table this long: a quick rejoin needs no sync. */
const ROOM_LINGER_MS = 10_000;
/** Resyncs of every room (a peer back, a reconnect) at most this often; one more runs at the end of the wait. */
const RESYNC_MIN_GAP_MS = 5_000;
/** Broadcasts from the bus a shard takes per second: --api-broadcast-rate for each of this many nodes. */
const BUS_BROADCAST_NODES = 16;
/** Sessions a query gathers from other nodes, all answers together. */
const MAX_GATHERED_SESSIONS = 10_000;
/** Remote sessions one room may hold when --max-room-size is 0 (else 4 × it). */
const MAX_REMOTE_PER_ROOM = 10_000;
/** Nodes a shard remembers as signing (their unsigned room events are forged), oldest forgotten first. */
const MAX_SIGNED_NODES = 10_000;

export interface FederationOptions {
  config: Pick<
    ServeConfig,
    | 'natsUrls'
    | 'natsCreds'
    | 'nodeId'
    | 'region'
    | 'federationHeartbeatMs'
    | 'federationKey'
    | 'federationUnsignedRooms'
    | 'federationReplayWindowMs'
    | 'processInstance'
    | 'startedAt'
    | 'workers'
    | 'maxMessageSize'
    | 'maxRoomSize'
    | 'apiBroadcastRate'
  >;
  shardId: number;
  log: Logger;
  metrics: MetricsSlot;
  rooms: RoomIndex;
  /** Write `frame` to every local member of `room` (through the backpressure policy). */
  deliver: (room: Room, frame: Buffer, transientKey?: string) => void;
  /** Event types a slow recipient only needs the newest of. */
  transientTypes: ReadonlySet<string>;
  /** Types a viewer may not send (`--mutation-types`), the relay's table. */
  mutationTypes: ReadonlySet<string>;
  /** This process must stop (another process runs under the same node id and started first). */
  onFatal: (code: string, message: string) => void;
  /** Apply a server API request another node published to this shard's sessions (shard/commands.ts). */
  applyApi: (request: ApiRequest) => ApiOutcome;
}

interface RemoteSession {
  node: string;
  info: BusSessionInfo;
  infoJson: string;
  /** When it was learnt, in the order of {@link Federation.learnt}: a restarted node's new sessions are told from its old ones by it. */
  learnt: number;
}

interface FedRoom {
  readonly desktopId: string;
  readonly subject: string;
  sub: Subscription | null;
  readonly remote: Map<string, RemoteSession>;
  /** Sessions waiting for the first sync to end before they join (room_joined must list the others). */
  waiters: (() => void)[] | null;
  lastAnswerAt: number;
  answerTimer: NodeJS.Timeout | null;
  pendingReplies: string[];
  /** Set while the room has no local session: when it fires, the room is dropped. */
  lingerTimer: NodeJS.Timeout | null;
  /** A resync of every room came while the first sync was under way (it may have asked before the bus went down): sync again once it ends. */
  resyncPending: boolean;
}

interface PeerShard extends BeatHistory {
  seen: number;
  workers: number;
  intervalMs: number;
}

interface Peer {
  region: string;
  /** The process followed under this node id (another one's heartbeats are ignored until this one falls silent). */
  instance: string;
  shards: Map<number, PeerShard>;
  /**
   * Another process beating under this node id, most likely the node restarted before the one followed
   * was declared dead. The sessions learnt from the node since its first heartbeat are its own: when
   * the process followed falls silent, they stay.
   */
  successor: { instance: string; since: number; seen: number } | null;
}

/** Whether a message carries the fleet's signature and a stamp not taken before, or why not. */
type Authenticity = 'signed' | 'unsigned' | typeof DropReason.STALE | typeof DropReason.REPLAYED;


export class Federation {
  private readonly config: FederationOptions['config'];
  private readonly shardId: number;
  private readonly log: Logger;
  private readonly metrics: MetricsSlot;
  private readonly localRooms: RoomIndex;
  private readonly deliver: FederationOptions['deliver'];
  private readonly transientTypes: ReadonlySet<string>;
  private readonly mutationTypes: ReadonlySet<string>;
  private readonly onFatal: FederationOptions['onFatal'];
  private readonly applyApi: FederationOptions['applyApi'];
  private readonly nodeJson: string;
  private readonly incarnation = randomBytes(6).toString('hex');
  private readonly maxBytes: number;
  private readonly maxRemotePerRoom: number;
  private readonly rooms = new Map<string, FedRoom>();
  private readonly peers = new Map<string, Peer>();
  /** Nodes whose sessions were expired for silence: hearing one again triggers a resync. */
  private readonly expiredNodes = new Map<string, number>();
  private readonly dropLog = new LogBudget(10);
  private readonly peerLogBudget = new LogBudget(20);
  private nc: NatsConnection | null = null;
  private connected = false;
  private closing = false;
  private remoteCount = 0;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly sweeper: NodeJS.Timeout;
  private retry: NodeJS.Timeout | null = null;
  private unreachableLogged = false;
  private duplicateSeen = false;
  private resyncTimer: NodeJS.Timeout | null = null;
  private lastResyncAt = -Infinity;
  private firstConnectedAt = 0;
  private peerShardCount = 0;
  private readonly signer: BusSigner | null;
  private readonly replay: ReplayGuard;
  /** Stamps this shard signed: with the incarnation, a message id no other sender has. */
  private stamps = 0;
  /** Heartbeats this shard incarnation sent (their sequence). */
  private beats = 0;
  /** Remote sessions learnt so far (each one's {@link RemoteSession.learnt}). */
  private learnt = 0;
  /** Nodes heard signing (heartbeats or room events): their room events, and their sessions', must be signed. */
  private readonly signedNodes = new Map<string, true>();
  private readonly busBroadcasts: KeyedBuckets;

  constructor(options: FederationOptions) {
    this.config = options.config;
    this.shardId = options.shardId;
    this.log = options.log;
    this.metrics = options.metrics;
    this.localRooms = options.rooms;
    this.deliver = options.deliver;
    this.transientTypes = options.transientTypes;
    this.mutationTypes = options.mutationTypes;
    this.onFatal = options.onFatal;
    this.applyApi = options.applyApi;
    this.signer = this.config.federationKey === '' ? null : new BusSigner(this.config.federationKey);
    this.replay = new ReplayGuard(this.config.federationReplayWindowMs);
    const broadcasts = this.config.apiBroadcastRate === 0 ? 0 : this.config.apiBroadcastRate * BUS_BROADCAST_NODES;
    this.busBroadcasts = new KeyedBuckets(broadcasts, broadcasts);
    this.nodeJson = JSON.stringify(this.config.nodeId);
    this.maxBytes = this.config.maxMessageSize + BUS_OVERHEAD_BYTES;
    this.maxRemotePerRoom = this.config.maxRoomSize > 0 ? 4 * this.config.maxRoomSize : MAX_REMOTE_PER_ROOM;
    const interval = this.config.federationHeartbeatMs;
    this.heartbeat = setInterval(() => this.sendHeartbeat(), interval);
    this.heartbeat.unref();
    this.sweeper = setInterval(() => this.expireSilentPeers(Date.now()), Math.max(10, Math.min(250, interval / 4)));
    this.sweeper.unref();
    this.metrics.set(Metric.FEDERATION_CONNECTED, 0);
    void this.connectFirst();
  }

  // ---------------------------------------------------------------- connection

  private connectionOptions(): NodeConnectionOptions {
    const servers: string[] = [];
    let user: string | undefined;
    let pass: string | undefined;
    let tls = false;
    for (const raw of this.config.natsUrls) {
      const url = new URL(/^[a-z]+:\/\//.test(raw) ? raw : `nats://${raw}`);
      if (url.username !== '') {
        user = decodeURIComponent(url.username);
        pass = decodeURIComponent(url.password);
      }
      if (url.protocol === 'tls:') tls = true;
      servers.push(`${url.protocol === 'tls:' ? 'tls' : 'nats'}://${url.host}`);
    }
    const options: NodeConnectionOptions = {
      servers,
      name: `moodio-rt ${this.config.nodeId} shard ${this.shardId}`,
      // Our own messages never come back: a room's subject has one subscriber per node.
      noEcho: true,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      reconnectJitter: 250,
      pingInterval: 5000,
      maxPingOut: 2,
      timeout: 2000,
    };
    if (user !== undefined) Object.assign(options, { user, pass });
    if (tls) options.tls = {};
    if (this.config.natsCreds !== '') {
      const creds = readFileSync(this.config.natsCreds);
      options.authenticator = credsAuthenticator(new Uint8Array(creds));
    }
    return options;
  }

  /** Until NATS is first reached, try every second (the client's own reconnect loop takes over after). */
  private async connectFirst(): Promise<void> {
    if (this.closing) return;
    let nc: NatsConnection;
    try {
      nc = await connect(this.connectionOptions());
    } catch (err) {
      if (!this.unreachableLogged) {
        this.unreachableLogged = true;
        this.log.warn('federation_unreachable', { servers: this.config.natsUrls.join(','), message: (err as Error).message, retryMs: FIRST_CONNECT_RETRY_MS });
      }
      this.retry = setTimeout(() => void this.connectFirst(), FIRST_CONNECT_RETRY_MS);
      return;
    }
    if (this.closing) {
      await nc.close();
      return;
    }
    this.nc = nc;
    if (this.signer !== null) {
      const onApi = (err: Error | null, msg: Msg) => {
        if (err === null) this.onApiMessage(msg);
      };
      nc.subscribe(API_USERS_SUBJECT, { callback: onApi });
      nc.subscribe(`${API_DESKTOP_PREFIX}*`, { callback: onApi });
    }
    nc.subscribe(HEARTBEAT_SUBJECT, { callback: (err, msg) => {
        if (err === null) this.onHeartbeat(msg);
      },
    });
    for (const room of this.rooms.values()) this.subscribe(room);
    this.setConnected(true);
    this.firstConnectedAt = Date.now();
    // Peers learn of this shard now rather than an interval from now (and a duplicate node id shows at once).
    this.sendHeartbeat();
    this.log.info('federation_connected', { server: nc.getServer(), nodeId: this.config.nodeId, region: this.config.region });
    this.resyncAll();
    void this.watch(nc);
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      switch (status.type) {
        case 'disconnect':
          if (this.connected) this.log.warn('federation_disconnected', { server: status.server });
          this.setConnected(false);
          break;
        case 'reconnect':
          this.setConnected(true);
          this.log.info('federation_reconnected', { server: status.server });
          // Peers could not be heard meanwhile: give each a fresh grace period, then ask everyone again.
          this.touchPeers(Date.now());
          this.resyncAll();
          break;
        case 'error':
          this.log.warn('federation_error', { message: String((status as { error?: unknown }).error ?? '') });
          break;
        default:
          break;
      }
    }
  }

  private setConnected(up: boolean): void {
    this.connected = up;
    this.metrics.set(Metric.FEDERATION_CONNECTED, up ? 1 : 0);
  }

  // ---------------------------------------------------------------- rooms

  /**
   * A local session wants to join `desktopId`. `join` runs at once, unless
   * this is the room's first local session and the bus is up: then the room
   * subscribes and asks the other nodes who is there, and `join` runs once
   * they answered (at most {@link SYNC_MAX_WAIT_MS}), so that `room_joined`
   * lists them.
   */
  admit(desktopId: string, join: () => void): void {
    let room = this.rooms.get(desktopId);
    if (room === undefined) {
      room = {
        desktopId,
        subject: roomSubject(desktopId),
        sub: null,
        remote: new Map(),
        waiters: null,
        lastAnswerAt: -Infinity,
        answerTimer: null,
        pendingReplies: [],
        lingerTimer: null,
        resyncPending: false,
      };
      this.rooms.set(desktopId, room);
      if (this.nc !== null) {
        this.subscribe(room);
        if (this.connected) {
          room.waiters = [];
          void this.sync(room, false);
        }
      }
    }
    if (room.lingerTimer !== null) {
      // Back within the linger: the table was kept current meanwhile.
      clearTimeout(room.lingerTimer);
      room.lingerTimer = null;
    }
    if (room.waiters !== null) room.waiters.push(join);
    else join();
  }

  /**
   * The last local session of `desktopId` left. The room keeps listening for
   * {@link ROOM_LINGER_MS}, so that a tab that reconnects (or flaps) does not
   * make every node answer a sync each time; then it unsubscribes and its
   * remote sessions are forgotten.
   */
  roomEmptied(desktopId: string): void {
    const room = this.rooms.get(desktopId);
    if (room === undefined || room.waiters !== null || room.lingerTimer !== null) return;
    if (this.closing) {
      this.dropRoom(room);
      return;
    }
    room.lingerTimer = setTimeout(() => {
      room.lingerTimer = null;
      if (this.rooms.get(desktopId) === room && this.localRooms.get(desktopId) === undefined) this.dropRoom(room);
    }, ROOM_LINGER_MS);
    room.lingerTimer.unref();
  }

  private dropRoom(room: FedRoom): void {
    if (room.lingerTimer !== null) clearTimeout(room.lingerTimer);
    room.lingerTimer = null;
    this.rooms.delete(room.desktopId);
    try {
      room.sub?.unsubscribe();
    } catch {
      // The connection is closing: the subscription goes with it.
    }
    if (room.answerTimer !== null) clearTimeout(room.answerTimer);
    this.remoteCount -= room.remote.size;
    this.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
  }

  private subscribe(room: FedRoom): void {
    room.sub = this.nc!.subscribe(room.subject, { callback: (err, msg) => {
        if (err === null) this.onRoomMessage(room, msg);
      },
    });
  }

  /** The remote sessions of `desktopId` as comma-separated SessionInfo JSON (for room_joined), or ''. */
  remoteSessionsJson(desktopId: string): string {
    const room = this.rooms.get(desktopId);
    if (room === undefined || room.remote.size === 0) return '';
    let out = '';
    for (const remote of room.remote.values()) out += (out === '' ? '' : ',') + remote.infoJson;
    return out;
  }

  /** Publish a local event (presence or relayed, its exact frame text) to the other nodes. */
  publish(desktopId: string, eventJson: string): void {
    if (this.closing) return;
    if (!this.connected) {
      this.metrics.add(Metric.BUS_UNPUBLISHED);
      return;
    }
    this.send(roomSubject(desktopId), envelope(this.nodeJson, eventJson));
  }

  /** Headers carrying this node's stamp and signature of a message (undefined without --federation-key, unless there is a roster). */
  private signed(subject: string, data: string, roster?: string): MsgHdrs | undefined {
    if (this.signer === null && roster === undefined) return undefined;
    const h = headers();
    if (roster !== undefined) h.set(ROSTER_HEADER, roster);
    if (this.signer !== null) {
      const stamp = formatStamp(Date.now(), this.incarnation + (this.stamps++).toString(36));
      h.set(STAMP_HEADER, stamp);
      h.set(SIGNATURE_HEADER, this.signer.sign(subject, data, stamp, roster ?? ''));
    }
    return h;
  }

  /**
   * Whether `msg` carries the fleet's signature of its subject, stamp,
   * `roster` and payload (`unsigned` without a key, or with a signature
   * that does not check), and if so whether its stamp is within the window
   * and new. A signed stamp is remembered from here on.
   */
  private authenticate(msg: Msg, roster = ''): Authenticity {
    if (this.signer === null) return 'unsigned';
    const signature = this.header(msg, SIGNATURE_HEADER);
    const stampText = this.header(msg, STAMP_HEADER);
    const stamp = parseStamp(stampText);
    if (stamp === null || !this.signer.verify(msg.subject, msg.data, signature, stampText!, roster)) return 'unsigned';
    const freshness = this.replay.check(stamp, Date.now());
    return freshness === 'fresh' ? 'signed' : freshness === 'stale' ? DropReason.STALE : DropReason.REPLAYED;
  }

  /** `node` signs: from now on its room events, and those naming its sessions, count only signed. */
  private markSigned(node: string): void {
    if (this.signedNodes.has(node)) return;
    this.signedNodes.set(node, true);
    if (this.signedNodes.size > MAX_SIGNED_NODES) this.signedNodes.delete(this.signedNodes.keys().next().value!);
  }

  /** `msg`'s payload as JSON, or undefined (dropped as malformed) when it is not. */
  private json(msg: Msg): unknown {
    try {
      return JSON.parse(msg.string()) as unknown;
    } catch {
      this.drop(DropReason.MALFORMED, msg.subject);
      return undefined;
    }
  }

  /** A header of `msg`, or undefined; a malformed header block reads as none (the client throws on it). */
  private header(msg: Msg, name: string): string | undefined {
    try {
      if (msg.headers === undefined || !msg.headers.has(name)) return undefined;
      return msg.headers.get(name);
    } catch {
      return undefined;
    }
  }

  private send(subject: string, data: string, reply?: string): void {
    try {
      const h = this.signed(subject, data);
      if (reply === undefined && h === undefined) this.nc!.publish(subject, data);
      else this.nc!.publish(subject, data, { ...(reply === undefined ? {} : { reply }), ...(h === undefined ? {} : { headers: h }) });
      this.metrics.add(Metric.BUS_PUBLISHED);
      this.metrics.add(Metric.BUS_BYTES_OUT, data.length);
    } catch (err) {
      // Closed or draining connection: the event stays local.
      this.metrics.add(Metric.BUS_UNPUBLISHED);
      const fields = this.dropLog.take({ subject, message: (err as Error).message });
      if (fields !== null) this.log.warn('federation_publish_failed', fields);
    }
  }

  // ---------------------------------------------------------------- presence sync

  /**
   * Ask the other nodes who is in `room`, and wait for their answers.
   *
   * The request is the Go relay's `presence_sync_request`, plus two things a
   * Go relay ignores: a NATS reply subject, and a `Moodio-Sessions` header
   * listing this node's sessions of the room. A moodio-rt node that has the
   * room publishes its `session_joined` events, then answers the reply
   * subject with its own list (so the events arrive first). Each side then
   * removes the other's sessions that the list does not name: sessions that
   * left while the bus was down, whose `session_left` never went out. With
   * no other subscriber, NATS says so at once. With `announce`, local
   * sessions are published again first (after a reconnect, for nodes that
   * forgot them).
   */
  private async sync(room: FedRoom, announce: boolean): Promise<void> {
    try {
      if (announce) this.announce(room, 'session_joined');
      const request = envelope(this.nodeJson, `{"type":"${PRESENCE_SYNC_REQUEST}"}`);
      const roster = this.signed(room.subject, request, this.localIds(room))!;
      this.metrics.add(Metric.BUS_PUBLISHED);
      this.metrics.add(Metric.BUS_BYTES_OUT, request.length);
      const answers = await this.nc!.requestMany(room.subject, request, { strategy: 'stall', stall: SYNC_STALL_MS, maxWait: SYNC_MAX_WAIT_MS, headers: roster });
      for await (const answer of answers) this.onSyncAnswer(room, answer);
    } catch {
      // No responders (no other node has the room), or the bus went down: what was heard is what there is.
    }
    const waiters = room.waiters;
    room.waiters = null;
    if (waiters !== null) for (const join of waiters) join();
    if (this.rooms.get(room.desktopId) !== room) return;
    // Every waiter left before the answers came: nothing local holds the room.
    if (this.localRooms.get(room.desktopId) === undefined) {
      this.dropRoom(room);
      return;
    }
    if (room.resyncPending) {
      room.resyncPending = false;
      // Down again meanwhile: the next reconnect resyncs every room.
      if (this.connected && !this.closing) void this.sync(room, true);
    }
  }

  /** This node's session ids in `room`, comma-separated ('' when none). */
  private localIds(room: FedRoom): string {
    const members = this.localRooms.get(room.desktopId)?.members;
    if (members === undefined) return '';
    let ids = '';
    for (let i = 0; i < members.length; i++) ids += (i === 0 ? '' : ',') + members[i]!.id;
    return ids;
  }

  /** A node's answer to our sync: `{"r": node, "s": [its session ids in the room]}`. */
  private onSyncAnswer(room: FedRoom, answer: Msg): void {
    if (this.closing || this.rooms.get(room.desktopId) !== room || answer.data.byteLength > 64 * 1024) return;
    const auth = this.authenticate(answer);
    if (auth === DropReason.STALE || auth === DropReason.REPLAYED) {
      this.drop(auth, answer.subject);
      return;
    }
    const parsed = this.json(answer);
    if (parsed === undefined) return;
    const { r, s } = (parsed ?? {}) as { r?: unknown; s?: unknown };
    if (typeof r !== 'string' || !Array.isArray(s) || !s.every((id) => typeof id === 'string')) {
      this.drop(DropReason.MALFORMED, answer.subject);
      return;
    }
    if (r !== this.config.nodeId && this.trustsRoster(auth, r)) this.applyRoster(room, r, new Set(s as string[]));
  }

  /**
   * Whether `node`'s list of its sessions may remove what we hold for it:
   * signed with the fleet's key, or, without a key, from a node whose
   * heartbeats we follow. A list claiming to be from anyone else could
   * otherwise make us forget live sessions for good.
   */
  private trustsRoster(auth: Authenticity, node: string): boolean {
    return this.signer !== null ? auth === 'signed' : this.peers.has(node);
  }

  /** `node` says these are all its sessions in `room`: forget the others we hold for it. */
  private applyRoster(room: FedRoom, node: string, ids: ReadonlySet<string>): void {
    const now = Date.now();
    for (const [id, remote] of room.remote) {
      if (remote.node === node && !ids.has(id)) this.removeRemote(room, id, remote, now);
    }
  }

  /**
   * Announce and sync every room. At most once per {@link RESYNC_MIN_GAP_MS}:
   * a request within the gap runs once at its end (peers coming and going, or
   * forged heartbeats, cannot make a node republish every room in a loop).
   */
  private resyncAll(): void {
    const now = Date.now();
    if (this.closing || this.resyncTimer !== null) return;
    const wait = this.lastResyncAt + RESYNC_MIN_GAP_MS - now;
    if (wait > 0) {
      this.resyncTimer = setTimeout(() => {
        this.resyncTimer = null;
        this.resyncAll();
      }, wait);
      this.resyncTimer.unref();
      return;
    }
    this.lastResyncAt = now;
    if (!this.connected) return;
    for (const room of this.rooms.values()) {
      if (room.waiters === null) void this.sync(room, true);
      else room.resyncPending = true;
    }
  }

  /** Publish `type` (session_joined or session_left) for every local session of `room`. */
  private announce(room: FedRoom, type: 'session_joined' | 'session_left'): void {
    const members = this.localRooms.get(room.desktopId)?.members;
    if (members === undefined) return;
    const now = Date.now();
    for (const session of members) this.publishPresence(room.desktopId, session, type, now);
  }

  private publishPresence(desktopId: string, session: Session, type: 'session_joined' | 'session_left', now: number): void {
    this.send(roomSubject(desktopId), envelope(this.nodeJson, `{"type":"${type}"${session.stamp},"timestamp":${now},"payload":${session.infoJson}}`));
  }

  /** Answer a sync request, at most once per {@link SYNC_ANSWER_INTERVAL_MS} per room; later requests share the next answer. */
  private answerSync(room: FedRoom, reply: string | undefined): void {
    if (this.closing) return;
    if (reply !== undefined && room.pendingReplies.length < 64) room.pendingReplies.push(reply);
    if (room.answerTimer !== null) return;
    const wait = room.lastAnswerAt + SYNC_ANSWER_INTERVAL_MS - Date.now();
    if (wait <= 0) {
      this.answerNow(room);
      return;
    }
    room.answerTimer = setTimeout(() => {
      room.answerTimer = null;
      if (this.rooms.get(room.desktopId) === room) this.answerNow(room);
    }, wait);
  }

  private answerNow(room: FedRoom): void {
    room.lastAnswerAt = Date.now();
    // Closing: the sessions were announced as gone; announcing them again would bring them back on every peer.
    if (!this.connected || this.closing) return;
    this.announce(room, 'session_joined');
    const members = this.localRooms.get(room.desktopId)?.members ?? [];
    const done = `{"r":${this.nodeJson},"s":${JSON.stringify(members.map((m) => m.id))}}`;
    for (const reply of room.pendingReplies) this.send(reply, done);
    room.pendingReplies = [];
  }

  // ---------------------------------------------------------------- inbound

  private drop(reason: DropReasonValue, subject: string, node?: string): void {
    this.metrics.add(Metric.BUS_DROPPED_0 + DROP_REASONS.indexOf(reason));
    const fields = this.dropLog.take({ reason, subject, node });
    if (fields !== null) this.log.warn('federation_message_dropped', fields);
  }

  private onRoomMessage(room: FedRoom, msg: Msg): void {
    // Closing: the local sessions were announced as gone, and nothing heard now may bring them back.
    if (this.closing) return;
    this.metrics.add(Metric.BUS_RECEIVED);
    this.metrics.add(Metric.BUS_BYTES_IN, msg.data.byteLength);
    try {
      this.handleRoomMessage(room, msg);
    } catch (err) {
      // A bug here must not take the shard down with the message that found it.
      const fields = this.dropLog.take({ subject: msg.subject, err });
      if (fields !== null) this.log.error('federation_message_failed', fields);
    }
  }

  private handleRoomMessage(room: FedRoom, msg: Msg): void {
    if (this.rooms.get(room.desktopId) !== room) return;
    const parsed = parseRoomMessage(msg.data, room.desktopId, this.maxBytes);
    if (!parsed.ok) {
      this.drop(parsed.reason, msg.subject);
      return;
    }
    const node = parsed.node;
    // noEcho means our own connection never hands us our messages: this id is someone else's claim to be us.
    if (node === this.config.nodeId) {
      this.drop(DropReason.FORGED, msg.subject, node);
      return;
    }
    const event = parsed.value;
    // A moodio-rt node's sync request lists its sessions of the room (a Go relay sends no list); the signature covers it.
    const roster = event.kind === 'sync_request' ? this.header(msg, ROSTER_HEADER) : undefined;
    if (roster !== undefined && roster.length > 64 * 1024) {
      this.drop(DropReason.TOO_LARGE, msg.subject, node);
      return;
    }
    const auth = this.authenticate(msg, roster);
    if (auth === DropReason.STALE || auth === DropReason.REPLAYED) {
      this.drop(auth, msg.subject, node);
      return;
    }
    const signed = auth === 'signed';
    if (signed) this.markSigned(node);
    else if (this.signer !== null && (this.config.federationUnsignedRooms !== 'admit' || this.signedNodes.has(node))) {
      // With a key, room events are signed; unsigned ones are let in only by choice, and never in the name of a node heard signing.
      this.drop(DropReason.UNSIGNED, msg.subject, node);
      return;
    }
    const local = this.localRooms.get(room.desktopId);
    switch (event.kind) {
      case 'sync_request': {
        if (roster !== undefined && this.trustsRoster(auth, node)) this.applyRoster(room, node, new Set(roster === '' ? [] : roster.split(',')));
        this.answerSync(room, msg.reply === '' ? undefined : msg.reply);
        return;
      }
      case 'joined': {
        const id = event.info.sessionId;
        if (local !== undefined && isLocal(local, id)) {
          this.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && this.heldBySigner(room, id)) {
          this.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        // An answer to a sync, or an announcement after a reconnect: not news.
        if (room.remote.has(id)) return;
        if (room.remote.size >= this.maxRemotePerRoom) {
          this.drop(DropReason.ROOM_FULL, msg.subject, node);
          return;
        }
        room.remote.set(id, { node, info: event.info, infoJson: sessionInfoJson(event.info), learnt: this.learnt++ });
        this.remoteCount++;
        this.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
        if (local !== undefined) this.deliver(local, encodeTextFrame(event.text));
        return;
      }
      case 'left': {
        const known = room.remote.get(event.info.sessionId);
        if (known === undefined && local !== undefined && isLocal(local, event.info.sessionId)) {
          this.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && this.heldBySigner(room, event.info.sessionId)) {
          this.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        // Only the node that announced a session may say it left.
        if (known === undefined || known.node !== node) return;
        room.remote.delete(event.info.sessionId);
        this.remoteCount--;
        this.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
        if (local !== undefined) this.deliver(local, encodeTextFrame(event.text));
        return;
      }
      case 'updated': {
        if (!signed && this.heldBySigner(room, event.info.sessionId)) {
          this.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        const known = room.remote.get(event.info.sessionId);
        // Only the node that holds a session may change what others know of it.
        if (known === undefined || known.node !== node) return;
        known.info = event.info;
        known.infoJson = sessionInfoJson(event.info);
        if (local !== undefined) this.deliver(local, encodeTextFrame(event.text));
        return;
      }
      case 'relayed': {
        if (local !== undefined && isLocal(local, event.sessionId)) {
          this.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && this.heldBySigner(room, event.sessionId)) {
          this.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        const sender = room.remote.get(event.sessionId);
        // Defence in depth: the origin drops viewers' mutations; a session we know as a viewer cannot pass one here either.
        if (sender !== undefined && sender.info.permission === 'viewer' && this.mutationTypes.has(event.type)) {
          this.drop(DropReason.VIEWER, msg.subject, node);
          return;
        }
        if (local === undefined) return;
        const transientKey = this.transientTypes.has(event.type) ? `${event.sessionId}\n${event.type}` : undefined;
        this.deliver(local, encodeTextFrame(event.text), transientKey);
        return;
      }
    }
  }

  /** Whether `sessionId` is, as far as `room` knows, a session of a node heard signing: only that node's signature speaks for it. */
  private heldBySigner(room: FedRoom, sessionId: string): boolean {
    const known = room.remote.get(sessionId);
    return known !== undefined && this.signedNodes.has(known.node);
  }

  private removeRemote(room: FedRoom, id: string, remote: RemoteSession, now: number): void {
    room.remote.delete(id);
    this.remoteCount--;
    this.metrics.set(Metric.REMOTE_SESSIONS, this.remoteCount);
    const local = this.localRooms.get(room.desktopId);
    if (local !== undefined) this.deliver(local, encodeTextFrame(sessionLeftJson(remote.info, now)));
  }

  // ---------------------------------------------------------------- server API

  /**
   * A server API call this node's primary took: the other nodes apply it to
   * their own sessions. A desktop call is published by the shard that owns
   * the desktop, a user-wide one by shard 0 alone (every local shard got it).
   */
  publishApi(request: ApiRequest): void {
    if (this.closing || !this.publishesApi(request)) return;
    if (!this.connected) {
      this.metrics.add(Metric.BUS_UNPUBLISHED);
      return;
    }
    this.send(apiSubject(request), `{"r":${this.nodeJson},"q":${JSON.stringify(request)}}`);
  }

  /** Server API calls federate only with --federation-key: unsigned, any NATS client could make them. */
  private publishesApi(request: ApiRequest): boolean {
    return this.signer !== null && (desktopOf(request) !== null || this.shardId === 0);
  }

  /** A query's answers from the other nodes (their sessions), or [] when the bus is down or no other node answers in time. */
  async gatherApi(request: ApiRequest): Promise<LiveSession[]> {
    if (this.closing || !this.connected || !this.publishesApi(request)) return [];
    const sessions: LiveSession[] = [];
    try {
      const data = `{"r":${this.nodeJson},"q":${JSON.stringify(request)}}`;
      this.metrics.add(Metric.BUS_PUBLISHED);
      this.metrics.add(Metric.BUS_BYTES_OUT, data.length);
      const subject = apiSubject(request);
      const answers = await this.nc!.requestMany(subject, data, { strategy: 'stall', stall: SYNC_STALL_MS, maxWait: SYNC_MAX_WAIT_MS, headers: this.signed(subject, data) });
      for await (const answer of answers) {
        if (this.closing) break;
        const auth = this.authenticate(answer);
        if (auth !== 'signed') {
          this.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, answer.subject);
          continue;
        }
        const parsed = parseQueryAnswer(answer.data);
        if (parsed === null) this.drop(DropReason.MALFORMED, answer.subject);
        else if (parsed.node !== this.config.nodeId) {
          // Bounded all answers together, whatever the peers claim.
          const room = MAX_GATHERED_SESSIONS - sessions.length;
          if (parsed.sessions.length > room) this.drop(DropReason.ROOM_FULL, answer.subject, parsed.node);
          sessions.push(...parsed.sessions.slice(0, Math.max(0, room)));
        }
      }
    } catch {
      // No other node answered (NATS says so at once), or the bus went down: this node's sessions are what there is.
    }
    return sessions;
  }

  private onApiMessage(msg: Msg): void {
    if (this.closing) return;
    this.metrics.add(Metric.BUS_RECEIVED);
    this.metrics.add(Metric.BUS_BYTES_IN, msg.data.byteLength);
    try {
      this.handleApiMessage(msg);
    } catch (err) {
      const fields = this.dropLog.take({ subject: msg.subject, err });
      if (fields !== null) this.log.error('federation_message_failed', fields);
    }
  }

  private handleApiMessage(msg: Msg): void {
    if (msg.data.byteLength > 4 * MAX_API_BODY_BYTES) {
      this.drop(DropReason.TOO_LARGE, msg.subject);
      return;
    }
    const auth = this.authenticate(msg);
    if (auth !== 'signed') {
      this.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, msg.subject);
      return;
    }
    const value = this.json(msg);
    if (value === undefined) return;
    const { r, q } = (typeof value === 'object' && value !== null ? value : {}) as { r?: unknown; q?: unknown };
    if (typeof r !== 'string' || r.length === 0) {
      this.drop(DropReason.MALFORMED, msg.subject);
      return;
    }
    // Another shard of this node published it: the primary gave it to every shard that needs it already.
    if (r === this.config.nodeId) return;
    const request = parseBusRequest(q);
    if (request === null) {
      this.drop(DropReason.INVALID_EVENT, msg.subject, r);
      return;
    }
    if (apiSubject(request) !== msg.subject) {
      this.drop(DropReason.ROOM_MISMATCH, msg.subject, r);
      return;
    }
    // Every shard hears every desktop's calls; the one that owns the desktop applies them (a role change also the user's, where its multiplexed connections live).
    const desktopId = desktopOf(request);
    const userShard = request.kind === 'set_permission' ? fnv1a32(request.userId) % this.config.workers : -1;
    if (desktopId !== null && fnv1a32(desktopId) % this.config.workers !== this.shardId && userShard !== this.shardId) return;
    // The fleet's broadcasts, bounded here too: every node may send --api-broadcast-rate of them.
    if (request.kind === 'broadcast' && this.busBroadcasts.take('', Date.now()) > 0) {
      this.drop(DropReason.RATE_LIMITED, msg.subject, r);
      return;
    }
    const outcome = this.applyApi(request);
    if (outcome.sessions !== undefined && msg.reply !== '' && msg.reply !== undefined) {
      this.send(msg.reply, JSON.stringify({ r: this.config.nodeId, s: outcome.sessions }));
    }
  }

  // ---------------------------------------------------------------- peers

  private sendHeartbeat(): void {
    if (!this.connected || this.closing) return;
    const beat: Heartbeat = {
      r: this.config.nodeId,
      i: this.config.processInstance,
      t: this.config.startedAt,
      s: this.shardId,
      w: this.config.workers,
      k: this.incarnation,
      h: this.config.federationHeartbeatMs,
      g: this.config.region,
      q: this.beats++,
    };
    try {
      const data = encodeHeartbeat(beat);
      const h = this.signed(HEARTBEAT_SUBJECT, data);
      this.nc!.publish(HEARTBEAT_SUBJECT, data, h === undefined ? undefined : { headers: h });
    } catch {
      // Closed meanwhile.
    }
  }

  private onHeartbeat(msg: Msg): void {
    if (this.closing) return;
    const parsed = parseHeartbeat(msg.data);
    if (!parsed.ok) {
      this.drop(parsed.reason, msg.subject);
      return;
    }
    // With a key, only the fleet's heartbeats count: anyone else's could expire peers, trigger resyncs or stop this node.
    if (this.signer !== null) {
      const auth = this.authenticate(msg);
      if (auth !== 'signed') {
        this.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, msg.subject, parsed.node);
        return;
      }
      this.markSigned(parsed.node);
    }
    const beat = parsed.value;
    const now = Date.now();
    if (beat.r === this.config.nodeId) {
      if (beat.i !== this.config.processInstance) this.duplicateNode(beat);
      return;
    }
    let peer = this.peers.get(beat.r);
    if (peer === undefined) {
      if (this.peers.size >= MAX_PEERS) {
        this.drop(DropReason.TOO_MANY_PEERS, msg.subject, beat.r);
        return;
      }
      peer = { region: beat.g, instance: beat.i, shards: new Map(), successor: null };
      this.peers.set(beat.r, peer);
      this.metrics.set(Metric.PEER_NODES, this.peers.size);
      this.peerLog('info', 'federation_peer_up', { peer: beat.r, region: beat.g });
      // It was declared gone: it may hold sessions we forgot, and it may have forgotten ours.
      if (this.expiredNodes.delete(beat.r)) this.resyncAll();
    }
    // Another process under a node id we follow (a duplicate, or a restart before the old one was
    // declared dead): ignored until the one we follow falls silent and is expired. A restart is then
    // adopted, with a resync, after at most 3 intervals, and a duplicate never makes the view flap.
    // Meanwhile the sessions the node announces are the new process's: they outlive the old one.
    if (beat.i !== peer.instance) {
      if (peer.successor?.instance === beat.i) peer.successor.seen = now;
      else peer.successor = { instance: beat.i, since: this.learnt, seen: now };
      return;
    }
    const known = peer.shards.get(beat.s);
    const order = beatOrder(known, beat.k, beat.q);
    if (order === 'replayed') {
      this.drop(DropReason.REPLAYED, msg.subject, beat.r);
      return;
    }
    if (known === undefined) {
      if (this.peerShardCount >= MAX_PEER_SHARDS) {
        this.drop(DropReason.TOO_MANY_PEERS, msg.subject, beat.r);
        return;
      }
      this.peerShardCount++;
    }
    if (order === 'restarted') {
      // The shard restarted: the sessions it had are gone with its old worker.
      this.peerLog('info', 'federation_peer_shard_restarted', { peer: beat.r, shard: beat.s });
      this.expireShard(beat.r, beat.s, known!.workers, now);
    }
    peer.region = beat.g;
    peer.shards.set(beat.s, { ...nextHistory(known, beat.k, beat.q), seen: now, workers: beat.w, intervalMs: beat.h });
  }

  private duplicateNode(beat: Heartbeat): void {
    // Each of the other process's shards beats: say it once.
    if (this.duplicateSeen) return;
    this.duplicateSeen = true;
    const weAreNewer = this.config.startedAt > beat.t || (this.config.startedAt === beat.t && this.config.processInstance > beat.i);
    // A start-up error: only a process that has just joined the bus stops. Later, a heartbeat in our
    // name is logged, never obeyed (without --federation-key, anyone who can publish could send one).
    const starting = Date.now() - this.firstConnectedAt <= (SILENT_INTERVALS + 1) * this.config.federationHeartbeatMs;
    const stops = weAreNewer && starting;
    this.log.error('federation_duplicate_node_id', {
      nodeId: this.config.nodeId,
      otherStartedAt: new Date(beat.t).toISOString(),
      action: stops ? 'this process stops' : weAreNewer ? 'not stopping: found after start-up; give each process its own --node-id' : 'the other process stops',
    });
    if (stops) {
      this.onFatal('ERR_DUPLICATE_NODE_ID', `another process already runs as node ${JSON.stringify(this.config.nodeId)}; give each process its own --node-id`);
    }
  }

  /** Peer events, at most 20 lines a second: forged heartbeats must not flood the log. */
  private peerLog(level: 'info' | 'warn', event: string, fields: LogFields): void {
    const kept = this.peerLogBudget.take(fields);
    if (kept !== null) this.log[level](event, kept);
  }

  private touchPeers(now: number): void {
    for (const peer of this.peers.values()) for (const shard of peer.shards.values()) shard.seen = now;
  }

  private expireSilentPeers(now: number): void {
    if (!this.connected) return;
    for (const [node, peer] of this.peers) {
      for (const [shardId, shard] of peer.shards) {
        const limit = SILENT_INTERVALS * Math.max(this.config.federationHeartbeatMs, shard.intervalMs);
        if (now - shard.seen <= limit) continue;
        peer.shards.delete(shardId);
        this.peerShardCount--;
        this.peerLog('warn', 'federation_peer_shard_silent', { peer: node, shard: shardId, silentMs: now - shard.seen });
        // A process beating under the node id now (a restart) keeps the sessions learnt since it first did.
        const successor = peer.successor;
        const keepFrom = successor !== null && now - successor.seen <= limit ? successor.since : Infinity;
        this.expireShard(node, shardId, shard.workers, now, keepFrom);
      }
      if (peer.shards.size === 0) {
        this.peers.delete(node);
        this.metrics.set(Metric.PEER_NODES, this.peers.size);
        this.expiredNodes.set(node, now);
        if (this.expiredNodes.size > 10_000) this.expiredNodes.delete(this.expiredNodes.keys().next().value!);
        this.peerLog('warn', 'federation_peer_down', { peer: node });
      }
    }
  }

  /**
   * Remove the sessions `node` had in the rooms its shard `shardId` (of `workers`) owns, telling local
   * members; those learnt at `keepFrom` or later (from the node's new process) stay.
   */
  private expireShard(node: string, shardId: number, workers: number, now: number, keepFrom = Infinity): void {
    for (const room of this.rooms.values()) {
      if (room.remote.size === 0 || fnv1a32(room.desktopId) % workers !== shardId) continue;
      for (const [id, remote] of room.remote) if (remote.node === node && remote.learnt < keepFrom) this.removeRemote(room, id, remote, now);
    }
  }

  // ---------------------------------------------------------------- lifecycle

  stats(): FederationStats {
    const now = Date.now();
    const peers = [...this.peers].map(([nodeId, peer]) => {
      let last = 0;
      for (const shard of peer.shards.values()) last = Math.max(last, shard.seen);
      return { nodeId, region: peer.region, shards: peer.shards.size, lastHeartbeatMsAgo: now - last };
    });
    return {
      nodeId: this.config.nodeId,
      region: this.config.region,
      connected: this.connected,
      server: this.connected ? this.nc!.getServer() : null,
      remoteSessions: this.remoteCount,
      peers,
    };
  }

  /**
   * Shutting down: tell the other nodes that every local session left (they
   * need not wait for the heartbeat to lapse), then flush and close.
   */
  async close(timeoutMs: number): Promise<void> {
    if (this.closing) return;
    if (this.connected) for (const room of this.rooms.values()) this.announce(room, 'session_left');
    // From here nothing heard is taken and nothing is announced (onRoomMessage, answerNow): the drain
    // below still hands over what arrives before the server has our unsubscriptions, and a sync answered
    // then would announce the sessions again after their session_left.
    this.closing = true;
    clearInterval(this.heartbeat);
    clearInterval(this.sweeper);
    if (this.retry !== null) clearTimeout(this.retry);
    if (this.resyncTimer !== null) clearTimeout(this.resyncTimer);
    this.resyncTimer = null;
    for (const room of this.rooms.values()) {
      if (room.lingerTimer !== null) clearTimeout(room.lingerTimer);
      if (room.answerTimer !== null) clearTimeout(room.answerTimer);
      room.lingerTimer = null;
      room.answerTimer = null;
      room.pendingReplies = [];
    }
    const nc = this.nc;
    if (nc === null) return;
    await withDeadline(nc.drain().catch(() => undefined), timeoutMs);
    if (!nc.isClosed()) await nc.close().catch(() => undefined);
    this.setConnected(false);
  }
}

function isLocal(room: Room, sessionId: string): boolean {
  const members = room.members;
  for (let i = 0; i < members.length; i++) if (members[i]!.id === sessionId) return true;
  return false;
}
