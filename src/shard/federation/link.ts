/**
 * One shard's NATS connection, and what every part of the federation does
 * with it: connect (retrying until NATS is first reached; the client
 * reconnects by itself after), publish signed and stamped, authenticate what
 * comes in, count and log what is dropped. It holds no room, peer or API
 * state: those parts (rooms.ts, peers.ts, presence-sync.ts, bus-api.ts)
 * subscribe through it and are told when the connection comes and goes.
 */
import {
  connect,
  credsAuthenticator,
  headers,
  type MsgHdrs,
  type Msg,
  type MsgCallback,
  type NatsConnection,
  type NodeConnectionOptions,
  type Subscription,
} from '@nats-io/transport-node';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BusSigner, formatStamp, parseStamp, SIGNATURE_HEADER, STAMP_HEADER } from '../../protocol/bus-signature.ts';
import { withDeadline } from '../../deadline.ts';
import { LogBudget, type Logger } from '../../log.ts';
import { COPY_HEADER, COPY_MARK, DROP_REASONS, DropReason, type DropReasonValue } from '../../protocol/bus.ts';
import { Metric, type MetricsSlot } from '../../protocol/metrics.ts';
import { ReplayGuard } from '../bus-replay.ts';
import type { FederationConfig } from './types.ts';

/** Wait between attempts to reach NATS before the first connection (the client reconnects by itself after). */
const FIRST_CONNECT_RETRY_MS = 1000;
/** Nodes a shard remembers as signing (their unsigned room events are forged), oldest forgotten first. */
const MAX_SIGNED_NODES = 10_000;

/** Whether a message carries the fleet's signature and a stamp not taken before, or why not. */
export type Authenticity = 'signed' | 'unsigned' | typeof DropReason.STALE | typeof DropReason.REPLAYED;

/** What the link tells the federation about its connection. */
export interface LinkEvents {
  /** First connected: subscribe, announce, resync. */
  connected(nc: NatsConnection): void;
  /** Back after a disconnect. */
  reconnected(): void;
}

export class NatsLink {
  readonly config: FederationConfig;
  readonly shardId: number;
  readonly log: Logger;
  readonly metrics: MetricsSlot;
  /** This node's id as JSON, for envelopes. */
  readonly nodeJson: string;
  /** This shard worker's incarnation: told apart from its earlier runs in heartbeats and stamps. */
  readonly incarnation = randomBytes(6).toString('hex');
  readonly signer: BusSigner | null;
  nc: NatsConnection | null = null;
  /** Told of every message published (not a copy): the fleet's stream hands this node's own events back (stream-rooms.ts). */
  onSent: ((subject: string, data: string) => void) | null = null;
  connected = false;
  closing = false;
  private readonly replay: ReplayGuard;
  private readonly dropLog = new LogBudget(10);
  /** Stamps this shard signed: with the incarnation, a message id no other sender has. */
  private stamps = 0;
  /** Nodes heard signing (heartbeats or room events): their room events, and their sessions', must be signed. */
  private readonly signedNodes = new Map<string, true>();
  private retry: NodeJS.Timeout | null = null;
  private unreachableLogged = false;
  private events: LinkEvents | null = null;

  constructor(config: FederationConfig, shardId: number, log: Logger, metrics: MetricsSlot) {
    this.config = config;
    this.shardId = shardId;
    this.log = log;
    this.metrics = metrics;
    this.signer = config.federationKey === '' ? null : new BusSigner(config.federationKey);
    this.replay = new ReplayGuard(config.federationReplayWindowMs);
    this.nodeJson = JSON.stringify(config.nodeId);
    this.metrics.set(Metric.FEDERATION_CONNECTED, 0);
  }

  /** Start connecting; `events` hears of the connection from here on. */
  start(events: LinkEvents): void {
    this.events = events;
    void this.connectFirst();
  }

