/**
 * The relay in process (test/helpers/shard-parts.ts: the shard's real
 * parts, real sessions over loopback WebSockets, a clock the test sets).
 * Each test calls the relay as the shard's socket handlers would and
 * asserts the exact text of every frame a member receives, and the
 * metrics and logs. Absence is shown by order: a marker sent afterwards is
 * the next frame. test/protocol.test.ts and test/bad-frames.test.ts check
 * the same rules through the real server.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { DEFAULT_MUTATION_TYPES, MAX_TYPE_LENGTH } from '../src/protocol/events.ts';
import { Metric } from '../src/protocol/metrics.ts';
import type { Session } from '../src/shard/session.ts';
import { FAULT_TYPE } from './helpers/fault-hook.ts';
import { shardParts, type Member, type Parts } from './helpers/shard-parts.ts';

const NOW = 1_800_000_000_000;
const freeze = (t: TestContext) => t.mock.timers.enable({ apis: ['Date'], now: NOW });

const send = (p: Parts, from: Member, value: unknown) =>
  p.relay.onMessage(from.session, Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)), false);

const info = (s: Session) => ({ sessionId: s.id, userId: s.userId, firstName: s.firstName, email: s.email, permission: s.permission });
/** The identity members every event caused by `s` carries, written out here rather than taken from the session. */
const stampOf = (s: Session) =>
  `"sessionId":"${s.id}","userId":${JSON.stringify(s.userId)},"firstName":${JSON.stringify(s.firstName)},"email":${JSON.stringify(s.email)}`;
const event = (type: string, s: Session, payload?: string, at = NOW) =>
  `{"type":${JSON.stringify(type)},${stampOf(s)},"timestamp":${at}${payload === undefined ? '' : `,"payload":${payload}`}}`;
const presence = (type: 'session_joined' | 'session_left', s: Session) => event(type, s, JSON.stringify(info(s)));
const errorFrame = (code: string, message: string, extra = '') => `{"type":"error","code":"${code}","message":${JSON.stringify(message)}${extra}}`;
const metric = (p: Parts, m: number) => p.metrics.values[m];

