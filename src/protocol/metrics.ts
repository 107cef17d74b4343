/**
 * Metrics shared between threads without messages: one SharedArrayBuffer of
 * Float64 slots, a slot per shard plus one for the primary. Each slot has a
 * single writer (its thread), so counters are plain stores on the hot path;
 * the primary reads every slot when /metrics is scraped. Aligned 64-bit
 * loads do not tear on the platforms Node supports for handle transfer, so a
 * scrape sees each value either before or after an update.
 *
 * Slots live in the primary's buffer, so a shard that restarts keeps its
 * counters (they stay monotonic); the primary zeroes its gauges on exit.
 */

import { DROP_REASONS } from './bus.ts';

/** Upper bounds (seconds) of the permission-API latency histogram buckets. */
export const PERMISSION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const;

/** Index of each value inside a slot. */
export const Metric = {
  // gauges (shards)
  CONNECTIONS: 0,
  ROOMS: 1,
  LOOP_LAG_P99: 2,
  LOOP_LAG_MEAN: 3,
  HEAP_USED: 4,
  // handshakes by outcome
  HANDSHAKE_OK: 5,
  HANDSHAKE_401: 6,
  HANDSHAKE_403: 7,
  HANDSHAKE_4XX: 8,
  HANDSHAKE_503: 9,
  // messages
  MESSAGES_RECEIVED: 10,
  MESSAGES_RELAYED: 11,
  DROPPED_VIEWER: 12,
  DROPPED_RATE_LIMIT: 13,
  DROPPED_INVALID: 14,
  DELIVERIES: 15,
  OUTBOUND_BYTES: 16,
  // protective closes
  CLOSED_RATE_LIMIT: 17,
  CLOSED_LIVENESS: 18,
  // primary only
  SHARD_RESTARTS: 19,
  // permission API
  PERMISSION_ERRORS_UNAVAILABLE: 20,
  PERMISSION_ERRORS_DENIED: 21,
  PERMISSION_ERRORS_BAD_RESPONSE: 22,
  PERMISSION_SUM: 23,
  PERMISSION_COUNT: 24,
  // backpressure
  DROPPED_COALESCED: 25,
  CLOSED_SLOW_CONSUMER: 26,
  // write coalescer
  OUTBOUND_WRITES: 27,
  PACED_WRITES: 28,
  /** Gauge: the shard's current pace interval in seconds (0 = not pacing). */
  PACE_INTERVAL: 29,
  // outbound memory (backpressure.ts)
  /** Gauge: bytes waiting for sessions of this shard (socket buffers + coalescer), as of the last sweep. */
  OUTBOUND_BUFFERED: 30,
  /** Sessions cut at once for a backlog over --max-session-backlog. */
  CLOSED_BACKLOG_CAP: 31,
  /** Sessions cut, largest backlog first, while the process was over --max-outbound-memory. */
  CLOSED_MEMORY_CAP: 32,
  // pending handshakes (primary)
  /** Gauge: request heads being read by the primary. */
  PENDING_HANDSHAKES: 33,
  /** Pending connections closed to make room for a newcomer (the one with the least progress). */
  PENDING_SHED: 34,
  /** Connections refused because their address already had --max-pending-per-address slow heads pending (at the connect, or once slow themselves). */
  PENDING_REFUSED_ADDRESS: 35,
  // answered sockets (protocol/http.ts endWithResponse)
  /** Gauge: answered sockets still flushing or draining, per thread. */
  LINGERING: 36,
  /** Answered sockets destroyed at their deadline or because too many lingered. */
  LINGER_CUT: 37,
  // permission API protection
  PERMISSION_CACHE_HITS: 38,
  /** Lookups that joined an identical one already in flight (single-flight). */
  PERMISSION_SHARED: 39,
  /** Lookups refused with 503 because the queue to the API was full. */
  PERMISSION_QUEUE_FULL: 40,
  // inbound abuse
  /** Times a session's socket was paused because its user's bucket was empty. */
  RATE_PAUSES: 41,
  /** Handshakes refused by --connect-rate. */
  REFUSED_CONNECT_RATE: 42,
  /** Handshakes refused by --max-handshakes-per-user. */
  REFUSED_HANDSHAKES_IN_FLIGHT: 43,
  /** Bytes read from sessions' sockets (every frame: messages, fragments, control frames). */
  INBOUND_BYTES: 44,
  /** Handshakes refused by --handshake-rate-per-address (primary). */
  REFUSED_ADDRESS_RATE: 45,
  // federation (shard/federation/)
  /** Gauge: 1 while this shard's NATS connection is up. */
  FEDERATION_CONNECTED: 46,
  /** Messages published on the bus (events, presence, sync answers; not heartbeats). */
  BUS_PUBLISHED: 47,
  /** Room messages received from the bus. */
  BUS_RECEIVED: 48,
  /** Events not published because the bus was down (local members still got them). */
  BUS_UNPUBLISHED: 49,
  BUS_BYTES_OUT: 50,
  BUS_BYTES_IN: 51,
  /** Gauge: sessions of other nodes in this shard's rooms. */
  REMOTE_SESSIONS: 52,
  /** Gauge: other nodes heard from (heartbeats) and not expired. */
  PEER_NODES: 53,
  /** BUS_DROP_REASONS.length counters: bus messages dropped, by reason (protocol/bus.ts DropReason). */
  BUS_DROPPED_0: 54,
  /** PERMISSION_BUCKETS.length + 1 (the +Inf bucket) non-cumulative counts. */
  PERMISSION_BUCKET_0: 54 + DROP_REASONS.length,
} as const;