  private connectionOptions(): NodeConnectionOptions {
    const servers: string[] = [];
    let user: string | undefined;
    let pass: string | undefined;
    let tls = false;
    for (const raw of this.config.natsUrls) {
      const url = new URL(/^[a-z]+:\/\//.test(raw) ? raw : `nats://${raw}`);
      if (url.username !== '') {
        user = decodeURIComponent(url.username);
        pass = decodeURIComponent(url.password);
      }
      if (url.protocol === 'tls:') tls = true;
      servers.push(`${url.protocol === 'tls:' ? 'tls' : 'nats'}://${url.host}`);
    }
    const options: NodeConnectionOptions = {
      servers,
      name: `moodio-rt ${this.config.nodeId} shard ${this.shardId}`,
      // Our own messages never come back: a room's subject has one subscriber per node.
      noEcho: true,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      reconnectJitter: 250,
      pingInterval: 5000,
      maxPingOut: 2,
      timeout: 2000,
    };
    if (user !== undefined) Object.assign(options, { user, pass });
    if (tls) options.tls = {};
    if (this.config.natsCreds !== '') {
      const creds = readFileSync(this.config.natsCreds);
      options.authenticator = credsAuthenticator(new Uint8Array(creds));
    }
    return options;
  }

  /** Until NATS is first reached, try every second (the client's own reconnect loop takes over after). */
  private async connectFirst(): Promise<void> {
    if (this.closing) return;
    let nc: NatsConnection;
    try {
      nc = await connect(this.connectionOptions());
    } catch (err) {
      if (!this.unreachableLogged) {
        this.unreachableLogged = true;
        this.log.warn('federation_unreachable', { servers: this.config.natsUrls.join(','), message: (err as Error).message, retryMs: FIRST_CONNECT_RETRY_MS });
      }
      this.retry = setTimeout(() => void this.connectFirst(), FIRST_CONNECT_RETRY_MS);
      return;
    }
    if (this.closing) {
      await nc.close();
      return;
    }
    this.nc = nc;
    this.events!.connected(nc);
    void this.watch(nc);
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      switch (status.type) {
        case 'disconnect':
          if (this.connected) this.log.warn('federation_disconnected', { server: status.server });
          this.setConnected(false);
          break;
        case 'reconnect':
          this.setConnected(true);
          this.log.info('federation_reconnected', { server: status.server });
          this.events!.reconnected();
          break;
        case 'error':
          this.log.warn('federation_error', { message: String((status as { error?: unknown }).error ?? '') });
          break;
        default:
          break;
      }
    }
  }

  setConnected(up: boolean): void {
    this.connected = up;
    this.metrics.set(Metric.FEDERATION_CONNECTED, up ? 1 : 0);
  }

  /** A callback subscription (the hot path), errors ignored. */
  subscribe(subject: string, onMessage: (msg: Msg) => void): Subscription {
    const callback: MsgCallback<Msg> = (err, msg) => {
      if (err === null) onMessage(msg);
    };
    return this.nc!.subscribe(subject, { callback });
  }

  /** Headers carrying this node's stamp and signature of a message (undefined without --federation-key, unless there is a roster). */
  signed(subject: string, data: string, roster?: string, rosterHeader?: string): MsgHdrs | undefined {
    if (this.signer === null && roster === undefined) return undefined;
    const h = headers();
    if (roster !== undefined) h.set(rosterHeader!, roster);
    if (this.signer !== null) {
      const stamp = formatStamp(Date.now(), this.incarnation + (this.stamps++).toString(36));
      h.set(STAMP_HEADER, stamp);
      h.set(SIGNATURE_HEADER, this.signer.sign(subject, data, stamp, roster ?? ''));
    }
    return h;
  }