/** Members a, b, c of one room, each past the presence frames of the others. */
async function trio(t: TestContext, options: Parameters<typeof shardParts>[1] = {}) {
  const p = await shardParts(t, options);
  const a = await p.join('Ann');
  const b = await p.join('Bob');
  const c = await p.join('Cat');
  for (const text of [await a.client.next(), await a.client.next(), await b.client.next()]) assert.match(text, /^\{"type":"session_joined"/);
  return { p, a, b, c };
}

test('join: room_joined lists the members already there, in join order; session_joined reaches each of them and no one else', async (t) => {
  freeze(t);
  const p = await shardParts(t);
  const a = await p.join('Ann');
  assert.deepEqual(a.joined, { type: 'room_joined', sessionId: a.session.id, permission: a.session.permission, sessions: [] });
  const b = await p.join('Bob');
  assert.deepEqual(b.joined, { type: 'room_joined', sessionId: b.session.id, permission: b.session.permission, sessions: [info(a.session)] });
  assert.equal(await a.client.next(), presence('session_joined', b.session));
  const c = await p.join('Cat', { permission: 'viewer' });
  assert.deepEqual(c.joined, { type: 'room_joined', sessionId: c.session.id, permission: c.session.permission, sessions: [info(a.session), info(b.session)] });
  assert.equal(await a.client.next(), presence('session_joined', c.session));
  assert.equal(await b.client.next(), presence('session_joined', c.session));
  const d = await p.join('Dan', { desktopId: 'desk-2' });
  assert.deepEqual(d.joined, { type: 'room_joined', sessionId: d.session.id, permission: d.session.permission, sessions: [] });

  // Markers: none of them got its own session_joined, and desk-2 heard nothing of desk-1.
  send(p, c, { type: 'marker' });
  assert.equal(await a.client.next(), event('marker', c.session));
  assert.equal(await b.client.next(), event('marker', c.session));
  p.relay.sendError(d.session, 'invalid_message', 'marker');
  assert.equal(await d.client.next(), errorFrame('invalid_message', 'marker'));
  assert.equal(c.client.pending, 0);
  // 4 room_joined, 3 session_joined, 2 markers relayed, 1 error.
  assert.equal(metric(p, Metric.DELIVERIES), 10);
});

test('leave: session_left to the rest of the room; leaving again, or as the last member, sends nothing', async (t) => {
  freeze(t);
  const { p, a, b, c } = await trio(t);
  p.relay.leave(b.session);
  assert.equal(await a.client.next(), presence('session_left', b.session));
  assert.equal(await c.client.next(), presence('session_left', b.session));
  p.relay.leave(b.session);
  assert.equal(p.rooms.get('desk-1')!.members.length, 2);
  p.relay.sendError(b.session, 'invalid_message', 'marker');
  assert.equal(await b.client.next(), errorFrame('invalid_message', 'marker'), 'b heard nothing of its own leaving');
  send(p, c, { type: 'marker' });
  assert.equal(await a.client.next(), event('marker', c.session), 'one session_left each, not two');
  p.relay.leave(a.session);
  assert.equal(await c.client.next(), presence('session_left', a.session));
  p.relay.leave(c.session);
  assert.equal(p.rooms.roomCount, 0);
  assert.equal(p.rooms.sessionCount, 0);
});

test('an event is stamped with the sender identity and relayed as sent to every other member; identity the client wrote is ignored; no echo', async (t) => {
  freeze(t);
  const { p, a, b, c } = await trio(t);
  const payload = '{"id":"a1","x":1e20,"s":"\\u00e9","sessionId":"in-payload-stays"}';
  send(
    p,
    a,
    `{"type":"asset_moved","sessionId":"session_forged","userId":"forged","firstName":"Mallory","email":"m@evil.example","timestamp":1,"permission":"editor","payload":${payload}}`,
  );
  const relayed = event('asset_moved', a.session, payload);
  assert.equal(await b.client.next(), relayed);
  assert.equal(await c.client.next(), relayed);
  // Without a payload, the relayed event has none.
  send(p, b, '{"type":"cursor"}');
  assert.equal(await a.client.next(), event('cursor', b.session), 'the sender of asset_moved did not get it back');
  assert.equal(await c.client.next(), event('cursor', b.session));
  send(p, c, { type: 'marker' });
  assert.equal(await b.client.next(), event('marker', c.session), 'the sender of cursor did not get it back');
  assert.equal(await a.client.next(), event('marker', c.session));
  assert.deepEqual([metric(p, Metric.MESSAGES_RECEIVED), metric(p, Metric.MESSAGES_RELAYED), metric(p, Metric.DROPPED_INVALID)], [3, 3, 0]);
});

test('members that are closing get nothing; a member alone, or no longer in a room, relays nothing and is not answered', async (t) => {
  freeze(t);
  const { p, a, b, c } = await trio(t);
  c.session.ws.close(1000);
  const before = metric(p, Metric.DELIVERIES);
  send(p, a, { type: 'asset_moved' });
  assert.equal(await b.client.next(), event('asset_moved', a.session));
  assert.equal(metric(p, Metric.DELIVERIES), before + 1, 'one delivery: to b, not to the closing c');
  p.relay.sendError(c.session, 'invalid_message', 'to a closing session');
  assert.equal(metric(p, Metric.DELIVERIES), before + 1, 'no error frame is queued for a closing session');
  assert.equal(metric(p, Metric.DROPPED_INVALID), 1);

  p.relay.leave(b.session);
  p.relay.leave(c.session);
  assert.equal(await a.client.next(), presence('session_left', b.session));
  assert.equal(await a.client.next(), presence('session_left', c.session));
  const z = await p.open('Zed', { desktopId: 'desk-9' }); // never joined: its desktop has no room
  const relayed = metric(p, Metric.MESSAGES_RELAYED);
  send(p, a, { type: 'asset_moved' }); // alone in its room
  send(p, b, { type: 'asset_moved' }); // no longer in the room it left
  send(p, z, { type: 'asset_moved' });
  assert.equal(metric(p, Metric.MESSAGES_RELAYED), relayed);
  assert.equal(metric(p, Metric.MESSAGES_RECEIVED), 4);
  for (const m of [a, b, z]) p.relay.sendError(m.session, 'invalid_message', 'marker');
  for (const m of [a, b, z]) assert.equal(await m.client.next(), errorFrame('invalid_message', 'marker'));
  assert.deepEqual(p.log.entries, []);
});

test('bad frames are answered to the sender alone with their exact error, counted, and never relayed', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t);
  const TYPE = `"type" must be a non-empty string of at most ${MAX_TYPE_LENGTH} characters`;
  const cases: [string, string][] = [
    ['{', errorFrame('invalid_message', 'message is not valid JSON')],
    ['5', errorFrame('invalid_message', 'message must be a JSON object')],
    ['null', errorFrame('invalid_message', 'message must be a JSON object')],
    ['[{"type":"asset_moved"}]', errorFrame('invalid_message', 'message must be a JSON object')],
    ['"asset_moved"', errorFrame('invalid_message', 'message must be a JSON object')],
    ['{}', errorFrame('invalid_message', TYPE)],
    ['{"payload":{"type":"asset_moved"}}', errorFrame('invalid_message', TYPE)],
    ['{"type":5}', errorFrame('invalid_message', TYPE)],
    ['{"type":""}', errorFrame('invalid_message', TYPE)],
    [`{"type":"${'t'.repeat(MAX_TYPE_LENGTH + 1)}"}`, errorFrame('invalid_message', TYPE)],
    ...['room_joined', 'session_joined', 'session_left', 'error'].map((type): [string, string] => [
      `{"type":"${type}"}`,
      errorFrame('reserved_type', `"${type}" is sent by the server only`),
    ]),
  ];
  for (const [text] of cases) send(p, a, text);
  p.relay.onMessage(a.session, Buffer.from('{"type":"asset_moved"}'), true);
  for (const [text, answer] of cases) assert.equal(await a.client.next(), answer, text);
  assert.equal(await a.client.next(), errorFrame('unsupported_binary', 'binary frames are not supported; send JSON text'));

  // A type inherited from a polluted prototype is not the frame's own.
  const proto = Object.prototype as { type?: string };
  proto.type = 'asset_moved';
  try {
    send(p, a, '{}');
  } finally {
    delete proto.type;
  }
  assert.equal(await a.client.next(), errorFrame('invalid_message', TYPE));

  const longest = 't'.repeat(MAX_TYPE_LENGTH);
  send(p, a, { type: longest });
  assert.equal(await b.client.next(), event(longest, a.session), 'the first frame b gets is the valid one');
  assert.deepEqual([metric(p, Metric.DROPPED_INVALID), metric(p, Metric.MESSAGES_RELAYED)], [cases.length + 2, 1]);
});

