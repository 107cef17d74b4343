/**
 * The moonshot, measured (issue 21): a rolling restart of every node of a
 * fleet, under load, and what the clients lost.
 *
 * It starts a nats-server (`-js` with a temporary store under --jetstream),
 * a permission stub, and K nodes (`moodio-rt serve`, 2 workers each, on
 * loopback, each process with its own node id and the same secret). N SDK
 * clients in M desktops, each its own user, join on one route and each
 * sends numbered events (`bench_tick`, `{sender, n}`) at a steady rate.
 * Every node in turn gets SIGTERM; once it has exited it is started again
 * on the same port, and once its /health answers, the next one goes. After
 * the last, the bench measures the time until every client's presence
 * matches the truth, keeps sending a while, stops, lets the deliveries
 * settle, and counts what was owed and not delivered (bench/rolling-ledger.ts
 * has the exact definitions).
 *
 * With nginx on PATH, the clients go through one nginx in front of all
 * nodes; without it, each client is given every node's URL (the SDK's
 * `url` list: each attempt dials the next node, and a drain's 1012 goes to
 * the next one after the short jitter); `--front sdk` gives the list even
 * with nginx on PATH. The close codes are counted from the SDK's
 * `retry` events.
 *
 * It picks up the issue's features when they land, without a change here:
 * the server's `--history-stream` (detected in `serve --help`, passed under
 * --jetstream), the drain (whatever SIGTERM does; the close codes seen are
 * printed), and the SDK's `recovered`/`gap` events (counted when it has them).
 *
 *   npx node bench/rolling-restart.ts [--quick] [--route desktop|connection] [--front nginx|sdk] [--nodes K] [--clients N]
 *     [--desktops M] [--rate per-client/s] [--hold s] [--jetstream] [--node-args '…'] [--no-restart]
 *     [--json] [--write-docs]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { CLIENT_EVENTS, connect, connectTopics, TOPIC_EVENTS, type WebSocketConstructor } from '../src/client/index.ts';
import { describeMachine, machineInfo } from '../scripts/machine-info.ts';
import { NATS_SERVER } from '../test/helpers/nats.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { CLI, startServer, type ServerProcess } from '../test/helpers/server.ts';
import { token, user } from '../test/helpers/tokens.ts';
import { Ledger, type Tally } from './rolling-ledger.ts';

const TICK = 'bench_tick';
const STREAM = 'rolling_bench';
const DOCS = fileURLToPath(new URL('../docs/performance.md', import.meta.url));
const BEGIN = '<!-- rolling-restart:begin -->';
const END = '<!-- rolling-restart:end -->';

// ---- options ----------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name: string): boolean => argv.includes(name);
const quick = flag('--quick');
function option(name: string, fallback: number, min: number, max: number): number {
  const i = argv.indexOf(name);
  if (i < 0) return fallback;
  const value = Number(argv[i + 1]);
  if (!Number.isFinite(value) || value < min || value > max) fail(`${name} must be a number from ${min} to ${max}, got ${JSON.stringify(argv[i + 1])}`);
  return value;
}
function fail(message: string): never {
  process.stderr.write(`rolling-restart: ${message}\n`);
  process.exit(2);
}
const routeIndex = argv.indexOf('--route');
const route = routeIndex < 0 ? 'desktop' : argv[routeIndex + 1];
if (route !== 'desktop' && route !== 'connection') fail(`--route must be desktop or connection, got ${JSON.stringify(route)}`);
const hasNginx = spawnSync('nginx', ['-v'], { stdio: 'ignore' }).status === 0;
const frontIndex = argv.indexOf('--front');
const front = frontIndex < 0 ? (hasNginx ? 'nginx' : 'sdk') : argv[frontIndex + 1];
if (front !== 'nginx' && front !== 'sdk') fail(`--front must be nginx or sdk, got ${JSON.stringify(front)}`);
if (front === 'nginx' && !hasNginx) fail('--front nginx: nginx is not on PATH');
const nodeCount = Math.trunc(option('--nodes', quick ? 2 : 3, 2, 8));
const clientCount = Math.trunc(option('--clients', quick ? 16 : 48, 2, 2000));
const desktopCount = Math.trunc(option('--desktops', quick ? 4 : 8, 1, clientCount / 2));
const rate = option('--rate', quick ? 5 : 10, 0.1, 50);
const holdMs = option('--hold', quick ? 2 : 5, 0, 600) * 1000;
const jetstream = flag('--jetstream');
const restart = !flag('--no-restart');
const json = flag('--json');
const writeDocs = flag('--write-docs');
const nodeArgsIndex = argv.indexOf('--node-args');
const extraNodeArgs = nodeArgsIndex < 0 ? [] : (argv[nodeArgsIndex + 1] ?? '').split(/\s+/).filter(Boolean);
const command = ['npx node bench/rolling-restart.ts', ...argv.filter((a) => a !== '--write-docs' && a !== '--json')].join(' ');

const log = (line: string) => process.stderr.write(`# ${line}\n`);
const now = () => performance.now();
const ms = (x: number) => Math.round(x);

/** Wait for `condition`, checking every `everyMs`, at most `timeoutMs`; false when it never held. */
async function until(condition: () => boolean, timeoutMs: number, everyMs = 10): Promise<boolean> {
  const deadline = now() + timeoutMs;
  while (!condition()) {
    if (now() > deadline) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return true;
}

// ---- processes: nats-server, nginx, nodes -----------------------------------

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  server.close();
  await once(server, 'close');
  return port;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/** A child process that must listen on `port`: resolves once it does, and is stopped (`signal`) by `cleanup`. */
async function startListening(cleanup: Cleanup, name: string, child: ChildProcess, port: number, signal: NodeJS.Signals): Promise<void> {
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = once(child, 'exit');
  cleanup.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  });
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (err) => reject(new Error(`cannot run ${name}: ${err.message}`)));
    void exited.then(([code]) => reject(new Error(`${name} exited with ${code}: ${stderr}`)));
  });
  failed.catch(() => undefined);
  const deadline = now() + 10_000;
  while (!(await Promise.race([accepts(port), failed]))) {
    if (now() > deadline) throw new Error(`${name} did not listen on ${port}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function startNats(cleanup: Cleanup): Promise<string> {
  const port = await freePort();
  const args = ['-a', '127.0.0.1', '-p', String(port)];
  if (jetstream) {
    const store = mkdtempSync(join(tmpdir(), 'moodio-rt-rolling-js-'));
    cleanup.after(() => rmSync(store, { recursive: true, force: true }));
    args.push('-js', '-sd', store);
  }
  await startListening(cleanup, NATS_SERVER, spawn(NATS_SERVER, args, { stdio: ['ignore', 'ignore', 'pipe'] }), port, 'SIGTERM');
  return `nats://127.0.0.1:${port}`;
}

/** nginx in front of every node, as nginx.example.conf proxies one; an attempt at a node that is down goes to the next. */
async function startNginx(cleanup: Cleanup, ports: number[]): Promise<string> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'moodio-rt-rolling-nginx-'));
  cleanup.after(() => rmSync(dir, { recursive: true, force: true }));
  const conf = `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream moodio_rt { ${ports.map((p) => `server 127.0.0.1:${p} max_fails=1 fail_timeout=2s;`).join(' ')} }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://moodio_rt;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 3600s;
      proxy_buffering off;
      proxy_next_upstream error timeout;
    }
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  await startListening(
    cleanup,
    'nginx',
    spawn('nginx', ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] }),
    port,
    'SIGQUIT',
  );
  return `ws://127.0.0.1:${port}`;
}

