/**
 * The server's shards in the test's own process, for unit tests that need
 * a whole shard (its connection limits, its `ws` options) where Stryker can
 * see it: real Shards sharing the metrics and per-user buffers as worker
 * threads do, behind a loopback listener that does what the primary does
 * for a WebSocket request (read the head from the descriptor, route it,
 * hand the socket over) without a thread in between. The permission API is
 * the real-HTTP stub. Clients are the usual `ws` clients (helpers/client.ts).
 */
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { resolveServeConfig, type ServeConfig } from '../../src/config.ts';
import { CloseCode, SERVICE_RESTART_REASON } from '../../src/protocol/events.ts';
import { parseRequestHead } from '../../src/protocol/http.ts';
import { createMetricsBuffer, MetricsSlot } from '../../src/protocol/metrics.ts';
import { createUserConnectionsBuffer, UserConnections } from '../../src/protocol/user-connections.ts';
import { readHead } from '../../src/primary/head-reader.ts';
import { route, shardFor } from '../../src/primary/router.ts';
import { Shard } from '../../src/shard/shard.ts';
import { startPermissionStub, type PermissionStub } from './permission-stub.ts';
import type { Scope } from './scope.ts';
import { desktop } from './scope.ts';
import { TEST_SECRET } from './server.ts';
import { recordingLogger } from './shard-parts.ts';

export interface InProcessServer {
  config: ServeConfig;
  shards: Shard[];
  stub: PermissionStub;
  /** The primary's view of the per-user counts (reads every shard's table). */
  users: UserConnections;
  wsUrl(desktopId: string): string;
  /** A fresh desktop id that routes to `shard`. */
  desktopOn(shard: number): string;
}

/** Start `workers` shards with `options` (as `resolveServeConfig` takes them; the secret and permission API are set). */
export async function inProcessServer(t: Scope, options: Parameters<typeof resolveServeConfig>[0] = {}, workers = 2): Promise<InProcessServer> {
  const stub = await startPermissionStub(t);
  const config = resolveServeConfig({ jwtSecret: TEST_SECRET, permissionApiBase: stub.base, workers, ...options });
  const metrics = createMetricsBuffer(workers);
  const userBuffer = createUserConnectionsBuffer(workers);
  const shards = Array.from(
    { length: workers },
    (_, id) =>
      new Shard({
        id,
        config,
        log: recordingLogger(false),
        metrics: new MetricsSlot(metrics, id),
        users: new UserConnections(userBuffer, workers, id),
        allMetrics: metrics,
        onFatal: (code, message) => {
          throw new Error(`${code}: ${message}`);
        },
      }),
  );
  const routing = { workers, adminToken: '', allowedOrigins: [], metricsToken: '' };
  const server = createServer({ pauseOnConnect: true }, (socket: Socket) => {
    readHead(socket, { maxBytes: config.maxHeadBytes, timeoutMs: 5000 }, (result) => {
      const parsed = result.kind === 'head' ? parseRequestHead(result.bytes, result.headLength) : null;
      const decision = parsed?.ok ? route(parsed.head, routing) : null;
      if (result.kind !== 'head' || decision?.kind !== 'shard') {
        socket.destroy();
        return;
      }
      shards[decision.shard]!.accept({ type: 'connection', socket, bytes: result.bytes, headLength: result.headLength, remoteAddress: '127.0.0.1' });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  t.after(async () => {
    server.close();
    const plan = { timeoutMs: 1000, spreadMs: 0, code: CloseCode.SERVICE_RESTART, reason: SERVICE_RESTART_REASON };
    await Promise.all(shards.map((shard) => shard.drain(plan)));
    await Promise.all(shards.map((shard) => shard.stop(1000)));
  });
  return {
    config,
    shards,
    stub,
    users: new UserConnections(userBuffer, workers, -1),
    wsUrl: (desktopId) => `ws://127.0.0.1:${port}/ws/desktop/${desktopId}`,
    desktopOn(shard) {
      for (;;) {
        const id = desktop();
        if (shardFor(id, workers) === shard) return id;
      }
    },
  };
}