test('a viewer: every type of the mutation table is dropped silently, other types relayed; an editor sends them all', async (t) => {
  freeze(t);
  const p = await shardParts(t);
  const viewer = await p.join('Vic', { permission: 'viewer' });
  const editor = await p.join('Eve');
  await viewer.client.next(); // session_joined
  const table = DEFAULT_MUTATION_TYPES;
  assert.equal(table.length, 28, "the issue's list: 9 asset, 3 cell, table_generating, 15 pt_*");
  for (const type of table) send(p, viewer, { type, payload: { from: 'viewer' } });
  send(p, viewer, { type: 'cursor_moved', payload: { x: 1 } });
  assert.equal(await editor.client.next(), event('cursor_moved', viewer.session, '{"x":1}'), 'none of the mutations reached the editor');
  for (const type of table) send(p, editor, { type, payload: { from: 'editor' } });
  for (const type of table)
    assert.equal(await viewer.client.next(), event(type, editor.session, '{"from":"editor"}'), 'no error before it: the drops were silent');
  assert.deepEqual(
    [metric(p, Metric.DROPPED_VIEWER), metric(p, Metric.MESSAGES_RELAYED), metric(p, Metric.DROPPED_INVALID)],
    [table.length, table.length + 1, 0],
  );
  assert.deepEqual(p.log.entries, [], 'with debug off nothing is logged, and nothing built for debug');
});

test("a configured mutation table replaces the default: its types are dropped, the default's relayed", async (t) => {
  freeze(t);
  const p = await shardParts(t, { mutationTypes: ['cursor_moved'] });
  const viewer = await p.join('Vic', { permission: 'viewer' });
  const editor = await p.join('Eve');
  await viewer.client.next(); // session_joined
  send(p, viewer, { type: 'cursor_moved', payload: { x: 1 } });
  send(p, viewer, { type: 'pt_cell_updated', payload: { cell: 'A1' } });
  assert.equal(await editor.client.next(), event('pt_cell_updated', viewer.session, '{"cell":"A1"}'), 'cursor_moved was dropped, pt_cell_updated relayed');
  assert.deepEqual([metric(p, Metric.DROPPED_VIEWER), metric(p, Metric.MESSAGES_RELAYED)], [1, 1]);
});

