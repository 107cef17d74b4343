/**
 * SessionControl in process, on the real parts of a shard
 * (test/helpers/shard-parts.ts) with a bus that records what would go to
 * the other nodes: a role change told once to the session, its room and
 * the other nodes; a session ended for the user's sake leaving its room at
 * once, getting what was queued for it, then its close code; the sessions
 * of a user. Every frame's exact text is asserted; absence is shown by a
 * marker arriving next. test/api-permissions.test.ts and
 * test/live-grants.test.ts check the same through the real server.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CloseReason } from '../src/protocol/api.ts';
import { CloseCode } from '../src/protocol/events.ts';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { ApiMetric } from '../src/protocol/metrics.ts';
import type { RelayBus } from '../src/shard/relay.ts';
import type { Session } from '../src/shard/session.ts';
import { SessionControl, type EndReason } from '../src/shard/session-control.ts';
import { shardParts, type Member, type Parts } from './helpers/shard-parts.ts';

const NOW = 1_800_000_000_000;

/** A RelayBus that keeps every publish as `desktopId event`. */
function recordingBus(): RelayBus & { published: string[] } {
  const published: string[] = [];
  return {
    published,
    remoteSessionsJson: () => '',
    publish: (desktopId, eventJson) => void published.push(`${desktopId} ${eventJson}`),
    roomEmptied: () => {},
  };
}

const info = (s: Session) =>
  `{"sessionId":"${s.id}","userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)},"permission":"${s.permission}"}`;
const stampOf = (s: Session) =>
  `"sessionId":"${s.id}","userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)}`;
const updated = (s: Session, permission: string) =>
  `{"type":"session_updated",${stampOf(s)},"permission":"${permission}","timestamp":${NOW},"payload":${info(s)}}`;
const left = (s: Session) => `{"type":"session_left",${stampOf(s)},"timestamp":${NOW},"payload":${info(s)}}`;
const changed = (permission: string) => `{"type":"permission_changed","permission":"${permission}"}`;

/** A marker frame straight to `m` through the control: the next frame it reads must be this one. */
async function marker(control: SessionControl, m: Member, text = '{"type":"marker"}'): Promise<void> {
  control.deliver(m.session, encodeTextFrame(text));
  assert.equal(await m.client.next(), text);
}