/** Server API metrics (issue 13), after the permission buckets; `_Count` ends the block. */
const API_BASE = Metric.PERMISSION_BUCKET_0 + PERMISSION_BUCKETS.length + 1;
export const ApiMetric = {
  // primary: answered 2xx, by endpoint
  PUBLISH: API_BASE,
  USER_EVENT: API_BASE + 1,
  BROADCAST: API_BASE + 2,
  SET_PERMISSION: API_BASE + 3,
  DISCONNECT: API_BASE + 4,
  PRESENCE: API_BASE + 5,
  USER_SESSIONS: API_BASE + 6,
  // primary: refused, by status
  REFUSED_400: API_BASE + 7,
  REFUSED_401: API_BASE + 8,
  REFUSED_404: API_BASE + 9,
  REFUSED_405: API_BASE + 10,
  REFUSED_413: API_BASE + 11,
  REFUSED_429: API_BASE + 12,
  REFUSED_503: API_BASE + 13,
  REFUSED_504: API_BASE + 14,
  /** 408, 411, 431, 500. */
  REFUSED_OTHER: API_BASE + 15,
  /** Gauge (primary): open API connections. */
  CONNECTIONS: API_BASE + 16,
  // shards
  /** Sessions an API event (publish, user event, broadcast) was queued to. */
  DELIVERIES: API_BASE + 17,
  /** Sessions whose permission changed, by cause. */
  CHANGED_BY_API: API_BASE + 18,
  CHANGED_BY_RECHECK: API_BASE + 19,
  /** Sessions closed by the server for the user's sake, by reason. */
  CLOSED_REVOKED: API_BASE + 20,
  CLOSED_DISCONNECTED: API_BASE + 21,
  CLOSED_TOKEN_EXPIRED: API_BASE + 22,
  /** Permission rechecks by outcome. */
  RECHECK_UNCHANGED: API_BASE + 23,
  RECHECK_CHANGED: API_BASE + 24,
  RECHECK_REVOKED: API_BASE + 25,
  /** The API could not answer (outage, nonsense, 401, busy): nothing was changed. */
  RECHECK_FAILED: API_BASE + 26,
  _COUNT: 27,
} as const;

/** /ws/ping metrics (issue 20, shard/ping-route.ts), after the server API's; `_COUNT` ends the block. */
const PING_BASE = API_BASE + ApiMetric._COUNT;
export const PingMetric = {
  /** Gauge: open /ws/ping sockets of this shard (summed over shards for --max-ping-sockets). */
  SOCKETS: PING_BASE,
  /** Ping sockets refused by --max-ping-sockets. */
  REFUSED_PROCESS: PING_BASE + 1,
  /** Ping sockets refused by --max-ping-per-address. */
  REFUSED_ADDRESS: PING_BASE + 2,
  /** Text frames echoed. */
  ECHOED: PING_BASE + 3,
  _COUNT: 4,
} as const;

export const SLOT_SIZE = PING_BASE + PingMetric._COUNT;

/** Values that describe the present (reset when a shard exits), not totals. */
export const GAUGES: readonly number[] = [
  Metric.CONNECTIONS,
  Metric.ROOMS,
  Metric.LOOP_LAG_P99,
  Metric.LOOP_LAG_MEAN,
  Metric.HEAP_USED,
  Metric.PACE_INTERVAL,
  Metric.OUTBOUND_BUFFERED,
  Metric.PENDING_HANDSHAKES,
  Metric.LINGERING,
  Metric.FEDERATION_CONNECTED,
  Metric.REMOTE_SESSIONS,
  Metric.PEER_NODES,
  PingMetric.SOCKETS,
];

/** The buffer for `shards` shard slots plus the primary's (the last slot). */
export function createMetricsBuffer(shards: number): SharedArrayBuffer {
  return new SharedArrayBuffer((shards + 1) * SLOT_SIZE * Float64Array.BYTES_PER_ELEMENT);
}

/** `metric` summed over the `shards` shard slots of `buffer` (a gauge every shard publishes). */
export function sumOverShards(buffer: SharedArrayBuffer, shards: number, metric: number): number {
  const all = new Float64Array(buffer);
  let sum = 0;
  for (let s = 0; s < shards; s++) sum += all[s * SLOT_SIZE + metric]!;
  return sum;
}

/** One thread's writable view of its slot. */
export class MetricsSlot {
  readonly values: Float64Array;

  constructor(buffer: SharedArrayBuffer, slot: number) {
    this.values = new Float64Array(buffer, slot * SLOT_SIZE * Float64Array.BYTES_PER_ELEMENT, SLOT_SIZE);
  }

  add(metric: number, amount = 1): void {
    this.values[metric]! += amount;
  }

  set(metric: number, value: number): void {
    this.values[metric] = value;
  }

  /** Count a handshake answer by status. */
  handshake(status: number): void {
    this.add(
      status === 101
        ? Metric.HANDSHAKE_OK
        : status === 401
          ? Metric.HANDSHAKE_401
          : status === 403
            ? Metric.HANDSHAKE_403
            : status === 503
              ? Metric.HANDSHAKE_503
              : Metric.HANDSHAKE_4XX,
    );
  }

  /** Record one permission API request of `seconds`. */
  permissionLatency(seconds: number): void {
    this.add(Metric.PERMISSION_SUM, seconds);
    this.add(Metric.PERMISSION_COUNT);
    let bucket = 0;
    while (bucket < PERMISSION_BUCKETS.length && seconds > PERMISSION_BUCKETS[bucket]!) bucket++;
    this.add(Metric.PERMISSION_BUCKET_0 + bucket);
  }
}
