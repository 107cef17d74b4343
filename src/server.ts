/**
 * Starting and stopping a whole server: dev-mode secret, logger, primary and
 * its shards. The CLI is a thin layer over {@link startServer}.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import type { ServeConfig } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { Primary } from './primary/primary.ts';

export interface RunningServer {
  address: AddressInfo;
  config: ServeConfig;
  log: Logger;
  /** Stop accepting, close sessions with 1001, stop the shards. */
  shutdown(): Promise<void>;
}

const SHARD_WORKER_URL = new URL('./shard/worker.ts', import.meta.url);

/**
 * The dev-mode secret: read from `file`, or generated (32 random bytes) and
 * stored there with mode 0600 so that `moodio-rt token` can mint tokens for a
 * dev server started without JWT_ACCESS_SECRET.
 */
export function loadOrCreateDevSecret(file: string): string {
  try {
    const existing = readFileSync(file, 'utf8').trim();
    if (existing) return existing;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = randomBytes(32).toString('base64url');
  mkdirSync(dirname(file), { recursive: true });
  try {
    writeFileSync(file, secret + '\n', { mode: 0o600, flag: 'wx' });
    return secret;
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readFileSync(file, 'utf8').trim();
    throw err;
  }
}

/** Start the primary and its shards; resolves once listening. */
export async function startServer(input: ServeConfig): Promise<RunningServer> {
  const config: ServeConfig = { ...input };
  const log = createLogger({ level: config.logLevel, format: config.logFormat, worker: 'primary' });
  if (config.dev && config.jwtSecret === '') {
    config.jwtSecret = loadOrCreateDevSecret(config.devSecretFile);
    log.warn('dev_secret', { file: config.devSecretFile });
  }
  if (!config.dev && Buffer.byteLength(config.jwtSecret) < 32) {
    log.warn('weak_jwt_secret', { bytes: Buffer.byteLength(config.jwtSecret), recommended: 32 });
  }
  const primary = new Primary({ config, shardWorkerUrl: SHARD_WORKER_URL, log });
  const address = await primary.start();
  return { address, config, log, shutdown: () => primary.shutdown() };
}