  /**
   * Whether `msg` carries the fleet's signature of its subject, stamp,
   * `roster` and payload (`unsigned` without a key, or with a signature
   * that does not check), and if so whether its stamp is within the window
   * and new. A signed stamp is remembered from here on.
   */
  authenticate(msg: Msg, roster = '', fresh = true): Authenticity {
    if (this.signer === null) return 'unsigned';
    const signature = this.header(msg, SIGNATURE_HEADER);
    const stampText = this.header(msg, STAMP_HEADER);
    const stamp = parseStamp(stampText);
    if (stamp === null || !this.signer.verify(msg.subject, msg.data, signature, stampText!, roster)) return 'unsigned';
    // A message read from the fleet's history (stream-rooms.ts) is old by nature: its signature is checked, not its age.
    if (!fresh) return 'signed';
    const freshness = this.replay.check(stamp, Date.now());
    return freshness === 'fresh' ? 'signed' : freshness === 'stale' ? DropReason.STALE : DropReason.REPLAYED;
  }

  /** `node` signs: from now on its room events, and those naming its sessions, count only signed. */
  markSigned(node: string): void {
    if (this.signedNodes.has(node)) return;
    this.signedNodes.set(node, true);
    if (this.signedNodes.size > MAX_SIGNED_NODES) this.signedNodes.delete(this.signedNodes.keys().next().value!);
  }

  /** Whether `node` was heard signing. */
  signs(node: string): boolean {
    return this.signedNodes.has(node);
  }

  /** `msg`'s payload as JSON, or undefined (dropped as malformed) when it is not. */
  json(msg: Msg): unknown {
    try {
      return JSON.parse(msg.string()) as unknown;
    } catch {
      this.drop(DropReason.MALFORMED, msg.subject);
      return undefined;
    }
  }

  /** A header of `msg`, or undefined; a malformed header block reads as none (the client throws on it). */
  header(msg: Msg, name: string): string | undefined {
    try {
      if (msg.headers === undefined || !msg.headers.has(name)) return undefined;
      return msg.headers.get(name);
    } catch {
      return undefined;
    }
  }

  /** Publish `data` on `subject` (signed with a key); `copy` marks a desktop event's copy on its topic subject (protocol/bus.ts COPY_HEADER). */
  send(subject: string, data: string, reply?: string, copy = false): void {
    try {
      const h = copy ? this.signed(subject, data, COPY_MARK, COPY_HEADER) : this.signed(subject, data);
      if (reply === undefined && h === undefined) this.nc!.publish(subject, data);
      else this.nc!.publish(subject, data, { ...(reply === undefined ? {} : { reply }), ...(h === undefined ? {} : { headers: h }) });
      this.metrics.add(Metric.BUS_PUBLISHED);
      this.metrics.add(Metric.BUS_BYTES_OUT, data.length);
      if (!copy) this.onSent?.(subject, data);
    } catch (err) {
      // Closed or draining connection: the event stays local.
      this.metrics.add(Metric.BUS_UNPUBLISHED);
      const fields = this.dropLog.take({ subject, message: (err as Error).message });
      if (fields !== null) this.log.warn('federation_publish_failed', fields);
    }
  }

  drop(reason: DropReasonValue, subject: string, node?: string): void {
    this.metrics.add(Metric.BUS_DROPPED_0 + DROP_REASONS.indexOf(reason));
    const fields = this.dropLog.take({ reason, subject, node });
    if (fields !== null) this.log.warn('federation_message_dropped', fields);
  }

  /** Run `handle(msg)`, counting it; a bug there must not take the shard down with the message that found it. */
  receive(msg: Msg, handle: (msg: Msg) => void): void {
    this.metrics.add(Metric.BUS_RECEIVED);
    this.metrics.add(Metric.BUS_BYTES_IN, msg.data.byteLength);
    try {
      handle(msg);
    } catch (err) {
      const fields = this.dropLog.take({ subject: msg.subject, err });
      if (fields !== null) this.log.error('federation_message_failed', fields);
    }
  }

  /** Stop connecting; drain and close the connection within `timeoutMs`. */
  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    const nc = this.nc;
    if (nc === null) return;
    await withDeadline(
      nc.drain().catch(() => undefined),
      timeoutMs,
    );
    if (!nc.isClosed()) await nc.close().catch(() => undefined);
    this.setConnected(false);
  }
}
