/**
 * What the fleet's shared history (`--history-stream`) adds to the bus hop
 * between two nodes (issue 21): one real `nats-server -js` (memory store),
 * two NATS connections standing for node A (publishes `room.{id}` as the
 * relay does) and node B (receives). Four paths, same load:
 *
 * - `core`: B on `room.{id}`, no stream (today's federation);
 * - `core, stream present`: the same, while the stream captures `room.>`
 *   (what a Go relay or a node without the option sees in a fleet that has it);
 * - `stream`: B on the republished subject (`moodio-rt.history.{name}.room.{id}`,
 *   RePublish), the design measured first and dropped;
 * - `stream, ordered consumer`: B follows each room with an ordered consumer
 *   (room-stream.ts `follow`), as a node with `--history-stream` does.
 *
 * Each row sends `--rate` events/s of 300 bytes over 20 rooms for
 * `--seconds`, and reports the hop's latency (publish call to B's callback)
 * p50/p99/max. Single-node paths run none of this code.
 *
 *   node bench/history-stream.ts [--rates 1000,5000] [--seconds 3] [--paths core,core+stream,stream,consumer]
 *
 * Prints a Markdown table (machine and command included) to stdout.
 */
import { performance } from 'node:perf_hooks';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { createHistogram, recordUs, summarize } from '../src/loadtest/histogram.ts';
import { streamConfig } from '../src/shard/federation/room-stream.ts';
import { describeMachine } from '../scripts/machine-info.ts';
import { startNats } from '../test/helpers/nats.ts';
import { Cleanup } from '../test/helpers/scope.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1]! : fallback;
};
const rates = arg('--rates', '1000,5000').split(',').map(Number);
const seconds = Number(arg('--seconds', '3'));
const ROOMS = 20;
const republishSubject = (name: string, subject: string): string => `moodio-rt.history.${name}.${subject}`;
const paths = arg('--paths', 'core,core+stream,stream,consumer')
  .split(',')
  .map((p) => ({ core: 'core', 'core+stream': 'core, stream present', stream: 'stream', consumer: 'stream, ordered consumer' })[p] as Path);
const NAME = 'bench-history';

type Path = 'core' | 'core, stream present' | 'stream' | 'stream, ordered consumer';

async function run(a: NatsConnection, b: NatsConnection, path: Path, rate: number): Promise<ReturnType<typeof summarize> & { lost: number }> {
  const histogram = createHistogram();
  const filler = 'x'.repeat(240);
  let received = 0;
  const subs: { unsubscribe(): void }[] = [];
  const record = (data: string): void => {
    const sent = Number(JSON.parse(data).p.t);
    recordUs(histogram, (performance.now() - sent) * 1000);
    received++;
  };
  if (path === 'stream, ordered consumer') {
    const { jetstream } = await import('@nats-io/jetstream');
    const js = jetstream(b);
    for (let r = 0; r < ROOMS; r++) {
      const consumer = await js.consumers.get(NAME, { filter_subjects: `room.bench-${r}`, deliver_policy: 'new' as never });
      const messages = await consumer.consume({ max_messages: 256, callback: (m) => record(m.string()) });
      subs.push({ unsubscribe: () => void messages.close() });
    }
  }
  for (let r = 0; r < ROOMS && path !== 'stream, ordered consumer'; r++) {
    const subject = path === 'stream' ? republishSubject(NAME, `room.bench-${r}`) : `room.bench-${r}`;
    subs.push(
      b.subscribe(subject, {
        callback: (_err, msg) => record(msg.string()),
      }),
    );
  }
  await b.flush();
  const total = Math.round(rate * seconds);
  const start = performance.now();
  // Open loop: each event leaves at its planned time (batched per 1 ms timer), whatever came back.
  for (let i = 0; i < total; ) {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    for (; i < Math.min(due, total); i++) {
      a.publish(`room.bench-${i % ROOMS}`, `{"r":"node-a","p":{"type":"asset_moved","t":${performance.now()},"f":"${filler}"}}`);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const deadline = performance.now() + 5000;
  while (received < total && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  for (const sub of subs) sub.unsubscribe();
  return { ...summarize(histogram), lost: total - received };
}

const cleanup = new Cleanup();
try {
  const nats = await startNats(cleanup, { jetstream: true });
  const a = await connect({ servers: nats.url, noEcho: true });
  const b = await connect({ servers: nats.url, noEcho: true });
  cleanup.after(() => a.close());
  cleanup.after(() => b.close());
  const rows: string[] = [];
  for (const rate of rates) {
    for (const path of paths) {
      const { jetstreamManager } = await import('@nats-io/jetstream');
      const jsm = await jetstreamManager(a);
      await jsm.streams.delete(NAME).catch(() => undefined);
      if (path !== 'core') {
        // The design first measured: the stream republishes what it stores, and B follows that with a core subscription.
        const config = streamConfig({
          name: NAME,
          storage: 'memory',
          maxAgeMs: 120_000,
          maxBytes: 256 * 1024 * 1024,
          maxMsgs: 1_000_000,
          maxMsgSize: 66 * 1024,
        });
        if (path !== 'stream, ordered consumer') config.republish = { src: 'room.>', dest: republishSubject(NAME, 'room.>') };
        await jsm.streams.add(config);
      }
      // A warm-up second, then the measured run.
      await run(a, b, path, rate / 2);
      const s = await run(a, b, path, rate);
      rows.push(`| ${rate} | ${path} | ${s.p50.toFixed(3)} | ${s.p99.toFixed(3)} | ${s.max.toFixed(3)} | ${s.lost} |`);
      process.stderr.write(`${rate}/s ${path}: p50 ${s.p50} ms, p99 ${s.p99} ms, lost ${s.lost}\n`);
    }
  }
  console.log(`Machine: ${describeMachine()}\nCommand: node bench/history-stream.ts ${process.argv.slice(2).join(' ')}\n`);
  console.log('| events/s | path | p50 ms | p99 ms | max ms | not received |\n|---:|---|---:|---:|---:|---:|');
  for (const row of rows) console.log(row);
} finally {
  await cleanup.run();
}
