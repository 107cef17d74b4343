/**
 * The rate limiter on its own, with a clock the test sets: exact burst and
 * rate, the notice window, the streak that ends in a close, the pauses that
 * double through it, the byte budget, and the per-user state kept across
 * reconnects and forgotten once it has refilled. test/rate-limit.test.ts
 * checks the same limiter through the real server.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FORGET_EVERY_MS, MAX_PAUSE_MS, MIN_PAUSE_MS, NOTICE_WINDOW_MS, RateLimiter, STREAK_GAP_MS, type RateLimitOptions } from '../src/shard/rate-limiter.ts';

const OPTIONS: RateLimitOptions = { perSecond: 100, burst: 5, closeAfterMs: 3000, messageBytes: 1000 };
const T0 = 100_000;

test('the limiter: burst, then the rate; pauses double through a streak, even with frames passing between them, and reset after a quiet spell', () => {
  const limiter = new RateLimiter({ perSecond: 100, burst: 5, closeAfterMs: 60_000, messageBytes: 4096 });
  let now = 10_000;
  const state = limiter.acquire('user-x', now);
  const kinds = Array.from({ length: 7 }, () => limiter.take(state, now).kind);
  assert.deepEqual(kinds, ['pass', 'pass', 'pass', 'pass', 'pass', 'notify', 'drop']);
  const pauses: number[] = [];
  for (let i = 0; i < 4; i++) {
    pauses.push(limiter.pauseMs(state));
    state.pauses++; // as the relay does when it pauses
    now += pauses.at(-1)!;
    // During the pause the bucket refilled: a frame passes, the next ones are dropped again.
    assert.equal(limiter.take(state, now).kind, 'pass');
    while (limiter.take(state, now).kind === 'pass');
  }
  assert.deepEqual(pauses, [MIN_PAUSE_MS, 2 * MIN_PAUSE_MS, MAX_PAUSE_MS, MAX_PAUSE_MS]);
  // A quiet spell longer than STREAK_GAP_MS: the next streak starts from the shortest pause.
  now += STREAK_GAP_MS + 1;
  assert.equal(limiter.take(state, now).kind, 'pass');
  while (limiter.take(state, now).kind === 'pass');
  assert.equal(limiter.pauseMs(state), MIN_PAUSE_MS);
  // The user's state is shared by its sessions and kept across a reconnect.
  limiter.release('user-x', now);
  assert.equal(limiter.acquire('user-x', now + 10), state);
});

test('exactly the burst at once, then one token per 1/rate; a notice at most once a window', () => {
  const limiter = new RateLimiter(OPTIONS);
  const state = limiter.acquire('u', T0);
  for (let i = 0; i < 5; i++) assert.equal(limiter.take(state, T0).kind, 'pass');
  const notice = limiter.take(state, T0);
  assert.deepEqual(notice, { kind: 'notify', retryAfterMs: MIN_PAUSE_MS });
  assert.equal(limiter.take(state, T0 + 9).kind, 'drop', 'under 10 ms: no token yet');
  assert.equal(limiter.take(state, T0 + 10).kind, 'pass', 'one token per 10 ms at 100/s');
  assert.equal(limiter.take(state, T0 + 10).kind, 'drop');
  assert.equal(limiter.take(state, T0 + NOTICE_WINDOW_MS - 1).kind, 'pass');
  for (let i = 0; i < 200; i++) limiter.take(state, T0 + NOTICE_WINDOW_MS - 1);
  assert.equal(limiter.take(state, T0 + NOTICE_WINDOW_MS).kind, 'notify', 'a window after the last notice');
  assert.equal(limiter.take(state, T0 + NOTICE_WINDOW_MS).kind, 'drop');
});

test('dropping continuously for closeAfterMs closes, at exactly closeAfterMs; a gap longer than STREAK_GAP_MS starts over', () => {
  const limiter = new RateLimiter(OPTIONS);
  const state = limiter.acquire('u', T0);
  for (let i = 0; i < 5; i++) limiter.take(state, T0);
  const dropAt = (t: number) => {
    // Empty the bucket at t, then one more frame: its verdict.
    while (limiter.take(state, t).kind === 'pass');
    return limiter.take(state, t).kind;
  };
  assert.notEqual(dropAt(T0), 'close');
  for (let t = T0 + 500; t < T0 + 3000; t += 500) assert.notEqual(dropAt(t), 'close', `at +${t - T0}`);
  assert.equal(dropAt(T0 + 3000), 'close', 'closeAfterMs after the first drop');
  // A quiet spell: the next streak starts at its own first drop.
  const later = T0 + 3000 + STREAK_GAP_MS + 1;
  assert.notEqual(dropAt(later), 'close');
  assert.notEqual(dropAt(later + 1500), 'close');
  assert.notEqual(dropAt(later + 2999), 'close');
  assert.equal(dropAt(later + 3000), 'close');
  // Drops exactly STREAK_GAP_MS apart still make one streak.
  const limiter2 = new RateLimiter(OPTIONS);
  const s2 = limiter2.acquire('v', T0);
  const drop2 = (t: number) => {
    while (limiter2.take(s2, t).kind === 'pass');
    return limiter2.take(s2, t).kind;
  };
  drop2(T0);
  drop2(T0 + STREAK_GAP_MS);
  assert.equal(drop2(T0 + 2 * STREAK_GAP_MS), 'close', `${2 * STREAK_GAP_MS} ms of a streak with gaps of STREAK_GAP_MS`);
});

test("a pause lasts until a token is back, at least the streak's backoff", () => {
  const limiter = new RateLimiter({ ...OPTIONS, perSecond: 1 });
  const state = limiter.acquire('u', T0);
  for (let i = 0; i < 6; i++) limiter.take(state, T0);
  // A token every second: the bucket is empty, so a token is 1000 ms away.
  assert.equal(limiter.pauseMs(state), 1000);
  state.tokens = -2;
  assert.equal(limiter.pauseMs(state), 3000);
});

test('the byte budget: rate × messageBytes a second, burst × messageBytes at once, and a pause until it is positive again', () => {
  const limiter = new RateLimiter(OPTIONS);
  const state = limiter.acquire('u', T0);
  assert.equal(limiter.takeBytes(state, 5 * 1000 - 1, T0), true, 'within burst × messageBytes');
  assert.equal(limiter.takeBytes(state, 1, T0), false, 'empty at exactly the burst');
  assert.equal(limiter.takeBytes(state, 1000, T0), false);
  // 1000 bytes in debt at 100 × 1000 bytes/s: 10 ms to be even, but pauses are at least MIN_PAUSE_MS.
  assert.equal(limiter.bytePauseMs(state), MIN_PAUSE_MS);
  assert.equal(limiter.takeBytes(state, 100_000, T0), false);
  assert.equal(limiter.bytePauseMs(state), 1010, '101,000 bytes in debt at 100,000 bytes/s');
  // It refills with time, up to the burst and no further.
  assert.equal(limiter.takeBytes(state, 4999, T0 + 10_000), true, 'refilled to the burst');
  assert.equal(limiter.takeBytes(state, 1, T0 + 10_000), false, 'and no further');
  // 10 ms at 100 × 1000 bytes/s: 1000 bytes back.
  assert.equal(limiter.takeBytes(state, 999, T0 + 10_010), true);
  assert.equal(limiter.takeBytes(state, 1, T0 + 10_010), false);
});

test("a user's state is shared by its sessions and kept while any is open or until it has refilled, then forgotten", () => {
  const limiter = new RateLimiter(OPTIONS);
  const a = limiter.acquire('u', T0);
  assert.equal(limiter.acquire('u', T0), a, "one bucket for the user's sessions");
  limiter.release('u', T0);
  limiter.release('unknown', T0); // no-op
  // One session still open: kept however long.
  limiter.acquire('z', T0 + 10 * FORGET_EVERY_MS);
  assert.equal(limiter.acquire('u', T0 + 10 * FORGET_EVERY_MS), a);
  // keepMs = burst / rate + STREAK_GAP_MS: an idle user is dropped at the first sweep at least that long after its last close.
  const keepMs = OPTIONS.burst / (OPTIONS.perSecond / 1000) + STREAK_GAP_MS;
  const forgottenAfter = (idleMs: number): boolean => {
    const l = new RateLimiter(OPTIONS);
    const state = l.acquire('u', T0); // the first sweep runs here
    l.release('u', T0 + FORGET_EVERY_MS - idleMs);
    l.acquire('other', T0 + FORGET_EVERY_MS); // the next sweep
    assert.equal(l.trackedUsers, idleMs >= keepMs ? 1 : 2);
    return l.acquire('u', T0 + FORGET_EVERY_MS) !== state;
  };
  assert.equal(forgottenAfter(keepMs - 1), false, 'kept until refilled: a reconnect finds the same bucket');
  assert.equal(forgottenAfter(keepMs), true);
  // A sweep runs at most every FORGET_EVERY_MS.
  const l = new RateLimiter(OPTIONS);
  l.acquire('u', T0);
  l.release('u', T0);
  l.acquire('other', T0 + FORGET_EVERY_MS - 1);
  assert.equal(l.trackedUsers, 2);
});

test('with no limit, the limiter is disabled, and forgets idle users at the next sweep', () => {
  const off = new RateLimiter({ ...OPTIONS, perSecond: 0 });
  assert.equal(off.enabled, false);
  assert.equal(new RateLimiter(OPTIONS).enabled, true);
  off.acquire('u', T0);
  off.release('u', T0);
  off.acquire('other', T0 + FORGET_EVERY_MS);
  assert.equal(off.trackedUsers, 1, 'no bucket to keep: the idle user is gone');
});

test('a clock that steps back takes nothing away: no refill, no debt', () => {
  const limiter = new RateLimiter(OPTIONS);
  const state = limiter.acquire('u', T0);
  assert.equal(limiter.take(state, T0 - 60_000).kind, 'pass');
  assert.equal(limiter.takeBytes(state, 1000, T0 - 60_000), true);
  assert.equal(state.tokens, OPTIONS.burst - 1);
  assert.equal(state.byteTokens, OPTIONS.burst * OPTIONS.messageBytes - 1000);
});
