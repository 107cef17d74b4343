/**
 * The peer table: per peer node and shard, the last heartbeat. A peer shard
 * silent for 3 intervals (or back under a new incarnation) loses its
 * sessions, and local members hear `session_left` for each. Sessions of a
 * node that never sent a heartbeat (a Go relay) stay until that node says
 * they left. A heartbeat under this node's own id from another process is a
 * duplicate node id: the newer process stops at start-up.
 */
import type { Msg } from '@nats-io/transport-node';
import { LogBudget, type LogFields } from '../../log.ts';
import { DropReason, encodeHeartbeat, HEARTBEAT_SUBJECT, parseHeartbeat, type Heartbeat } from '../../protocol/bus.ts';
import { Metric } from '../../protocol/metrics.ts';
import type { FederationStats } from '../../protocol/messages.ts';
import { beatOrder, nextHistory, type BeatHistory } from '../bus-replay.ts';
import type { NatsLink } from './link.ts';
import type { RemoteRooms } from './rooms.ts';
import type { FederationOptions } from './types.ts';

/** A peer shard silent for this many heartbeat intervals is gone. */
export const SILENT_INTERVALS = 3;
/** Peer nodes a shard keeps track of: heartbeats from more (forged ids) are dropped. */
const MAX_PEERS = 1024;
/** Peer shards a shard keeps track of, all peers together. */
const MAX_PEER_SHARDS = 8192;

interface PeerShard extends BeatHistory {
  seen: number;
  workers: number;
  intervalMs: number;
}

interface Peer {
  region: string;
  /** The process followed under this node id (another one's heartbeats are ignored until this one falls silent). */
  instance: string;
  shards: Map<number, PeerShard>;
  /**
   * Another process beating under this node id, most likely the node restarted before the one followed
   * was declared dead. The sessions learnt from the node since its first heartbeat are its own: when
   * the process followed falls silent, they stay.
   */
  successor: { instance: string; since: number; seen: number } | null;
}

export interface PeerEvents {
  /** A node declared gone is heard again: it may hold sessions we forgot, and it may have forgotten ours. */
  nodeBack(): void;
  /** This process must stop. */
  onFatal: FederationOptions['onFatal'];
}

export class PeerTable {
  private readonly link: NatsLink;
  private readonly rooms: RemoteRooms;
  private readonly events: PeerEvents;
  private readonly peers = new Map<string, Peer>();
  /** Nodes whose sessions were expired for silence: hearing one again triggers a resync. */
  private readonly expiredNodes = new Map<string, number>();
  private readonly peerLogBudget = new LogBudget(20);
  private readonly heartbeat: NodeJS.Timeout;
  private readonly sweeper: NodeJS.Timeout;
  private duplicateSeen = false;
  private peerShardCount = 0;
  /** Heartbeats this shard incarnation sent (their sequence). */
  private beats = 0;
  /** When the link first came up (a duplicate node id found later is logged, never obeyed). */
  firstConnectedAt = 0;

  constructor(link: NatsLink, rooms: RemoteRooms, events: PeerEvents) {
    this.link = link;
    this.rooms = rooms;
    this.events = events;
    const interval = link.config.federationHeartbeatMs;
    this.heartbeat = setInterval(() => this.sendHeartbeat(), interval);
    this.heartbeat.unref();
    this.sweeper = setInterval(() => this.expireSilentPeers(Date.now()), Math.max(10, Math.min(250, interval / 4)));
    this.sweeper.unref();
  }

  /** Whether heartbeats of `node` are followed. */
  has(node: string): boolean {
    return this.peers.has(node);
  }

  sendHeartbeat(): void {
    const link = this.link;
    if (!link.connected || link.closing) return;
    const config = link.config;
    const beat: Heartbeat = {
      r: config.nodeId,
      i: config.processInstance,
      t: config.startedAt,
      s: link.shardId,
      w: config.workers,
      k: link.incarnation,
      h: config.federationHeartbeatMs,
      g: config.region,
      q: this.beats++,
    };
    try {
      const data = encodeHeartbeat(beat);
      const h = link.signed(HEARTBEAT_SUBJECT, data);
      link.nc!.publish(HEARTBEAT_SUBJECT, data, h === undefined ? undefined : { headers: h });
    } catch {
      // Closed meanwhile.
    }
  }

