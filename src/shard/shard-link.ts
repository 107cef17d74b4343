/**
 * The in-process link between the shards of this process: one
 * MessageChannel per pair of shards, made by the primary and handed to both
 * (protocol/messages.ts LinkPortMessage). A multiplexed connection lives on
 * one shard; its topics whose rooms another shard owns are reached through
 * here, with the same narrow seam as the NATS bus (send to a shard, hear
 * from shards, a peer gone, close): the room's code cannot tell a peer
 * shard from a peer node.
 *
 * A peer that restarts gets new ports: the old port closes (its worker is
 * gone), or is replaced by the new one, and either way `onPeerGone` runs
 * once, so that its interests are dropped (its subscribers leave the rooms
 * owned here) and the subscribers here of the rooms it owned are told.
 */
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from '../log.ts';
import type { LinkMessage } from '../protocol/messages.ts';

export interface ShardLinkOptions {
  shardId: number;
  log: Logger;
  /** A message from shard `from`. */
  onMessage: (from: number, message: LinkMessage) => void;
  /** Shard `peer` stopped (or restarted): what it held is gone. */
  onPeerGone: (peer: number) => void;
}

export class ShardLink {
  private readonly options: ShardLinkOptions;
  private readonly ports = new Map<number, MessagePort>();

  constructor(options: ShardLinkOptions) {
    this.options = options;
  }

  /** A (new) port to `peer`; one it replaces means the peer restarted. */
  attach(peer: number, port: MessagePort): void {
    const old = this.ports.get(peer);
    if (old !== undefined) this.detach(peer, old);
    this.ports.set(peer, port);
    this.options.log.info('shard_link_up', { peer });
    port.on('message', (message: LinkMessage) => {
      if (this.ports.get(peer) === port) this.options.onMessage(peer, message);
    });
    port.once('close', () => {
      if (this.ports.get(peer) === port) this.detach(peer, port);
    });
  }

  private detach(peer: number, port: MessagePort): void {
    this.ports.delete(peer);
    port.removeAllListeners('message');
    port.close();
    this.options.log.info('shard_link_down', { peer });
    this.options.onPeerGone(peer);
  }

  /** Send to `peer`; false when it has no port (it is restarting). */
  send(peer: number, message: LinkMessage): boolean {
    const port = this.ports.get(peer);
    if (port === undefined) return false;
    port.postMessage(message);
    return true;
  }

  /** Close every port (drain). */
  close(): void {
    for (const port of this.ports.values()) {
      port.removeAllListeners();
      port.close();
    }
    this.ports.clear();
  }
}
