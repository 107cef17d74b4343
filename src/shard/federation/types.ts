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
  /** Deliver an event from another node (`legacyText`: the legacy framing) to every local member of `room`, each in its framing (through the backpressure policy). */
  deliver: (room: Room, legacyText: string, transientKey?: string, relayed?: boolean) => void;
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

/** How a subject frames events: the legacy routes' `{"type":…}`, or the multiplexed route's `{"op":"event","topic":…}`. */
export type Framing = 'flat' | 'topic';

export interface FedRoom {
  /** The room key: a desktop id, or a topic of another namespace (`production-table:{id}`). */
  readonly desktopId: string;
  /** The room's topic (`desktop:{id}` for a desktop room). */
  readonly topic: string;
  /** The subject moodio-rt nodes speak on: `room.{desktopId}` (flat) for a desktop, `room.{topic}` (topic framing) otherwise. */
  readonly subject: string;
  readonly framing: Framing;
  /** A desktop's topic subject, `room.desktop:{id}`, where the upstream relay speaks. */
  readonly mirror: string | null;
  /** An upstream relay was heard on {@link mirror} (a message taken that is not a moodio-rt copy): from then on every event goes there too, marked as a copy. */
  upstreamHeard: boolean;
  sub: Subscription | null;
  mirrorSub: Subscription | null;
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
