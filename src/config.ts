/**
 * Every option of `moodio-rt serve`: its flag, environment variable, default
 * and parser, in one table. The CLI builds its flags from this table and
 * hands the raw strings to {@link resolveServeConfig}, which validates them
 * once; nothing downstream re-checks an option.
 *
 * Precedence (commander's): default < environment variable < flag.
 */
import { isIP } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import { DEV_SECRET_FILE, loadOrCreateDevSecret } from './auth/dev-secret.ts';
import { ConfigError } from './errors.ts';
import { MAX_API_BODY_BYTES } from './protocol/api.ts';
import { DEFAULT_MUTATION_TYPES, RESERVED_TYPES } from './protocol/events.ts';
import { durationIn, httpUrl, intIn, numberIn, oneOf, optionName, parseDuration, resolveTable, type TableSpec } from './option-parsers.ts';

export { DEV_SECRET_FILE, optionName, parseDuration };

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const PACING_MODES = ['auto', 'always', 'off'] as const;
export type PacingMode = (typeof PACING_MODES)[number];
export const GC_THREADS_MODES = ['auto', 'single', 'parallel'] as const;
export type GcThreadsMode = (typeof GC_THREADS_MODES)[number];
export const UNSIGNED_ROOMS_POLICIES = ['drop', 'admit'] as const;
export type UnsignedRoomsPolicy = (typeof UNSIGNED_ROOMS_POLICIES)[number];
export const HISTORY_STREAM_STORAGES = ['memory', 'file'] as const;
export type HistoryStreamStorage = (typeof HISTORY_STREAM_STORAGES)[number];
/** A JetStream stream name that is also one subject token (shard/federation/room-stream.ts). */
const HISTORY_STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** The validated configuration of a running server. Plain data: it is cloned into every shard. */
export interface ServeConfig {
  host: string;
  port: number;
  workers: number;
  dev: boolean;
  /** The token's `desktops` (or `permission`) claim decides instead of the permission API. */
  permissionsFromToken: boolean;
  jwtSecret: string;
  devSecretFile: string;
  permissionApiBase: string;
  permissionTimeoutMs: number;
  permissionConcurrency: number;
  /** Permission lookups that may wait for a connection, per worker; past it 503. */
  permissionQueue: number;
  /** How long a permission answer is reused (0 = never); denials at most 5 s. */
  permissionCacheTtlMs: number;
  maxMessageSize: number;
  maxHeadBytes: number;
  handshakeTimeoutMs: number;
  maxPendingHandshakes: number;
  /** Heads pending over 1 s from one address (0 = no limit); --trust-proxy peers are exempt. */
  maxPendingPerAddress: number;
  /** WebSocket handshakes per second one client address may start (5 s worth at once; 0 = no limit). */
  handshakeRatePerAddress: number;
  drainTimeoutMs: number;
  /** On SIGTERM/SIGINT, the window over which each shard closes its sessions with 1012, evenly, in a random order (0 = all at once). */
  drainSpreadMs: number;
  pingIntervalMs: number;
  /** /ws/ping sockets open at once in the process. */
  maxPingSockets: number;
  /** /ws/ping sockets open at once from one client address (an IPv6 /64). */
  maxPingPerAddress: number;
  maxConnectionsPerWorker: number;
  maxConnectionsPerUser: number;
  /** Handshakes of one user being authenticated at once (0 = no limit). */
  maxHandshakesPerUser: number;
  /** Sessions one room (desktop) may hold (0 = no limit). */
  maxRoomSize: number;
  /** Connects per second one user may make, and the burst (0 = no limit). */
  connectRate: number;
  connectBurst: number;
  /** Proxy addresses whose X-Forwarded-For is believed. */
  trustProxy: string[];
  maxBufferedBytes: number;
  /** Hard per-session cap: over it a session is cut with 4008 at once. */
  maxSessionBacklogBytes: number;
  /** Process-wide cap on outbound bytes: over it the largest backlogs are cut. */
  maxOutboundBytes: number;
  /** How long a room's events are kept for a resume (0 = none kept; offsets and epochs still given). */
  historyAgeMs: number;
  /** Events kept per room. */
  historyEvents: number;
  /** Bytes of events kept per room. */
  historyRoomBytes: number;
  /** Bytes of events kept by the whole process (each shard keeps its share). */
  historyMemoryBytes: number;
  /** Added to asset_dragging. */
  coalesceTypes: string[];
  /** Types a viewer may not send, dropped on every route (default: the protocol's DEFAULT_MUTATION_TYPES). */
  mutationTypes: string[];
  slowConsumerTimeoutMs: number;
  /** Whether V8 collects on helper threads or on the thread that allocated (process-setup.ts). */
  gcThreads: GcThreadsMode;
  /** Niceness V8's helper threads run at, 0 (left alone) to 19 (src/process-setup.ts). */
  v8HelperNice: number;
  /** When sockets that receive fast are written once per pace interval instead of once per turn (write-coalescer.ts). */
  pacing: PacingMode;
  /** The interval (`always`), or the longest one (`auto`). */
  paceIntervalMs: number;
  /** Frames per second a socket must receive to be paced. */
  paceAbove: number;
  rateLimit: number;
  rateLimitBurst: number;
  rateLimitCloseAfterMs: number;
  adminToken: string;
  metricsToken: string;
  /** Empty = any origin. */
  allowedOrigins: string[];
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** NATS servers for federation; empty = one node, no bus. */
  natsUrls: string[];
  /** A NATS credentials file (JWT + nkey seed); read at start. */
  natsCreds: string;
  /** This node's id on the bus (unique per process). */
  nodeId: string;
  /** A label for logs and metrics. */
  region: string;
  federationHeartbeatMs: number;
  /** Shared key signing the fleet's bus messages; empty = unsigned (and the server API does not federate). */
  federationKey: string;
  /** With a key: drop unsigned room events (`drop`), or take them from nodes that never signed (`admit`, a fleet mixed with Go relays). */
  federationUnsignedRooms: UnsignedRoomsPolicy;
  /** A signed bus message is taken only if its stamp is within this many ms of the receiver's clock, either way. */
  federationReplayWindowMs: number;
  /** The JetStream stream holding the fleet's shared history (shard/federation/room-stream.ts); empty = none, history stays per node. */
  historyStream: string;
  /** Where the stream keeps its messages: `memory` (lost with a nats-server restart, a new epoch) or `file`. */
  historyStreamStorage: HistoryStreamStorage;
  /** The stream's bounds: age (ms), bytes and messages of the whole stream, oldest discarded first. */
  historyStreamMaxAgeMs: number;
  historyStreamMaxBytes: number;
  historyStreamMaxMsgs: number;
  /** Random per process, made at resolve time: tells two processes that claim one node id apart. */
  processInstance: string;
  /** When this process started (ms since the epoch). */
  startedAt: number;
  // Server API and live grants (issue 13).
  /** Bearer key of /api/v1/; empty = the API is off (404). */
  apiKey: string;
  /** POST /api/v1/broadcast calls per second (0 = no limit). */
  apiBroadcastRate: number;
  /** Bytes of API publishes one desktop may be sent per second (0 = no limit), and at once. */
  apiPublishRate: number;
  apiPublishBurst: number;
  /** Re-ask the permission API for every live session this often (0 = never). */
  permissionRecheckMs: number;
  /** Close a session with 4001 when its token's exp passes. */
  enforceTokenExpiry: boolean;
}

