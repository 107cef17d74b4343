/**
 * Server API requests on a shard (src/shard/commands.ts) in process, on
 * the real parts of a shard (test/helpers/shard-parts.ts) with the real
 * SessionControl: whom each kind reaches, with the exact bytes it gets;
 * what each reports (`reached`, `changed`, the sessions of a query); each
 * id applied once. Absence is shown by a marker arriving next.
 * test/api-events.test.ts and test/api-permissions.test.ts check the same
 * through the real server and its HTTP API.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { ApiRequest } from '../src/protocol/api.ts';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { ApiMetric } from '../src/protocol/metrics.ts';
import { Commands } from '../src/shard/commands.ts';
import type { Session } from '../src/shard/session.ts';
import { SessionControl } from '../src/shard/session-control.ts';
import { shardParts, type Member, type Parts } from './helpers/shard-parts.ts';

const NOW = 1_800_000_000_000;
let ids = 0;
const id = () => `req-${++ids}`;
const serverEvent = (type: string, payload = '{"n":1}') => `{"type":"${type}","sessionId":"server","userId":"server","timestamp":${NOW},"payload":${payload}}`;

/**
 * Five sessions on one shard: Ann (u-ann) and Bob (u-bob) in desk-1, Ann
 * again and Cat (u-cat) in desk-2, Dan (u-dan) alone in desk-3; each past
 * the presence frames of the others.
 */
