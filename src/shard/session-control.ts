/**
 * The server's hand on a shard's live sessions: changing a session's
 * permission, and ending a session for the user's sake (revoked, logged
 * out, token expired). The server API (commands.ts), the permission recheck
 * (permission-recheck.ts) and token expiry (token-expiry.ts) all go through
 * here, so a permission has one owner and every change is told the same way:
 *
 * - a new role: `permission_changed` to the session, `session_updated` to the
 *   rest of its room. The relay reads the session's permission on each frame,
 *   so the change applies from the very next frame the shard reads from it,
 *   even one already waiting in its socket;
 * - an end: the session leaves its room at once (the others get
 *   `session_left`), frames already queued for it go out, then the close
 *   frame (4003 or 4001); nothing it sends afterwards is relayed (the relay
 *   drops frames of sessions that are not open), and its socket is cut if
 *   the closing handshake has not ended 2 s later.
 *
 * It also keeps the shard's sessions by user, for the calls that address a
 * user rather than a desktop.
 */
import type { Logger } from '../log.ts';
import type { LiveSession } from '../protocol/api.ts';
import { CloseCode, type Permission } from '../protocol/events.ts';
import { legacyEventText, permissionChangedText, sessionUpdated } from '../protocol/event-frames.ts';
import { encodeTextFrame } from '../protocol/frame.ts';
import { ApiMetric, type MetricsSlot } from '../protocol/metrics.ts';
import { Delivery, type Backpressure } from './backpressure.ts';
import type { Relay } from './relay.ts';
import type { RemoteMember, RoomIndex } from './room-index.ts';
import { TopicConnection } from './connection.ts';
import type { Session } from './session.ts';
import { closeWithGrace } from './socket-reads.ts';
import type { WriteCoalescer } from './write-coalescer.ts';

export interface SessionControlOptions {
  shardId: number;
  /** This node's id (--node-id), reported with each session. */
  nodeId: string;
  rooms: RoomIndex;
  relay: Relay;
  backpressure: Backpressure;
  out: WriteCoalescer<Session>;
  metrics: MetricsSlot;
  log: Logger;
  /** A multiplexed connection the server ends leaves every topic at once (multiplexed.ts cut); absent: at its close. */
  leaveTopics?: (conn: TopicConnection) => void;
}

/** Who asked for a change: the server API or a permission recheck. */
export type Cause = 'api' | 'recheck';

/** Why the server ends a session. */
export type EndReason = 'revoked' | 'disconnected' | 'token_expired';

const END_METRIC: Record<EndReason, number> = {
  revoked: ApiMetric.CLOSED_REVOKED,
  disconnected: ApiMetric.CLOSED_DISCONNECTED,
  token_expired: ApiMetric.CLOSED_TOKEN_EXPIRED,
};

const END_CODE: Record<EndReason, number> = {
  revoked: CloseCode.PERMISSION_REVOKED,
  disconnected: CloseCode.DISCONNECTED,
  token_expired: CloseCode.DISCONNECTED,
};

export class SessionControl {
  private readonly options: SessionControlOptions;
  /** Open sessions of this shard by userId. */
  private readonly byUser = new Map<string, Set<Session>>();

  constructor(options: SessionControlOptions) {
    this.options = options;
  }

  /** A session opened. */
  add(session: Session): void {
    let sessions = this.byUser.get(session.userId);
    if (sessions === undefined) this.byUser.set(session.userId, (sessions = new Set()));
    sessions.add(session);
  }

  /** A session closed. */
  remove(session: Session): void {
    const sessions = this.byUser.get(session.userId);
    if (sessions === undefined) return;
    sessions.delete(session);
    if (sessions.size === 0) this.byUser.delete(session.userId);
  }

  /** The user's sessions on this shard, as a copy (ending one while iterating is safe). */
  sessionsOf(userId: string): Session[] {
    const sessions = this.byUser.get(userId);
    return sessions === undefined ? [] : [...sessions];
  }

  /** Every multiplexed connection on this shard, as a copy. */
  connections(): TopicConnection[] {
    const conns: TopicConnection[] = [];
    for (const sessions of this.byUser.values()) for (const s of sessions) if (s instanceof TopicConnection) conns.push(s);
    return conns;
  }

  /** The user's multiplexed connections on this shard, as a copy. */
  connectionsOf(userId: string): TopicConnection[] {
    const sessions = this.byUser.get(userId);
    const conns: TopicConnection[] = [];
    if (sessions !== undefined) for (const s of sessions) if (s instanceof TopicConnection) conns.push(s);
    return conns;
  }

