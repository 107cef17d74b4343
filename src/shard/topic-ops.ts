/**
 * The ops of a multiplexed connection: `{op, topic, type, payload, ref}` in,
 * acks, events and errors out (protocol/topics.ts has the wire).
 *
 * Each op is checked when it is read (JSON, op, type), then run in its
 * topic's order: an op that must wait (a subscribe's authorize, or its join
 * of a room another shard owns) holds back the later ops of its topic only,
 * so a slow authorize on one topic never delays a publish on another. At
 * most 64 ops wait over all topics; one more gets `rate_limited`, naming its
 * topic. When the socket closes, the ops still waiting are dropped: no
 * authorize is asked for a dead socket, and an answer that arrives after
 * the close joins nothing.
 *
 * `subscribe` runs its checks in the upstream's order: the topic's form; a
 * topic already held gets a fresh ack (no authorize, no session_joined);
 * 50 topics at most; the subscribe budget (20, refilled at 2/s); the
 * authorize call (cached per user and topic, auth/topic-authorizer.ts);
 * then the join, the ack, and session_joined to the others.
 */
import { AuthorizeError, AuthorizeErrorCode, type AuthorizeErrorCodeValue } from '../errors.ts';
import type { TopicAuthorizer } from '../auth/topic-authorizer.ts';
import type { Logger } from '../log.ts';
import { CloseCode, MAX_TYPE_LENGTH, type Permission } from '../protocol/events.ts';
import { topicPermissionChangedText } from '../protocol/event-frames.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { memberText } from '../protocol/json-member.ts';
import { Metric, type MetricsSlot } from '../protocol/metrics.ts';
import { parseRecover, type ResumePosition } from '../protocol/resume.ts';
import {
  ConnectionLimit,
  errorText,
  Op,
  parseTopic,
  roomKeyOf,
  SERVER_ONLY_TOPIC_TYPES,
  subscribedText,
  TopicErrorCode,
  unsubscribedText,
  type TopicErrorCodeValue,
} from '../protocol/topics.ts';
import { Delivery, type Backpressure } from './backpressure.ts';
import { Subscription, type QueuedOp, type TopicConnection } from './connection.ts';
import type { RateLimiter } from './rate-limiter.ts';
import { closeAndCut, pauseReads } from './socket-reads.ts';
import type { TopicRooms } from './topic-rooms.ts';

export interface TopicOpsOptions {
  rooms: TopicRooms;
  authorizer: TopicAuthorizer;
  backpressure: Backpressure;
  limiter: RateLimiter;
  /** The types a viewer may not send (--mutation-types), the table every route of the shard applies. */
  mutationTypes: ReadonlySet<string>;
  metrics: MetricsSlot;
  log: Logger;
}

const ANSWER: Record<AuthorizeErrorCodeValue, TopicErrorCodeValue> = {
  [AuthorizeErrorCode.BAD_REQUEST]: TopicErrorCode.BAD_REQUEST,
  [AuthorizeErrorCode.FORBIDDEN]: TopicErrorCode.FORBIDDEN,
  [AuthorizeErrorCode.NOT_FOUND]: TopicErrorCode.NOT_FOUND,
  [AuthorizeErrorCode.INTERNAL]: TopicErrorCode.INTERNAL,
  // The app's wire has no code for it: `internal` is what a timeout would have answered, later.
  [AuthorizeErrorCode.BUSY]: TopicErrorCode.INTERNAL,
};

const OPS: ReadonlySet<string> = new Set(Object.values(Op));

/** Whether an op finished at once or waits (its topic's later ops wait with it). */
type Run = 'done' | 'waiting';

export class TopicOps {
  private readonly options: TopicOpsOptions;
  private readonly rooms: TopicRooms;

  constructor(options: TopicOpsOptions) {
    this.options = options;
    this.rooms = options.rooms;
    this.rooms.onJoined = (sub, sessions, position) => this.joined(sub, sessions, position);
    this.rooms.onLost = (sub) => this.lost(sub);
    this.rooms.onFull = (sub) => {
      this.full(sub, sub.ref);
      sub.ref = undefined;
      this.next(sub.conn, sub.topic);
    };
  }