test('with debug on: a dropped viewer mutation and the logged event types are logged, nothing else', async (t) => {
  freeze(t);
  const p = await shardParts(t, { debug: true });
  const viewer = await p.join('Vic', { permission: 'viewer' });
  const editor = await p.join('Eve');
  send(p, viewer, { type: 'asset_moved' });
  for (const type of ['asset_moved', 'asset_resized', 'asset_added', 'asset_removed', 'asset_dragging', 'asset_selected', 'asset_deselected', 'cursor'])
    send(p, editor, { type });
  const { session: e } = editor;
  assert.deepEqual(p.log.entries, [
    { level: 'debug', event: 'viewer_mutation_dropped', fields: { sessionId: viewer.session.id, type: 'asset_moved' } },
    ...['asset_moved', 'asset_resized', 'asset_added', 'asset_removed'].map((type) => ({
      level: 'debug',
      event: 'event',
      fields: { type, sessionId: e.id, desktopId: 'desk-1', userId: e.userId },
    })),
  ]);
});

test('rate limit: the burst passes; the first frame over it gets rate_limited with retryAfterMs, later ones are dropped silently; reads pause once', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t, { rateLimit: { perSecond: 10, burst: 3, closeAfterMs: 60_000 } });
  for (let i = 0; i < 5; i++) send(p, a, { type: 'asset_moved', payload: { i } });
  assert.ok(a.session.reads.resumeTimer !== null, 'reads of the sender are paused');
  assert.equal(a.session.ws.isPaused, true);
  t.mock.timers.tick(100); // one token back at 10/s
  send(p, a, { type: 'asset_moved', payload: { i: 5 } });
  for (const i of [0, 1, 2]) assert.equal(await b.client.next(), event('asset_moved', a.session, `{"i":${i}}`));
  assert.equal(await b.client.next(), event('asset_moved', a.session, '{"i":5}', NOW + 100));
  assert.equal(await a.client.next(), errorFrame('rate_limited', 'too many messages; slow down', ',"retryAfterMs":250'));
  send(p, b, { type: 'marker' });
  assert.equal(await a.client.next(), event('marker', b.session, undefined, NOW + 100), 'one notice, not one per dropped frame');
  assert.deepEqual([metric(p, Metric.DROPPED_RATE_LIMIT), metric(p, Metric.RATE_PAUSES), a.session.rate.pauses], [2, 1, 1]);
  assert.deepEqual([metric(p, Metric.MESSAGES_RECEIVED), metric(p, Metric.MESSAGES_RELAYED), metric(p, Metric.CLOSED_RATE_LIMIT)], [7, 5, 0]);
  assert.deepEqual(p.log.entries, [{ level: 'info', event: 'rate_limited', fields: { sessionId: a.session.id, desktopId: 'desk-1' } }]);
});

test('rate limit close: the sender gets what was queued for it, then 1008; it is closed and counted once, and never paused', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t, { rateLimit: { perSecond: 10, burst: 2, closeAfterMs: 0 } });
  send(p, a, '{'); // takes a token; its error frame is queued in this turn, before the close
  send(p, a, { type: 'asset_moved', payload: { i: 0 } });
  send(p, a, { type: 'asset_moved', payload: { i: 1 } });
  send(p, a, { type: 'asset_moved', payload: { i: 2 } });
  assert.equal(await a.client.next(), errorFrame('invalid_message', 'message is not valid JSON'));
  assert.deepEqual(await a.client.waitClosed(), { code: 1008, reason: 'rate limit exceeded' });
  assert.equal(a.client.pending, 0);
  assert.equal(await b.client.next(), event('asset_moved', a.session, '{"i":0}'));
  p.relay.leave(a.session);
  assert.equal(await b.client.next(), presence('session_left', a.session), 'the dropped frames were not relayed');
  // i=1 is the frame that closed it (dropped); i=2 comes after the close and is not handled at all (the session is no longer open).
  assert.deepEqual([metric(p, Metric.CLOSED_RATE_LIMIT), metric(p, Metric.DROPPED_RATE_LIMIT), metric(p, Metric.RATE_PAUSES)], [1, 1, 0]);
  assert.deepEqual(p.log.entries, [{ level: 'warn', event: 'rate_limit_close', fields: { sessionId: a.session.id, desktopId: 'desk-1' } }]);
});

test('with the limit off nothing is dropped or paused, whatever the burst', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t, { rateLimit: { perSecond: 0, burst: 1 } });
  for (let i = 0; i < 3; i++) p.relay.onControlFrame(a.session);
  for (let i = 0; i < 3; i++) send(p, a, { type: 'asset_moved', payload: { i } });
  p.relay.onBytes(a.session, 1_000_000);
  for (let i = 0; i < 3; i++) assert.equal(await b.client.next(), event('asset_moved', a.session, `{"i":${i}}`));
  assert.deepEqual([metric(p, Metric.DROPPED_RATE_LIMIT), metric(p, Metric.RATE_PAUSES), metric(p, Metric.INBOUND_BYTES)], [0, 0, 1_000_000]);
  assert.equal(a.session.reads.resumeTimer, null);
});

