/**
 * Runs a load test: mints tokens, splits rooms over piscina threads, starts
 * them together once all sessions are connected, merges their histograms
 * and judges the gates.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { MessageChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { signAccessToken } from '../auth/token.ts';
import { mergeHistograms, summarize, type Histogram, type LatencySummary } from './histogram.ts';
import { PRESET, PRESET_ROOMS, type LoadtestOptions } from './options.ts';
import type { RoomPlan, StartCommand, ThreadEvent, ThreadPlan, ThreadResult } from './plan.ts';
import { serverLimitNotes, type ServerLimitNote } from './server-limits.ts';

export interface LoadtestReport {
  url: string;
  preset: string | null;
  threads: number;
  workload: Pick<
    LoadtestOptions,
    'route' | 'topicsPerConnection' | 'rooms' | 'usersPerRoom' | 'sendersPerRoom' | 'rate' | 'durationMs' | 'warmupMs' | 'messageType' | 'payloadBytes'
  >;
  /** Room memberships: a socket each on --route desktop, a subscription each on --route connection. */
  sessions: number;
  /** Sockets opened. */
  connections: number;
  connected: number;
  connectFailed: number;
  connectMs: LatencySummary;
  sends: number;
  sendsPerSecond: number;
  expectedDeliveries: number;
  deliveries: number;
  /** deliveries / expectedDeliveries (1 = all). */
  deliveryRatio: number;
  deliveriesPerSecond: number;
  /** The latency the gates judge: per delivery, or per target message in preset mode. */
  latencyMs: LatencySummary;
  /** Per delivery, every non-target room. */
  deliveryLatencyMs: LatencySummary;
  /** Preset mode: the measured room. Latency of a message = until every receiver has it. */
  target: { messages: number; complete: number; expectedDeliveries: number; deliveries: number; latencyMs: LatencySummary } | null;
  /** Preset mode: the other rooms. */
  pressure: { sends: number; expectedDeliveries: number; deliveries: number; deliveriesPerSecond: number } | null;
  errors: Record<string, number>;
  /** The server's own limits that the errors show, in plain words (empty when none). */
  serverLimits: ServerLimitNote[];
  /** `saturated`: a thread was busy ≥ SATURATED_PERCENT; `sendsLate`: send lag p99 over SATURATED_LAG_MS (whatever the cause). */
  generator: { cpuPercent: number[]; busyPercent: number[]; saturated: boolean; sendsLate: boolean; framesReceived: number; sendLagMs: LatencySummary };
  gates: { minDelivery: number; maxP99Ms: number; passed: boolean; failures: string[] };
}

export interface RunHooks {
  onProgress?: (line: string) => void;
}

/** A thread busy (sending and parsing) this much of the time is saturated. */
export const SATURATED_PERCENT = 90;
/** Or one that sends this late (p99, ms): its latencies include generator delay. */
export const SATURATED_LAG_MS = 2;

