/**
 * Everything a shard does for the server API and for grants that change
 * while a session is open, behind the few calls the shard makes: a session
 * opened or closed, a request to apply, stop. It wires session-control.ts
 * (the one owner of a live session's permission) to its three users:
 * commands.ts (the API), permission-recheck.ts (`--permission-recheck`) and
 * token-expiry.ts (`--enforce-token-expiry`).
 */
import type { GrantUpdates } from '../auth/permission-cache.ts';
import type { PermissionSource } from '../auth/permission-client.ts';
import type { Identity } from '../auth/token.ts';
import type { ServeConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { ApiOutcome, ApiRequest } from '../protocol/api.ts';
import type { MetricsSlot } from '../protocol/metrics.ts';
import type { Backpressure } from './backpressure.ts';
import { Commands, type Publishing } from './commands.ts';
import { PermissionRecheck, type RecheckTopics } from './permission-recheck.ts';
import type { Relay } from './relay.ts';
import type { TopicConnection } from './connection.ts';
import type { RoomIndex } from './room-index.ts';
import type { Session } from './session.ts';
import { SessionControl } from './session-control.ts';
import { TokenExpiry } from './token-expiry.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

export interface ShardApiOptions {
  shardId: number;
  config: ServeConfig;
  rooms: RoomIndex;
  relay: Relay;
  backpressure: Backpressure;
  out: WriteCoalescer<Session>;
  /** The permission API without the cache, for rechecks. */
  permissions: PermissionSource;
  /** The handshake's permission cache, which the API's role changes and logouts update (null in dev mode). */
  grants: GrantUpdates | null;
  metrics: MetricsSlot;
  log: Logger;
  /** A multiplexed connection the server ends (a logout, its token expired) leaves its topics at once. */
  leaveTopics?: (conn: TopicConnection) => void;
  /** The multiplexed route's subscriptions, rechecked with the legacy sessions (--permission-recheck). */
  topics?: RecheckTopics;
  /** A publish's offset and its subscribers (commands.ts). */
  publishing?: Publishing;
}

export class ShardApi {
  private readonly control: SessionControl;
  private readonly commands: Commands;
  private readonly recheck: PermissionRecheck | null;
  private readonly expiry: TokenExpiry | null;

  constructor(options: ShardApiOptions) {
    const { config, rooms, metrics, log } = options;
    this.control = new SessionControl({ ...options, nodeId: config.nodeId });
    this.commands = new Commands({ rooms, control: this.control, metrics, log, grants: options.grants, publishing: options.publishing });
    this.recheck =
      config.permissionRecheckMs > 0
        ? new PermissionRecheck({
            intervalMs: config.permissionRecheckMs,
            concurrency: config.permissionConcurrency,
            source: options.permissions,
            control: this.control,
            grants: options.grants,
            metrics,
            log,
            topics: options.topics,
          })
        : null;
    this.expiry = config.enforceTokenExpiry ? new TokenExpiry(this.control) : null;
  }

  /** A session opened (it has joined its room), admitted with `identity` and its handshake's `cookie`. */
  opened(session: Session, identity: Identity, cookie: string | undefined): void {
    this.control.add(session);
    this.recheck?.track(session, identity, cookie);
    this.expiry?.track(session, identity.expiresAt);
  }

  /** A multiplexed connection opened: the server API reaches it by user (a logout), and its token's expiry applies. */
  openedConnection(session: Session, identity: Identity): void {
    this.control.add(session);
    this.expiry?.track(session, identity.expiresAt);
  }

  closed(session: Session): void {
    this.control.remove(session);
    this.recheck?.untrack(session);
    this.expiry?.untrack(session);
  }

  /** Apply a server API request (commands.ts). */
  apply(request: ApiRequest): ApiOutcome {
    return this.commands.apply(request);
  }

  stop(): void {
    this.recheck?.stop();
    this.expiry?.stop();
  }
}
