/** Something that runs cleanups: a node:test TestContext, or a {@link Cleanup} for a whole file. */
export interface Scope {
  after(fn: () => unknown): void;
}

/** Cleanups for resources shared by a file's tests: `after(() => cleanup.run())`. */
export class Cleanup implements Scope {
  private readonly fns: (() => unknown)[] = [];
  after(fn: () => unknown): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    for (const fn of this.fns.reverse()) await fn();
  }
}

let seq = 0;
/** A fresh desktop id. */
export function desktop(prefix = 'desk'): string {
  seq++;
  return `${prefix}-${process.pid}-${seq}-${Math.random().toString(36).slice(2, 8)}`;
}