function tokenSource(options: LoadtestOptions, ttlSeconds: number): () => string {
  if (options.tokenFile) {
    const tokens = readFileSync(options.tokenFile, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    if (tokens.length === 0) throw new Error(`${options.tokenFile} holds no token`);
    let next = 0;
    return () => tokens[next++ % tokens.length]!;
  }
  let n = 0;
  return () => {
    n++;
    return signAccessToken(
      { userId: randomUUID(), firstName: `Load${n}`, email: `load${n}@loadtest.invalid`, permission: 'editor' },
      options.secret,
      ttlSeconds,
    );
  };
}

/** Rooms of the run: a uniform workload, or a preset's pressure rooms plus one target room. */
export function planRooms(options: LoadtestOptions, nextToken: () => string): RoomPlan[] {
  const runId = randomUUID().slice(0, 8);
  const tokens = (count: number) => Array.from({ length: count }, nextToken);
  if (options.preset !== null) {
    const rooms = PRESET_ROOMS[options.preset];
    return Array.from({ length: rooms }, (_, i) => ({
      desktopId: `lt-${runId}-${i}`,
      role: i === 0 ? 'target' : 'pressure',
      tokens: tokens(PRESET.usersPerRoom),
      senders: 1,
      rate: i === 0 ? PRESET.targetRate : PRESET.pressureRate,
      maxMessages: i === 0 ? PRESET.targetMessages : 0,
      messageType: options.messageType,
    }));
  }
  return Array.from({ length: options.rooms }, (_, i) => ({
    desktopId: `lt-${runId}-${i}`,
    role: 'load',
    tokens: tokens(options.usersPerRoom),
    senders: options.sendersPerRoom,
    rate: options.rate,
    maxMessages: 0,
    messageType: options.messageType,
  }));
}

/** Window the preset needs: the target's 300 messages at 100/s, plus a tail. */
const PRESET_DURATION_MS = (PRESET.targetMessages / PRESET.targetRate) * 1000 + 500;

export async function runLoadtest(options: LoadtestOptions, hooks: RunHooks = {}): Promise<LoadtestReport> {
  const durationMs = options.preset !== null ? PRESET_DURATION_MS : options.durationMs;
  const targets = options.url.split(',').map((raw) => {
    const url = new URL(raw);
    return { host: url.hostname, port: Number(url.port || 80) };
  });
  const rooms = planRooms(options, tokenSource(options, Math.ceil((durationMs + options.warmupMs) / 1000) + 3600));
  // On --route connection a run of topicsPerConnection rooms is held by the same sockets: it stays on one thread.
  const perSocket = options.route === 'connection' ? options.topicsPerConnection : 1;
  const groups = Math.ceil(rooms.length / perSocket);
  const threads = Math.min(options.threads, groups);
  const plans: ThreadPlan[] = Array.from({ length: threads }, (_, thread) => ({
    thread,
    targets,
    rooms: [],
    route: options.route,
    topicsPerConnection: perSocket,
    connectIntervalMs: (1000 * threads) / options.connectRate,
    payloadBytes: options.payloadBytes,
  }));
  rooms.forEach((room, i) => plans[Math.floor(i / perSocket) % threads]!.rooms.push(room));

  const pool = new Piscina({
    filename: new URL('./generator.ts', import.meta.url).href,
    minThreads: threads,
    maxThreads: threads,
    idleTimeout: 1000,
  });
  const progress = new Map<number, { warmingUp: boolean; sends: number; deliveries: number }>();
  let connectedThreads = 0;
  const ports: import('node:worker_threads').MessagePort[] = [];
  const startAt = Date.now();
  let announce: () => void = () => {};
  const allConnected = new Promise<void>((resolve) => (announce = resolve));

  const tasks = plans.map((plan) => {
    const { port1, port2 } = new MessageChannel();
    ports.push(port1);
    port1.on('message', (event: ThreadEvent) => {
      if (event.type === 'connected') {
        if (++connectedThreads === threads) announce();
      } else {
        progress.set(event.thread, { warmingUp: event.warmingUp, sends: event.sends, deliveries: event.deliveries });
        let sends = 0;
        let deliveries = 0;
        let warmingUp = false;
        for (const p of progress.values()) {
          sends += p.sends;
          deliveries += p.deliveries;
          warmingUp ||= p.warmingUp;
        }
        hooks.onProgress?.(progressLine(startAt, warmingUp && sends === 0 ? 'warm-up (not measured)' : `measured sends ${sends}, deliveries ${deliveries}`));
      }
    });
    // piscina types its transfer list as DOM-style options; a worker_threads MessagePort is what it transfers.
    return pool.run({ plan, port: port2 }, { transferList: [port2] as never }) as Promise<ThreadResult>;
  });
  // If a thread dies before connecting, release the others instead of waiting forever.
  const failure = Promise.all(tasks).then(
    () => undefined,
    () => undefined,
  );
  await Promise.race([allConnected, failure]);
  const start: StartCommand = { type: 'start', warmupMs: options.warmupMs, durationMs, graceMs: 2000 };
  for (const port of ports) port.postMessage(start);
  let results: ThreadResult[];
  try {
    results = await Promise.all(tasks);
  } finally {
    for (const port of ports) port.close();
    await pool.destroy();
  }
  const report = buildReport(options, durationMs, threads, results);
  // The last line has the report's own totals (sends in the window, deliveries up to the grace period).
  hooks.onProgress?.(progressLine(startAt, `measured sends ${report.sends}, deliveries ${report.deliveries} (done)`));
  return report;
}

function progressLine(startAt: number, text: string): string {
  return `[${((Date.now() - startAt) / 1000).toFixed(0)}s] ${text}`;
}

function sum(results: ThreadResult[], key: keyof ThreadResult): number {
  return results.reduce((n, r) => n + (r[key] as number), 0);
}

export function buildReport(options: LoadtestOptions, durationMs: number, threads: number, results: ThreadResult[]): LoadtestReport {
  const deliveryHist: Histogram = mergeHistograms(results.map((r) => r.deliveryHistogram));
  const targetHist: Histogram = mergeHistograms(results.map((r) => r.targetHistogram));
  const connectHist: Histogram = mergeHistograms(results.map((r) => r.connectHistogram));
  const windowS = Math.max(...results.map((r) => r.windowMs)) / 1000;
  const errors: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  const preset = options.preset !== null;
  const expected = sum(results, 'expectedDeliveries');
  const deliveries = sum(results, 'deliveries');
  const cpuPercent = results.map((r) => r.cpuPercent);
  const busyPercent = results.map((r) => r.busyPercent);
  const sendLagMs = summarize(mergeHistograms(results.map((r) => r.lagHistogram)));
  const target = preset
    ? {
        messages: sum(results, 'targetMessages'),
        complete: sum(results, 'targetComplete'),
        expectedDeliveries: sum(results, 'targetExpectedDeliveries'),
        deliveries: sum(results, 'targetDeliveries'),
        latencyMs: summarize(targetHist),
      }
    : null;
  const pressureDeliveries = sum(results, 'pressureDeliveries');
  const report: LoadtestReport = {
    url: options.url,
    preset: options.preset,
    threads,
    workload: preset
      ? {
          route: options.route,
          topicsPerConnection: options.topicsPerConnection,
          rooms: PRESET_ROOMS[options.preset!],
          usersPerRoom: PRESET.usersPerRoom,
          sendersPerRoom: 1,
          rate: PRESET.pressureRate,
          durationMs,
          warmupMs: options.warmupMs,
          messageType: options.messageType,
          payloadBytes: options.payloadBytes,
        }
      : {
          route: options.route,
          topicsPerConnection: options.topicsPerConnection,
          rooms: options.rooms,
          usersPerRoom: options.usersPerRoom,
          sendersPerRoom: options.sendersPerRoom,
          rate: options.rate,
          durationMs,
          warmupMs: options.warmupMs,
          messageType: options.messageType,
          payloadBytes: options.payloadBytes,
        },
    sessions: sum(results, 'sessions'),
    connections: sum(results, 'connections'),
    connected: sum(results, 'connected'),
    connectFailed: sum(results, 'connectFailed'),
    connectMs: summarize(connectHist),
    sends: sum(results, 'sends'),
    sendsPerSecond: Math.round(sum(results, 'sends') / windowS),
    expectedDeliveries: expected,
    deliveries,
    deliveryRatio: expected === 0 ? 1 : deliveries / expected,
    deliveriesPerSecond: Math.round(deliveries / windowS),
    latencyMs: preset ? summarize(targetHist) : summarize(deliveryHist),
    deliveryLatencyMs: summarize(deliveryHist),
    target,
    pressure: preset
      ? {
          sends: sum(results, 'pressureSends'),
          expectedDeliveries: sum(results, 'pressureExpectedDeliveries'),
          deliveries: pressureDeliveries,
          deliveriesPerSecond: Math.round(pressureDeliveries / windowS),
        }
      : null,
    errors,
    serverLimits: serverLimitNotes(errors, preset ? PRESET.pressureRate : options.rate),
    generator: {
      cpuPercent,
      busyPercent,
      saturated: busyPercent.some((c) => c >= SATURATED_PERCENT),
      sendsLate: sendLagMs.p99 > SATURATED_LAG_MS,
      framesReceived: sum(results, 'framesReceived'),
      sendLagMs,
    },
    gates: { minDelivery: options.minDelivery, maxP99Ms: options.maxP99Ms, passed: true, failures: [] },
  };
  const failures = report.gates.failures;
  if (report.connectFailed > 0) failures.push(`${report.connectFailed} of ${report.sessions} sessions failed to connect`);
  if (report.deliveryRatio < options.minDelivery) {
    const limited = report.serverLimits.some((note) => note.options.includes('--rate-limit'));
    failures.push(
      `delivery ${(report.deliveryRatio * 100).toFixed(2)}% < --min-delivery ${(options.minDelivery * 100).toFixed(2)}%` +
        (limited ? " (the server's --rate-limit dropped messages, see above)" : ''),
    );
  }
  if (options.maxP99Ms > 0 && report.latencyMs.p99 > options.maxP99Ms) failures.push(`p99 ${report.latencyMs.p99} ms > --max-p99 ${options.maxP99Ms} ms`);
  report.gates.passed = failures.length === 0;
  // Keep the merged histogram for --hgrm without putting it in the JSON.
  histograms.set(report, preset ? targetHist : deliveryHist);
  return report;
}

const histograms = new WeakMap<LoadtestReport, Histogram>();

/** The merged histogram behind `report.latencyMs`. */
export function latencyHistogram(report: LoadtestReport): Histogram {
  return histograms.get(report)!;
}
