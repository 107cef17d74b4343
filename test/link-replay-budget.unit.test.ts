/**
 * What subscribers' replays may hold of other shards' histories
 * (link-replay-budget.ts, recovery.ts RemoteCursor), in process: a user
 * whose clients stop reading holds at most its own bound of batches, the
 * rest of its cursors wait their turn, and another user's replays go on
 * to their end meanwhile; a replay that ends lets go of what it held.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import type { Subscription } from '../src/shard/connection.ts';
import { LinkReplayBudget } from '../src/shard/link-replay-budget.ts';
import { LINK_REPLAY_USER_BYTES, Recovery, REMOTE_BATCH_BYTES } from '../src/shard/recovery.ts';

test('the budget: a batch is reserved while the user and the shard are under their bounds; waiters get their turn in order, per user, as bytes are let go', () => {
  const budget = new LinkReplayBudget(100, 150, 40);
  assert.ok(budget.acquire('a'));
  assert.ok(budget.acquire('a'));
  assert.ok(budget.acquire('a'), 'under the user bound (80 < 100): a third');
  assert.equal(budget.acquire('a'), false, '120 ≥ 100');
  assert.ok(budget.acquire('b'), "another user's first: the shard is at 120 < 150");
  assert.equal(budget.acquire('c'), false, 'the shard at 160 ≥ 150');
  const turns: string[] = [];
  const waiter = (user: string, name: string) => ({ user, go: () => turns.push(name) });
  const a1 = waiter('a', 'a1');
  budget.wait(a1);
  budget.wait(waiter('c', 'c1'));
  budget.wait(waiter('a', 'a2'));
  // b lets go of 40: the shard at 120; a is still at its bound, c is not: c1 goes first though a1 waited longer.
  budget.take('b', -40);
  assert.deepEqual(turns, ['c1']);
  assert.equal(budget.held, 160, "c1's batch reserved for it");
  // a lets go of two batches: a1 and a2 go, each reserving a batch (a at 120, the shard at 160).
  budget.take('a', -80);
  assert.deepEqual(turns, ['c1', 'a1', 'a2']);
  assert.equal(budget.held, 160);
  assert.equal(budget.queued, 0);
  // A waiter that leaves is not called when its turn would have come.
  const left = waiter('b', 'left');
  budget.wait(left);
  budget.leave(left);
  budget.take('c', -80);
  assert.deepEqual(turns, ['c1', 'a1', 'a2']);
  assert.equal(budget.queued, 0);
});

/** A subscriber here to a topic another shard owns: its socket takes what the replay writes and never drains (`reads: false`) or drains at once. */
function subscriber(user: string, n: number, reads: boolean) {
  const socket = Object.assign(new EventEmitter(), { writableNeedDrain: false, writableLength: 0 });
  const conn = { id: `session_${user}_${n}`, userId: user, socket, open: true, out: { queuedBytes: 0 } };
  const sub = { conn, topic: `desktop:room${n}`, roomKey: `room${n}`, owner: 1, replay: null, reads } as unknown as Subscription & { reads: boolean };
  return sub;
}

test("a user whose clients stop reading holds at most its own bound of other shards' batches; another user's replays go on to their end", async (t) => {
  const BATCHES = 6;
  const text = `{"op":"event","payload":"${'x'.repeat(REMOTE_BATCH_BYTES / 2 - 40)}"}`;
  const recovery: Recovery = new Recovery({
    historyAgeMs: 60_000,
    historyEvents: 100,
    historyRoomBytes: 1 << 20,
    historyMemoryBytes: 1 << 30,
    workers: 2,
    inUse: () => true,
    deliver: (target, frame) => {
      const sub = [...subs].find((s) => s.conn === target)!;
      if (!sub.reads) (target.socket as unknown as { writableLength: number }).writableLength += frame.length;
    },
  });
  const subs = [...Array.from({ length: 40 }, (_, i) => subscriber('stalls', i, false)), ...Array.from({ length: 4 }, (_, i) => subscriber('reads', i, true))];
  // The owner's side: each ask answered on a later turn, BATCHES batches of two events, then caught up.
  const asked = new Map<string, number>();
  for (const sub of subs) {
    recovery.follow(sub, { epoch: 'e', offset: 0 }, (request) => {
      const n = (asked.get(request.sid) ?? 0) + 1;
      asked.set(request.sid, n);
      const texts = n <= BATCHES ? [text, text] : [];
      setImmediate(() => recovery.onBatch({ k: 'batch', topic: request.topic, sid: request.sid, texts, last: request.o + texts.length }));
      return true;
    });
  }
  t.after(() => {
    for (const sub of subs) (sub.conn as { open: boolean }).open = false;
    recovery.stop();
  });
  const readers = subs.filter((s) => s.reads);
  const stalled = subs.filter((s) => !s.reads);
  for (let turn = 0; readers.some((s) => s.replay !== null); turn++) {
    assert.ok(turn < 10_000, "the reading user's replays did not end");
    await new Promise((resolve) => setImmediate(resolve));
    // At every turn: the stalled user holds no more than its bound and what one settling batch adds.
    assert.ok(recovery.linkBudget.held <= 2 * (LINK_REPLAY_USER_BYTES + 2 * REMOTE_BATCH_BYTES), `held ${recovery.linkBudget.held}`);
  }
  for (const sub of readers) assert.equal(asked.get(sub.conn.id), BATCHES + 1, 'every batch and the caught-up answer');
  assert.ok(recovery.linkBudget.queued > 0, 'some of the stalled cursors wait their turn');
  // The stalled clients go away: their replays end and let go of everything, waiting or holding.
  for (const sub of stalled) (sub.conn as { open: boolean }).open = false;
  for (let turn = 0; recovery.linkBudget.held > 0 || recovery.linkBudget.queued > 0; turn++) {
    assert.ok(turn < 10_000, `still held ${recovery.linkBudget.held}, ${recovery.linkBudget.queued} waiting`);
    await new Promise((resolve) => setImmediate(resolve));
  }
  recovery.stop();
});
