/** Human-readable load-test report. */
import type { LatencySummary } from './histogram.ts';
import { SATURATED_LAG_MS, SATURATED_PERCENT, type LoadtestReport } from './runner.ts';
import { BENCHMARK_SERVE_FLAGS, benchmarkAdvice } from './server-limits.ts';

/** The options the benchmark flags set (and --connect-rate, named beside them). */
const BENCHMARK_OPTIONS: ReadonlySet<string> = new Set([
  ...BENCHMARK_SERVE_FLAGS.split(' ').filter((word) => word.startsWith('--')),
  '--connect-rate',
  '--rate-limit-burst',
]);

const n = (value: number): string => value.toLocaleString('en-US');
const pct = (ratio: number): string => `${(ratio * 100).toFixed(2)}%`;

function latencyRow(label: string, l: LatencySummary): string {
  const cells = [l.p50, l.p90, l.p99, l.p999, l.max].map((v) => `${v.toFixed(3)}`.padStart(10));
  return `${label.padEnd(24)}${cells.join('')}   (${n(l.count)} samples)`;
}

export function formatReport(report: LoadtestReport): string {
  const w = report.workload;
  const lines: string[] = [];
  lines.push(`moodio-rt loadtest → ${report.url}${report.preset ? `  preset ${report.preset}` : ''}`);
  lines.push(
    `workload: ${n(w.rooms)} rooms × ${w.usersPerRoom} users, ${w.sendersPerRoom} sender(s)/room at ${w.rate}/s, ` +
      `${w.durationMs / 1000}s measured after ${w.warmupMs / 1000}s warm-up, ${w.payloadBytes}-byte ${w.messageType}`,
  );
  const route = w.route === 'connection' ? `, over ${n(report.connections)} connections on /ws/connection (${w.topicsPerConnection} topic(s) each)` : '';
  lines.push(`sessions: ${n(report.connected)}/${n(report.sessions)} connected` + (report.connectFailed ? `, ${n(report.connectFailed)} failed` : '') + route);
  lines.push('');
  const measured = report.connected > 0;
  if (measured) {
    lines.push(`${'latency (ms)'.padEnd(24)}${['p50', 'p90', 'p99', 'p99.9', 'max'].map((h) => h.padStart(10)).join('')}`);
    if (report.target) lines.push(latencyRow('target message', report.target.latencyMs));
    lines.push(latencyRow(report.target ? 'pressure delivery' : 'delivery', report.deliveryLatencyMs));
    lines.push(latencyRow(w.route === 'connection' ? 'connect (to subscribed)' : 'connect (to room_joined)', report.connectMs));
    lines.push(latencyRow('generator send lag', report.generator.sendLagMs));
  } else {
    lines.push('latency: none measured (no session connected)');
  }
  lines.push('');
  lines.push(
    report.connected === 0
      ? `sends: ${n(report.sends)}   deliveries: none measured (no session connected)`
      : `sends: ${n(report.sends)} (${n(report.sendsPerSecond)}/s)   deliveries: ${n(report.deliveries)}/${n(report.expectedDeliveries)} (${pct(report.deliveryRatio)}), ${n(report.deliveriesPerSecond)}/s`,
  );
  if (report.target && measured) {
    const t = report.target;
    lines.push(`target room: ${t.complete}/${t.messages} messages reached every receiver, deliveries ${n(t.deliveries)}/${n(t.expectedDeliveries)}`);
  }
  if (report.pressure && measured) {
    const p = report.pressure;
    lines.push(
      `pressure: deliveries ${n(p.deliveries)}/${n(p.expectedDeliveries)} (${pct(p.expectedDeliveries ? p.deliveries / p.expectedDeliveries : 1)}), ${n(p.deliveriesPerSecond)}/s`,
    );
  }
  const errors = Object.entries(report.errors);
  lines.push(`errors: ${errors.length === 0 ? 'none' : errors.map(([k, v]) => `${k} ×${n(v)}`).join(', ')}`);
  if (report.serverLimits.length > 0) {
    lines.push('');
    for (const note of report.serverLimits) lines.push(`SERVER LIMIT: ${note.text}`);
    // The benchmark flags turn off limits a load generator trips; they do nothing for an unreachable permission API.
    if (report.serverLimits.some((note) => note.options.some((option) => BENCHMARK_OPTIONS.has(option)))) lines.push(benchmarkAdvice());
    lines.push('');
  }
  const g = report.generator;
  lines.push(
    `generator: ${report.threads} thread(s), busy ${g.busyPercent.map((c) => `${c}%`).join(' / ')}, ` +
      `CPU ${g.cpuPercent.map((c) => `${c}%`).join(' / ')} (includes spinning for send precision)`,
  );
  const busiest = Math.max(0, ...g.busyPercent);
  if (g.saturated) {
    lines.push(
      `WARNING: the generator is saturated (a thread ${busiest}% busy, ≥ ${SATURATED_PERCENT}%); latencies include generator delay. Add --threads or cores.`,
    );
  } else if (g.sendsLate) {
    lines.push(
      `WARNING: the generator's sends ran late (send lag p99 ${g.sendLagMs.p99} ms > ${SATURATED_LAG_MS} ms) though its threads were at most ${busiest}% busy: ` +
        'something else on this machine held its cores (the server under test on the same cores? pin them apart, e.g. with taskset); latencies include that delay.',
    );
  }
  lines.push(report.gates.passed ? 'result: PASS' : `result: FAIL — ${report.gates.failures.join('; ')}`);
  return lines.join('\n');
}
