/**
 * The server API over the bus: a call this node's primary took is published
 * for the other nodes to apply to their own sessions, and a query gathers
 * their answers. Only with --federation-key: unsigned, any NATS client could
 * make the calls.
 */
import type { Msg } from '@nats-io/transport-node';
import { KeyedBuckets } from '../../keyed-buckets.ts';
import { API_DESKTOP_PREFIX, API_USERS_SUBJECT, DropReason, parseQueryAnswer } from '../../protocol/bus.ts';
import { apiSubject, desktopOf, MAX_API_BODY_BYTES, parseBusRequest, type ApiRequest, type LiveSession } from '../../protocol/api.ts';
import { fnv1a32 } from '../../protocol/hash.ts';
import { Metric } from '../../protocol/metrics.ts';
import type { NatsLink } from './link.ts';
import { SYNC_MAX_WAIT_MS, SYNC_STALL_MS } from './presence-sync.ts';
import type { FederationOptions } from './types.ts';

/** Broadcasts from the bus a shard takes per second: --api-broadcast-rate for each of this many nodes. */
const BUS_BROADCAST_NODES = 16;
/** Sessions a query gathers from other nodes, all answers together. */
const MAX_GATHERED_SESSIONS = 10_000;

export class BusApi {
  private readonly link: NatsLink;
  private readonly applyApi: FederationOptions['applyApi'];
  private readonly busBroadcasts: KeyedBuckets;

  /** `--history-stream`: publishes to a desktop travel in the stream, not here. */
  streamed = false;

  constructor(link: NatsLink, applyApi: FederationOptions['applyApi']) {
    this.link = link;
    this.applyApi = applyApi;
    const rate = link.config.apiBroadcastRate;
    const broadcasts = rate === 0 ? 0 : rate * BUS_BROADCAST_NODES;
    this.busBroadcasts = new KeyedBuckets(broadcasts, broadcasts);
  }

  /** Listen for the other nodes' calls (with a key only). */
  subscribe(): void {
    if (this.link.signer === null) return;
    const onApi = (msg: Msg) => this.onApiMessage(msg);
    this.link.subscribe(API_USERS_SUBJECT, onApi);
    this.link.subscribe(`${API_DESKTOP_PREFIX}*`, onApi);
  }

  /**
   * A server API call this node's primary took: the other nodes apply it to
   * their own sessions. A desktop call is published by the shard that owns
   * the desktop, a user-wide one by shard 0 alone (every local shard got it).
   */
  publish(request: ApiRequest): void {
    const link = this.link;
    if (link.closing || !this.publishes(request)) return;
    if (!link.connected) {
      link.metrics.add(Metric.BUS_UNPUBLISHED);
      return;
    }
    link.send(apiSubject(request), `{"r":${link.nodeJson},"q":${JSON.stringify(request)}}`);
  }

  /** Server API calls federate only with --federation-key: unsigned, any NATS client could make them. */
  private publishes(request: ApiRequest): boolean {
    // With the fleet's stream, a publish to a desktop goes to the room's subject instead (stream-rooms.ts), once.
    if (this.streamed && request.kind === 'publish') return false;
    return this.link.signer !== null && (desktopOf(request) !== null || this.link.shardId === 0);
  }

  /** A query's answers from the other nodes (their sessions), or [] when the bus is down or no other node answers in time. */
  async gather(request: ApiRequest): Promise<LiveSession[]> {
    const link = this.link;
    if (link.closing || !link.connected || !this.publishes(request)) return [];
    const sessions: LiveSession[] = [];
    try {
      const data = `{"r":${link.nodeJson},"q":${JSON.stringify(request)}}`;
      link.metrics.add(Metric.BUS_PUBLISHED);
      link.metrics.add(Metric.BUS_BYTES_OUT, data.length);
      const subject = apiSubject(request);
      const answers = await link.nc!.requestMany(subject, data, {
        strategy: 'stall',
        stall: SYNC_STALL_MS,
        maxWait: SYNC_MAX_WAIT_MS,
        headers: link.signed(subject, data),
      });
      for await (const answer of answers) {
        if (link.closing) break;
        const auth = link.authenticate(answer);
        if (auth !== 'signed') {
          link.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, answer.subject);
          continue;
        }
        const parsed = parseQueryAnswer(answer.data);
        if (parsed === null) link.drop(DropReason.MALFORMED, answer.subject);
        else if (parsed.node !== link.config.nodeId) {
          // Bounded all answers together, whatever the peers claim.
          const room = MAX_GATHERED_SESSIONS - sessions.length;
          if (parsed.sessions.length > room) link.drop(DropReason.ROOM_FULL, answer.subject, parsed.node);
          sessions.push(...parsed.sessions.slice(0, Math.max(0, room)));
        }
      }
    } catch {
      // No other node answered (NATS says so at once), or the bus went down: this node's sessions are what there is.
    }
    return sessions;
  }

  private onApiMessage(msg: Msg): void {
    if (this.link.closing) return;
    this.link.receive(msg, (m) => this.handle(m));
  }

  private handle(msg: Msg): void {
    const link = this.link;
    if (msg.data.byteLength > 4 * MAX_API_BODY_BYTES) {
      link.drop(DropReason.TOO_LARGE, msg.subject);
      return;
    }
    const auth = link.authenticate(msg);
    if (auth !== 'signed') {
      link.drop(auth === 'unsigned' ? DropReason.UNSIGNED : auth, msg.subject);
      return;
    }
    const value = link.json(msg);
    if (value === undefined) return;
    const { r, q } = (typeof value === 'object' && value !== null ? value : {}) as { r?: unknown; q?: unknown };
    if (typeof r !== 'string' || r.length === 0) {
      link.drop(DropReason.MALFORMED, msg.subject);
      return;
    }
    // Another shard of this node published it: the primary gave it to every shard that needs it already.
    if (r === link.config.nodeId) return;
    const request = parseBusRequest(q);
    if (request === null) {
      link.drop(DropReason.INVALID_EVENT, msg.subject, r);
      return;
    }
    if (apiSubject(request) !== msg.subject) {
      link.drop(DropReason.ROOM_MISMATCH, msg.subject, r);
      return;
    }
    // Every shard hears every desktop's calls; the one that owns the desktop applies them (a role change also the user's, where its multiplexed connections live).
    const desktopId = desktopOf(request);
    const workers = link.config.workers;
    const userShard = request.kind === 'set_permission' ? fnv1a32(request.userId) % workers : -1;
    if (desktopId !== null && fnv1a32(desktopId) % workers !== link.shardId && userShard !== link.shardId) return;
    // The fleet's broadcasts, bounded here too: every node may send --api-broadcast-rate of them.
    if (request.kind === 'broadcast' && this.busBroadcasts.take('', Date.now()) > 0) {
      link.drop(DropReason.RATE_LIMITED, msg.subject, r);
      return;
    }
    // With the fleet's stream, publishes come from it (a node without it would give them twice: one setting for a fleet).
    if (this.streamed && request.kind === 'publish') return;
    const outcome = this.applyApi(request);
    if (outcome.sessions !== undefined && msg.reply !== '' && msg.reply !== undefined) {
      link.send(msg.reply, JSON.stringify({ r: link.config.nodeId, s: outcome.sessions }));
    }
  }
}
