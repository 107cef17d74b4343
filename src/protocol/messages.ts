/**
 * Messages between the primary thread and shard workers. Plain data only
 * (structured clone), except the transferred socket.
 */
import type { Socket } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import type { ApiOutcome, ApiRequest } from './api.ts';
import type { Permission } from './events.ts';

/** Primary → shard: a connection whose request head has been read. */
export interface ConnectionMessage {
  type: 'connection';
  /** Transferred in the transfer list; untouched by libuv on the primary. */
  socket: Socket;
  /** Every byte the primary read from the socket: the head, maybe more. */
  bytes: Uint8Array;
  /** Where the head ends inside `bytes`. */
  headLength: number;
  /** Client address for logs: the peer, or X-Forwarded-For from a --trust-proxy peer. */
  remoteAddress: string;
}

/**
 * Primary → shard (shutdown): stop taking connections, close every session
 * with 1012 (service restart) spread over `spreadMs`, and report `drained`
 * once all are closed. The shard keeps its bus link and its link to the other
 * shards up until the primary's {@link StopMessage}: a session still open on
 * another shard may be in a room this one owns.
 */
export interface DrainMessage {
  type: 'drain';
  /** How long the shard may wait for closing handshakes after its last close frame before cutting sockets. */
  timeoutMs: number;
  /** The window over which the shard's sessions get their close frames, evenly, in a random order (0 = at once). */
  spreadMs: number;
}

/**
 * Primary → shard, once every shard reported `drained` (or the drain's
 * deadline passed): close the bus link and the links to the other shards,
 * then end the thread with exit code 0.
 */
export interface StopMessage {
  type: 'stop';
  /** How long the shard may take to flush and close its bus link. */
  timeoutMs: number;
}

/**
 * Primary → shard: the shard is about to be terminated and restarted (admin
 * endpoint): close every session with 1012 (service restart) so that clients
 * reconnect at once, then report `drained`.
 */
export interface RestartMessage {
  type: 'restart';
  /** How long the shard may wait for closing handshakes before cutting sockets. */
  timeoutMs: number;
}

/** Primary → shard: report sessions and the largest rooms (for /stats). */
export interface StatsRequest {
  type: 'stats';
  id: number;
}

/** Primary → shard: a server API request to apply (protocol/api.ts); answered with an {@link ApiReply} of the same id. */
export interface ApiRequestMessage {
  type: 'api';
  request: ApiRequest;
}

/**
 * Primary → shard: a port to shard `peer` (one end of a MessageChannel the
 * primary made; the peer got the other end). Sent for every pair of running
 * shards when one starts, so a restarted shard's peers get a new port: the
 * old one, and everything learnt through it, is dropped.
 */
export interface LinkPortMessage {
  type: 'link';
  peer: number;
  /** Transferred in the transfer list. */
  port: MessagePort;
}

export type PrimaryToShard = ConnectionMessage | DrainMessage | StopMessage | RestartMessage | StatsRequest | ApiRequestMessage | LinkPortMessage;

/**
 * Shard ↔ shard, over the in-process link (shard/shard-link.ts), for a
 * multiplexed connection's topics whose room another shard owns. The
 * follower (the connection's shard) joins, leaves and publishes; the owner
 * answers a join with the room's sessions and sends every event of the room
 * once to each follower, which fans it out to its own subscribers. SessionInfo
 * and stamps are JSON text, spliced as is.
 */
export type LinkMessage =
  /** Follower → owner: `sid` subscribes (again: a fresh `joined`, nothing broadcast). */
  | { k: 'join'; topic: string; sid: string; info: string; stamp: string; at: number; rec?: { epoch: string; offset: number } }
  /** Follower → owner: `sid`'s role on the topic changed (the server API, a recheck): `info` is its SessionInfo JSON with the new role. */
  | { k: 'update'; topic: string; sid: string; info: string; perm: Permission }
  /** Owner → follower: `sid` is in, `sessions` being the others' SessionInfo JSON, comma-separated; or, with `full`, refused (--max-room-size). */
  | {
      k: 'joined';
      topic: string;
      sid: string;
      sessions: string;
      full?: true;
      /** The room's epoch and latest offset; `recovered` when the join asked to recover (`rec`). */
      pos?: { epoch: string; offset: number };
      recovered?: boolean;
    }
  /** Follower → owner: the events of `topic` after offset `o` of epoch `e`, for `sid`'s replay (issue 21). */
  | { k: 'replay'; topic: string; sid: string; e: string; o: number }
  /**
   * Owner → follower: the next events of `sid`'s replay, in the topic
   * framing with their offsets, `last` the last one's offset; none when
   * caught up; `gone` when the history let go of them.
   */
  | { k: 'batch'; topic: string; sid: string; texts: string[]; last: number; gone?: true }
  /** Follower → owner: `sid` left. */
  | { k: 'leave'; topic: string; sid: string }
  /** Follower → owner: `sid` publishes (already checked against its permission). */
  | { k: 'pub'; topic: string; sid: string; type: string; payload: string | undefined; ts: number }
  /**
   * Owner → follower: an event in the topic framing, for every subscriber
   * there but session `except`, and but the sessions of user `exceptUser`
   * when set (the server API's publish); `transient`: its coalescing key, or ''.
   */
  | { k: 'ev'; topic: string; except: string; text: string; transient: string; exceptUser?: string; o?: number };

/** Shard → primary: the shard is listening for connections. */
export interface ReadyMessage {
  type: 'ready';
}

/** Shard → primary: every session is closed (after a drain or restart message); the shard can be stopped. */
export interface DrainedMessage {
  type: 'drained';
  closed: number;
}

export interface RoomSize {
  desktopId: string;
  sessions: number;
}

/** One shard's view of the federation (shard/federation/), for /stats. */
export interface FederationStats {
  nodeId: string;
  region: string;
  connected: boolean;
  server: string | null;
  remoteSessions: number;
  peers: { nodeId: string; region: string; shards: number; lastHeartbeatMsAgo: number }[];
}

/** Shard → primary: answer to a {@link StatsRequest}. */
export interface StatsReply {
  type: 'stats';
  id: number;
  connections: number;
  rooms: number;
  /** Largest rooms first, at most 10. */
  topRooms: RoomSize[];
  /** This shard's isolate: V8 heap in use and committed, and memory outside it (Buffers' backing stores). */
  memory: { heapUsed: number; heapTotal: number; external: number; arrayBuffers: number };
  /** The shard's link to other nodes (null without federation). */
  federation: FederationStats | null;
}

/** Shard → primary: the process cannot go on as configured (e.g. its federation node id is taken); it should stop. */
export interface FatalMessage {
  type: 'fatal';
  code: string;
  message: string;
}

/** Shard → primary: what the shard did with an {@link ApiRequestMessage}. */
export interface ApiReply {
  type: 'api';
  id: string;
  outcome: ApiOutcome;
}

export type ShardToPrimary = ReadyMessage | DrainedMessage | StatsReply | FatalMessage | ApiReply;

/** `workerData` given to each shard worker. */
export interface ShardWorkerData {
  shardId: number;
  /** Serialized {@link import('../config.ts').ServeConfig}. */
  config: unknown;
  /** Shared metrics (protocol/metrics.ts); this shard writes slot `shardId`. */
  metrics: SharedArrayBuffer;
  /** Sessions per user, all shards (protocol/user-connections.ts). */
  userConnections: SharedArrayBuffer;
}
