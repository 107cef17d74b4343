/**
 * Every loop that delivers to a room's members, in process
 * (test/helpers/shard-parts.ts: the shard's real parts over loopback
 * WebSockets), when a delivery in the middle of the loop cuts a member: a
 * member over the hard backlog cap is cut by the frame meant for it, leaves
 * its room at once (the room index swap-removes it: the last member moves
 * into its slot), and the loop must still reach every other member that
 * was open when it began. The room is Ann, Bob, Cat, Dan, Eve (joined in
 * that order); Bob is the one cut, so Eve, the last to join, is the member
 * a loop walking the live array would skip. Absence is proven by order: a
 * marker sent afterwards must come after the event.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { ApiRequest } from '../src/protocol/api.ts';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { Metric } from '../src/protocol/metrics.ts';
import { Commands } from '../src/shard/commands.ts';
import { SessionControl } from '../src/shard/session-control.ts';
import { shardParts, type Member, type Parts } from './helpers/shard-parts.ts';

const turn = () => new Promise((resolve) => setImmediate(resolve));
const send = (p: Parts, from: Member, value: unknown) => p.relay.onMessage(from.session, Buffer.from(JSON.stringify(value)), false);

/** The next frame's type and the session it is about (or from). */
async function nextOf(m: Member): Promise<[string, unknown]> {
  const frame = await m.client.json();
  return [frame.type as string, frame.sessionId];
}

/**
 * Ann…Eve in one room, past each other's session_joined, with Bob's socket
 * holding more than the hard cap (1000 bytes) from an earlier turn: the
 * next frame for Bob cuts him.
 */
async function roomWithStalledBob(t: TestContext) {
  // The other shards' bytes toward the process cap, as the test sets them (see armCap).
  let othersBytes = 0;
  let parts: Parts | undefined;
  const p = await shardParts(t, {
    backpressure: {
      maxBufferedBytes: 100,
      maxSessionBacklogBytes: 1000,
      maxOutboundBytes: CAP,
      processOutbound: () => parts!.metrics.values[Metric.OUTBOUND_BUFFERED]! + othersBytes,
    },
  });
  parts = p;
  /**
   * The server's own frames never trip a member's hard cap (issue 19): they
   * cut through the process cap, at the frame that takes the process over.
   * Set the other shards' figure so that `room` more bytes may be queued
   * and the next frame crosses the cap.
   */
  const armCap = (room: number) => {
    othersBytes = CAP - p.backpressure.outboundBytes - room;
  };
  const names = ['Ann', 'Bob', 'Cat', 'Dan', 'Eve'];
  const members: Member[] = [];
  for (const name of names) members.push(await p.join(name));
  for (let i = 0; i < members.length; i++) for (let j = i + 1; j < members.length; j++) assert.equal((await nextOf(members[i]!))[0], 'session_joined');
  const [ann, bob, cat, dan, eve] = members as [Member, Member, Member, Member, Member];
  bob.session.socket.cork();
  p.deliver(bob.session, encodeTextFrame('x'.repeat(1100)), undefined);
  await turn();
  assert.ok(bob.session.socket.writableLength > 1000);
  assert.deepEqual(p.cuts, []);
  return { p, ann, bob, cat, dan, eve, armCap };
}

const CAP = 1_000_000;

/** Bob was cut by the loop: he left the room, and each of `others` got his session_left, then `expected`, then the marker `ann` sends. */
async function everyoneElseGot(p: Parts, parts: { ann: Member; bob: Member; others: Member[] }, expected: [string, unknown]): Promise<void> {
  const { ann, bob, others } = parts;
  assert.deepEqual(p.cuts, [bob.session]);
  assert.deepEqual(
    p.rooms
      .get('desk-1')!
      .members.map((s) => s.firstName)
      .sort(),
    ['Ann', 'Cat', 'Dan', 'Eve'],
  );
  send(p, ann, { type: 'marker' });
  for (const m of others) {
    assert.deepEqual(await nextOf(m), ['session_left', bob.session.id], m.session.firstName);
    assert.deepEqual(await nextOf(m), expected, `${m.session.firstName} got the event`);
    assert.deepEqual(await nextOf(m), ['marker', ann.session.id], m.session.firstName);
  }
}

test('a relayed event reaches every member but the one its delivery cut, the last joined included', async (t) => {
  const { p, ann, bob, cat, dan, eve } = await roomWithStalledBob(t);
  send(p, ann, { type: 'asset_moved', payload: { i: 1 } });
  await everyoneElseGot(p, { ann, bob, others: [cat, dan, eve] }, ['asset_moved', ann.session.id]);
  assert.deepEqual(await nextOf(ann), ['session_left', bob.session.id]);
});

