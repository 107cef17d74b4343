/**
 * The authorize cache in process, with a fake clock and an authority whose
 * answers the test settles: TTL, single flight, refusals not kept, and the
 * server API's eviction winning over a lookup in flight; the 100,000-answer
 * bound and which answers it lets go.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Identity } from '../src/auth/token.ts';
import { MAX_AUTHORIZE_ANSWERS, TopicAuthorizer, type TopicAuthority } from '../src/auth/topic-authorizer.ts';
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

/** An app that grants everything at once, counting the calls per (user, topic). */
function grantingAuthority(): TopicAuthority & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    authorize: async (identity, topic) => {
      asked.push(`${identity.userId} ${topic}`);
      return 'editor';
    },
    close: async () => {},
  };
}

test(`past ${MAX_AUTHORIZE_ANSWERS.toLocaleString('en')} answers the size stays bounded, and the user whose answers were written longest ago goes first`, async () => {
  const authority = grantingAuthority();
  // The clock stands still: only the order of writes decides.
  const cache = new TopicAuthorizer(authority, { now: () => 0 });
  // Full: one answer for each of MAX users.
  for (let i = 0; i < MAX_AUTHORIZE_ANSWERS; i++) {
    await cache.authorize(who(`u${i}`), 'desktop:a');
  }
  assert.equal(cache.size, MAX_AUTHORIZE_ANSWERS);
  assert.equal(authority.asked.length, MAX_AUTHORIZE_ANSWERS);

  // A new user: the user written longest ago goes.
  await cache.authorize(who('new'), 'desktop:a');
  assert.equal(cache.size, MAX_AUTHORIZE_ANSWERS);
  assert.deepEqual([cache.holds('u0', 'desktop:a'), cache.holds('u1', 'desktop:a'), cache.holds('new', 'desktop:a')], [false, true, true]);

  // A user already held asks for another topic: still bounded (the next oldest, u1, goes), and u2 is now a recent writer.
  await cache.authorize(who('u2'), 'desktop:b');
  assert.equal(cache.size, MAX_AUTHORIZE_ANSWERS, 'a known user adding a topic does not grow the cache past its bound');
  assert.equal(cache.holds('u1', 'desktop:a'), false);

  // So the next to go is u3, not u2: answers expire 30 s after they are written, so the oldest written are the first to be useless.
  await cache.authorize(who('other'), 'desktop:a');
  assert.equal(cache.size, MAX_AUTHORIZE_ANSWERS);
  assert.deepEqual(
    ['u2', 'u3', 'u4'].map((u) => cache.holds(u, 'desktop:a')),
    [true, false, true],
  );
  assert.equal(cache.holds('u2', 'desktop:b'), true);
  // A hit reaches no app and moves nothing.
  const calls = authority.asked.length;
  assert.equal(await cache.authorize(who('u4'), 'desktop:a'), 'editor');
  assert.equal(authority.asked.length, calls);
  await cache.authorize(who('last'), 'desktop:a');
  assert.equal(cache.holds('u4', 'desktop:a'), false, 'read, not written: u4 was still the oldest');
});

test(`one user alone cannot grow the cache past ${MAX_AUTHORIZE_ANSWERS.toLocaleString('en')}: its own oldest answers go`, async () => {
  const authority = grantingAuthority();
  // The clock stands still: only the order of writes decides.
  const cache = new TopicAuthorizer(authority, { now: () => 0 });
  for (let i = 0; i < MAX_AUTHORIZE_ANSWERS + 10; i++) {
    await cache.authorize(who('solo'), `desktop:t${i}`);
  }
  assert.equal(cache.size, MAX_AUTHORIZE_ANSWERS);
  assert.deepEqual(
    [0, 9, 10, MAX_AUTHORIZE_ANSWERS + 9].map((i) => cache.holds('solo', `desktop:t${i}`)),
    [false, false, true, true],
    'the ten written first went',
  );
});
