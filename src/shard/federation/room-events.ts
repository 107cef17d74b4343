/**
 * What other nodes publish on a room's subject, taken or dropped: presence
 * (joined, left, updated), sync requests, relayed events. Validation of the
 * wire is protocol/bus.ts'; here are the rules of trust: a node speaks only
 * for its own sessions, never for ours, and with --federation-key a node
 * heard signing (and every session it holds) speaks only signed.
 *
 * A desktop room listens on two subjects: `room.{id}` (flat events: other
 * moodio-rt nodes, Go relays of the 1379d3c generation) and
 * `room.desktop:{id}` (the topic framing: the upstream relay). Once a room
 * took a message from an upstream relay, its node publishes on both, the
 * topic copy marked with `Moodio-Copy`; a copy is ignored here, the flat
 * original taken. Both framings are read into the same events and go through
 * the same rules.
 */
import type { Msg } from '@nats-io/transport-node';
import { BUS_OVERHEAD_BYTES, COPY_HEADER, DropReason, parseRoomMessage, parseTopicMessage, sessionInfoJson } from '../../protocol/bus.ts';
import type { Room } from '../room-index.ts';
import type { NatsLink } from './link.ts';
import { ROSTER_HEADER, type PresenceSync } from './presence-sync.ts';
import { forEachLocal, type RemoteRooms } from './rooms.ts';
import type { FederationOptions, FedRoom, Framing } from './types.ts';

export class RoomEvents {
  private readonly link: NatsLink;
  private readonly rooms: RemoteRooms;
  private readonly presence: PresenceSync;
  private readonly deliver: FederationOptions['deliver'];
  private readonly transientTypes: ReadonlySet<string>;
  private readonly mutationTypes: ReadonlySet<string>;
  private readonly maxBytes: number;

  constructor(link: NatsLink, rooms: RemoteRooms, presence: PresenceSync, options: Pick<FederationOptions, 'deliver' | 'transientTypes' | 'mutationTypes'>) {
    this.link = link;
    this.rooms = rooms;
    this.presence = presence;
    this.deliver = options.deliver;
    this.transientTypes = options.transientTypes;
    this.mutationTypes = options.mutationTypes;
    this.maxBytes = link.config.maxMessageSize + BUS_OVERHEAD_BYTES;
  }

  onRoomMessage(room: FedRoom, msg: Msg, framing: Framing, mirror: boolean): void {
    // Closing: the local sessions were announced as gone, and nothing heard now may bring them back.
    if (this.link.closing) return;
    // A moodio-rt node's copy for the upstream relay: the original came on the room's own subject.
    if (mirror && this.link.header(msg, COPY_HEADER) !== undefined) return;
    this.link.receive(msg, (m) => this.handle(room, m, framing, mirror));
  }

