/**
 * A multiplexed connection (`/ws/connection`): one socket per browser tab,
 * subscribed to many topics. It is a {@link Session} for everything that
 * concerns its socket (outbound queue, budget, rate bucket, reads,
 * liveness), with no room of its own (`desktopId` is ''); each topic it
 * holds is a {@link Subscription}, a member of that topic's room on the
 * shard that owns the topic.
 *
 * One `sessionId` for the connection, the same on every topic. Ops on one
 * topic run in order; an op that waits (a subscribe's authorize, a join on
 * another shard) holds the later ops of its topic only, in a queue of at
 * most 64 ops over all topics (topic-ops.ts).
 */
import type { Identity } from '../auth/token.ts';
import type { Permission } from '../protocol/events.ts';
import { ConnectionLimit } from '../protocol/topics.ts';
import type { ResumePosition } from '../protocol/resume.ts';
import type { ReplayJob } from './replay.ts';
import { Session, type SessionOptions } from './session.ts';

/** An op read from the socket, validated, waiting for its topic's turn. */
export interface QueuedOp {
  op: 'subscribe' | 'unsubscribe' | 'publish';
  topic: string;
  ref: string | undefined;
  /** publish: the type and the payload's JSON text as sent (undefined when absent). */
  type: string;
  payload: string | undefined;
  /** subscribe: the position to recover from, when given. */
  recover?: ResumePosition | undefined;
}

export type SubscriptionState = 'joining' | 'joined';

/** One topic held by a connection. */
export class Subscription {
  readonly topic: string;
  /** The room key of the topic (protocol/topics.ts roomKeyOf). */
  readonly roomKey: string;
  readonly conn: TopicConnection;
  /** The shard that owns the topic's room (this one, or another reached through the link). */
  readonly owner: number;
  /** Its role on the topic, read on each publish (the server API may change it). */
  permission: Permission;
  /** Its SessionInfo JSON on this topic (the connection's identity, this topic's permission). */
  infoJson: string;
  state: SubscriptionState = 'joining';
  /** The `ref` of the subscribe waiting for its owner's answer. */
  ref: string | undefined = undefined;
  /** Its place in `room.subs` when the room is on this shard (room-index.ts). */
  index = -1;
  /** The subscribe's `recover` (issue 21), until it joined. */
  recover: ResumePosition | undefined = undefined;
  /** Its replay while it recovers (recovery.ts): the room's live events skip it until the replay catches up. */
  replay: ReplayJob | null = null;

  constructor(conn: TopicConnection, topic: string, roomKey: string, owner: number, permission: Permission) {
    this.conn = conn;
    this.topic = topic;
    this.roomKey = roomKey;
    this.owner = owner;
    this.permission = permission;
    this.infoJson = conn.describeAs(permission);
  }
}

export interface TopicConnectionOptions extends Omit<SessionOptions, 'desktopId' | 'permission'> {
  identity: Identity;
}

export class TopicConnection extends Session {
  readonly identity: Identity;
  /** Topics held or being joined. */
  readonly topics = new Map<string, Subscription>();
  /** Topics with an op under way, and the ops waiting behind it. */
  readonly busy = new Map<string, QueuedOp[]>();
  /** Ops waiting in `busy` over all topics. */
  queued = 0;
  /** The subscribe budget: a bucket of 20, refilled at 2/s. */
  private readonly subscribes = new SubscribeBudget(Date.now());

  constructor(options: TopicConnectionOptions) {
    // No room of its own: each topic has its own permission (Subscription).
    super({ ...options, desktopId: '', permission: 'viewer' });
    this.identity = options.identity;
  }

  /** Spend a subscribe token; false when the bucket is empty. */
  takeSubscribeToken(now: number): boolean {
    return this.subscribes.take(now);
  }
}

/** A connection's subscribe budget: a bucket of {@link ConnectionLimit.SUBSCRIBE_BURST}, refilled continuously at {@link ConnectionLimit.SUBSCRIBES_PER_SECOND}. */
export class SubscribeBudget {
  private tokens: number = ConnectionLimit.SUBSCRIBE_BURST;
  private refilledAt: number;

  constructor(now: number) {
    this.refilledAt = now;
  }

  /** Spend a token at `now` (ms); false when none is left. */
  take(now: number): boolean {
    const elapsed = now - this.refilledAt;
    if (elapsed > 0) {
      this.tokens = Math.min(ConnectionLimit.SUBSCRIBE_BURST, this.tokens + (elapsed * ConnectionLimit.SUBSCRIBES_PER_SECOND) / 1000);
      this.refilledAt = now;
    }
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}
