/**
 * What a benchmark ran on: cores, CPU model, memory, Node version and the
 * commit. Printed with every result so numbers can be compared honestly.
 * Run alone: `node scripts/machine-info.ts`.
 */
import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, totalmem } from 'node:os';

export interface MachineInfo {
  cores: number;
  cpu: string;
  memoryGiB: number;
  node: string;
  commit: string;
}

export function machineInfo(): MachineInfo {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (dirty) commit += '-dirty';
  } catch {
    // Not a git checkout: leave "unknown".
  }
  return {
    cores: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    commit,
  };
}

export function describeMachine(info = machineInfo()): string {
  return `${info.cores} cores, ${info.cpu}, ${info.memoryGiB} GiB, Node ${info.node}, commit ${info.commit}`;
}

if (import.meta.main) console.log(JSON.stringify(machineInfo(), null, 2));