/** What this tree's server offers, from `serve --help`. */
function serverFeatures(): { historyStream: boolean; drainSpread: boolean } {
  const help = spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } }).stdout;
  return { historyStream: help.includes('--history-stream '), drainSpread: help.includes('--drain-spread ') };
}

async function health(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

interface Restart {
  node: string;
  /** SIGTERM until the process exited, ms. */
  exitMs: number;
  exit: string;
  /** The exit until /health answered on the new process, ms. */
  upMs: number;
  /** The SIGTERM until every client's presence was true again for good, ms (null: not within 60 s of the restart). */
  presenceMs?: number | null;
}

class Fleet {
  readonly nodes: ServerProcess[] = [];
  readonly ports: number[] = [];
  private generation = 0;
  private readonly cleanup: Cleanup;
  private readonly args: string[];

  constructor(cleanup: Cleanup, args: string[]) {
    this.cleanup = cleanup;
    this.args = args;
  }

  /** Node `i` (a new process, with a node id of its own), on `port` or a free one. */
  async start(i: number, port = 0): Promise<void> {
    const id = `rolling-${String.fromCharCode(97 + i)}-${++this.generation}`;
    const node = await startServer(this.cleanup, { workers: 2, args: [...this.args, '--node-id', id, '--port', String(port)] });
    this.nodes[i] = node;
    this.ports[i] = node.port;
    if (!(await pollHealth(node.port))) throw new Error(`node ${id} never answered /health within 20 s`);
  }

  /** SIGTERM, wait for the exit, start again on the same port, wait for /health. */
  async restart(i: number): Promise<Restart> {
    const node = this.nodes[i]!;
    const began = now();
    await node.stop(120_000);
    const exited = await node.exited;
    const exitMs = now() - began;
    await this.start(i, this.ports[i]);
    return { node: String.fromCharCode(97 + i), exitMs: ms(exitMs), exit: exited.signal ?? `code ${exited.code}`, upMs: ms(now() - began - exitMs) };
  }
}

async function pollHealth(port: number): Promise<boolean> {
  const deadline = now() + 20_000;
  while (!(await health(port))) {
    if (now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

// ---- clients -----------------------------------------------------------------

const WS = WebSocket as unknown as WebSocketConstructor;

/** One SDK client as the bench drives it, on either route. */
interface BenchClient {
  /** Joined (desktop) or subscribed (connection): its sends go out, its presence is current. */
  joined(): boolean;
  sessionId(): string | null;
  others(): Iterable<string>;
  send(n: number): void;
  close(): void;
}

interface Resume {
  recovered: number;
  gap: number;
}

function openClient(i: number, desktopId: string, urls: string[], ledger: Ledger, closes: Map<number, number>, resume: Resume): BenchClient {
  // The SDK starts each client at a random node of the list.
  const options = { url: urls, token: token(user(`Bench${i}`)), WebSocket: WS };
  // Every socket lost before a rejoin schedules a retry that names its close code (none ends a client here).
  const countClose = ({ code }: { code: number | null }) => {
    if (code !== null) closes.set(code, (closes.get(code) ?? 0) + 1);
  };
  const track = (up: boolean) => (up ? ledger.up(i, now()) : ledger.down(i, now()));
  const onTick = (payload: unknown) => {
    const tick = payload as { sender?: unknown; n?: unknown } | null;
    if (typeof tick?.sender === 'number' && typeof tick.n === 'number') ledger.received(i, tick.sender, tick.n);
  };
  // The SDK's resume events, when it has them (issue 21): counted, never needed.
  const listenResume = (on: (name: string, handler: () => void) => unknown, names: readonly string[]) => {
    if (names.includes('recovered')) on('recovered', () => resume.recovered++);
    if (names.includes('gap')) on('gap', () => resume.gap++);
  };
  if (route === 'desktop') {
    const client = connect({ ...options, desktopId });
    client.on('state', (state) => track(state === 'open'));
    client.on('retry', countClose);
    client.onEvent(TICK, (e) => onTick(e.payload));
    listenResume(client.on.bind(client) as never, CLIENT_EVENTS);
    return {
      joined: () => client.state === 'open',
      sessionId: () => client.sessionId,
      others: () => client.sessions.keys(),
      send: (n) => client.send(TICK, { sender: i, n }),
      close: () => client.close(),
    };
  }
  const conn = connectTopics(options);
  conn.on('retry', countClose);
  const topic = conn.subscribe(`desktop:${desktopId}`);
  topic.on('state', (state) => track(state === 'subscribed'));
  topic.onEvent(TICK, (e) => onTick(e.payload));
  listenResume(topic.on.bind(topic) as never, TOPIC_EVENTS);
  return {
    joined: () => topic.state === 'subscribed',
    sessionId: () => conn.sessionId,
    others: () => topic.sessions.keys(),
    send: (n) => topic.send(TICK, { sender: i, n }),
    close: () => conn.close(),
  };
}

/** Every client joined, and each one's presence is exactly the other members' current sessions. */
function presenceTrue(clients: BenchClient[], ledger: Ledger): boolean {
  for (let r = 0; r < clients.length; r++) {
    const client = clients[r]!;
    if (!client.joined()) return false;
    const seen = new Set(client.others());
    const peers = ledger.peers(r);
    if (seen.size !== peers.length) return false;
    for (const p of peers) {
      const id = clients[p]!.sessionId();
      if (!clients[p]!.joined() || id === null || !seen.has(id)) return false;
    }
  }
  return true;
}

/** Where presence is not the truth, one line per client. */
function presenceDiff(clients: BenchClient[], ledger: Ledger): string[] {
  const lines: string[] = [];
  for (let r = 0; r < clients.length; r++) {
    const client = clients[r]!;
    const truth = ledger.peers(r).map((p) => clients[p]!.sessionId());
    const seen = [...client.others()];
    const missing = truth.filter((id) => !seen.includes(id as string));
    const extra = seen.filter((id) => !truth.includes(id));
    if (!client.joined() || missing.length > 0 || extra.length > 0)
      lines.push(
        `client ${r} (${client.sessionId()}${client.joined() ? '' : ', not joined'}): missing ${missing.join(' ') || '-'}; extra ${extra.join(' ') || '-'}`,
      );
  }
  return lines;
}

// ---- the run -----------------------------------------------------------------

interface Result {
  date: string;
  route: string;
  command: string;
  machine: ReturnType<typeof machineInfo>;
  setup: Record<string, unknown>;
  restarts: Restart[];
  tally: Tally;
  closes: Record<string, number>;
  resume: Resume | null;
  reconnects: number;
  presenceConvergedMs: number | null;
  line: string;
}

const cleanup = new Cleanup();
let stopping: Promise<void> | null = null;
const stopAll = () => (stopping ??= cleanup.run());
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: stopping everything`);
    void stopAll().finally(() => process.exit(130));
  });
}
// A throw in a timer or a handler would end the process and leave the nodes running: stop them first.
for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
  process.once(event, (err: unknown) => {
    process.stderr.write(`rolling-restart failed: ${(err as Error)?.stack ?? err}\n`);
    void stopAll().finally(() => process.exit(1));
  });
}

async function run(): Promise<Result> {
  const features = serverFeatures();
  const useStream = jetstream && features.historyStream;
  const stub = await startPermissionStub(cleanup);
  const natsUrl = await startNats(cleanup);
  const args = [
    '--host',
    '127.0.0.1',
    '--permission-api-base',
    stub.base,
    '--nats-url',
    natsUrl,
    // Every client comes from 127.0.0.1: the per-address limits would count the whole fleet's clients as one.
    '--handshake-rate-per-address',
    '0',
    '--max-pending-per-address',
    '0',
    ...(useStream ? ['--history-stream', STREAM] : []),
    ...extraNodeArgs,
  ];
  const fleet = new Fleet(cleanup, args);
  log(`starting nats-server${jetstream ? ' -js' : ''} and ${nodeCount} nodes`);
  for (let i = 0; i < nodeCount; i++) await fleet.start(i);
  const urls = front === 'nginx' ? [await startNginx(cleanup, fleet.ports)] : fleet.ports.map((p) => `ws://127.0.0.1:${p}`);

  const desktopOf = Array.from({ length: clientCount }, (_, i) => i % desktopCount);
  const desktopIds = Array.from({ length: desktopCount }, (_, d) => `rolling-${process.pid}-${d}`);
  const ledger = new Ledger(desktopOf);
  const closes = new Map<number, number>();
  const resume: Resume = { recovered: 0, gap: 0 };
  const resumeEvents = (route === 'desktop' ? CLIENT_EVENTS : TOPIC_EVENTS).includes('recovered' as never);
  log(`${clientCount} clients on /ws/${route === 'desktop' ? 'desktop/{id}' : 'connection'} in ${desktopCount} desktops`);
  const clients = desktopOf.map((d, i) => openClient(i, desktopIds[d]!, urls, ledger, closes, resume));
  cleanup.after(() => {
    for (const c of clients) c.close();
  });
  if (!(await until(() => presenceTrue(clients, ledger), 30_000)))
    throw new Error(`the clients did not all join with a true presence within 30 s:\n${presenceDiff(clients, ledger).join('\n')}`);

  // Steady sending: each client every 1/rate s, from a random phase.
  const period = 1000 / rate;
  const timers: NodeJS.Timeout[] = [];
  let sendErrors = 0;
  const tick = (i: number) => {
    const client = clients[i]!;
    if (!client.joined()) return ledger.skipped(i);
    const at = now();
    try {
      client.send(ledger.nextTick(i));
      ledger.sent(i, at);
    } catch {
      sendErrors++;
    }
  };
  const stopSending = () => {
    for (const t of timers.splice(0)) clearInterval(t);
  };
  cleanup.after(stopSending);
  for (let i = 0; i < clientCount; i++) {
    timers.push(
      setTimeout(() => {
        tick(i);
        timers.push(setInterval(() => tick(i), period));
      }, Math.random() * period),
    );
  }
  log(`sending ${rate}/s per client; ${holdMs / 1000} s before the first restart`);
  await new Promise((r) => setTimeout(r, holdMs));

  const restarts: Restart[] = [];
  const sessionsBefore = clients.reduce((sum, _, i) => sum + ledger.sessionCount(i), 0);
  // The line's figure: from the last node's /health (or, with --no-restart, from now) until presence is the truth.
  let lastUp = now();
  let converged = true;
  let convergedAt = lastUp;
  for (let i = 0; restart && i < nodeCount; i++) {
    log(`restarting node ${String.fromCharCode(97 + i)} (SIGTERM)`);
    // Also from each SIGTERM until every client is back with a true presence for good (a drain may finish that before the exit).
    const began = now();
    let lastFalse: number | null = null;
    const watch = setInterval(() => {
      if (!presenceTrue(clients, ledger)) lastFalse = now();
    }, 10);
    const result = await fleet.restart(i);
    lastUp = now();
    converged = await until(() => presenceTrue(clients, ledger), 60_000);
    convergedAt = now();
    clearInterval(watch);
    restarts.push({ ...result, presenceMs: !converged ? null : lastFalse === null ? 0 : ms(lastFalse - began) });
  }
  if (!restart) {
    converged = await until(() => presenceTrue(clients, ledger), 60_000);
    convergedAt = now();
  }
  const presenceConvergedMs = converged ? ms(convergedAt - lastUp) : null;
  log(
    converged
      ? `presence converged ${presenceConvergedMs} ms after the last node was up`
      : `presence did not converge within 60 s:\n${presenceDiff(clients, ledger).join('\n')}`,
  );
  const remaining = holdMs - (now() - lastUp);
  if (remaining > 0) await new Promise((r) => setTimeout(r, remaining));
  stopSending();

  // Let the deliveries settle: until every one owed has come, or none has for 2 s (at most 20 s).
  let arrivals = -1;
  let quietSince = now();
  await until(
    () => {
      if (ledger.arrivals !== arrivals) (arrivals = ledger.arrivals), (quietSince = now());
      return ledger.complete() || now() - quietSince > 2_000;
    },
    20_000,
    50,
  );
  const tally = ledger.tally();
  const reconnects = clients.reduce((sum, _, i) => sum + ledger.sessionCount(i), 0) - sessionsBefore;
  const line = `lost ${tally.lost}, duplicated ${tally.duplicated}, presence converged in ${presenceConvergedMs === null ? 'never (> 60000)' : presenceConvergedMs} ms`;
  return {
    date: new Date().toISOString(),
    route,
    command,
    machine: machineInfo(),
    setup: {
      nodes: nodeCount,
      workersPerNode: 2,
      clients: clientCount,
      desktops: desktopCount,
      ratePerClient: rate,
      holdSeconds: holdMs / 1000,
      restarts: restart,
      front: front === 'nginx' ? 'nginx' : "every node's URL to each client (the SDK's url list: the next node on each attempt, from a random first)",
      jetstream,
      historyStream: useStream ? STREAM : null,
      serverHasHistoryStream: features.historyStream,
      serverHasDrainSpread: features.drainSpread,
      nodeArgs: extraNodeArgs,
      sendErrors,
    },
    restarts,
    tally,
    closes: Object.fromEntries([...closes].sort(([a], [b]) => a - b)),
    resume: resumeEvents ? resume : null,
    reconnects,
    presenceConvergedMs,
    line,
  };
}

function context(r: Result): string[] {
  const s = r.setup;
  const t = r.tally;
  const pct = (x: number) => (t.owed === 0 ? '0' : ((100 * x) / t.owed).toFixed(2));
  return [
    `rolling restart, ${r.route} route: ${s.nodes} nodes × 2 workers + nats-server${s.jetstream ? ' -js' : ''}, ${s.clients} clients in ${s.desktops} desktops, ${s.ratePerClient} ticks/s each`,
    `machine: ${describeMachine(r.machine)}`,
    `front: ${front === 'nginx' ? 'nginx' : `${hasNginx ? '--front sdk' : 'nginx not on PATH'}: ${s.front}`}`,
    `server: history stream ${s.historyStream ? `--history-stream ${s.historyStream}` : s.serverHasHistoryStream ? 'available, not asked (--jetstream)' : 'not in this server'}; drain ${s.serverHasDrainSpread ? 'spread (--drain-spread)' : 'at once'}${(s.nodeArgs as string[]).length ? `; node args ${(s.nodeArgs as string[]).join(' ')}` : ''}`,
    `restarts: ${r.restarts.length === 0 ? 'none (--no-restart)' : r.restarts.map((x) => `${x.node} exit ${x.exitMs} ms (${x.exit}) + up ${x.upMs} ms, presence true again ${x.presenceMs ?? 'never'} ms after its SIGTERM`).join(', ')}`,
    `closes seen by clients: ${
      Object.entries(r.closes)
        .map(([code, n]) => `${code} ×${n}`)
        .join(', ') || 'none'
    }; rejoins ${r.reconnects}; SDK resume: ${r.resume === null ? 'not in this SDK' : `recovered ${r.resume.recovered}, gap ${r.resume.gap}`}`,
    `ticks sent ${t.sent} (skipped while away ${t.skipped}${s.sendErrors ? `, send errors ${s.sendErrors}` : ''}); deliveries owed ${t.owed}, made ${t.delivered}, lost ${t.lost} (${pct(t.lost)}%, ${t.lostTicks} ticks), duplicated ${t.duplicated}, reordered ${t.reordered}`,
    `lost because: receiver away ${t.causes.receiverAway}, sender's session ended ≤ 2 s after ${t.causes.senderDropped}, receiver's session ended ≤ 2 s after ${t.causes.receiverDropped}, other ${t.causes.other}`,
  ];
}

/** Replace this route's (and setup's) row of the marked table in docs/performance.md. */
function updateDocs(r: Result): void {
  const text = readFileSync(DOCS, 'utf8');
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (begin < 0 || end < begin) throw new Error(`docs/performance.md has no ${BEGIN} … ${END} section`);
  const header = ['| Route | Setup | Result | Why | Date | Commit | Machine | Command |', '|---|---|---|---|---|---|---|---|'];
  const s = r.setup;
  const t = r.tally;
  const setup = `${s.nodes} nodes${s.jetstream ? ' + JetStream' : ''}, ${s.clients} clients, ${s.desktops} desktops, ${s.ratePerClient}/s`;
  const closes = Object.entries(r.closes)
    .map(([code, n]) => `${code} ×${n}`)
    .join(', ');
  const why = `${t.lost} of ${t.owed} deliveries owed (${t.lostTicks} of ${t.sent} events); closes ${closes || 'none'}; resume ${r.resume === null ? 'none' : `${r.resume.recovered} recovered, ${r.resume.gap} gap`}; lost: receiver away ${t.causes.receiverAway}, sender dropped ${t.causes.senderDropped}, receiver dropped ${t.causes.receiverDropped}, other ${t.causes.other}`;
  const key = `| ${r.route} | ${setup.replace(/, \d+ clients.*/, '')}`;
  const row = `| ${r.route} | ${setup} | ${r.line} | ${why} | ${r.date.slice(0, 10)} | ${r.machine.commit} | ${r.machine.cores} cores, ${r.machine.cpu}, ${r.machine.memoryGiB} GiB, Node ${r.machine.node} | \`${r.command}\` |`;
  const rows = text
    .slice(begin + BEGIN.length, end)
    .split('\n')
    .filter((l) => l.startsWith('| ') && !l.startsWith('| Route ') && !l.startsWith(key));
  const section = [BEGIN, '', ...header, ...[...rows, row].sort(), '', END].join('\n');
  writeFileSync(DOCS, text.slice(0, begin) + section + text.slice(end + END.length));
  log('updated docs/performance.md');
}

let code = 0;
try {
  const result = await run();
  await stopAll();
  if (json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else process.stdout.write([...context(result), result.line, ''].join('\n'));
  if (writeDocs) updateDocs(result);
} catch (err) {
  process.stderr.write(`rolling-restart failed: ${(err as Error).stack ?? err}\n`);
  code = 1;
  await stopAll();
}
process.exitCode = code;