  /**
   * The user's legacy sessions on this shard (a desktop or a production
   * table), as a copy: not its multiplexed connections, whose frames have
   * another framing (`desktopId` '').
   */
  legacySessionsOf(userId: string): Session[] {
    return this.sessionsOf(userId).filter((s) => s.desktopId !== '');
  }

  /**
   * Queue the server's `frame` to `session` through its outbound budget, like
   * any ordered event; being the server's, it never gets the session cut by
   * the hard cap (backpressure.ts). The process cap may cut it all the same:
   * it then leaves its room (or every topic) at once. Sessions cut aside
   * meanwhile leave at {@link settleCuts}, which a loop of these runs at its end.
   */
  deliver(session: Session, frame: Buffer): void {
    if (this.options.backpressure.deliver(session, frame, undefined, 'server') === Delivery.CUT) this.leave(session);
  }

  /** The sessions the process cap cut aside during the caller's loop of {@link deliver} leave their rooms now. */
  settleCuts(): void {
    this.options.backpressure.settleCuts();
  }

  /** Take `session` out of its room (a multiplexed connection: out of every topic) with session_left to the others. */
  private leave(session: Session): void {
    if (session instanceof TopicConnection) this.options.leaveTopics?.(session);
    else this.options.relay.leave(session);
  }

  /**
   * Give `session` `permission`. Setting the one it has changes and sends
   * nothing (so the same call twice is told once); false then.
   */
  setPermission(session: Session, permission: Permission, cause: Cause): boolean {
    if (!session.open || session.permission === permission) return false;
    const from = session.permission;
    session.setPermission(permission);
    this.deliver(session, encodeTextFrame(permissionChangedText(permission)));
    this.settleCuts();
    const room = this.options.rooms.get(session.desktopId);
    const event = sessionUpdated(session.stamp, permission, Date.now(), session.infoJson);
    const updated = legacyEventText(event);
    if (room !== undefined && room.members.length > 1) {
      const frame = encodeTextFrame(updated);
      // Pinned: a member this cuts leaves the room without making the loop skip another (room-index.ts).
      const members = this.options.rooms.pin(room);
      for (const member of members) if (member !== session && member.open) this.deliver(member, frame);
      this.options.rooms.unpin(room, members);
      this.settleCuts();
    }
    // Members on other nodes, and the room's multiplexed subscribers, see the new role too.
    this.options.relay.publishToOtherNodes(session.desktopId, updated);
    this.options.relay.toSubscribers(session.desktopId, event, session.id);
    this.options.metrics.add(cause === 'api' ? ApiMetric.CHANGED_BY_API : ApiMetric.CHANGED_BY_RECHECK);
    this.options.log.info('permission_changed', { sessionId: session.id, desktopId: session.desktopId, userId: session.userId, from, to: permission, cause });
    return true;
  }

  /**
   * End `session` for `why`: out of its room now (`session_left`), what is
   * queued for it flushed, then the close frame with `reason`. False when it
   * was not open.
   */
  end(session: Session, why: EndReason, reason: string): boolean {
    if (!session.open) return false;
    const { out, metrics, log } = this.options;
    out.flushNow(session.out);
    this.leave(session);
    closeWithGrace(session, END_CODE[why], reason);
    metrics.add(END_METRIC[why]);
    log.info('session_ended', { sessionId: session.id, desktopId: session.desktopId, userId: session.userId, why, code: END_CODE[why] });
    return true;
  }

  /** A multiplexed connection's subscription of `desktopId` as the API reports it: the connection, with its role on the topic. */
  viewAs(conn: Session, desktopId: string, permission: Permission): LiveSession {
    return { ...this.view(conn), desktopId, permission };
  }

  /** A subscriber of a room owned here whose connection is on another shard, from what its join told (room-index.ts RemoteMember). */
  viewRemote(member: RemoteMember, desktopId: string): LiveSession {
    const info = JSON.parse(member.infoJson) as { userId: string; firstName: string; email: string; permission: Permission };
    return {
      sessionId: member.sessionId,
      userId: info.userId,
      firstName: info.firstName,
      email: info.email,
      desktopId,
      permission: info.permission,
      connectedAt: member.connectedAt,
      node: this.options.nodeId,
      shard: member.shard,
    };
  }

  /** `session` as the API reports it (the primary adds the node). */
  view(session: Session): LiveSession {
    return {
      sessionId: session.id,
      userId: session.userId,
      firstName: session.firstName,
      email: session.email,
      desktopId: session.desktopId,
      permission: session.permission,
      connectedAt: session.connectedAt,
      node: this.options.nodeId,
      shard: this.options.shardId,
    };
  }
}