  private handle(room: FedRoom, msg: Msg, framing: Framing, mirror: boolean): void {
    const link = this.link;
    const rooms = this.rooms;
    if (!rooms.current(room)) return;
    const parsed = framing === 'flat' ? parseRoomMessage(msg.data, room.desktopId, this.maxBytes) : parseTopicMessage(msg.data, room.topic, this.maxBytes);
    if (!parsed.ok) {
      link.drop(parsed.reason, msg.subject);
      return;
    }
    const node = parsed.node;
    // noEcho means our own connection never hands us our messages: this id is someone else's claim to be us.
    if (node === link.config.nodeId) {
      link.drop(DropReason.FORGED, msg.subject, node);
      return;
    }
    const event = parsed.value;
    // A moodio-rt node's sync request lists its sessions of the room (a Go relay sends no list); the signature covers it.
    const roster = event.kind === 'sync_request' ? link.header(msg, ROSTER_HEADER) : undefined;
    if (roster !== undefined && roster.length > 64 * 1024) {
      link.drop(DropReason.TOO_LARGE, msg.subject, node);
      return;
    }
    const auth = link.authenticate(msg, roster);
    if (auth === DropReason.STALE || auth === DropReason.REPLAYED) {
      link.drop(auth, msg.subject, node);
      return;
    }
    const signed = auth === 'signed';
    if (signed) link.markSigned(node);
    else if (link.signer !== null && (link.config.federationUnsignedRooms !== 'admit' || link.signs(node))) {
      // With a key, room events are signed; unsigned ones are let in only by choice, and never in the name of a node heard signing.
      link.drop(DropReason.UNSIGNED, msg.subject, node);
      return;
    }
    if (mirror && !room.upstreamHeard) {
      // An upstream relay serves this desktop: from now on the room's events go to its subject too, and it learns who is here.
      room.upstreamHeard = true;
      if (event.kind !== 'sync_request') this.presence.announceToUpstream(room);
    }
    const local = rooms.localRoom(room);
    switch (event.kind) {
      case 'sync_request': {
        if (roster !== undefined && this.presence.trustsRoster(auth, node)) rooms.applyRoster(room, node, new Set(roster === '' ? [] : roster.split(',')));
        this.presence.answerSync(room, msg.reply === '' ? undefined : msg.reply);
        return;
      }
      case 'joined': {
        const id = event.info.sessionId;
        if (local !== undefined && isLocal(local, id)) {
          link.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && rooms.heldBySigner(room, id)) {
          link.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        // An answer to a sync, or an announcement after a reconnect: not news.
        if (room.remote.has(id)) return;
        if (room.remote.size >= rooms.maxRemotePerRoom) {
          link.drop(DropReason.ROOM_FULL, msg.subject, node);
          return;
        }
        rooms.add(room, id, { node, info: event.info, infoJson: sessionInfoJson(event.info) });
        if (local !== undefined) this.deliver(local, event.text);
        return;
      }
      case 'left': {
        const known = room.remote.get(event.info.sessionId);
        if (known === undefined && local !== undefined && isLocal(local, event.info.sessionId)) {
          link.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && rooms.heldBySigner(room, event.info.sessionId)) {
          link.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        // Only the node that announced a session may say it left.
        if (known === undefined || known.node !== node) return;
        rooms.forget(room, event.info.sessionId);
        if (local !== undefined) this.deliver(local, event.text);
        return;
      }
      case 'updated': {
        if (!signed && rooms.heldBySigner(room, event.info.sessionId)) {
          link.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        const known = room.remote.get(event.info.sessionId);
        // Only the node that holds a session may change what others know of it.
        if (known === undefined || known.node !== node) return;
        known.info = event.info;
        known.infoJson = sessionInfoJson(event.info);
        if (local !== undefined) this.deliver(local, event.text);
        return;
      }
      case 'relayed': {
        if (local !== undefined && isLocal(local, event.sessionId)) {
          link.drop(DropReason.FORGED, msg.subject, node);
          return;
        }
        if (!signed && rooms.heldBySigner(room, event.sessionId)) {
          link.drop(DropReason.UNSIGNED, msg.subject, node);
          return;
        }
        const sender = room.remote.get(event.sessionId);
        // Defence in depth: the origin drops viewers' mutations; a session we know as a viewer cannot pass one here either.
        if (sender !== undefined && sender.info.permission === 'viewer' && this.mutationTypes.has(event.type)) {
          link.drop(DropReason.VIEWER, msg.subject, node);
          return;
        }
        if (local === undefined) return;
        const transientKey = this.transientTypes.has(event.type) ? `${event.sessionId}\n${event.type}` : undefined;
        // A relayed event: the room's owner stamps it with an offset of this node (issue 21).
        this.deliver(local, event.text, transientKey, true);
        return;
      }
    }
  }
}

/** Whether `sessionId` is a session of this node in `room`, in any framing. */
function isLocal(room: Room, sessionId: string): boolean {
  let found = false;
  forEachLocal(room, (id) => {
    if (id === sessionId) found = true;
  });
  return found;
}
