/**
 * The seed's three micro-benchmarks re-expressed for our shard code, with
 * sockets stubbed so only relay work is timed (parse, validate, stamp,
 * serialize, frame, queue, and the end-of-turn flush with one write call per
 * recipient):
 *   BroadcastSameRoom   — 20 sessions in one room, one sender
 *   BroadcastManyRooms  — 250 sessions in 50 rooms of 5, senders round-robin
 *   GetSessionsInRoom   — room-member lookup with 500 sessions in 50 rooms
 * Each relay case also runs against a naive baseline that scans every
 * session per broadcast and builds a frame per recipient (what calling
 * `ws.send` per recipient costs), to show what the room index and
 * frame-once buy.
 *
 *   node bench/broadcast.bench.ts [--iterations N]
 */
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { createLogger } from '../src/log.ts';
import { DEFAULT_MUTATION_TYPES } from '../src/protocol/events.ts';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { Backpressure } from '../src/shard/backpressure.ts';
import { newRateState, RateLimiter } from '../src/shard/rate-limiter.ts';
import { Relay } from '../src/shard/relay.ts';
import { RoomIndex } from '../src/shard/room-index.ts';
import { Session } from '../src/shard/session.ts';
import { WriteCoalescer } from '../src/shard/write-coalescer.ts';
import { describeMachine } from '../scripts/machine-info.ts';

const iterArg = process.argv.indexOf('--iterations');
const ITERATIONS = iterArg > 0 ? Number(process.argv[iterArg + 1]) : 200_000;
/** `--json`: one JSON object per benchmark line instead of the table. */
const JSON_OUTPUT = process.argv.includes('--json');

let deliveries = 0;
const socketStub = {
  writableLength: 0,
  write(_b: Buffer) {
    return true;
  },
} as unknown as Socket;
/** Counts what the naive baseline writes (one frame per write). */
const naiveSocketStub = {
  writableLength: 0,
  write(_b: Buffer) {
    deliveries++;
    return true;
  },
} as unknown as Socket;
const wsStub = { readyState: 1 } as unknown as WebSocket;

interface Built {
  index: RoomIndex;
  relay: Relay;
  sessions: Session[];
  /** Relay one message and end the turn (the coalescer's flush), counting deliveries. */
  relayOne: (sender: Session) => void;
}

function build(rooms: number, perRoom: number): Built {
  const index = new RoomIndex();
  // The rate limit is off here: the benchmark measures relaying, not throttling.
  const limits = { perSecond: 0, burst: 1, closeAfterMs: 1, messageBytes: 4096 };
  const metrics = new MetricsSlot(createMetricsBuffer(1), 0);
  const log = createLogger({ level: 'silent', format: 'json', worker: 0 });
  // Relay cost alone: pacing off (a busy benchmark loop would otherwise start it).
  const out = new WriteCoalescer<Session>(metrics, { pacing: 'off', paceIntervalMs: 32, paceAbove: 200 });
  const backpressure = new Backpressure(
    {
      maxBufferedBytes: 1 << 20,
      slowConsumerTimeoutMs: 10_000,
      maxSessionBacklogBytes: 4 << 20,
      maxOutboundBytes: 256 << 20,
      processOutbound: () => 0,
      onRelease: () => {},
    },
    out,
    metrics,
    log,
  );
  backpressure.stop();
  const relay = new Relay({
    rooms: index,
    out,
    log,
    limiter: new RateLimiter(limits),
    metrics,
    backpressure,
    transientTypes: new Set(['asset_dragging']),
    mutationTypes: new Set(DEFAULT_MUTATION_TYPES),
  });
  const sessions: Session[] = [];
  for (let r = 0; r < rooms; r++) {
    for (let m = 0; m < perRoom; m++) {
      const s = new Session({
        desktopId: `room-${r}`,
        identity: { userId: `user-${r}-${m}-0000`, firstName: 'Bench', email: 'bench@example.com' },
        permission: 'editor',
        ws: wsStub,
        socket: socketStub,
        rate: newRateState(limits, 0),
        outbound: (self) => out.newOutbound(self),
        budget: backpressure.newBudget(),
      });
      index.join(s);
      sessions.push(s);
    }
  }
  const relayOne = (sender: Session) => {
    const before = metrics.values[Metric.DELIVERIES]!;
    relay.onMessage(sender, message, false);
    out.flush();
    deliveries += metrics.values[Metric.DELIVERIES]! - before;
  };
  return { index, relay, sessions, relayOne };
}

/** Naive relay: every session scanned, one JSON.stringify and one frame per recipient. */
function naiveBroadcast(all: Session[], sender: Session, data: Buffer): void {
  const msg = JSON.parse(data.toString()) as { type: string; payload?: unknown };
  const event = {
    type: msg.type,
    sessionId: sender.id,
    userId: sender.userId,
    firstName: sender.firstName,
    email: sender.email,
    timestamp: Date.now(),
    payload: msg.payload,
  };
  for (const s of all) {
    if (s !== sender && s.desktopId === sender.desktopId) naiveSocketStub.write(encodeTextFrame(JSON.stringify(event)));
  }
}

function time(name: string, iterations: number, fn: (i: number) => void): void {
  for (let i = 0; i < Math.min(iterations, 20_000); i++) fn(i); // warm-up
  deliveries = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(i);
  const ns = Number(process.hrtime.bigint() - start) / iterations;
  const perOp = deliveries / iterations;
  if (JSON_OUTPUT) {
    console.log(JSON.stringify({ name: name.trim(), nsPerOp: Math.round(ns * 10) / 10, deliveriesPerOp: perOp }));
    return;
  }
  console.log(
    `${name.padEnd(34)} ${ns.toFixed(1).padStart(10)} ns/op ${perOp.toFixed(2).padStart(8)} deliveries/op ${(perOp > 0 ? ns / perOp : 0).toFixed(1).padStart(8)} ns/delivery`,
  );
}

const message = Buffer.from(JSON.stringify({ type: 'asset_moved', payload: { id: 'asset-1', x: 100, y: 200 } }));

if (!JSON_OUTPUT) console.log(`# ${describeMachine()}; ${ITERATIONS} iterations`);
{
  const { relayOne, sessions } = build(1, 20);
  time('BroadcastSameRoom (20)', ITERATIONS, () => relayOne(sessions[0]!));
  time('  naive baseline (same room)', ITERATIONS, () => naiveBroadcast(sessions, sessions[0]!, message));
}
{
  const { relayOne, sessions } = build(50, 5);
  time('BroadcastManyRooms (250/50)', ITERATIONS, (i) => relayOne(sessions[(i * 5) % 250]!));
  time('  naive baseline (many rooms)', ITERATIONS, (i) => naiveBroadcast(sessions, sessions[(i * 5) % 250]!, message));
}
{
  const { index } = build(50, 10);
  let sink = 0;
  time('GetSessionsInRoom (500/50)', ITERATIONS * 10, (i) => {
    sink += index.get(`room-${i % 50}`)!.members.length;
  });
  if (sink === 0) console.log('unreachable');
}
