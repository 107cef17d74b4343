/**
 * The permission cache on its own, with a fake clock and a counting source:
 * grants and denials are reused until they expire, expired answers are swept
 * out, and a denial comes back as the same typed error.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CachingPermissionSource, MAX_CACHED_ANSWERS, NEGATIVE_TTL_MS, SWEEP_EVERY_MS } from '../src/auth/permission-cache.ts';
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
  await assert.rejects(
    cache.check('denied-1', identity('u1'), 'c'),
    (err: unknown) => err instanceof PermissionError && err.code === PermissionErrorCode.DENIED,
  );
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

test("a sweep drops one user's expired answers, first, middle and last alike, and keeps the others found", async () => {
  const { cache, asked, advance } = setup(SWEEP_EVERY_MS + 5000);
  // One user's answers, stored 4 s apart: d0 (expires first), d1, a denial (5 s), d2.
  await cache.check('d0', identity('u'), 'c');
  advance(4000);
  await cache.check('d1', identity('u'), 'c');
  await assert.rejects(cache.check('denied-x', identity('u'), 'c'));
  advance(4000);
  await cache.check('d2', identity('u'), 'c');
  assert.equal(cache.size, 4);
  // At the sweep: d0 and the denial have expired, d1 and d2 have not.
  advance(SWEEP_EVERY_MS - 8000 + 6000);
  await cache.check('other', identity('other'), 'c');
  assert.equal(cache.size, 3, 'd0 and the denial swept, d1 and d2 kept, and the new one');
  const before = asked();
  assert.equal(await cache.check('d1', identity('u'), 'c'), 'editor');
  assert.equal(await cache.check('d2', identity('u'), 'c'), 'editor');
  assert.equal(asked(), before, 'the answers kept are still found');
  await cache.check('d0', identity('u'), 'c');
  assert.equal(asked(), before + 1, 'the swept one is asked again');
});

test('at most MAX_CACHED_ANSWERS are kept: the first stored goes first, even when the new answer is of the same user and desktop', async () => {
  const { cache, asked } = setup(30_000);
  await cache.check('d1', identity('u0'), 'c1');
  for (let i = 1; i < MAX_CACHED_ANSWERS; i++) await cache.check('d1', identity(`u${i}`), 'c1');
  assert.equal(cache.size, MAX_CACHED_ANSWERS);
  await cache.check('d1', identity('u0'), 'c2');
  assert.equal(cache.size, MAX_CACHED_ANSWERS);
  const before = asked();
  await cache.check('d1', identity('u0'), 'c2');
  await cache.check('d1', identity('u1'), 'c1');
  assert.equal(asked(), before, 'the new answer and the second oldest are kept');
  await cache.check('d1', identity('u0'), 'c1');
  assert.equal(asked(), before + 1, 'the oldest was dropped');
});

/** A source whose answers the test gives, one call at a time, in order. */
function manualSetup(ttlMs = 30_000) {
  let now = 1_000_000;
  const calls: { desktopId: string; userId: string; cookie: string | undefined; answer: (role: Permission | 'denied' | 'down') => void }[] = [];
  const source: PermissionSource = {
    check(desktopId, who, cookie) {
      return new Promise<Permission>((resolve, reject) => {
        calls.push({
          desktopId,
          userId: who.userId,
          cookie,
          answer: (role) => {
            if (role === 'denied') reject(new PermissionError(PermissionErrorCode.DENIED, 'permission API answered 403'));
            else if (role === 'down') reject(new PermissionError(PermissionErrorCode.UNAVAILABLE, 'permission API answered 503'));
            else resolve(role);
          },
        });
      });
    },
    async close() {},
  };
  const cache = new CachingPermissionSource(source, { ttlMs, metrics: new MetricsSlot(createMetricsBuffer(1), 0), now: () => now });
  /** Look up and answer it at once with `role`. */
  const cached = async (desktopId: string, userId: string, cookie: string, role: Permission) => {
    const lookup = cache.check(desktopId, identity(userId), cookie);
    calls.at(-1)!.answer(role);
    assert.equal(await lookup, role);
  };
  return { cache, calls, cached, advance: (ms: number) => (now += ms) };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));
const denied = { code: PermissionErrorCode.DENIED };

test("a role set through the server API replaces the cached answer for every cookie of that user on that desktop, and no one else's", async () => {
  const { cache, calls, cached, advance } = manualSetup();
  await cached('d1', 'u1', 'c1', 'editor');
  await cached('d1', 'u1', 'c2', 'editor');
  await cached('d2', 'u1', 'c1', 'editor');
  await cached('d1', 'u2', 'c1', 'editor');
  assert.equal(calls.length, 4);
  advance(20_000);
  cache.setGrant('u1', 'd1', 'viewer');
  assert.equal(await cache.check('d1', identity('u1'), 'c1'), 'viewer');
  assert.equal(await cache.check('d1', identity('u1'), 'c2'), 'viewer');
  assert.equal(await cache.check('d2', identity('u1'), 'c1'), 'editor', 'another desktop');
  assert.equal(await cache.check('d1', identity('u2'), 'c1'), 'editor', 'another user');
  assert.equal(calls.length, 4, 'all from the cache');
  // For the TTL from the change (30 s), not from the answer it replaced (10 s left).
  advance(29_000);
  assert.equal(await cache.check('d1', identity('u1'), 'c1'), 'viewer');
  assert.equal(calls.length, 4);
  // A cookie never asked about is a question for the app.
  const fresh = cache.check('d1', identity('u1'), 'c3');
  assert.equal(calls.length, 5);
  calls[4]!.answer('viewer');
  assert.equal(await fresh, 'viewer');
});