export type OptionSpec = TableSpec<keyof ServeConfig>;

const text = (raw: string): string => raw;

/** `127.0.0.1, ::1` → IP addresses. */
function addressList(raw: string, option: string): string[] {
  if (raw.trim() === '') return [];
  return raw.split(',').map((part) => {
    const address = part.trim();
    if (isIP(address) === 0) throw new ConfigError(option, `${JSON.stringify(address)} is not an IP address`);
    return address;
  });
}

/** `cursor_moved, viewport` → event types. */
function typeList(raw: string, option: string): string[] {
  if (raw.trim() === '') return [];
  return raw.split(',').map((part) => {
    const type = part.trim();
    if (type.length === 0 || type.length > 64) throw new ConfigError(option, `${JSON.stringify(type)} is not an event type`);
    return type;
  });
}

/**
 * `asset_moved, pt_cell_updated` → the mutation table. It replaces the
 * default, so it may not be empty (that would let viewers send anything:
 * say so with a type no client sends), nor name a server-only type, which
 * no client can send anyway.
 */
function mutationTypeList(raw: string, option: string): string[] {
  const types = typeList(raw, option);
  if (types.length === 0) throw new ConfigError(option, 'must list at least one event type');
  for (const type of types) {
    if (RESERVED_TYPES.has(type)) throw new ConfigError(option, `${JSON.stringify(type)} is sent by the server only`);
  }
  return [...new Set(types)];
}

/** `https://a.example, http://localhost:3000` → normalized origins (scheme://host[:port]). */
function originList(raw: string, option: string): string[] {
  if (raw.trim() === '') return [];
  return raw.split(',').map((part) => {
    const value = part.trim();
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new ConfigError(option, `${JSON.stringify(value)} is not an origin such as https://moodio.example.com`);
    }
    if (url.origin === 'null' || url.pathname !== '/' || url.search || url.hash) {
      throw new ConfigError(option, `${JSON.stringify(value)} is not an origin such as https://moodio.example.com`);
    }
    return url.origin;
  });
}
/** `nats://a:4222,tls://b:4222` → server URLs for the NATS client (nats, tls, ws and wss schemes, or bare host:port). */
function natsUrlList(raw: string, option: string): string[] {
  if (raw.trim() === '') return [];
  return raw.split(',').map((part) => {
    const value = part.trim();
    const withScheme = /^[a-z]+:\/\//.test(value) ? value : `nats://${value}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw new ConfigError(option, `${JSON.stringify(value)} is not a NATS URL such as nats://127.0.0.1:4222`);
    }
    if (!['nats:', 'tls:', 'ws:', 'wss:'].includes(url.protocol) || url.hostname === '') {
      throw new ConfigError(option, `${JSON.stringify(value)} is not a NATS URL such as nats://127.0.0.1:4222`);
    }
    return value;
  });
}

