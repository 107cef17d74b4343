/**
 * Many raw client sockets at once (a slowloris, dribblers), with what each
 * received and whether the server closed it, and a way to wait for a
 * condition over all of them without sleeping.
 */
import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import type { Scope } from './scope.ts';

export interface IdleSocket {
  socket: Socket;
  /** Everything received, as latin1. */
  received: string;
  /** When the first byte arrived (performance.now()), or 0. */
  answeredAt: number;
  /** When the socket closed (performance.now()), or 0 while open. */
  closedAt: number;
}

export interface IdleOptions {
  /** Local address to connect from (default 127.0.0.1). */
  localAddress?: string;
  /** Bytes written once connected (default: nothing). */
  write?: string;
  /** Keep our side open when the server ends (default false: we end too, as clients do). */
  allowHalfOpen?: boolean;
}

/** A crowd of raw sockets to one server. */
export class Crowd {
  readonly sockets: IdleSocket[] = [];
  private readonly changes = new EventEmitter();

  constructor(t: Scope) {
    this.changes.setMaxListeners(0);
    t.after(() => this.sockets.forEach((s) => s.socket.destroy()));
  }

  /** Open `count` sockets to `port` at once; resolves when all are connected. */
  open(port: number, count: number, options: IdleOptions = {}): Promise<IdleSocket[]> {
    const opened = Array.from({ length: count }, () => {
      const socket = netConnect({ port, host: '127.0.0.1', localAddress: options.localAddress ?? '127.0.0.1', allowHalfOpen: options.allowHalfOpen ?? false });
      const entry: IdleSocket = { socket, received: '', answeredAt: 0, closedAt: 0 };
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => {
        if (entry.answeredAt === 0) entry.answeredAt = performance.now();
        entry.received += chunk;
        this.changes.emit('change');
      });
      socket.on('error', () => {});
      socket.on('close', () => {
        entry.closedAt = performance.now();
        this.changes.emit('change');
      });
      this.sockets.push(entry);
      return new Promise<IdleSocket>((resolve, reject) => {
        socket.once('connect', () => {
          if (options.write !== undefined) socket.write(options.write);
          resolve(entry);
        });
        socket.once('error', reject);
      });
    });
    return Promise.all(opened);
  }

  /** Resolves once `predicate` holds (checked on every byte and close), rejects after `timeoutMs`. */
  until(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.changes.off('change', check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.changes.off('change', check);
        reject(new Error(`not within ${timeoutMs} ms: ${what}`));
      }, timeoutMs);
      this.changes.on('change', check);
    });
  }
}

/** How many of `sockets` satisfy `predicate`. */
export function count(sockets: readonly IdleSocket[], predicate: (s: IdleSocket) => boolean): number {
  let n = 0;
  for (const s of sockets) if (predicate(s)) n++;
  return n;
}
