/**
 * Renders the shared metrics buffer (protocol/metrics.ts) in the Prometheus
 * text exposition format. Counters are summed over shards and the primary;
 * gauges are given per thread (`shard="0"…`, `shard="primary"`).
 */
import { Metric, PERMISSION_BUCKETS, SLOT_SIZE } from '../protocol/metrics.ts';

function label(slot: number, shards: number): string {
  return slot === shards ? 'primary' : String(slot);
}

/** Prometheus text for `shards` shard slots plus the primary's. */
export function renderMetrics(buffer: SharedArrayBuffer, shards: number, rssBytes: number): string {
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
  ]);
  counter('moodio_rt_shard_restarts_total', 'Shard workers restarted after dying.', [['', Metric.SHARD_RESTARTS]]);
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
