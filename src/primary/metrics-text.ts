/**
 * Renders the shared metrics buffer (protocol/metrics.ts) in the Prometheus
 * text exposition format. Counters are summed over shards and the primary;
 * gauges are given per thread (`shard="0"…`, `shard="primary"`).
 */
import { DROP_REASONS } from '../protocol/bus.ts';
import { ApiMetric, Metric, PERMISSION_BUCKETS, PingMetric, SLOT_SIZE } from '../protocol/metrics.ts';

function label(slot: number, shards: number): string {
  return slot === shards ? 'primary' : String(slot);
}

/** Configured limits shown as gauges next to the values they bound. */
export interface MetricLimits {
  maxOutboundBytes: number;
  maxSessionBacklogBytes: number;
}

/** Prometheus text for `shards` shard slots plus the primary's. */
export function renderMetrics(buffer: SharedArrayBuffer, shards: number, rssBytes: number, limits: MetricLimits): string {
  const all = new Float64Array(buffer);
  const slots = shards + 1;
  const value = (slot: number, metric: number) => all[slot * SLOT_SIZE + metric]!;
  const total = (metric: number) => {
    let sum = 0;
    for (let s = 0; s < slots; s++) sum += value(s, metric);
    return sum;
  };
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  };
  const perShard = (name: string, metric: number, help: string, includePrimary = false) => {
    family(name, 'gauge', help);
    for (let s = 0; s < (includePrimary ? slots : shards); s++) out.push(`${name}{shard="${label(s, shards)}"} ${value(s, metric)}`);
  };
  const counter = (name: string, help: string, rows: [string, number][]) => {
    family(name, 'counter', help);
    for (const [labels, metric] of rows) out.push(`${name}${labels} ${total(metric)}`);
  };

  perShard('moodio_rt_connections', Metric.CONNECTIONS, 'Open WebSocket sessions, per shard.');
  perShard('moodio_rt_rooms', Metric.ROOMS, 'Rooms (desktops with at least one session), per shard.');
  counter('moodio_rt_handshakes_total', 'Handshakes by outcome (4xx: other client errors answered by the primary).', [
    ['{outcome="ok"}', Metric.HANDSHAKE_OK],
    ['{outcome="401"}', Metric.HANDSHAKE_401],
    ['{outcome="403"}', Metric.HANDSHAKE_403],
    ['{outcome="4xx"}', Metric.HANDSHAKE_4XX],
    ['{outcome="503"}', Metric.HANDSHAKE_503],
  ]);
  counter('moodio_rt_messages_received_total', 'Client frames received.', [['', Metric.MESSAGES_RECEIVED]]);
  counter('moodio_rt_inbound_bytes_total', 'Bytes read from sessions (every frame, control frames and fragments included).', [['', Metric.INBOUND_BYTES]]);
  counter('moodio_rt_messages_relayed_total', 'Client events relayed to a room (with at least one recipient).', [['', Metric.MESSAGES_RELAYED]]);
  counter('moodio_rt_messages_dropped_total', 'Client frames not relayed, by reason.', [
    ['{reason="viewer"}', Metric.DROPPED_VIEWER],
    ['{reason="rate_limit"}', Metric.DROPPED_RATE_LIMIT],
    ['{reason="invalid"}', Metric.DROPPED_INVALID],
    ['{reason="coalesced"}', Metric.DROPPED_COALESCED],
  ]);
  counter('moodio_rt_deliveries_total', 'Frames queued to sessions (relayed events, presence, errors).', [['', Metric.DELIVERIES]]);
  counter('moodio_rt_outbound_bytes_total', 'Bytes of those frames.', [['', Metric.OUTBOUND_BYTES]]);
  counter('moodio_rt_outbound_writes_total', 'Socket writes carrying those frames (deliveries / writes = frames per syscall), by when they were written.', [
    ['{when="turn"}', Metric.OUTBOUND_WRITES],
    ['{when="paced"}', Metric.PACED_WRITES],
  ]);
  counter('moodio_rt_protective_closes_total', 'Sessions closed by the server to protect the others, by reason.', [
    ['{reason="rate_limit"}', Metric.CLOSED_RATE_LIMIT],
    ['{reason="liveness"}', Metric.CLOSED_LIVENESS],
    ['{reason="slow_consumer"}', Metric.CLOSED_SLOW_CONSUMER],
    ['{reason="backlog_cap"}', Metric.CLOSED_BACKLOG_CAP],
    ['{reason="memory_cap"}', Metric.CLOSED_MEMORY_CAP],
  ]);
  perShard(
    'moodio_rt_outbound_buffered_bytes',
    Metric.OUTBOUND_BUFFERED,
    'Bytes waiting to be written to sessions (socket buffers and queued frames), per shard.',
  );
  family(
    'moodio_rt_outbound_buffered_limit_bytes',
    'gauge',
    'The process-wide cap on outbound bytes (--max-outbound-memory); over it the largest backlogs are cut.',
  );
  out.push(`moodio_rt_outbound_buffered_limit_bytes ${limits.maxOutboundBytes}`);
  family(
    'moodio_rt_session_backlog_limit_bytes',
    'gauge',
    'The per-session cap on outbound bytes (--max-session-backlog); over it a session is cut with 4008 at once.',
  );
  out.push(`moodio_rt_session_backlog_limit_bytes ${limits.maxSessionBacklogBytes}`);
  perShard('moodio_rt_pending_handshakes', Metric.PENDING_HANDSHAKES, 'Request heads being read, on the primary.', true);
  counter('moodio_rt_pending_handshakes_closed_total', 'Connections closed before their head was read, by reason.', [
    ['{reason="shed_least_progress"}', Metric.PENDING_SHED],
    ['{reason="address_limit"}', Metric.PENDING_REFUSED_ADDRESS],
  ]);
  perShard('moodio_rt_lingering_sockets', Metric.LINGERING, 'Answered (non-WebSocket) sockets still flushing their response, per thread.', true);
  counter('moodio_rt_lingering_cut_total', 'Answered sockets destroyed at their deadline or because too many lingered.', [['', Metric.LINGER_CUT]]);
  counter('moodio_rt_permission_lookups_total', 'Permission lookups not sent to the API, by why.', [
    ['{outcome="cached"}', Metric.PERMISSION_CACHE_HITS],
    ['{outcome="shared"}', Metric.PERMISSION_SHARED],
    ['{outcome="queue_full"}', Metric.PERMISSION_QUEUE_FULL],
  ]);
  counter('moodio_rt_rate_limit_pauses_total', 'Times a session stopped being read because its user was over --rate-limit.', [['', Metric.RATE_PAUSES]]);
  counter('moodio_rt_handshakes_refused_total', 'Handshakes refused with 429 by a per-user or per-address limit, by limit.', [
    ['{limit="connect_rate"}', Metric.REFUSED_CONNECT_RATE],
    ['{limit="in_flight"}', Metric.REFUSED_HANDSHAKES_IN_FLIGHT],
    ['{limit="address_rate"}', Metric.REFUSED_ADDRESS_RATE],
  ]);
  perShard('moodio_rt_ping_sockets', PingMetric.SOCKETS, 'Open /ws/ping sockets, per shard (--max-ping-sockets bounds their sum).');
  counter('moodio_rt_ping_refused_total', 'Handshakes on /ws/ping refused, by limit (process: --max-ping-sockets, address: --max-ping-per-address).', [
    ['{limit="process"}', PingMetric.REFUSED_PROCESS],
    ['{limit="address"}', PingMetric.REFUSED_ADDRESS],
  ]);
  counter('moodio_rt_ping_echoed_total', 'Text frames echoed on /ws/ping.', [['', PingMetric.ECHOED]]);
  perShard(
    'moodio_rt_federation_connected',
    Metric.FEDERATION_CONNECTED,
    "Whether the shard's NATS connection is up (1) or not (0; also 0 without --nats-url), per shard.",
  );
  counter(
    'moodio_rt_federation_messages_total',
    'Room messages on the bus, by direction (published, received, unpublished: not sent while the bus was down).',
    [
      ['{direction="published"}', Metric.BUS_PUBLISHED],
      ['{direction="received"}', Metric.BUS_RECEIVED],
      ['{direction="unpublished"}', Metric.BUS_UNPUBLISHED],
    ],
  );
  counter('moodio_rt_federation_bytes_total', 'Bytes of room messages on the bus, by direction.', [
    ['{direction="published"}', Metric.BUS_BYTES_OUT],
    ['{direction="received"}', Metric.BUS_BYTES_IN],
  ]);
  counter(
    'moodio_rt_federation_dropped_total',
    'Bus messages dropped as untrusted input, by reason.',
    DROP_REASONS.map((reason, i) => [`{reason="${reason}"}`, Metric.BUS_DROPPED_0 + i]),
  );
  perShard('moodio_rt_federation_remote_sessions', Metric.REMOTE_SESSIONS, "Sessions of other nodes in this shard's rooms, per shard.");
  perShard('moodio_rt_federation_peer_nodes', Metric.PEER_NODES, 'Other moodio-rt nodes heard from and not expired, as seen by each shard.');
  counter('moodio_rt_shard_restarts_total', 'Shard workers restarted after dying.', [['', Metric.SHARD_RESTARTS]]);
  // Server API (issue 13).
  counter('moodio_rt_api_requests_total', 'Server API calls answered 2xx, by endpoint.', [
    ['{endpoint="publish"}', ApiMetric.PUBLISH],
    ['{endpoint="user_event"}', ApiMetric.USER_EVENT],
    ['{endpoint="broadcast"}', ApiMetric.BROADCAST],
    ['{endpoint="set_permission"}', ApiMetric.SET_PERMISSION],
    ['{endpoint="disconnect"}', ApiMetric.DISCONNECT],
    ['{endpoint="presence"}', ApiMetric.PRESENCE],
    ['{endpoint="user_sessions"}', ApiMetric.USER_SESSIONS],
  ]);
  counter('moodio_rt_api_refused_total', 'Server API calls refused, by status (other: 408, 411, 431, 500).', [
    ['{status="400"}', ApiMetric.REFUSED_400],
    ['{status="401"}', ApiMetric.REFUSED_401],
    ['{status="404"}', ApiMetric.REFUSED_404],
    ['{status="405"}', ApiMetric.REFUSED_405],
    ['{status="413"}', ApiMetric.REFUSED_413],
    ['{status="429"}', ApiMetric.REFUSED_429],
    ['{status="503"}', ApiMetric.REFUSED_503],
    ['{status="504"}', ApiMetric.REFUSED_504],
    ['{status="other"}', ApiMetric.REFUSED_OTHER],
  ]);
  family('moodio_rt_api_connections', 'gauge', 'Open server API connections (kept alive or with a request underway).');
  out.push(`moodio_rt_api_connections ${value(shards, ApiMetric.CONNECTIONS)}`);
  counter('moodio_rt_api_deliveries_total', 'Sessions a server API event (publish, user event, broadcast) was queued to.', [['', ApiMetric.DELIVERIES]]);
  counter('moodio_rt_permission_changes_total', 'Sessions whose permission changed while open, by cause.', [
    ['{cause="api"}', ApiMetric.CHANGED_BY_API],
    ['{cause="recheck"}', ApiMetric.CHANGED_BY_RECHECK],
  ]);
  counter(
    'moodio_rt_server_closes_total',
    "Sessions the server closed for the user's sake, by reason: revoked (4003), disconnected and token_expired (4001).",
    [
      ['{reason="revoked"}', ApiMetric.CLOSED_REVOKED],
      ['{reason="disconnected"}', ApiMetric.CLOSED_DISCONNECTED],
      ['{reason="token_expired"}', ApiMetric.CLOSED_TOKEN_EXPIRED],
    ],
  );
  counter('moodio_rt_permission_rechecks_total', 'Permission rechecks of live sessions (--permission-recheck), by outcome.', [
    ['{outcome="unchanged"}', ApiMetric.RECHECK_UNCHANGED],
    ['{outcome="changed"}', ApiMetric.RECHECK_CHANGED],
    ['{outcome="revoked"}', ApiMetric.RECHECK_REVOKED],
    ['{outcome="failed"}', ApiMetric.RECHECK_FAILED],
  ]);
  counter('moodio_rt_permission_errors_total', 'Permission API answers that did not admit, by kind.', [
    ['{kind="unavailable"}', Metric.PERMISSION_ERRORS_UNAVAILABLE],
    ['{kind="denied"}', Metric.PERMISSION_ERRORS_DENIED],
    ['{kind="bad_response"}', Metric.PERMISSION_ERRORS_BAD_RESPONSE],
  ]);
  family('moodio_rt_permission_request_duration_seconds', 'histogram', 'Permission API request latency.');
  let cumulative = 0;
  PERMISSION_BUCKETS.forEach((le, i) => {
    cumulative += total(Metric.PERMISSION_BUCKET_0 + i);
    out.push(`moodio_rt_permission_request_duration_seconds_bucket{le="${le}"} ${cumulative}`);
  });
  cumulative += total(Metric.PERMISSION_BUCKET_0 + PERMISSION_BUCKETS.length);
  out.push(`moodio_rt_permission_request_duration_seconds_bucket{le="+Inf"} ${cumulative}`);
  out.push(`moodio_rt_permission_request_duration_seconds_sum ${total(Metric.PERMISSION_SUM)}`);
  out.push(`moodio_rt_permission_request_duration_seconds_count ${total(Metric.PERMISSION_COUNT)}`);
  perShard('moodio_rt_event_loop_lag_p99_seconds', Metric.LOOP_LAG_P99, 'Event-loop delay p99 over the last interval, per thread.', true);
  perShard('moodio_rt_event_loop_lag_mean_seconds', Metric.LOOP_LAG_MEAN, 'Event-loop delay mean over the last interval, per thread.', true);
  perShard('moodio_rt_heap_used_bytes', Metric.HEAP_USED, 'V8 heap in use, per thread.', true);
  perShard('moodio_rt_pace_interval_seconds', Metric.PACE_INTERVAL, 'How often a shard writes each fast socket while pacing (0 = not pacing), per shard.');
  family('moodio_rt_process_resident_memory_bytes', 'gauge', 'Resident set size of the process.');
  out.push(`moodio_rt_process_resident_memory_bytes ${rssBytes}`);
  return out.join('\n') + '\n';
}