  /** One frame from `conn`. Never throws: a failure is answered to it alone. */
  onMessage(conn: TopicConnection, data: Buffer, isBinary: boolean): void {
    const { metrics, limiter } = this.options;
    metrics.add(Metric.MESSAGES_RECEIVED);
    // As on the legacy route (relay.ts): a drain's close still hears what was sent before it.
    if (!conn.acceptsFrames) return;
    if (limiter.enabled && !this.admit(conn)) {
      metrics.add(Metric.DROPPED_RATE_LIMIT);
      return;
    }
    try {
      this.read(conn, data, isBinary);
    } catch (err) {
      this.options.log.error('message_failed', { sessionId: conn.id, err });
      this.error(conn, TopicErrorCode.INTERNAL, 'the server failed to handle this message', undefined, undefined);
    }
  }

  /** A ping or pong from `conn`: it costs a message token, as on the legacy route. */
  onControlFrame(conn: TopicConnection): void {
    if (this.options.limiter.enabled && !this.admit(conn)) this.options.metrics.add(Metric.DROPPED_RATE_LIMIT);
  }

  /** The connection closed: waiting ops are dropped, and it leaves every topic it holds. */
  closed(conn: TopicConnection): void {
    conn.busy.clear();
    conn.queued = 0;
    for (const sub of conn.topics.values()) this.rooms.leave(sub);
    conn.topics.clear();
  }

