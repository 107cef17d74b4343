/**
 * The authorize cache in process, with a fake clock and an authority whose
 * answers the test settles: TTL, single flight, refusals not kept, and the
 * server API's eviction winning over a lookup in flight.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Identity } from '../src/auth/token.ts';
import { TopicAuthorizer, type TopicAuthority } from '../src/auth/topic-authorizer.ts';
import { AuthorizeError, AuthorizeErrorCode } from '../src/errors.ts';
import type { Permission } from '../src/protocol/events.ts';

interface Pending {
  userId: string;
  topic: string;
  resolve: (p: Permission) => void;
  reject: (err: Error) => void;
}

function fakeAuthority(): TopicAuthority & { pending: Pending[] } {
  const pending: Pending[] = [];
  return {
    pending,
    authorize: (identity, topic) => new Promise((resolve, reject) => pending.push({ userId: identity.userId, topic, resolve, reject })),
    close: async () => {},
  };
}

const who = (userId: string): Identity => ({ userId, firstName: '', email: '', permissionClaim: undefined, expiresAt: Date.now() + 60_000 });

test('an accepted answer is reused for 30 s per (user, topic), then asked again', async () => {
  let now = 1_000;
  const authority = fakeAuthority();
  const cache = new TopicAuthorizer(authority, { now: () => now });
  const first = cache.authorize(who('u1'), 'desktop:a');
  authority.pending.shift()!.resolve('editor');
  assert.equal(await first, 'editor');
  now += 29_999;
  assert.equal(await cache.authorize(who('u1'), 'desktop:a'), 'editor');
  assert.equal(authority.pending.length, 0);
  // Another user, another topic: their own calls.
  void cache.authorize(who('u2'), 'desktop:a');
  void cache.authorize(who('u1'), 'desktop:b');
  assert.equal(authority.pending.length, 2);
  now += 1;
  void cache.authorize(who('u1'), 'desktop:a');
  assert.equal(authority.pending.length, 3, 'expired after 30 s');
  assert.equal(cache.calls, 4);
});

test('identical lookups in flight share one call; a refusal is never kept', async () => {
  const authority = fakeAuthority();
  const cache = new TopicAuthorizer(authority);
  const a = cache.authorize(who('u1'), 'desktop:a');
  const b = cache.authorize(who('u1'), 'desktop:a');
  assert.equal(authority.pending.length, 1);
  authority.pending.shift()!.reject(new AuthorizeError(AuthorizeErrorCode.FORBIDDEN, 'no'));
  for (const p of [a, b]) await assert.rejects(p, (err: unknown) => err instanceof AuthorizeError && err.code === AuthorizeErrorCode.FORBIDDEN);
  void cache.authorize(who('u1'), 'desktop:a');
  assert.equal(authority.pending.length, 1, 'asked again');
  assert.equal(cache.size, 0);
});

test('an eviction evicts, and the answer of a lookup in flight when it came is not kept', async () => {
  const authority = fakeAuthority();
  const cache = new TopicAuthorizer(authority);
  const kept = cache.authorize(who('u1'), 'desktop:a');
  authority.pending.shift()!.resolve('editor');
  await kept;
  cache.evict('u1', 'desktop:a');
  assert.equal(cache.size, 0);
  const stale = cache.authorize(who('u1'), 'desktop:a');
  const other = cache.authorize(who('u1'), 'desktop:b');
  cache.evictUser('u1');
  for (const p of authority.pending.splice(0)) p.resolve('editor');
  assert.deepEqual([await stale, await other], ['editor', 'editor'], 'the lookups still answer');
  assert.equal(cache.size, 0, 'neither answer is kept');
  const fresh = cache.authorize(who('u1'), 'desktop:a');
  authority.pending.shift()!.resolve('viewer');
  assert.equal(await fresh, 'viewer');
  assert.equal(cache.size, 1, 'a lookup begun after the eviction is kept');
});