test('control frames cost a token each and are never relayed; over the limit they are dropped like messages', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t, { rateLimit: { perSecond: 10, burst: 2, closeAfterMs: 60_000 } });
  p.relay.onControlFrame(a.session);
  p.relay.onControlFrame(a.session);
  assert.equal(metric(p, Metric.DROPPED_RATE_LIMIT), 0);
  p.relay.onControlFrame(a.session);
  assert.equal(metric(p, Metric.DROPPED_RATE_LIMIT), 1);
  send(p, a, { type: 'asset_moved', payload: { dropped: true } });
  assert.equal(metric(p, Metric.DROPPED_RATE_LIMIT), 2);
  assert.equal(await a.client.next(), errorFrame('rate_limited', 'too many messages; slow down', ',"retryAfterMs":250'));
  t.mock.timers.tick(100);
  send(p, a, { type: 'marker' });
  assert.equal(await b.client.next(), event('marker', a.session, undefined, NOW + 100));
});

test('bytes read count against the byte budget: over it an open session pauses, a closing one is cut', async (t) => {
  freeze(t);
  const { p, a } = await trio(t, { rateLimit: { perSecond: 10, burst: 2, closeAfterMs: 60_000, messageBytes: 100 } });
  p.relay.onBytes(a.session, 150);
  assert.equal(a.session.reads.resumeTimer, null, '150 of 200 bytes');
  p.relay.onBytes(a.session, 60);
  assert.ok(a.session.reads.resumeTimer !== null, 'over the 200-byte budget: paused');
  assert.deepEqual([metric(p, Metric.RATE_PAUSES), a.session.rate.pauses, metric(p, Metric.INBOUND_BYTES)], [1, 1, 210]);
  assert.equal(a.session.socket.destroyed, false);
  a.session.ws.close(1000);
  p.relay.onBytes(a.session, 10);
  assert.equal(a.session.socket.destroyed, true, 'a closing session that keeps sending is cut');
  assert.equal(metric(p, Metric.RATE_PAUSES), 1);
});

test('a failure while handling one message is answered with internal_error and logged; nothing is relayed', async (t) => {
  freeze(t);
  const { p, a, b } = await trio(t);
  send(p, a, { type: FAULT_TYPE, payload: {} });
  assert.equal(await a.client.next(), errorFrame('internal_error', 'the server failed to handle this message'));
  assert.equal(p.log.entries.length, 1);
  const [entry] = p.log.entries;
  assert.deepEqual([entry!.level, entry!.event, entry!.fields!.sessionId, entry!.fields!.desktopId], ['error', 'message_failed', a.session.id, 'desk-1']);
  assert.equal((entry!.fields!.err as Error).message, 'injected fault');
  send(p, a, { type: 'marker' });
  assert.equal(await b.client.next(), event('marker', a.session));
  assert.equal(metric(p, Metric.DROPPED_INVALID), 1);
});

test('over budget, a member gets only the newest transient event per sender and type, after the ordered ones', async (t) => {
  freeze(t);
  const { p, a, b, c } = await trio(t, { backpressure: { maxBufferedBytes: 100 } });
  const pad = 'x'.repeat(200);
  send(p, a, { type: 'asset_moved', payload: { pad } }); // b and c are now over 100 bytes
  send(p, a, { type: 'asset_dragging', payload: { n: 1 } });
  send(p, a, { type: 'asset_dragging', payload: { n: 2 } });
  send(p, c, { type: 'asset_dragging', payload: { n: 3 } });
  send(p, a, { type: 'asset_selected', payload: { n: 4 } });
  const moved = event('asset_moved', a.session, `{"pad":"${pad}"}`);
  for (const expected of [
    moved,
    event('asset_selected', a.session, '{"n":4}'),
    event('asset_dragging', a.session, '{"n":2}'),
    event('asset_dragging', c.session, '{"n":3}'),
  ]) {
    assert.equal(await b.client.next(), expected);
  }
  for (const expected of [moved, event('asset_selected', a.session, '{"n":4}'), event('asset_dragging', a.session, '{"n":2}')]) {
    assert.equal(await c.client.next(), expected);
  }
  assert.equal(await a.client.next(), event('asset_dragging', c.session, '{"n":3}'));
  assert.equal(metric(p, Metric.DROPPED_COALESCED), 2);
});
