/**
 * The floor under every number in this suite: what one loopback TCP write
 * costs this machine. A writer on one core writes to 900 sockets round-robin
 * (one `write` per socket per turn, `frames` frames of 230 bytes each, as a
 * shard does at the extreme preset); a sink process on another core reads
 * and discards. The writer's CPU time per write is almost all kernel (TCP
 * transmit plus the loopback receive path), so it shows how many writes per
 * second one core can make at all, and how much batching frames into one
 * write buys.
 *
 *   node bench/loopback.ts [--json]
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const SOCKETS = 900;
const FRAME_BYTES = 230;
const RUN_MS = 2000;

export interface LoopbackRow {
  framesPerWrite: number;
  writesPerSecond: number;
  framesPerSecond: number;
  cpuUsPerWrite: number;
  kernelShare: number;
}

async function sink(): Promise<void> {
  const server = createServer((s) => s.on('data', () => {}).on('error', () => {}));
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
}

async function writer(port: number, framesPerWrite: number): Promise<LoopbackRow> {
  const sockets: Socket[] = [];
  for (let i = 0; i < SOCKETS; i++) {
    const s = connect({ port, host: '127.0.0.1', noDelay: true });
    await once(s, 'connect');
    sockets.push(s);
  }
  const chunk = Buffer.alloc(FRAME_BYTES * framesPerWrite, 120);
  let writes = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const turn = () => {
      for (let i = 0; i < SOCKETS; i++) sockets[i]!.write(chunk);
      writes += SOCKETS;
      if (performance.now() - t0 < RUN_MS) setImmediate(turn);
      else resolve();
    };
    turn();
  });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  for (const s of sockets) s.destroy();
  return {
    framesPerWrite,
    writesPerSecond: Math.round(writes / seconds),
    framesPerSecond: Math.round((writes * framesPerWrite) / seconds),
    cpuUsPerWrite: Math.round(((cpu.user + cpu.system) / writes) * 100) / 100,
    kernelShare: Math.round((cpu.system / (cpu.user + cpu.system)) * 100) / 100,
  };
}

async function main(): Promise<void> {
  if (process.argv[2] === '--sink') return sink();
  const pin = availableParallelism() >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
  const self = fileURLToPath(import.meta.url);
  const [cmd, ...args] = pin ? ['taskset', '-c', '1', process.execPath, self, '--sink'] : [process.execPath, self, '--sink'];
  const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  const port = Number(line.toString().trim());
  if (pin) spawnSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const rows: LoopbackRow[] = [];
  try {
    for (const frames of [1, 2, 4, 8, 16]) rows.push(await writer(port, frames));
  } finally {
    child.kill();
  }
  if (process.argv.includes('--json')) {
    process.stdout.write(JSON.stringify({ sockets: SOCKETS, frameBytes: FRAME_BYTES, pinned: pin, rows }) + '\n');
    return;
  }
  console.log(`# ${SOCKETS} sockets, ${FRAME_BYTES}-byte frames, writer ${pin ? 'on core 0, sink on core 1' : 'unpinned'}`);
  console.log('frames/write  writes/s   frames/s    CPU µs/write  kernel');
  for (const r of rows) {
    console.log(
      `${String(r.framesPerWrite).padStart(12)}  ${String(r.writesPerSecond).padStart(8)}  ${String(r.framesPerSecond).padStart(9)}  ${String(r.cpuUsPerWrite).padStart(12)}  ${Math.round(r.kernelShare * 100)}%`,
    );
  }
}

await main();
