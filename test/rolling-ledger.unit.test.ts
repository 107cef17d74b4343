/**
 * The rolling-restart bench's books (bench/rolling-ledger.ts): a delivery
 * owed to each other member of a desktop, counted lost, duplicated or
 * reordered, and each loss given its cause from the sessions' times.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IN_FLIGHT_MS, Ledger } from '../bench/rolling-ledger.ts';

test('every tick is owed once to each other member of its desktop, and to no one else', () => {
  // Clients 0, 1, 2 in desktop 0; client 3 alone in desktop 1.
  const ledger = new Ledger([0, 0, 0, 1]);
  for (let c = 0; c < 4; c++) ledger.up(c, 0);
  const a = ledger.sent(0, 10);
  const b = ledger.sent(0, 20);
  ledger.sent(3, 30);
  assert.deepEqual([a, b], [1, 2]);
  ledger.received(1, 0, 1);
  ledger.received(1, 0, 2);
  ledger.received(2, 0, 1);
  // Client 3 is not in desktop 0: its arrival counts nowhere.
  ledger.received(3, 0, 1);
  assert.equal(ledger.complete(), false);
  const tally = ledger.tally();
  // 2 ticks × 2 peers + 1 tick × 0 peers.
  assert.equal(tally.owed, 4);
  assert.equal(tally.delivered, 3);
  assert.equal(tally.lost, 1);
  assert.equal(tally.lostTicks, 1);
  ledger.received(2, 0, 2);
  assert.equal(ledger.complete(), true);
  assert.equal(ledger.tally().lost, 0);
});

test('a second arrival is a duplicate and an earlier number after a later one is reordered', () => {
  const ledger = new Ledger([0, 0]);
  ledger.up(0, 0);
  ledger.up(1, 0);
  for (let i = 0; i < 3; i++) ledger.sent(0, i);
  ledger.received(1, 0, 1);
  ledger.received(1, 0, 3);
  ledger.received(1, 0, 2);
  ledger.received(1, 0, 2);
  ledger.received(1, 0, 2);
  // Never sent (4), not an integer, its own: ignored.
  ledger.received(1, 0, 4);
  ledger.received(1, 0, 1.5);
  ledger.received(0, 0, 1);
  const tally = ledger.tally();
  assert.deepEqual(
    { delivered: tally.delivered, lost: tally.lost, duplicated: tally.duplicated, reordered: tally.reordered },
    { delivered: 3, lost: 0, duplicated: 2, reordered: 1 },
  );
});

test('a loss is put on the receiver away, the sender or receiver dropping, or nothing seen', () => {
  const ledger = new Ledger([0, 0, 0]);
  for (let c = 0; c < 3; c++) ledger.up(c, 0);
  ledger.sent(0, 100); // 1: client 1 away (below); client 2 has it.
  ledger.down(1, 50);
  ledger.up(1, 500);
  assert.equal(ledger.sessionCount(1), 2);
  ledger.sent(0, 1000); // 2: the sender's session ends 100 ms later.
  ledger.down(0, 1100);
  ledger.up(0, 1200);
  ledger.sent(0, 2000); // 3: client 2's session ends 100 ms later.
  ledger.down(2, 2100);
  ledger.up(2, 2200);
  ledger.sent(0, 5000); // 4: lost at client 1 with nothing ending near it.
  ledger.down(1, 5000 + IN_FLIGHT_MS + 1);
  ledger.received(2, 0, 1);
  ledger.received(2, 0, 4);
  ledger.received(1, 0, 3);
  const { causes, lost, lostTicks } = ledger.tally();
  assert.equal(lost, 5);
  assert.equal(lostTicks, 4);
  assert.deepEqual(causes, { receiverAway: 1, senderDropped: 2, receiverDropped: 1, other: 1 });
  assert.equal(ledger.isUp(1), false);
  assert.equal(ledger.isUp(2), true);
});