async function setup(t: TestContext) {
  t.mock.timers.enable({ apis: ['Date'], now: NOW });
  const bus = recordingBus();
  const p = await shardParts(t, { bus });
  const control = new SessionControl({
    shardId: 3,
    nodeId: 'node-a',
    rooms: p.rooms,
    relay: p.relay,
    backpressure: p.backpressure,
    out: p.out,
    metrics: p.metrics,
    log: p.log,
  });
  const join = async (name: string, options: Parameters<Parts['join']>[1] = {}) => {
    const m = await p.join(name, options);
    control.add(m.session);
    return m;
  };
  const a = await join('Ann');
  const b = await join('Bob');
  const c = await join('Cat');
  for (const m of [a, a, b]) assert.match(await m.client.next(), /^\{"type":"session_joined"/);
  bus.published.length = 0;
  return { p, bus, control, join, a, b, c };
}

const metric = (p: Parts, m: number) => p.metrics.values[m];
const logged = (p: Parts, event: string): Record<string, unknown>[] =>
  p.log.entries.filter((e) => e.event === event).map((e) => ({ level: e.level, ...e.fields }));

test('a new role: permission_changed to the session, session_updated to every other member and to the other nodes, once', async (t) => {
  const { p, bus, control, join, a, b, c } = await setup(t);
  const d = await join('Dan', { desktopId: 'desk-2' });
  bus.published.length = 0;

  assert.equal(control.setPermission(b.session, 'viewer', 'api'), true);
  assert.equal(b.session.permission, 'viewer');
  assert.equal(await b.client.next(), changed('viewer'));
  assert.equal(await a.client.next(), updated(b.session, 'viewer'));
  assert.equal(await c.client.next(), updated(b.session, 'viewer'));
  assert.deepEqual(bus.published, [`desk-1 ${updated(b.session, 'viewer')}`]);
  assert.equal(metric(p, ApiMetric.CHANGED_BY_API), 1);
  assert.equal(metric(p, ApiMetric.CHANGED_BY_RECHECK), 0);
  assert.deepEqual(logged(p, 'permission_changed'), [
    { level: 'info', sessionId: b.session.id, desktopId: 'desk-1', userId: b.session.userId, from: 'editor', to: 'viewer', cause: 'api' },
  ]);

  // The same role again changes and tells nothing.
  assert.equal(control.setPermission(b.session, 'viewer', 'api'), false);
  for (const m of [a, b, c, d]) await marker(control, m);
  assert.equal(bus.published.length, 1);
  assert.equal(metric(p, ApiMetric.CHANGED_BY_API), 1);
  assert.equal(logged(p, 'permission_changed').length, 1);

  // A recheck's change is counted as one.
  assert.equal(control.setPermission(b.session, 'editor', 'recheck'), true);
  assert.equal(await b.client.next(), changed('editor'));
  assert.equal(await a.client.next(), updated(b.session, 'editor'));
  assert.equal(metric(p, ApiMetric.CHANGED_BY_RECHECK), 1);
  assert.equal(metric(p, ApiMetric.CHANGED_BY_API), 1);
  assert.equal(logged(p, 'permission_changed')[1]!.cause, 'recheck');
});

test('a closing member gets no session_updated; a session alone in its room, or not in one yet, still gets its own frame and the other nodes theirs', async (t) => {
  const { p, bus, control, join, a, b, c } = await setup(t);
  c.session.ws.close(1000, 'leaving');
  assert.equal(control.setPermission(a.session, 'viewer', 'api'), true);
  assert.equal(await a.client.next(), changed('viewer'));
  assert.equal(await b.client.next(), updated(a.session, 'viewer'));
  assert.deepEqual(await c.client.waitClosed(), { code: 1000, reason: 'leaving' });
  assert.equal(c.client.pending, 0, 'the closing member got nothing');

  const d = await join('Dan', { desktopId: 'desk-2' });
  bus.published.length = 0;
  assert.equal(control.setPermission(d.session, 'viewer', 'api'), true);
  assert.equal(await d.client.next(), changed('viewer'));
  assert.deepEqual(bus.published, [`desk-2 ${updated(d.session, 'viewer')}`]);

  // Admitted, but waiting for its room's first sync (federation): it has no room yet.
  const e = await p.open('Eve', { desktopId: 'desk-3' });
  control.add(e.session);
  bus.published.length = 0;
  assert.equal(control.setPermission(e.session, 'viewer', 'api'), true);
  assert.equal(await e.client.next(), changed('viewer'));
  assert.deepEqual(bus.published, [`desk-3 ${updated(e.session, 'viewer')}`]);
});

test('a session that is not open keeps its role, and nothing is told', async (t) => {
  const { p, bus, control, a, b } = await setup(t);
  a.session.ws.close(1000, 'leaving');
  assert.equal(control.setPermission(a.session, 'viewer', 'api'), false);
  assert.equal(a.session.permission, 'editor');
  await marker(control, b);
  assert.deepEqual(bus.published, []);
  assert.equal(metric(p, ApiMetric.CHANGED_BY_API), 0);
  assert.deepEqual(logged(p, 'permission_changed'), []);
});

const ENDS: [EndReason, number, string, number][] = [
  ['revoked', CloseCode.PERMISSION_REVOKED, CloseReason.PERMISSION_REVOKED, ApiMetric.CLOSED_REVOKED],
  ['disconnected', CloseCode.DISCONNECTED, CloseReason.DISCONNECTED, ApiMetric.CLOSED_DISCONNECTED],
  ['token_expired', CloseCode.DISCONNECTED, CloseReason.TOKEN_EXPIRED, ApiMetric.CLOSED_TOKEN_EXPIRED],
];

for (const [why, code, reason, counter] of ENDS) {
  test(`end (${why}): out of its room at once, what was queued for it, then ${code}; once`, async (t) => {
    const { p, bus, control, a, b, c } = await setup(t);
    // Queued this turn, not written yet: it must reach b before the close frame.
    control.deliver(b.session, encodeTextFrame('{"type":"queued"}'));
    assert.equal(control.end(b.session, why, reason), true);
    assert.equal(b.session.open, false);
    assert.deepEqual(
      p.rooms.get('desk-1')!.members.map((s) => s.firstName),
      ['Ann', 'Cat'],
    );
    assert.equal(await a.client.next(), left(b.session));
    assert.equal(await c.client.next(), left(b.session));
    assert.deepEqual(bus.published, [`desk-1 ${left(b.session)}`]);
    assert.equal(await b.client.next(), '{"type":"queued"}');
    assert.deepEqual(await b.client.waitClosed(), { code, reason });
    assert.equal(b.client.pending, 0, 'nothing after the close');
    for (const [, , , other] of ENDS) assert.equal(metric(p, other), other === counter ? 1 : 0);
    assert.deepEqual(logged(p, 'session_ended'), [{ level: 'info', sessionId: b.session.id, desktopId: 'desk-1', userId: b.session.userId, why, code }]);

    // Ending it again does nothing.
    assert.equal(control.end(b.session, why, reason), false);
    assert.equal(metric(p, counter), 1);
    assert.equal(logged(p, 'session_ended').length, 1);
    await marker(control, a);
  });
}

test("a user's sessions on the shard: added, removed, listed as a copy; nothing is kept for a user without sessions", async (t) => {
  const { control, join, a } = await setup(t);
  const first = await join('Eve', { userId: 'u-eve' });
  const second = await join('Eve', { userId: 'u-eve', desktopId: 'desk-2' });
  assert.deepEqual(control.sessionsOf('u-eve'), [first.session, second.session]);
  assert.deepEqual(control.sessionsOf(a.session.userId), [a.session]);
  assert.deepEqual(control.sessionsOf('u-nobody'), []);
  const copy = control.sessionsOf('u-eve');
  copy.pop();
  assert.equal(control.sessionsOf('u-eve').length, 2, 'the list is a copy');

  control.remove(first.session);
  assert.deepEqual(control.sessionsOf('u-eve'), [second.session]);
  control.remove(first.session);
  assert.deepEqual(control.sessionsOf('u-eve'), [second.session], 'removing twice is harmless');
  control.remove(second.session);
  assert.deepEqual(control.sessionsOf('u-eve'), []);
  // A shard sees many users over its life: none may stay in the map once its last session is gone.
  const byUser = (control as unknown as { byUser: Map<string, Set<Session>> }).byUser;
  assert.equal(byUser.has('u-eve'), false);
  control.remove(second.session);
  assert.equal(byUser.has('u-eve'), false);
  assert.deepEqual(control.sessionsOf(a.session.userId), [a.session], 'other users are untouched');
});

test('view: the session as the API reports it, with this node and shard', async (t) => {
  const { control, b } = await setup(t);
  control.setPermission(b.session, 'viewer', 'api');
  assert.deepEqual(control.view(b.session), {
    sessionId: b.session.id,
    userId: b.session.userId,
    firstName: 'Bob',
    email: 'bob@example.com',
    desktopId: 'desk-1',
    permission: 'viewer',
    connectedAt: NOW,
    node: 'node-a',
    shard: 3,
  });
});
