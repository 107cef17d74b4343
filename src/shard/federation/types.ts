/** The options of the federation, and the shapes its parts share. */
import type { Subscription } from '@nats-io/transport-node';
import type { ServeConfig } from '../../config.ts';
import type { Logger } from '../../log.ts';
import type { BusSessionInfo } from '../../protocol/bus.ts';
import type { ApiOutcome, ApiRequest } from '../../protocol/api.ts';
import type { MetricsSlot } from '../../protocol/metrics.ts';
import type { Room, RoomIndex } from '../room-index.ts';

export type FederationConfig = Pick<
  ServeConfig,
  | 'natsUrls'
  | 'natsCreds'
  | 'nodeId'
  | 'region'
  | 'federationHeartbeatMs'
  | 'federationKey'
  | 'federationUnsignedRooms'
  | 'federationReplayWindowMs'
  | 'processInstance'
  | 'startedAt'
  | 'workers'
  | 'maxMessageSize'
  | 'maxRoomSize'
  | 'apiBroadcastRate'
>;

export interface FederationOptions {
  config: FederationConfig;
  shardId: number;
  log: Logger;
  metrics: MetricsSlot;
  rooms: RoomIndex;
  /** Write `frame` to every local member of `room` (through the backpressure policy). */
  deliver: (room: Room, frame: Buffer, transientKey?: string) => void;
  /** Event types a slow recipient only needs the newest of. */
  transientTypes: ReadonlySet<string>;
  /** Types a viewer may not send (`--mutation-types`), the relay's table. */
  mutationTypes: ReadonlySet<string>;
  /** This process must stop (another process runs under the same node id and started first). */
  onFatal: (code: string, message: string) => void;
  /** Apply a server API request another node published to this shard's sessions (shard/commands.ts). */
  applyApi: (request: ApiRequest) => ApiOutcome;
}

export interface RemoteSession {
  node: string;
  info: BusSessionInfo;
  infoJson: string;
  /** When it was learnt, in the order of {@link RemoteRooms.learnt}: a restarted node's new sessions are told from its old ones by it. */
  learnt: number;
}

export interface FedRoom {
  readonly desktopId: string;
  readonly subject: string;
  sub: Subscription | null;
  readonly remote: Map<string, RemoteSession>;
  /** Sessions waiting for the first sync to end before they join (room_joined must list the others). */
  waiters: (() => void)[] | null;
  lastAnswerAt: number;
  answerTimer: NodeJS.Timeout | null;
  pendingReplies: string[];
  /** Set while the room has no local session: when it fires, the room is dropped. */
  lingerTimer: NodeJS.Timeout | null;
  /** A resync of every room came while the first sync was under way (it may have asked before the bus went down): sync again once it ends. */
  resyncPending: boolean;
}
