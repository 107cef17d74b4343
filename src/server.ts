/**
 * Starting and stopping a whole server: dev-mode secret, logger, primary and
 * its shards. The CLI is a thin layer over {@link startServer}.
 */
import type { AddressInfo } from 'node:net';
import { loadOrCreateDevSecret } from './auth/dev-secret.ts';
import type { ServeConfig } from './config.ts';
import { ConfigError } from './errors.ts';
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
 * Start the primary and its shards; resolves once listening.
 * @throws {ConfigError} for `--dev` with a configured secret, or an untrusted `--dev-secret-file`.
 */
export async function startServer(input: ServeConfig): Promise<RunningServer> {
  const config: ServeConfig = { ...input };
  const log = createLogger({ level: config.logLevel, format: config.logFormat, worker: 'primary' });
  if (config.dev) {
    // Dev mode hands a 12-hour token to anyone who asks (/demo/token), prints one, and lets
    // the token's permission claim replace the permission API. With the production secret
    // that would make every real token an editor's, anywhere: dev mode signs and verifies
    // with its own secret only.
    if (config.jwtSecret !== '') {
      throw new ConfigError(
        'JWT_ACCESS_SECRET',
        `must not be set with --dev (nor --jwt-secret): dev mode mints tokens for anyone who asks. Unset it to use the dev secret in ${config.devSecretFile}, or drop --dev`,
      );
    }
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