/** Node ids travel in every bus envelope and log line: printable, no spaces, at most 128 characters. */
function nodeId(raw: string, option: string): string {
  if (!/^[\x21-\x7e]{1,128}$/.test(raw)) throw new ConfigError(option, `must be 1 to 128 printable characters without spaces, got ${JSON.stringify(raw)}`);
  return raw;
}

const flag = (raw: string): boolean => raw === 'true';
const LIST = { unset: [] as string[] };

/**
 * Where `serve --dev` listens unless `--host` (or HOST) says otherwise: dev mode
 * hands a token to anyone who asks (/demo/token), so only this machine may ask.
 */
export const DEV_HOST = '127.0.0.1';

/** Smallest --api-publish-burst: two of the largest publishes (a body of 64 KiB, plus the server's stamp), so that any valid one can pass. */
export const MIN_API_PUBLISH_BURST = 2 * MAX_API_BODY_BYTES;

/** The options of `moodio-rt serve`, with their defaults. */
export const SERVE_OPTIONS: readonly OptionSpec[] = [
  { key: 'host', flags: '--host <host>', env: 'HOST', default: '0.0.0.0', description: `address to listen on (with --dev: ${DEV_HOST})`, parse: text },
  { key: 'port', flags: '-p, --port <port>', env: 'PORT', default: '8081', description: 'TCP port (0 = any free port)', parse: intIn(0, 65535) },
  {
    key: 'workers',
    flags: '-w, --workers <n>',
    env: 'MOODIO_RT_WORKERS',
    default: String(availableParallelism()),
    description: 'shard worker threads (default: available cores)',
    parse: intIn(1, 256),
  },
  { key: 'dev', flags: '--dev', description: 'dev mode: generated secret, permission from the token, example printed', parse: flag, unset: false },
  {
    key: 'jwtSecret',
    flags: '--jwt-secret <secret>',
    env: 'JWT_ACCESS_SECRET',
    description: 'HS256 secret of access tokens (required unless --dev)',
    parse: text,
  },
  {
    key: 'devSecretFile',
    flags: '--dev-secret-file <path>',
    env: 'MOODIO_RT_DEV_SECRET_FILE',
    default: DEV_SECRET_FILE,
    description: 'where --dev keeps its generated secret (read by `moodio-rt token`)',
    parse: text,
  },
  {
    key: 'permissionApiBase',
    flags: '--permission-api-base <url>',
    env: 'PERMISSION_API_BASE',
    default: 'http://localhost:3000',
    description: 'base URL of the permission API',
    parse: httpUrl,
  },
  {
    key: 'permissionTimeoutMs',
    flags: '--permission-timeout <duration>',
    env: 'MOODIO_RT_PERMISSION_TIMEOUT',
    default: '5s',
    description: 'permission API request timeout',
    parse: parseDuration,
  },
  {
    key: 'permissionConcurrency',
    flags: '--permission-concurrency <n>',
    env: 'MOODIO_RT_PERMISSION_CONCURRENCY',
    default: '64',
    description: 'most concurrent permission API requests per worker (keep-alive connections)',
    parse: intIn(1, 10_000),
  },
  {
    key: 'permissionQueue',
    flags: '--permission-queue <n>',
    env: 'MOODIO_RT_PERMISSION_QUEUE',
    default: '256',
    description: 'permission lookups that may wait for a free connection, per worker; more are answered 503 with Retry-After',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'permissionCacheTtlMs',
    flags: '--permission-cache-ttl <duration>',
    env: 'MOODIO_RT_PERMISSION_CACHE_TTL',
    default: '30s',
    description: 'reuse a permission answer for the same user, desktop and cookie this long (denials at most 5s; 0 = ask every time)',
    parse: (raw, option) => (raw.trim() === '0' ? 0 : parseDuration(raw, option)),
  },
  {
    key: 'maxMessageSize',
    flags: '--max-message-size <bytes>',
    env: 'MOODIO_RT_MAX_MESSAGE_SIZE',
    default: '4096',
    description: 'largest accepted client frame; larger closes with 1009',
    parse: intIn(64, 16 * 1024 * 1024),
  },
  {
    key: 'maxHeadBytes',
    flags: '--max-head-size <bytes>',
    env: 'MOODIO_RT_MAX_HEAD_SIZE',
    default: String(16 * 1024),
    description: "largest HTTP request head, as Node's own default; larger is answered 431",
    parse: intIn(256, 65536),
  },
  {
    key: 'handshakeTimeoutMs',
    flags: '--handshake-timeout <duration>',
    env: 'MOODIO_RT_HANDSHAKE_TIMEOUT',
    default: '10s',
    description: 'time a client has to send its request head',
    parse: parseDuration,
  },
  {
    key: 'maxPendingHandshakes',
    flags: '--max-pending-handshakes <n>',
    env: 'MOODIO_RT_MAX_PENDING_HANDSHAKES',
    default: '1000',
    description: 'request heads being read at once; when full, the one that has sent the fewest bytes for longest is closed to make room',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'maxPendingPerAddress',
    flags: '--max-pending-per-address <n>',
    env: 'MOODIO_RT_MAX_PENDING_PER_ADDRESS',
    default: '64',
    description:
      'slow request heads (still being read 1 s after the connect) from one client address; more are answered 503 (0 = no limit; --trust-proxy peers are exempt)',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'handshakeRatePerAddress',
    flags: '--handshake-rate-per-address <per-second>',
    env: 'MOODIO_RT_HANDSHAKE_RATE_PER_ADDRESS',
    default: '100',
    description:
      'WebSocket handshakes per second one client address may start, 5 s worth at once; more are answered 429 by the primary (0 = no limit; behind a proxy, list it in --trust-proxy so that its clients count apart)',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'drainTimeoutMs',
    flags: '--drain-timeout <duration>',
    env: 'MOODIO_RT_DRAIN_TIMEOUT',
    default: '10s',
    description: 'on SIGTERM/SIGINT, longest wait for sessions to close after the last close frame was sent, before exiting',
    parse: parseDuration,
  },
  {
    key: 'drainSpreadMs',
    flags: '--drain-spread <duration>',
    env: 'MOODIO_RT_DRAIN_SPREAD',
    // With --drain-timeout's 10 s and at most 2 s to close the bus link, a drain ends within 18 s: inside the unit's TimeoutStopSec=20.
    default: '5s',
    description:
      'on SIGTERM/SIGINT, close the sessions with 1012 (service restart) spread evenly over this window, in a random order, so that the nodes they reconnect to get no stampede (0 = all at once; at most 10m)',
    parse: (raw, option) => (raw.trim() === '0' ? 0 : durationIn(1, 600_000, '0 to 10m')(raw, option)),
  },
  {
    key: 'pingIntervalMs',
    flags: '--ping-interval <duration>',
    env: 'MOODIO_RT_PING_INTERVAL',
    default: '30s',
    description: 'ping every session this often; one that has not answered by the next ping is closed',
    parse: parseDuration,
  },
  {
    key: 'maxPingSockets',
    flags: '--max-ping-sockets <n>',
    env: 'MOODIO_RT_MAX_PING_SOCKETS',
    default: '1000',
    description: '/ws/ping sockets open at once in the process; more are answered 503 with Retry-After',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'maxPingPerAddress',
    flags: '--max-ping-per-address <n>',
    env: 'MOODIO_RT_MAX_PING_PER_ADDRESS',
    default: '16',
    description: '/ws/ping sockets open at once from one client address (an IPv6 /64); more are answered 429 with Retry-After',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'maxConnectionsPerWorker',
    flags: '--max-connections-per-worker <n>',
    env: 'MOODIO_RT_MAX_CONNECTIONS_PER_WORKER',
    default: '0',
    description: 'sessions a shard admits; more are answered 503 (0 = no limit)',
    parse: intIn(0, 10_000_000),
  },
  {
    key: 'maxConnectionsPerUser',
    flags: '--max-connections-per-user <n>',
    env: 'MOODIO_RT_MAX_CONNECTIONS_PER_USER',
    default: '50',
    description: 'sessions one userId may hold across all shards; more are answered 429 (0 = no limit)',
    parse: intIn(0, 10_000_000),
  },
  {
    key: 'maxHandshakesPerUser',
    flags: '--max-handshakes-per-user <n>',
    env: 'MOODIO_RT_MAX_HANDSHAKES_PER_USER',
    default: '16',
    description: 'handshakes of one userId waiting for the permission API at once, per worker; more are answered 429 (0 = no limit)',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'maxRoomSize',
    flags: '--max-room-size <n>',
    env: 'MOODIO_RT_MAX_ROOM_SIZE',
    default: '200',
    description:
      'sessions one desktop may hold; more are answered 503 with Retry-After (0 = no limit): every event is written to each member, and room_joined lists them all',
    parse: intIn(0, 10_000_000),
  },
  {
    key: 'connectRate',
    flags: '--connect-rate <per-second>',
    env: 'MOODIO_RT_CONNECT_RATE',
    default: '5',
    description: 'connections per second one userId may open, per worker; more are answered 429 with Retry-After (0 = no limit)',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'connectBurst',
    flags: '--connect-burst <n>',
    env: 'MOODIO_RT_CONNECT_BURST',
    default: '30',
    description: 'connections one userId may open at once before --connect-rate applies',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'trustProxy',
    flags: '--trust-proxy <list>',
    env: 'MOODIO_RT_TRUST_PROXY',
    description: 'comma-separated proxy addresses (e.g. 127.0.0.1) whose X-Forwarded-For gives the client address',
    parse: addressList,
    ...LIST,
  },
  {
    key: 'maxBufferedBytes',
    flags: '--max-buffered-bytes <bytes>',
    env: 'MOODIO_RT_MAX_BUFFERED_BYTES',
    default: String(1024 * 1024),
    description: "a session's outbound budget: bytes waiting in its socket or queued for it, before transient events are coalesced",
    parse: intIn(4096, 1024 * 1024 * 1024),
  },
  {
    key: 'maxSessionBacklogBytes',
    flags: '--max-session-backlog <bytes>',
    env: 'MOODIO_RT_MAX_SESSION_BACKLOG',
    default: String(4 * 1024 * 1024),
    description: 'hard cap on bytes waiting for one session; over it the session is cut with 4008 at once (at least --max-buffered-bytes)',
    parse: intIn(4096, 1024 * 1024 * 1024),
  },
  {
    key: 'maxOutboundBytes',
    flags: '--max-outbound-memory <bytes>',
    env: 'MOODIO_RT_MAX_OUTBOUND_MEMORY',
    default: String(256 * 1024 * 1024),
    description: 'cap on bytes waiting for all sessions of the process; over it the largest backlogs are cut with 4008',
    parse: intIn(64 * 1024, 64 * 1024 * 1024 * 1024),
  },
  {
    key: 'historyAgeMs',
    flags: '--history-age <duration>',
    env: 'MOODIO_RT_HISTORY_AGE',
    default: '2m',
    description: 'how long a room keeps its relayed events for clients that resume (Socket.IO and Ably keep 2 minutes; 0 = keep none)',
    parse: (raw, option) => (raw.trim() === '0' ? 0 : durationIn(1, 24 * 3_600_000, '1ms to 24h')(raw, option)),
  },
  {
    key: 'historyEvents',
    flags: '--history-events <n>',
    env: 'MOODIO_RT_HISTORY_EVENTS',
    default: '2000',
    description: 'events a room keeps for clients that resume, the oldest let go first',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'historyRoomBytes',
    flags: '--history-room-bytes <bytes>',
    env: 'MOODIO_RT_HISTORY_ROOM_BYTES',
    default: String(1024 * 1024),
    description: 'bytes of events a room keeps for clients that resume, the oldest let go first',
    parse: intIn(4096, 1024 * 1024 * 1024),
  },
  {
    key: 'historyMemoryBytes',
    flags: '--history-memory <bytes>',
    env: 'MOODIO_RT_HISTORY_MEMORY',
    default: String(1024 * 1024 * 1024),
    description: 'bytes of events the process keeps for clients that resume, each shard its share; over it the rooms with the oldest events are let go first',
    parse: intIn(64 * 1024, 64 * 1024 * 1024 * 1024),
  },
  {
    key: 'coalesceTypes',
    flags: '--coalesce-types <list>',
    env: 'MOODIO_RT_COALESCE_TYPES',
    description: 'comma-separated event types, besides asset_dragging, of which a slow recipient only gets the newest',
    parse: typeList,
    ...LIST,
  },
  {
    key: 'mutationTypes',
    flags: '--mutation-types <list>',
    env: 'MOODIO_RT_MUTATION_TYPES',
    default: DEFAULT_MUTATION_TYPES.join(','),
    description:
      'comma-separated event types a viewer may not send (dropped on every route); replaces the default list (asset_*, cell_*, table_generating, pt_*)',
    parse: mutationTypeList,
  },
  {
    key: 'slowConsumerTimeoutMs',
    flags: '--slow-consumer-timeout <duration>',
    env: 'MOODIO_RT_SLOW_CONSUMER_TIMEOUT',
    default: '10s',
    description: 'a session over its outbound budget this long is closed with 4008',
    parse: parseDuration,
  },
  {
    key: 'gcThreads',
    flags: '--gc-threads <mode>',
    env: 'MOODIO_RT_GC_THREADS',
    default: 'parallel',
    description:
      "where V8 collects garbage: parallel (V8's helper threads too), single (on the thread that allocated, Node's --single-threaded-gc: more throughput at the ceiling, a longer tail at light load), auto (single when there are at least as many shards as cores this process may use)",
    parse: oneOf(GC_THREADS_MODES),
  },
  {
    key: 'v8HelperNice',
    flags: '--v8-helper-nice <n>',
    env: 'MOODIO_RT_V8_HELPER_NICE',
    default: '10',
    description:
      "niceness of V8's helper threads (optimizing compiles, GC helpers), 0 to 19: on a busy core the shards run first and the helpers mostly in what the shards leave; 0 leaves them as Node starts them; 19 can stall a shard that waits for a helper while another busy process of its session or container holds the core (Linux only)",
    parse: intIn(0, 19),
  },
  {
    key: 'pacing',
    flags: '--pacing <mode>',
    env: 'MOODIO_RT_PACING',
    default: 'auto',
    description:
      'write sockets that receive fast once per pace interval: auto (while a shard is saturated, the interval following its load from 4 ms up to --pace-interval), always (at --pace-interval), off',
    parse: oneOf(PACING_MODES),
  },
  {
    key: 'paceIntervalMs',
    flags: '--pace-interval <duration>',
    env: 'MOODIO_RT_PACE_INTERVAL',
    default: '32ms',
    description: 'the longest pace interval (auto), or the interval (always); 8 ms to 1 s',
    parse: durationIn(8, 1000, '8ms to 1s'),
  },
  {
    key: 'paceAbove',
    flags: '--pace-above <frames/s>',
    env: 'MOODIO_RT_PACE_ABOVE',
    default: '200',
    description: 'frames per second a socket must receive to be paced',
    parse: intIn(10, 1_000_000),
  },
  {
    key: 'rateLimit',
    flags: '--rate-limit <msgs/s>',
    env: 'MOODIO_RT_RATE_LIMIT',
    default: '100',
    description: 'messages per second a user may send, all its sessions on a shard together (token bucket; 0 = no limit)',
    parse: intIn(0, 1_000_000),
  },
  {
    key: 'rateLimitBurst',
    flags: '--rate-limit-burst <n>',
    env: 'MOODIO_RT_RATE_LIMIT_BURST',
    default: '200',
    description: 'messages a user may send at once before the rate applies',
    parse: intIn(1, 1_000_000),
  },
  {
    key: 'rateLimitCloseAfterMs',
    flags: '--rate-limit-close-after <duration>',
    env: 'MOODIO_RT_RATE_LIMIT_CLOSE_AFTER',
    default: '10s',
    description: 'a session whose user stays over the limit this long is closed with 1008',
    parse: parseDuration,
  },
  {
    key: 'adminToken',
    flags: '--admin-token <token>',
    env: 'MOODIO_RT_ADMIN_TOKEN',
    description: 'bearer token for /admin endpoints (disabled when unset)',
    parse: text,
  },
  {
    key: 'metricsToken',
    flags: '--metrics-token <token>',
    env: 'MOODIO_RT_METRICS_TOKEN',
    description: 'bearer token required for GET /metrics (default: open)',
    parse: text,
  },
  {
    key: 'allowedOrigins',
    flags: '--allowed-origins <list>',
    env: 'MOODIO_RT_ALLOWED_ORIGINS',
    description: 'comma-separated origins browsers may connect from, e.g. https://moodio.example.com (default: any)',
    parse: originList,
    ...LIST,
  },
  {
    key: 'natsUrls',
    flags: '--nats-url <urls>',
    env: 'NATS_URL',
    description: 'NATS server(s), comma-separated, to federate with other nodes (tls:// for TLS; user:pass@ in the URL for a password); unset = one node',
    parse: natsUrlList,
    ...LIST,
  },
  { key: 'natsCreds', flags: '--nats-creds <file>', env: 'MOODIO_RT_NATS_CREDS', description: 'NATS credentials file (JWT and nkey seed)', parse: text },
  {
    key: 'nodeId',
    flags: '--node-id <id>',
    env: 'MOODIO_RT_NODE_ID',
    description: "this node's id on the bus, unique per process (default: hostname-pid-random)",
    parse: nodeId,
  },
  {
    key: 'federationKey',
    flags: '--federation-key <key>',
    env: 'MOODIO_RT_FEDERATION_KEY',
    description:
      "shared key (at least 32 characters) signing the fleet's heartbeats, server API calls and presence lists on the bus; without it the server API does not federate",
    parse: (raw, option) => {
      if (raw.length < 32) throw new ConfigError(option, 'must be at least 32 characters (e.g. openssl rand -base64 48)');
      return raw;
    },
  },
  {
    key: 'federationUnsignedRooms',
    flags: '--federation-unsigned-rooms <policy>',
    env: 'MOODIO_RT_FEDERATION_UNSIGNED_ROOMS',
    default: 'drop',
    description: `with --federation-key, what to do with unsigned room events: ${UNSIGNED_ROOMS_POLICIES.join(' or ')} (admit takes them from nodes that never signed, such as Go relays in a mixed fleet)`,
    parse: oneOf(UNSIGNED_ROOMS_POLICIES),
  },
  {
    key: 'federationReplayWindowMs',
    flags: '--federation-replay-window <duration>',
    env: 'MOODIO_RT_FEDERATION_REPLAY_WINDOW',
    default: '30s',
    description:
      "a signed bus message is refused when its time is further than this from the receiver's clock (1s to 10m); node clocks must agree well within it",
    parse: durationIn(1000, 600_000, '1s to 10m'),
  },
  {
    key: 'historyStream',
    flags: '--history-stream <name>',
    env: 'MOODIO_RT_HISTORY_STREAM',
    default: '',
    description:
      "a NATS JetStream stream (made or updated by any node) holding the fleet's room events, so that a client resumes on another node; needs --nats-url and nats-server -js (default: none, each node keeps its own history)",
    parse: (raw, option) => {
      if (raw !== '' && !HISTORY_STREAM_NAME.test(raw)) throw new ConfigError(option, `must be 1 to 64 letters, digits, - or _, got ${JSON.stringify(raw)}`);
      return raw;
    },
  },
  {
    key: 'historyStreamStorage',
    flags: '--history-stream-storage <storage>',
    env: 'MOODIO_RT_HISTORY_STREAM_STORAGE',
    default: 'memory',
    description: `where the stream keeps events: ${HISTORY_STREAM_STORAGES.join(' or ')} (memory is lost with a nats-server restart, which starts a new epoch)`,
    parse: oneOf(HISTORY_STREAM_STORAGES),
  },
  {
    key: 'historyStreamMaxAgeMs',
    flags: '--history-stream-max-age <duration>',
    env: 'MOODIO_RT_HISTORY_STREAM_MAX_AGE',
    default: '2m',
    description: 'how long the stream keeps an event (Socket.IO and Ably keep 2 minutes; 1s to 24h)',
    parse: durationIn(1000, 24 * 3_600_000, '1s to 24h'),
  },
  {
    key: 'historyStreamMaxBytes',
    flags: '--history-stream-max-bytes <bytes>',
    env: 'MOODIO_RT_HISTORY_STREAM_MAX_BYTES',
    default: String(256 * 1024 * 1024),
    description: "bytes the whole stream keeps (the fleet's rooms together), the oldest discarded first",
    parse: intIn(1024 * 1024, 1024 * 1024 * 1024 * 1024),
  },
  {
    key: 'historyStreamMaxMsgs',
    flags: '--history-stream-max-msgs <n>',
    env: 'MOODIO_RT_HISTORY_STREAM_MAX_MSGS',
    default: '1000000',
    description: "messages the whole stream keeps (the fleet's rooms together, presence included), the oldest discarded first",
    parse: intIn(1000, 1_000_000_000),
  },
  {
    key: 'region',
    flags: '--region <label>',
    env: 'REGION_ID',
    default: '',
    description: "this node's region: a free label in its logs, /stats and peers' logs (not in metrics), never read from cloud metadata",
    parse: text,
  },
  {
    key: 'federationHeartbeatMs',
    flags: '--federation-heartbeat <duration>',
    env: 'MOODIO_RT_FEDERATION_HEARTBEAT',
    default: '1s',
    description: 'how often each shard tells other nodes it is alive; a node silent for 3 intervals loses its sessions',
    parse: durationIn(50, 60_000, '50ms to 60s'),
  },
  // Server API and live grants (issue 13).
  {
    key: 'apiKey',
    flags: '--api-key <key>',
    env: 'MOODIO_RT_API_KEY',
    description: `bearer key of the server API under /api/v1/ (at least 16 characters; the API is off, 404, when unset)`,
    parse: text,
  },
  {
    key: 'apiBroadcastRate',
    flags: '--api-broadcast-rate <per-second>',
    env: 'MOODIO_RT_API_BROADCAST_RATE',
    default: '1',
    description: 'POST /api/v1/broadcast calls per second; more are answered 429 with Retry-After (0 = no limit)',
    parse: numberIn(0, 100_000),
  },
  {
    key: 'apiPublishRate',
    flags: '--api-publish-rate <bytes/s>',
    env: 'MOODIO_RT_API_PUBLISH_RATE',
    default: String(256 * 1024),
    description:
      'bytes of POST /api/v1/desktops/{id}/events one desktop may be sent per second, after --api-publish-burst; more get 429 with Retry-After (0 = no limit)',
    parse: intIn(0, 1024 * 1024 * 1024),
  },
  {
    key: 'apiPublishBurst',
    flags: '--api-publish-burst <bytes>',
    env: 'MOODIO_RT_API_PUBLISH_BURST',
    default: String(1024 * 1024),
    description: `bytes of API publishes one desktop may be sent at once (at least ${MIN_API_PUBLISH_BURST}, two of the largest)`,
    parse: intIn(MIN_API_PUBLISH_BURST, 1024 * 1024 * 1024),
  },
  {
    key: 'permissionRecheckMs',
    flags: '--permission-recheck <duration>',
    env: 'MOODIO_RT_PERMISSION_RECHECK',
    default: 'off',
    description: 'ask the permission API again for every live session this often, staggered over the interval (off by default)',
    parse: (raw, option) => (raw.trim() === 'off' || raw.trim() === '0' ? 0 : parseDuration(raw, option)),
  },
  {
    key: 'permissionsFromToken',
    flags: '--permissions-from-token',
    description: "take each session's permission from its token (the `desktops` claim, or `permission`) instead of asking the permission API",
    parse: flag,
    unset: false,
  },
  {
    key: 'enforceTokenExpiry',
    flags: '--enforce-token-expiry',
    description: "close a session with 4001 when its token's exp passes (the client reconnects with its refreshed cookie)",
    parse: flag,
    unset: false,
  },
  {
    key: 'logLevel',
    flags: '--log-level <level>',
    env: 'MOODIO_RT_LOG_LEVEL',
    default: 'info',
    description: `one of ${LOG_LEVELS.join(', ')}`,
    parse: oneOf(LOG_LEVELS),
  },
  {
    key: 'logFormat',
    flags: '--log-format <format>',
    env: 'MOODIO_RT_LOG_FORMAT',
    default: 'json',
    description: `one of ${LOG_FORMATS.join(', ')}`,
    parse: oneOf(LOG_FORMATS),
  },
];

