/**
 * A loopback TCP proxy in front of a real server (here nats-server), for
 * tests that need the network to misbehave at an exact moment: hold what one
 * side sends (it is kept, in order, and goes on when released), cut every
 * connection (what is held is lost), and read every byte that went through
 * each way, to wait for a protocol line or to prove one was never sent.
 * Connections made after a cut go through as before.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Scope } from './scope.ts';

type Direction = 'up' | 'down';

interface Pair {
  client: Socket;
  server: Socket;
  held: { up: Buffer[]; down: Buffer[] };
}

type Trigger = { direction: Direction; pattern: string; action: () => void };

export class TcpProxy {
  readonly port: number;
  private readonly listener: Server;
  private readonly pairs = new Set<Pair>();
  private readonly holding = { up: false, down: false };
  /** Everything that went (or was held going) each way, all connections in arrival order, as latin1 text. */
  private readonly seen = { up: '', down: '' };
  private triggers: Trigger[] = [];
  private waiters: { direction: Direction; pattern: string; from: number; resolve: () => void }[] = [];

  private constructor(listener: Server, port: number) {
    this.listener = listener;
    this.port = port;
  }

  /** A proxy to `127.0.0.1:targetPort`, closed when `t` ends. */
  static async start(t: Scope, targetPort: number): Promise<TcpProxy> {
    const listener = createServer();
    listener.listen(0, '127.0.0.1');
    await once(listener, 'listening');
    const proxy = new TcpProxy(listener, (listener.address() as { port: number }).port);
    listener.on('connection', (client) => proxy.accept(client, targetPort));
    t.after(() => proxy.close());
    return proxy;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Bytes seen so far going `direction` (an offset for {@link waitFor} and {@link text}). */
  mark(direction: Direction): number {
    return this.seen[direction].length;
  }

  /** What went `direction` since `from`. */
  text(direction: Direction, from = 0): string {
    return this.seen[direction].slice(from);
  }

  /** Keep what goes `direction` from now on, until {@link release}. */
  hold(direction: Direction): void {
    this.holding[direction] = true;
  }

  /** Send on what was held going `direction`, in one write per connection (its reader gets it together), and stop holding. */
  release(direction: Direction): void {
    this.holding[direction] = false;
    for (const pair of this.pairs) {
      const target = direction === 'up' ? pair.server : pair.client;
      if (pair.held[direction].length > 0) target.write(Buffer.concat(pair.held[direction]));
      pair.held[direction] = [];
    }
  }

  /** The moment `pattern` is seen going `direction`, before the chunk holding it is sent on, run `action` (once). */
  when(direction: Direction, pattern: string, action: () => void): void {
    this.triggers.push({ direction, pattern, action });
  }

  /** Resolves once `pattern` has gone (or been held going) `direction` after offset `from`; rejects after `timeoutMs`. */
  waitFor(direction: Direction, pattern: string, from = 0, timeoutMs = 5000): Promise<void> {
    if (this.seen[direction].indexOf(pattern, from) !== -1) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = { direction, pattern, from, resolve: () => undefined as void };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`${JSON.stringify(pattern)} did not go ${direction} within ${timeoutMs} ms`));
      }, timeoutMs);
      waiter.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.push(waiter);
    });
  }

  /** Destroy every connection now; what was held is lost. Later connections go through, not held. */
  cut(): void {
    this.holding.up = false;
    this.holding.down = false;
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.server.destroy();
    }
    this.pairs.clear();
  }

  /** Resolves once no connection goes through the proxy (its clients all closed theirs). */
  async idle(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pairs.size > 0) {
      if (Date.now() > deadline) throw new Error(`${this.pairs.size} connections still open after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    this.cut();
    this.listener.close();
    await once(this.listener, 'close').catch(() => undefined);
  }

  private accept(client: Socket, targetPort: number): void {
    const server = connect(targetPort, '127.0.0.1');
    const pair: Pair = { client, server, held: { up: [], down: [] } };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      server.destroy();
    };
    client.on('data', (chunk: Buffer) => this.pass(pair, 'up', chunk));
    server.on('data', (chunk: Buffer) => this.pass(pair, 'down', chunk));
    for (const socket of [client, server]) {
      socket.on('error', end);
      socket.on('close', end);
    }
  }

  private pass(pair: Pair, direction: Direction, chunk: Buffer): void {
    if (!this.pairs.has(pair)) return;
    const from = this.seen[direction].length;
    this.seen[direction] += chunk.toString('latin1');
    // A pattern may span two chunks: search from a little before this one.
    const searchFrom = Math.max(0, from - 256);
    const fired = this.triggers.filter((t) => t.direction === direction && this.seen[direction].indexOf(t.pattern, searchFrom) !== -1);
    if (fired.length > 0) {
      this.triggers = this.triggers.filter((t) => !fired.includes(t));
      for (const trigger of fired) trigger.action();
    }
    if (!this.pairs.has(pair)) return;
    if (this.holding[direction]) pair.held[direction].push(chunk);
    else (direction === 'up' ? pair.server : pair.client).write(chunk);
    const done = this.waiters.filter((w) => w.direction === direction && this.seen[direction].indexOf(w.pattern, w.from) !== -1);
    if (done.length > 0) {
      this.waiters = this.waiters.filter((w) => !done.includes(w));
      for (const w of done) w.resolve();
    }
  }
}