  onHeartbeat(msg: Msg): void {
    const link = this.link;
    if (link.closing) return;
    const parsed = parseHeartbeat(msg.data);
    if (!parsed.ok) {
      link.drop(parsed.reason, msg.subject);
      return;
    }
    // With a key, only the fleet's heartbeats count: anyone else's could expire peers, trigger resyncs or stop this node.
    if (link.signer !== null) {
      const auth = link.authenticate(msg);
      if (auth !== 'signed') {
        link.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, msg.subject, parsed.node);
        return;
      }
      link.markSigned(parsed.node);
    }
    const beat = parsed.value;
    const now = Date.now();
    if (beat.r === link.config.nodeId) {
      if (beat.i !== link.config.processInstance) this.duplicateNode(beat);
      return;
    }
    let peer = this.peers.get(beat.r);
    if (peer === undefined) {
      if (this.peers.size >= MAX_PEERS) {
        link.drop(DropReason.TOO_MANY_PEERS, msg.subject, beat.r);
        return;
      }
      peer = { region: beat.g, instance: beat.i, shards: new Map(), successor: null };
      this.peers.set(beat.r, peer);
      link.metrics.set(Metric.PEER_NODES, this.peers.size);
      this.peerLog('info', 'federation_peer_up', { peer: beat.r, region: beat.g });
      if (this.expiredNodes.delete(beat.r)) this.events.nodeBack();
    }
    // Another process under a node id we follow (a duplicate, or a restart before the old one was
    // declared dead): ignored until the one we follow falls silent and is expired. A restart is then
    // adopted, with a resync, after at most 3 intervals, and a duplicate never makes the view flap.
    // Meanwhile the sessions the node announces are the new process's: they outlive the old one.
    if (beat.i !== peer.instance) {
      if (peer.successor?.instance === beat.i) peer.successor.seen = now;
      else peer.successor = { instance: beat.i, since: this.rooms.learnt, seen: now };
      return;
    }
    const known = peer.shards.get(beat.s);
    const order = beatOrder(known, beat.k, beat.q);
    if (order === 'replayed') {
      link.drop(DropReason.REPLAYED, msg.subject, beat.r);
      return;
    }
    if (known === undefined) {
      if (this.peerShardCount >= MAX_PEER_SHARDS) {
        link.drop(DropReason.TOO_MANY_PEERS, msg.subject, beat.r);
        return;
      }
      this.peerShardCount++;
    }
    if (order === 'restarted') {
      // The shard restarted: the sessions it had are gone with its old worker.
      this.peerLog('info', 'federation_peer_shard_restarted', { peer: beat.r, shard: beat.s });
      this.rooms.expireShard(beat.r, beat.s, known!.workers, now);
    }
    peer.region = beat.g;
    peer.shards.set(beat.s, { ...nextHistory(known, beat.k, beat.q), seen: now, workers: beat.w, intervalMs: beat.h });
  }

  private duplicateNode(beat: Heartbeat): void {
    // Each of the other process's shards beats: say it once.
    if (this.duplicateSeen) return;
    this.duplicateSeen = true;
    const config = this.link.config;
    const weAreNewer = config.startedAt > beat.t || (config.startedAt === beat.t && config.processInstance > beat.i);
    // A start-up error: only a process that has just joined the bus stops. Later, a heartbeat in our
    // name is logged, never obeyed (without --federation-key, anyone who can publish could send one).
    const starting = Date.now() - this.firstConnectedAt <= (SILENT_INTERVALS + 1) * config.federationHeartbeatMs;
    const stops = weAreNewer && starting;
    this.link.log.error('federation_duplicate_node_id', {
      nodeId: config.nodeId,
      otherStartedAt: new Date(beat.t).toISOString(),
      action: stops ? 'this process stops' : weAreNewer ? 'not stopping: found after start-up; give each process its own --node-id' : 'the other process stops',
    });
    if (stops) {
      this.events.onFatal(
        'ERR_DUPLICATE_NODE_ID',
        `another process already runs as node ${JSON.stringify(config.nodeId)}; give each process its own --node-id`,
      );
    }
  }

  /** Peer events, at most 20 lines a second: forged heartbeats must not flood the log. */
  private peerLog(level: 'info' | 'warn', event: string, fields: LogFields): void {
    const kept = this.peerLogBudget.take(fields);
    if (kept !== null) this.link.log[level](event, kept);
  }

  /** Peers could not be heard meanwhile (the bus was down): give each a fresh grace period. */
  touch(now: number): void {
    for (const peer of this.peers.values()) for (const shard of peer.shards.values()) shard.seen = now;
  }

  private expireSilentPeers(now: number): void {
    if (!this.link.connected) return;
    for (const [node, peer] of this.peers) {
      for (const [shardId, shard] of peer.shards) {
        const limit = SILENT_INTERVALS * Math.max(this.link.config.federationHeartbeatMs, shard.intervalMs);
        if (now - shard.seen <= limit) continue;
        peer.shards.delete(shardId);
        this.peerShardCount--;
        this.peerLog('warn', 'federation_peer_shard_silent', { peer: node, shard: shardId, silentMs: now - shard.seen });
        // A process beating under the node id now (a restart) keeps the sessions learnt since it first did.
        const successor = peer.successor;
        const keepFrom = successor !== null && now - successor.seen <= limit ? successor.since : Infinity;
        this.rooms.expireShard(node, shardId, shard.workers, now, keepFrom);
      }
      if (peer.shards.size === 0) {
        this.peers.delete(node);
        this.link.metrics.set(Metric.PEER_NODES, this.peers.size);
        this.expiredNodes.set(node, now);
        if (this.expiredNodes.size > 10_000) this.expiredNodes.delete(this.expiredNodes.keys().next().value!);
        this.peerLog('warn', 'federation_peer_down', { peer: node });
      }
    }
  }

  /** The peers, for /stats. */
  stats(now: number): FederationStats['peers'] {
    return [...this.peers].map(([nodeId, peer]) => {
      let last = 0;
      for (const shard of peer.shards.values()) last = Math.max(last, shard.seen);
      return { nodeId, region: peer.region, shards: peer.shards.size, lastHeartbeatMsAgo: now - last };
    });
  }

  /** Closing: no more heartbeats or expiry. */
  stop(): void {
    clearInterval(this.heartbeat);
    clearInterval(this.sweeper);
  }
}