  private read(conn: TopicConnection, data: Buffer, isBinary: boolean): void {
    if (isBinary) return this.invalid(conn, 'binary frames are not supported; send JSON text', undefined, undefined);
    const json = data.toString('utf8');
    let msg: unknown;
    try {
      msg = JSON.parse(json);
    } catch {
      return this.invalid(conn, 'invalid json', undefined, undefined);
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return this.invalid(conn, 'invalid json', undefined, undefined);
    const frame = msg as Record<string, unknown>;
    const rawRef = Object.hasOwn(frame, 'ref') ? frame.ref : undefined;
    if (rawRef !== undefined && typeof rawRef !== 'string') return this.invalid(conn, '"ref" must be a string', undefined, undefined);
    const ref = rawRef as string | undefined;
    const op = Object.hasOwn(frame, 'op') ? frame.op : undefined;
    if (typeof op !== 'string' || !OPS.has(op)) return this.invalid(conn, 'unknown op', undefined, ref);
    const rawTopic = Object.hasOwn(frame, 'topic') ? frame.topic : undefined;
    const topic = typeof rawTopic === 'string' ? rawTopic : '';
    let type = '';
    let payload: string | undefined;
    let recover: ResumePosition | undefined;
    if (op === Op.SUBSCRIBE && Object.hasOwn(frame, 'recover')) {
      const position = parseRecover(frame.recover);
      if (position === null) {
        return this.error(
          conn,
          TopicErrorCode.BAD_RECOVER,
          '"recover" must be {"epoch": 1 to 64 of [A-Za-z0-9_.~-], "offset": an integer from 0 to 2^53 - 1}',
          topic,
          ref,
        );
      }
      recover = position;
    }
    if (op === Op.PUBLISH) {
      const rawType = Object.hasOwn(frame, 'type') ? frame.type : undefined;
      if (typeof rawType !== 'string' || rawType.length === 0 || rawType.length > MAX_TYPE_LENGTH) {
        return this.invalid(conn, `"type" must be a non-empty string of at most ${MAX_TYPE_LENGTH} characters`, topic, ref);
      }
      if (SERVER_ONLY_TOPIC_TYPES.has(rawType)) return this.invalid(conn, `"${rawType}" is sent by the server only`, topic, ref);
      type = rawType;
      if (Object.hasOwn(frame, 'payload')) payload = memberText(json, 'payload');
    }
    this.enqueue(conn, { op: op as QueuedOp['op'], topic, ref, type, payload, recover });
  }

  /** Run `op` now, or behind its topic's op under way. */
  private enqueue(conn: TopicConnection, op: QueuedOp): void {
    const waiting = conn.busy.get(op.topic);
    if (waiting === undefined) {
      this.run(conn, op);
      return;
    }
    if (conn.queued >= ConnectionLimit.MAX_QUEUED_OPS) {
      this.error(conn, TopicErrorCode.RATE_LIMITED, `more than ${ConnectionLimit.MAX_QUEUED_OPS} ops queued`, op.topic, op.ref);
      return;
    }
    waiting.push(op);
    conn.queued++;
  }

  /** The op under way on `topic` finished: run the ones behind it until one waits. */
  private next(conn: TopicConnection, topic: string): void {
    const queue = conn.busy.get(topic);
    if (queue === undefined) return;
    while (queue.length > 0) {
      const op = queue.shift()!;
      conn.queued--;
      if (this.run(conn, op) === 'waiting') return;
    }
    conn.busy.delete(topic);
  }

  private run(conn: TopicConnection, op: QueuedOp): Run {
    switch (op.op) {
      case 'subscribe':
        return this.subscribe(conn, op);
      case 'unsubscribe':
        this.unsubscribe(conn, op);
        return 'done';
      case 'publish':
        this.publish(conn, op);
        return 'done';
    }
  }

  private subscribe(conn: TopicConnection, op: QueuedOp): Run {
    const { topic, ref } = op;
    if (parseTopic(topic) === null) {
      this.invalid(conn, 'topic must be desktop:{id} or production-table:{id}, with an id of [A-Za-z0-9_-]{1,128}', topic, ref);
      return 'done';
    }
    const held = conn.topics.get(topic);
    if (held !== undefined) {
      held.recover = op.recover;
      return this.join(held, ref);
    }
    if (conn.topics.size >= ConnectionLimit.MAX_TOPICS) {
      this.error(conn, TopicErrorCode.RATE_LIMITED, `more than ${ConnectionLimit.MAX_TOPICS} topics on this connection`, topic, ref);
      return 'done';
    }
    if (!conn.takeSubscribeToken(Date.now())) {
      this.error(conn, TopicErrorCode.RATE_LIMITED, 'too many subscribe requests', topic, ref);
      return 'done';
    }
    if (!conn.busy.has(topic)) conn.busy.set(topic, []);
    this.options.authorizer.authorize(conn.identity, topic).then(
      (permission) => this.authorized(conn, topic, ref, permission, op.recover),
      (err: unknown) => this.refused(conn, topic, ref, err),
    );
    return 'waiting';
  }

  private authorized(conn: TopicConnection, topic: string, ref: string | undefined, permission: Permission, recover: ResumePosition | undefined): void {
    // Closed meanwhile: its ops were dropped, and nothing joins.
    if (!conn.open) return this.dropped(conn, topic);
    const roomKey = roomKeyOf(topic);
    const sub = new Subscription(conn, topic, roomKey, this.rooms.ownerOf(roomKey), permission);
    sub.recover = recover;
    conn.topics.set(topic, sub);
    if (this.join(sub, ref) === 'done') this.next(conn, topic);
  }

  private refused(conn: TopicConnection, topic: string, ref: string | undefined, err: unknown): void {
    if (!conn.open) return this.dropped(conn, topic);
    if (err instanceof AuthorizeError) {
      this.options.log.info('subscribe_refused', { sessionId: conn.id, userId: conn.userId, topic, code: err.code, detail: err.message });
      this.error(conn, ANSWER[err.code], err.message, topic, ref);
    } else {
      this.options.log.error('authorize_failed', { sessionId: conn.id, topic, err });
      this.error(conn, TopicErrorCode.INTERNAL, 'authorize failed', topic, ref);
    }
    this.next(conn, topic);
  }

  private dropped(conn: TopicConnection, topic: string): void {
    this.options.log.info('subscribe_dropped', { sessionId: conn.id, userId: conn.userId, topic, reason: 'the connection closed while the app was asked' });
  }

  /** Join (or, for a held topic, list again) and ack; waits when the room's owner is another shard. */
  private join(sub: Subscription, ref: string | undefined): Run {
    const result = this.rooms.join(sub);
    if (result === 'pending') {
      sub.ref = ref;
      if (!sub.conn.busy.has(sub.topic)) sub.conn.busy.set(sub.topic, []);
      return 'waiting';
    }
    if (result === 'full') {
      this.full(sub, ref);
      return 'done';
    }
    if (result === 'unavailable') {
      if (sub.state !== 'joined') sub.conn.topics.delete(sub.topic);
      this.error(sub.conn, TopicErrorCode.INTERNAL, "the topic's shard is restarting; subscribe again", sub.topic, ref);
      return 'done';
    }
    this.send(sub.conn, subscribedText(sub.topic, sub.permission, sub.conn.id, result.sessions, ref, result.position));
    return 'done';
  }

  /** The owner answered a join sent through the link. */
  private joined(sub: Subscription, sessions: string, position: string): void {
    this.send(sub.conn, subscribedText(sub.topic, sub.permission, sub.conn.id, sessions, sub.ref, position));
    sub.ref = undefined;
    this.next(sub.conn, sub.topic);
  }

  /** The room is full (--max-room-size): the subscribe is refused, as a legacy handshake would be. */
  private full(sub: Subscription, ref: string | undefined): void {
    const conn = sub.conn;
    if (conn.topics.get(sub.topic) === sub) conn.topics.delete(sub.topic);
    this.error(conn, TopicErrorCode.RATE_LIMITED, 'the room is full', sub.topic, ref);
  }

  /** The shard that owns `sub`'s room restarted: the subscription is gone, and its client is told so. */
  private lost(sub: Subscription): void {
    const conn = sub.conn;
    if (conn.topics.get(sub.topic) !== sub) return;
    conn.topics.delete(sub.topic);
    if (!conn.open) return;
    this.error(conn, TopicErrorCode.INTERNAL, "the topic's shard restarted; subscribe again", sub.topic, sub.ref);
    sub.ref = undefined;
    this.next(conn, sub.topic);
  }

  /**
   * The server API set `userId`'s role on `topic`: its subscriptions on
   * this shard take it ({@link setRole}); `none` ends them ({@link revoke}).
   */
  permissionChanged(connections: Iterable<TopicConnection>, userId: string, topic: string, permission: Permission | 'none'): void {
    for (const conn of connections) {
      if (conn.userId !== userId) continue;
      const sub = conn.topics.get(topic);
      if (sub === undefined || sub.state !== 'joined') continue;
      if (permission === 'none') this.revoke(sub, 'permission revoked through the server API');
      else this.setRole(sub, permission);
    }
  }

  /**
   * Give `sub` `permission`, from its next publish: `permission_changed` to
   * its connection (topic-framed), `session_updated` to the rest of its
   * room in each framing. Setting the role it has changes and sends
   * nothing; false then.
   */
  setRole(sub: Subscription, permission: Permission): boolean {
    if (sub.state !== 'joined' || !sub.conn.open || sub.permission === permission) return false;
    sub.permission = permission;
    sub.infoJson = sub.conn.describeAs(permission);
    this.send(sub.conn, topicPermissionChangedText(sub.topic, permission));
    this.rooms.updated(sub);
    return true;
  }

  /** End `sub`: it leaves its room (session_left to the others), and its connection gets `forbidden` with `message`. False when it was not held. */
  revoke(sub: Subscription, message: string): boolean {
    const conn = sub.conn;
    if (conn.topics.get(sub.topic) !== sub || sub.state !== 'joined') return false;
    conn.topics.delete(sub.topic);
    this.rooms.leave(sub);
    this.error(conn, TopicErrorCode.FORBIDDEN, message, sub.topic, undefined);
    return true;
  }

  /**
   * `sub`'s replay fell behind the history (recovery.ts): it cannot be made
   * whole, so the subscription ends (`session_left` to the room) with
   * `recovery_lost`; subscribing again with the last offset received says
   * `recovered: false`.
   */
  recoveryLost(sub: Subscription): void {
    const conn = sub.conn;
    if (conn.topics.get(sub.topic) !== sub) return;
    conn.topics.delete(sub.topic);
    this.rooms.leave(sub);
    this.error(conn, TopicErrorCode.RECOVERY_LOST, 'the history let go of events this replay had not sent; subscribe again', sub.topic, undefined);
  }

  private unsubscribe(conn: TopicConnection, op: QueuedOp): void {
    const sub = conn.topics.get(op.topic);
    if (sub === undefined) {
      this.error(conn, TopicErrorCode.NOT_SUBSCRIBED, 'not subscribed to this topic', op.topic, op.ref);
      return;
    }
    conn.topics.delete(op.topic);
    this.rooms.leave(sub);
    this.send(conn, unsubscribedText(op.topic, op.ref));
  }

  private publish(conn: TopicConnection, op: QueuedOp): void {
    const sub = conn.topics.get(op.topic);
    if (sub === undefined || sub.state !== 'joined') {
      // Silence without a ref, so that a client that lost a topic is not flooded with errors.
      if (op.ref !== undefined) this.error(conn, TopicErrorCode.NOT_SUBSCRIBED, 'not subscribed to this topic', op.topic, op.ref);
      return;
    }
    if (sub.permission === 'viewer' && this.options.mutationTypes.has(op.type)) {
      this.options.metrics.add(Metric.DROPPED_VIEWER);
      return;
    }
    this.rooms.publish(sub, op.type, op.payload, Date.now());
    this.options.metrics.add(Metric.MESSAGES_RELAYED);
  }

  private invalid(conn: TopicConnection, message: string, topic: string | undefined, ref: string | undefined): void {
    this.error(conn, TopicErrorCode.BAD_REQUEST, message, topic, ref);
  }

  private error(conn: TopicConnection, code: TopicErrorCodeValue, message: string | undefined, topic: string | undefined, ref: string | undefined): void {
    this.options.metrics.add(Metric.DROPPED_INVALID);
    // An op without a string topic is queued under '' (never a topic): its error names none.
    this.send(conn, errorText(code, message, topic === '' ? undefined : topic, ref));
  }

  /** Through the outbound budget like any ordered frame. */
  private send(conn: TopicConnection, text: string): void {
    if (!conn.open) return;
    const backpressure = this.options.backpressure;
    // Cut by its own answer: it leaves every topic at once, as multiplexed.ts cut does.
    if (backpressure.deliver(conn, encodeTextFrame(text), undefined) === Delivery.CUT) this.closed(conn);
    backpressure.settleCuts();
  }

  /** The user's message bucket, as on the legacy route (relay.ts), its notices in this route's framing. */
  private admit(conn: TopicConnection): boolean {
    const { limiter, metrics, log } = this.options;
    const verdict = limiter.take(conn.rate, Date.now());
    if (verdict.kind === 'pass') return true;
    if (verdict.kind !== 'close' && pauseReads(conn, limiter.pauseMs(conn.rate))) {
      conn.rate.pauses++;
      metrics.add(Metric.RATE_PAUSES);
    }
    switch (verdict.kind) {
      case 'drop':
        return false;
      case 'notify':
        this.send(conn, errorText(TopicErrorCode.RATE_LIMITED, 'too many messages; slow down', undefined, undefined));
        return false;
      case 'close':
        if (!conn.open) return false;
        log.warn('rate_limit_close', { sessionId: conn.id });
        metrics.add(Metric.CLOSED_RATE_LIMIT);
        closeAndCut(conn, CloseCode.POLICY_VIOLATION, 'rate limit exceeded');
        return false;
    }
  }
}