async function setup(t: TestContext, debug = false) {
  t.mock.timers.enable({ apis: ['Date'], now: NOW });
  const p = await shardParts(t, { debug });
  const control = new SessionControl({
    shardId: 1,
    nodeId: 'node-a',
    rooms: p.rooms,
    relay: p.relay,
    backpressure: p.backpressure,
    out: p.out,
    metrics: p.metrics,
    log: p.log,
  });
  const commands = new Commands({ rooms: p.rooms, control, metrics: p.metrics, log: p.log, grants: null });
  const join = async (name: string, userId: string, desktopId: string) => {
    const m = await p.join(name, { userId, desktopId });
    control.add(m.session);
    return m;
  };
  const ann1 = await join('Ann', 'u-ann', 'desk-1');
  const bob = await join('Bob', 'u-bob', 'desk-1');
  const ann2 = await join('Ann', 'u-ann', 'desk-2');
  const cat = await join('Cat', 'u-cat', 'desk-2');
  const dan = await join('Dan', 'u-dan', 'desk-3');
  assert.match(await ann1.client.next(), /^\{"type":"session_joined"/);
  assert.match(await ann2.client.next(), /^\{"type":"session_joined"/);
  const all = { ann1, bob, ann2, cat, dan };
  /** Each named member's next frame is `text`; every other member's is a marker (it got nothing). */
  const expect = async (text: string, ...to: Member[]) => {
    for (const m of Object.values(all)) {
      if (to.includes(m)) {
        assert.equal(await m.client.next(), text, `${m.session.firstName} in ${m.session.desktopId}`);
      } else {
        control.deliver(m.session, encodeTextFrame('{"type":"marker"}'));
        assert.equal(await m.client.next(), '{"type":"marker"}', `${m.session.firstName} in ${m.session.desktopId} got nothing`);
      }
    }
  };
  /** Each of `members` got nothing (a marker is its next frame). */
  const nothingFor = async (...members: Member[]) => {
    for (const m of members) {
      control.deliver(m.session, encodeTextFrame('{"type":"marker"}'));
      assert.equal(await m.client.next(), '{"type":"marker"}', `${m.session.firstName} in ${m.session.desktopId} got nothing`);
    }
  };
  return { p, control, commands, expect, nothingFor, ...all };
}

const deliveries = (p: Parts) => p.metrics.values[ApiMetric.DELIVERIES];
const view = (s: Session) => ({
  sessionId: s.id,
  userId: s.userId,
  firstName: s.firstName,
  email: s.email,
  desktopId: s.desktopId,
  permission: s.permission,
  connectedAt: NOW,
  node: 'node-a',
  shard: 1,
});

test("publish: every open session of the desktop, the excepted user's left out; nothing for a desktop without a room", async (t) => {
  const { p, commands, expect, ann1, bob, cat } = await setup(t);
  const event = serverEvent('note');
  assert.deepEqual(commands.apply({ kind: 'publish', id: id(), desktopId: 'desk-1', type: 'note', event }), { duplicate: false, reached: 2, changed: 0 });
  await expect(event, ann1, bob);
  assert.equal(deliveries(p), 2);

  const except = serverEvent('note', '2');
  assert.deepEqual(commands.apply({ kind: 'publish', id: id(), desktopId: 'desk-2', type: 'note', exceptUserId: 'u-ann', event: except }), {
    duplicate: false,
    reached: 1,
    changed: 0,
  });
  await expect(except, cat);

  bob.session.ws.close(1000, 'bye');
  const closing = serverEvent('note', '3');
  assert.deepEqual(
    commands.apply({ kind: 'publish', id: id(), desktopId: 'desk-1', type: 'note', event: closing }),
    { duplicate: false, reached: 1, changed: 0 },
    'a closing session is not reached',
  );
  assert.equal(await ann1.client.next(), closing);

  assert.deepEqual(commands.apply({ kind: 'publish', id: id(), desktopId: 'desk-9', type: 'note', event }), { duplicate: false, reached: 0, changed: 0 });
  assert.equal(deliveries(p), 4);
});

test('user_event: every session of the user on the shard, in any room; broadcast: every session', async (t) => {
  const { p, commands, expect, ann1, bob, ann2, cat, dan } = await setup(t);
  const event = serverEvent('hello');
  assert.deepEqual(commands.apply({ kind: 'user_event', id: id(), userId: 'u-ann', type: 'hello', event }), { duplicate: false, reached: 2, changed: 0 });
  await expect(event, ann1, ann2);
  assert.deepEqual(commands.apply({ kind: 'user_event', id: id(), userId: 'u-nobody', type: 'hello', event }), { duplicate: false, reached: 0, changed: 0 });

  const all = serverEvent('maintenance', '"soon"');
  assert.deepEqual(commands.apply({ kind: 'broadcast', id: id(), type: 'maintenance', event: all }), { duplicate: false, reached: 5, changed: 0 });
  await expect(all, ann1, bob, ann2, cat, dan);
  assert.equal(deliveries(p), 7);
});

test("set_permission: the user's open sessions on that desktop only; the same role again changes none; none ends them with 4003", async (t) => {
  const { p, commands, nothingFor, ann1, bob, ann2, cat, dan } = await setup(t);
  const setAnn = (permission: 'editor' | 'viewer' | 'none', desktopId = 'desk-1'): ApiRequest => ({
    kind: 'set_permission',
    id: id(),
    desktopId,
    userId: 'u-ann',
    permission,
  });
  assert.deepEqual(commands.apply(setAnn('viewer')), { duplicate: false, reached: 1, changed: 1 });
  assert.equal(ann1.session.permission, 'viewer');
  assert.equal(ann2.session.permission, 'editor', 'her session on another desktop keeps its role');
  assert.equal(await ann1.client.next(), '{"type":"permission_changed","permission":"viewer"}');
  assert.match(await bob.client.next(), /^\{"type":"session_updated"/);
  await nothingFor(ann1, bob, ann2, cat, dan);
  assert.deepEqual(commands.apply(setAnn('viewer')), { duplicate: false, reached: 1, changed: 0 }, 'reached, not changed');
  assert.deepEqual(commands.apply(setAnn('viewer', 'desk-9')), { duplicate: false, reached: 0, changed: 0 });
  assert.deepEqual(commands.apply({ kind: 'set_permission', id: id(), desktopId: 'desk-1', userId: 'u-nobody', permission: 'viewer' }), {
    duplicate: false,
    reached: 0,
    changed: 0,
  });
  assert.equal(p.metrics.values[ApiMetric.CHANGED_BY_API], 1);

  assert.deepEqual(commands.apply(setAnn('none')), { duplicate: false, reached: 1, changed: 1 });
  assert.deepEqual(await ann1.client.waitClosed(), { code: 4003, reason: 'permission revoked' });
  assert.match(await bob.client.next(), /^\{"type":"session_left"/);
  assert.equal(ann2.session.open, true);
  assert.deepEqual(commands.apply(setAnn('none')), { duplicate: false, reached: 0, changed: 0 }, 'a closed session is not reached');
  assert.equal(p.metrics.values[ApiMetric.CLOSED_REVOKED], 1);
  bob.session.ws.close(1000, 'bye');
  assert.deepEqual(
    commands.apply({ kind: 'set_permission', id: id(), desktopId: 'desk-1', userId: 'u-bob', permission: 'viewer' }),
    { duplicate: false, reached: 0, changed: 0 },
    'nor a closing one',
  );
});

test('disconnect: every open session of the user on the shard closes with 4001 and the reason given', async (t) => {
  const { p, commands, nothingFor, ann1, ann2, bob, cat, dan } = await setup(t);
  assert.deepEqual(commands.apply({ kind: 'disconnect', id: id(), userId: 'u-ann', reason: 'logged out' }), { duplicate: false, reached: 2, changed: 2 });
  assert.deepEqual(await ann1.client.waitClosed(), { code: 4001, reason: 'logged out' });
  assert.deepEqual(await ann2.client.waitClosed(), { code: 4001, reason: 'logged out' });
  assert.match(await bob.client.next(), /^\{"type":"session_left"/);
  assert.match(await cat.client.next(), /^\{"type":"session_left"/);
  await nothingFor(bob, cat, dan);
  assert.equal(p.metrics.values[ApiMetric.CLOSED_DISCONNECTED], 2);
  assert.deepEqual(commands.apply({ kind: 'disconnect', id: id(), userId: 'u-ann', reason: 'again' }), { duplicate: false, reached: 0, changed: 0 });
  assert.deepEqual(commands.apply({ kind: 'disconnect', id: id(), userId: 'u-nobody', reason: 'x' }), { duplicate: false, reached: 0, changed: 0 });
});

test('presence and user_sessions: the open sessions, as the API reports them', async (t) => {
  const { commands, ann1, bob, ann2 } = await setup(t);
  assert.deepEqual(commands.apply({ kind: 'presence', id: id(), desktopId: 'desk-1' }), {
    duplicate: false,
    reached: 2,
    changed: 0,
    sessions: [view(ann1.session), view(bob.session)],
  });
  assert.deepEqual(commands.apply({ kind: 'user_sessions', id: id(), userId: 'u-ann' }), {
    duplicate: false,
    reached: 2,
    changed: 0,
    sessions: [view(ann1.session), view(ann2.session)],
  });
  assert.deepEqual(commands.apply({ kind: 'presence', id: id(), desktopId: 'desk-9' }), { duplicate: false, reached: 0, changed: 0, sessions: [] });
  assert.deepEqual(commands.apply({ kind: 'user_sessions', id: id(), userId: 'u-nobody' }), { duplicate: false, reached: 0, changed: 0, sessions: [] });
  ann1.session.ws.close(1000, 'bye');
  assert.deepEqual(
    commands.apply({ kind: 'presence', id: id(), desktopId: 'desk-1' }),
    { duplicate: false, reached: 1, changed: 0, sessions: [view(bob.session)] },
    'a closing session is not listed',
  );
  assert.deepEqual(commands.apply({ kind: 'user_sessions', id: id(), userId: 'u-ann' }), {
    duplicate: false,
    reached: 1,
    changed: 0,
    sessions: [view(ann2.session)],
  });
});

test('each id is applied once: the same request again is a duplicate that reaches no one, logged at debug only', async (t) => {
  const { p, commands, expect, nothingFor, ann1, bob, ann2, cat, dan } = await setup(t, true);
  const event = serverEvent('once');
  const request: ApiRequest = { kind: 'user_event', id: 'req-once', userId: 'u-bob', type: 'once', event };
  assert.deepEqual(commands.apply(request), { duplicate: false, reached: 1, changed: 0 });
  await expect(event, bob);
  assert.deepEqual(commands.apply(request), { duplicate: true, reached: 0, changed: 0 });
  assert.deepEqual(
    commands.apply({ kind: 'disconnect', id: 'req-once', userId: 'u-bob', reason: 'x' }),
    { duplicate: true, reached: 0, changed: 0 },
    'by id, whatever the request',
  );
  await nothingFor(ann1, bob, ann2, cat, dan);
  assert.equal(bob.session.open, true);
  assert.equal(deliveries(p), 1);
  assert.deepEqual(
    p.log.entries.filter((e) => e.event === 'api_duplicate').map((e) => ({ level: e.level, ...e.fields })),
    [
      { level: 'debug', id: 'req-once', kind: 'user_event' },
      { level: 'debug', id: 'req-once', kind: 'disconnect' },
    ],
  );
});

test('without debug on, a duplicate is not logged at all', async (t) => {
  const { p, commands } = await setup(t, false);
  const request: ApiRequest = { kind: 'broadcast', id: 'req-twice', type: 'x', event: serverEvent('x') };
  commands.apply(request);
  commands.apply(request);
  assert.deepEqual(
    p.log.entries.filter((e) => e.event === 'api_duplicate'),
    [],
  );
});