test('none through the server API: every cookie of that user on that desktop is denied, for as long as a denial is kept; then the app is asked again', async () => {
  const { cache, calls, cached, advance } = manualSetup();
  await cached('d1', 'u1', 'c1', 'editor');
  await cached('d1', 'u1', 'c2', 'viewer');
  cache.setGrant('u1', 'd1', 'none');
  await assert.rejects(cache.check('d1', identity('u1'), 'c1'), denied);
  await assert.rejects(cache.check('d1', identity('u1'), 'c2'), denied);
  assert.equal(calls.length, 2);
  advance(NEGATIVE_TTL_MS - 1);
  await assert.rejects(cache.check('d1', identity('u1'), 'c1'), denied);
  assert.equal(calls.length, 2);
  advance(1);
  const again = cache.check('d1', identity('u1'), 'c1');
  assert.equal(calls.length, 3, 'the revocation expired like a denial');
  calls[2]!.answer('denied');
  await assert.rejects(again, denied);
  // A user invited back through the API gets in at once, though a denial was cached.
  cache.setGrant('u1', 'd1', 'editor');
  assert.equal(await cache.check('d1', identity('u1'), 'c1'), 'editor');
  assert.equal(calls.length, 3);
});

test('a lookup in flight when the server API changes the role answers with the new role and caches it, whatever the app answers', async () => {
  for (const [change, answer] of [
    ['viewer', 'editor'],
    ['none', 'editor'],
    ['editor', 'denied'],
    ['viewer', 'down'],
  ] as const) {
    const { cache, calls } = manualSetup();
    const first = cache.check('d1', identity('u1'), 'c1');
    const shared = cache.check('d1', identity('u1'), 'c1');
    const otherDesktop = cache.check('d2', identity('u1'), 'c1');
    assert.equal(calls.length, 2);
    cache.setGrant('u1', 'd1', change);
    calls[0]!.answer(answer);
    calls[1]!.answer('editor');
    for (const lookup of [first, shared]) {
      if (change === 'none') await assert.rejects(lookup, denied);
      else assert.equal(await lookup, change, `${change} during an answer of ${answer}`);
    }
    assert.equal(await otherDesktop, 'editor');
    // The older answer did not overwrite the newer word.
    if (change === 'none') await assert.rejects(cache.check('d1', identity('u1'), 'c1'), denied);
    else assert.equal(await cache.check('d1', identity('u1'), 'c1'), change);
    assert.equal(calls.length, 2);
  }
});

test('a lookup that started after the change is the newest word: its answer is used and cached', async () => {
  const { cache, calls, cached } = manualSetup();
  await cached('d1', 'u1', 'c1', 'editor');
  cache.setGrant('u1', 'd1', 'viewer');
  cache.setGrant('u1', 'd9', 'viewer');
  const after = cache.check('d1', identity('u1'), 'c2');
  calls[1]!.answer('editor');
  assert.equal(await after, 'editor');
  assert.equal(await cache.check('d1', identity('u1'), 'c2'), 'editor');
  assert.equal(await cache.check('d1', identity('u1'), 'c1'), 'viewer');
  assert.equal(calls.length, 2);
});

test("a user logged out through the server API: the user's cached answers on every desktop are dropped, and a lookup in flight asks again", async () => {
  const { cache, calls, cached } = manualSetup();
  await cached('d1', 'u1', 'c1', 'editor');
  await cached('d2', 'u1', 'c2', 'editor');
  await cached('d1', 'u2', 'c1', 'editor');
  const inFlight = cache.check('d3', identity('u1'), 'c1');
  assert.equal(calls.length, 4);
  cache.forgetUser('u1');
  assert.equal(cache.size, 1, "only the other user's answer is kept");
  calls[3]!.answer('editor');
  await turn();
  assert.equal(calls.length, 5, 'the answer to a question asked before the logout is not used: the app is asked again');
  assert.deepEqual([calls[4]!.desktopId, calls[4]!.userId, calls[4]!.cookie], ['d3', 'u1', 'c1']);
  calls[4]!.answer('denied');
  await assert.rejects(inFlight, denied);
  for (const [desktopId, cookie] of [
    ['d1', 'c1'],
    ['d2', 'c2'],
  ] as const) {
    const lookup = cache.check(desktopId, identity('u1'), cookie);
    calls.at(-1)!.answer('denied');
    await assert.rejects(lookup, denied);
  }
  assert.equal(calls.length, 7);
  assert.equal(await cache.check('d1', identity('u2'), 'c1'), 'editor');
  assert.equal(calls.length, 7);
});

test('a role set after a logout wins over it, for a lookup in flight through both', async () => {
  const { cache, calls } = manualSetup();
  const lookup = cache.check('d1', identity('u1'), 'c1');
  cache.forgetUser('u1');
  cache.setGrant('u1', 'd1', 'viewer');
  calls[0]!.answer('editor');
  assert.equal(await lookup, 'viewer');
  assert.equal(calls.length, 1);
});

test('with the cache off (TTL 0), a lookup in flight still answers with a change made meanwhile, and nothing is kept', async () => {
  const { cache, calls } = manualSetup(0);
  const lookup = cache.check('d1', identity('u1'), 'c1');
  cache.setGrant('u1', 'd1', 'none');
  calls[0]!.answer('editor');
  await assert.rejects(lookup, denied);
  assert.equal(cache.size, 0);
  const next = cache.check('d1', identity('u1'), 'c1');
  assert.equal(calls.length, 2);
  calls[1]!.answer('editor');
  assert.equal(await next, 'editor');
});