test('an event from another node (deliverRemote) reaches every local member but the one its delivery cut', async (t) => {
  const { p, ann, bob, cat, dan, eve } = await roomWithStalledBob(t);
  p.relay.deliverRemote(p.rooms.get('desk-1')!, encodeTextFrame('{"type":"remote_event","sessionId":"s-remote"}'));
  assert.deepEqual(await nextOf(ann), ['remote_event', 's-remote']);
  assert.deepEqual(await nextOf(ann), ['session_left', bob.session.id]);
  await everyoneElseGot(p, { ann, bob, others: [cat, dan, eve] }, ['remote_event', 's-remote']);
});

function control(p: Parts): SessionControl {
  return new SessionControl({
    shardId: 0,
    nodeId: 'node-a',
    rooms: p.rooms,
    relay: p.relay,
    backpressure: p.backpressure,
    out: p.out,
    metrics: p.metrics,
    log: p.log,
  });
}

test("a role change's session_updated reaches every member but the one its delivery cut", async (t) => {
  const { p, ann, bob, cat, dan, eve, armCap } = await roomWithStalledBob(t);
  // Ann's permission_changed fits; the loop's first frame, session_updated for Bob, takes the process over.
  armCap(encodeTextFrame('{"type":"permission_changed","permission":"viewer"}').length + 10);
  assert.equal(control(p).setPermission(ann.session, 'viewer', 'api'), true);
  assert.deepEqual(await ann.client.json(), { type: 'permission_changed', permission: 'viewer' });
  assert.deepEqual(await nextOf(ann), ['session_left', bob.session.id]);
  await everyoneElseGot(p, { ann, bob, others: [cat, dan, eve] }, ['session_updated', ann.session.id]);
});

test('an API broadcast and an API publish reach every session but the one their delivery cut', async (t) => {
  for (const kind of ['broadcast', 'publish'] as const) {
    await t.test(kind, async (t) => {
      const { p, ann, bob, cat, dan, eve, armCap } = await roomWithStalledBob(t);
      const sessionControl = control(p);
      const commands = new Commands({ rooms: p.rooms, control: sessionControl, metrics: p.metrics, log: p.log, grants: null });
      const event = '{"type":"notice","sessionId":"server","userId":"server"}';
      const request: ApiRequest =
        kind === 'broadcast' ? { kind, id: `id-${kind}`, type: 'notice', event } : { kind, id: `id-${kind}`, desktopId: 'desk-1', type: 'notice', event };
      // Ann's frame fits; the next, Bob's, takes the process over and cuts him, the largest backlog.
      armCap(encodeTextFrame(event).length + 10);
      // Bob counts: he was open when his turn came (the frame meant for him cut him).
      assert.equal(commands.apply(request).reached, 5);
      assert.deepEqual(await nextOf(ann), ['notice', 'server']);
      assert.deepEqual(await nextOf(ann), ['session_left', bob.session.id]);
      await everyoneElseGot(p, { ann, bob, others: [cat, dan, eve] }, ['notice', 'server']);
    });
  }
});

test('a pinned member array never changes: a leave or join meanwhile replaces it; unpinned, changes are in place and copy nothing', async (t) => {
  const p = await shardParts(t);
  const [a, b, c, d] = await Promise.all(['Ann', 'Bob', 'Cat', 'Dan'].map((name) => p.open(name)));
  for (const m of [a!, b!, c!]) p.rooms.join(m.session);
  const room = p.rooms.get('desk-1')!;
  const names = (members: readonly { firstName: string }[]) => members.map((s) => s.firstName);

  // No loop running: the same array, changed in place.
  const original = room.members;
  p.rooms.leave(c!.session);
  p.rooms.join(c!.session);
  assert.equal(room.members, original);

  // Nested loops, and a leave inside the inner one: both loops keep what they began with.
  const outer = p.rooms.pin(room);
  const inner = p.rooms.pin(room);
  p.rooms.leave(a!.session);
  assert.deepEqual(
    [names(outer), names(inner), names(room.members)],
    [
      ['Ann', 'Bob', 'Cat'],
      ['Ann', 'Bob', 'Cat'],
      ['Cat', 'Bob'],
    ],
  );
  const replaced = room.members;
  p.rooms.join(d!.session);
  assert.equal(room.members, replaced, 'the copy is not pinned: it changes in place');
  p.rooms.unpin(room, inner);
  p.rooms.unpin(room, outer);
  assert.equal(room.pins, 0);
  p.rooms.leave(b!.session);
  assert.deepEqual(names(room.members), ['Cat', 'Dan']);
  assert.equal(room.members, replaced);
  // The slots still index the live array.
  for (const [i, s] of room.members.entries()) assert.equal(s.slot.index, i);

  // A pin never released (a delivery threw) costs one copy at the next change, then none.
  p.rooms.pin(room);
  p.rooms.leave(c!.session);
  const afterLeak = room.members;
  assert.notEqual(afterLeak, replaced);
  p.rooms.join(c!.session);
  assert.equal(room.members, afterLeak);
});
