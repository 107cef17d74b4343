/**
 * The permission cache on its own, with a fake clock and a counting source:
 * grants and denials are reused until they expire, expired answers are swept
 * out, and a denial comes back as the same typed error.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CachingPermissionSource, NEGATIVE_TTL_MS, SWEEP_EVERY_MS } from '../src/auth/permission-cache.ts';
import type { PermissionSource } from '../src/auth/permission-client.ts';
import { PermissionError, PermissionErrorCode } from '../src/errors.ts';
import type { Permission } from '../src/protocol/events.ts';
import { createMetricsBuffer, MetricsSlot } from '../src/protocol/metrics.ts';

const identity = (userId: string) => ({ userId, firstName: '', email: '', permissionClaim: undefined, expiresAt: 0 });

function setup(ttlMs: number) {
  let now = 1_000_000;
  let asked = 0;
  const source: PermissionSource = {
    async check(desktopId: string): Promise<Permission> {
      asked++;
      if (desktopId.startsWith('denied')) throw new PermissionError(PermissionErrorCode.DENIED, 'permission API answered 403');
      return 'editor';
    },
    async close() {},
  };
  const cache = new CachingPermissionSource(source, { ttlMs, metrics: new MetricsSlot(createMetricsBuffer(1), 0), now: () => now });
  return { cache, asked: () => asked, advance: (ms: number) => (now += ms) };
}

test('grants are reused for the TTL and denials for 5 s at most, each as the same answer', async () => {
  const { cache, asked, advance } = setup(30_000);
  assert.equal(await cache.check('d1', identity('u1'), 'c'), 'editor');
  assert.equal(await cache.check('d1', identity('u1'), 'c'), 'editor');
  assert.equal(asked(), 1);
  await assert.rejects(cache.check('denied-1', identity('u1'), 'c'), { code: PermissionErrorCode.DENIED });
  await assert.rejects(cache.check('denied-1', identity('u1'), 'c'), (err: unknown) => err instanceof PermissionError && err.code === PermissionErrorCode.DENIED);
  assert.equal(asked(), 2);
  advance(NEGATIVE_TTL_MS + 1);
  await assert.rejects(cache.check('denied-1', identity('u1'), 'c'));
  assert.equal(asked(), 3, 'the denial expired');
  assert.equal(await cache.check('d1', identity('u1'), 'c'), 'editor');
  assert.equal(asked(), 3, 'the grant did not');
  assert.equal(await cache.check('d1', identity('u1'), 'other-cookie'), 'editor');
  assert.equal(asked(), 4, 'another cookie is another question');
});

test('expired answers are swept out, so distinct lookups do not stay in memory', async () => {
  const { cache, advance } = setup(1000);
  for (let i = 0; i < 500; i++) await cache.check(`d${i}`, identity(`u${i}`), 'c');
  assert.equal(cache.size, 500);
  advance(SWEEP_EVERY_MS);
  await cache.check('fresh', identity('fresh'), 'c');
  assert.equal(cache.size, 1);
});
