/**
 * A real `nats-server` (Debian's package; `scripts/` installs it when
 * missing) on a free loopback port, stopped after the test. It can be
 * killed and started again on the same port, as an outage would. With
 * `jetstream`, it runs `-js` with a store directory of its own, removed
 * after the test (kept across a restart, as a server's disk would be).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Scope } from './scope.ts';

export const NATS_SERVER = process.env.NATS_SERVER_PATH ?? 'nats-server';

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  server.close();
  await once(server, 'close');
  return port;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export class NatsServer {
  readonly port: number;
  /** JetStream's store directory, or null without JetStream. */
  readonly storeDir: string | null;
  private child: ChildProcess | null = null;

  constructor(port: number, jetstream = false) {
    this.port = port;
    this.storeDir = jetstream ? mkdtempSync(join(tmpdir(), 'moodio-rt-js-')) : null;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Start (or start again) and resolve once it accepts connections. */
  async start(): Promise<void> {
    const args = ['-a', '127.0.0.1', '-p', String(this.port)];
    if (this.storeDir !== null) args.push('-js', '-sd', this.storeDir);
    const child = spawn(NATS_SERVER, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const failed = new Promise<never>((_, reject) => {
      child.once('error', (err) =>
        reject(new Error(`cannot run ${NATS_SERVER} (install the Debian package nats-server, or set NATS_SERVER_PATH): ${err.message}`)),
      );
      child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}: ${stderr}`)));
    });
    failed.catch(() => undefined);
    const deadline = Date.now() + 10_000;
    while (!(await Promise.race([accepts(this.port), failed]))) {
      if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${this.port}: ${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGKILL: the connections drop without a goodbye. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null) return;
    child.kill('SIGKILL');
    await once(child, 'exit');
  }

  /** Remove the store directory (after {@link kill}). */
  removeStore(): void {
    if (this.storeDir !== null) rmSync(this.storeDir, { recursive: true, force: true });
  }
}

/** A nats-server on a free port (with JetStream when asked), killed when `t` ends and its store removed. */
export async function startNats(t: Scope, options: { jetstream?: boolean } = {}): Promise<NatsServer> {
  const server = new NatsServer(await freePort(), options.jetstream === true);
  t.after(async () => {
    await server.kill();
    server.removeStore();
  });
  await server.start();
  return server;
}