/**
 * Validate raw option values (strings, as from flags or environment; booleans
 * for switches) into a finished {@link ServeConfig}. Missing keys take their
 * default; in dev mode the host is {@link DEV_HOST} unless given, and the
 * secret is loaded from (or created in) `--dev-secret-file`. Throws
 * {@link ConfigError} naming the first invalid option, or the dev secret file
 * it will not trust.
 */
export function resolveServeConfig(raw: Partial<Record<keyof ServeConfig, string | boolean | number>>): ServeConfig {
  const config = resolveTable(SERVE_OPTIONS, raw) as unknown as ServeConfig;
  if (config.nodeId === '') config.nodeId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  config.processInstance = randomBytes(8).toString('hex');
  config.startedAt = Date.now();
  if (config.natsCreds !== '') {
    try {
      readFileSync(config.natsCreds);
    } catch (err) {
      throw new ConfigError('--nats-creds', `cannot read ${JSON.stringify(config.natsCreds)}: ${(err as Error).message}`);
    }
  }
  if (config.historyStream !== '' && config.natsUrls.length === 0) {
    throw new ConfigError('--history-stream', 'needs --nats-url: the stream is on the NATS server the fleet shares');
  }
  if (config.maxSessionBacklogBytes < config.maxBufferedBytes) {
    throw new ConfigError('--max-session-backlog', `must be at least --max-buffered-bytes (${config.maxBufferedBytes})`);
  }
  if (config.apiKey !== '') {
    if (config.apiKey.length < MIN_API_KEY_LENGTH) throw new ConfigError('--api-key', `must be at least ${MIN_API_KEY_LENGTH} characters`);
    if (config.apiKey === config.adminToken || config.apiKey === config.metricsToken) {
      throw new ConfigError('--api-key', 'must differ from --admin-token and --metrics-token: the app holds the API key, operators the others');
    }
  }
  if (config.dev) {
    // Dev mode hands a 12-hour token to anyone who asks (/demo/token), prints one, and lets
    // the token's permission claim replace the permission API. With the production secret
    // that would make every real token an editor's, anywhere: dev mode signs and verifies
    // with its own secret only.
    if (config.jwtSecret !== '') {
      throw new ConfigError(
        'JWT_ACCESS_SECRET',
        `must not be set with --dev (nor --jwt-secret): dev mode mints tokens for anyone who asks. Unset it to use the dev secret in ${config.devSecretFile}, or drop --dev`,
      );
    }
    config.jwtSecret = loadOrCreateDevSecret(config.devSecretFile);
    if (raw.host === undefined) config.host = DEV_HOST;
  } else if (config.jwtSecret === '') {
    throw new ConfigError('JWT_ACCESS_SECRET', 'is required (set the environment variable or --jwt-secret; --dev generates one)');
  }
  return config;
}

/** Shortest --api-key accepted. */
export const MIN_API_KEY_LENGTH = 16;

/** A secret shorter than this is accepted (compatibility) with a warning. */
export const RECOMMENDED_SECRET_BYTES = 32;

/** What start-up logs about a finished configuration, as warning events with their fields. */
export function configWarnings(config: ServeConfig): { event: string; fields: Record<string, unknown> }[] {
  if (config.dev) {
    return [
      {
        event: 'dev_secret',
        fields: {
          file: config.devSecretFile,
          message:
            'dev mode signs tokens with the secret in this file, shared by every dev server of this machine user; anyone who can reach /demo/token gets one. Never use --dev in production',
        },
      },
    ];
  }
  const bytes = Buffer.byteLength(config.jwtSecret);
  return bytes < RECOMMENDED_SECRET_BYTES ? [{ event: 'weak_jwt_secret', fields: { bytes, recommended: RECOMMENDED_SECRET_BYTES } }] : [];
}
