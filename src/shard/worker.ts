/**
 * Entry point of a shard worker thread. Receives connections and commands
 * from the primary over the worker port; owns one {@link Shard}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { ServeConfig } from '../config.ts';
import { createLogger } from '../log.ts';
import { CloseCode, SERVICE_RESTART_REASON } from '../protocol/events.ts';
import { reportLingeringTo } from '../linger.ts';
import type { PrimaryToShard, ShardToPrimary, ShardWorkerData, StatsReply } from '../protocol/messages.ts';
import { MetricsSlot } from '../protocol/metrics.ts';
import { UserConnections } from '../protocol/user-connections.ts';
import { sampleThreadStats } from '../thread-stats.ts';
import { Shard } from './shard.ts';

const data = workerData as ShardWorkerData;
const config = data.config as ServeConfig;
const log = createLogger({ level: config.logLevel, format: config.logFormat, worker: data.shardId });
const port = parentPort!;
const metrics = new MetricsSlot(data.metrics, data.shardId);
sampleThreadStats(metrics);
reportLingeringTo(metrics);
const users = new UserConnections(data.userConnections, config.workers, data.shardId);
const shard = new Shard({
  id: data.shardId,
  config,
  log,
  metrics,
  users,
  allMetrics: data.metrics,
  onFatal: (code, message) => send({ type: 'fatal', code, message }),
});

function isolateMemory(): StatsReply['memory'] {
  const { heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
  return { heapUsed, heapTotal, external, arrayBuffers };
}

function send(message: ShardToPrimary): void {
  port.postMessage(message);
}

port.on('message', (message: PrimaryToShard) => {
  switch (message.type) {
    case 'connection':
      shard.accept(message);
      break;
    case 'link':
      shard.linkPort(message.peer, message.port);
      break;
    case 'stats':
      send({
        type: 'stats',
        id: message.id,
        connections: shard.rooms.sessionCount,
        rooms: shard.rooms.roomCount,
        topRooms: shard.rooms.topRooms(10),
        memory: isolateMemory(),
        federation: shard.federationStats(),
      });
      break;
    case 'api':
      void shard.applyApi(message.request).then((outcome) => send({ type: 'api', id: message.request.id, outcome }));
      break;
    case 'drain':
      void shard
        .drain({ timeoutMs: message.timeoutMs, spreadMs: message.spreadMs, code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON })
        .then((closed) => send({ type: 'drained', closed }));
      break;
    case 'stop':
      // Shutdown: end the thread ourselves once stopped. A worker the primary terminates
      // exits with code 1, and a clean shutdown then read like a crash in the logs.
      void shard.stop(message.timeoutMs).then(() => process.exit(0));
      break;
    case 'restart':
      void shard.drain({ timeoutMs: message.timeoutMs, spreadMs: 0, code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON }).then(async (closed) => {
        await shard.stop(message.timeoutMs);
        send({ type: 'drained', closed });
      });
      break;
  }
});

send({ type: 'ready' });
