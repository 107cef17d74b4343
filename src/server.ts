/**
 * Starting and stopping a whole server: logger, primary and its shards. The CLI is a thin layer over {@link startServer}.
 */
import type { AddressInfo } from 'node:net';
import { configWarnings, type ServeConfig } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { Primary } from './primary/primary.ts';

export interface RunningServer {
  address: AddressInfo;
  config: ServeConfig;
  log: Logger;
  /** Stop accepting, close sessions with 1012 spread over --drain-spread, stop the shards. */
  shutdown(): Promise<void>;
}

const SHARD_WORKER_URL = new URL('./shard/worker.ts', import.meta.url);

/**
 * Start the primary and its shards from a finished configuration
 * ({@link resolveServeConfig}); resolves once listening. `onFatal` hears
 * when the server cannot go on as configured (its federation node id is
 * taken by an older process): the caller should shut it down and exit.
 */
export async function startServer(config: ServeConfig, onFatal?: (code: string, message: string) => void): Promise<RunningServer> {
  const log = createLogger({ level: config.logLevel, format: config.logFormat, worker: 'primary' });
  for (const { event, fields } of configWarnings(config)) log.warn(event, fields);
  if (config.natsUrls.length > 0) {
    log.info('federation', { nodeId: config.nodeId, region: config.region, nats: config.natsUrls.length, signed: config.federationKey !== '' });
    if (config.federationKey === '') {
      log.warn('federation_unsigned', {
        message:
          'no --federation-key: heartbeats and presence lists on the bus are taken from anyone who can publish on NATS, and the server API stays on this node',
      });
    } else if (config.federationUnsignedRooms === 'admit') {
      log.warn('federation_unsigned_rooms', {
        message:
          '--federation-unsigned-rooms admit: room events from nodes that never signed (Go relays) are taken unsigned; anyone who can publish on room.> can speak for such a node and its sessions',
      });
    }
  }
  const primary = new Primary({ config, shardWorkerUrl: SHARD_WORKER_URL, log, onFatal });
  const address = await primary.start();
  return { address, config, log, shutdown: () => primary.shutdown() };
}
