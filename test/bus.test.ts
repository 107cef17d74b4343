/**
 * The federation wire format (src/protocol/bus.ts) in process: what a bus
 * message must look like to be delivered, and the reason each refusal is
 * counted under. The real-server side is test/federation.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  envelope,
  parseHeartbeat,
  parseRoomMessage,
  parseTopicMessage,
  roomSubject,
  sessionInfoJson,
  sessionLeftJson,
  topicSubject,
  topicSyncRequestJson,
  type BusSessionInfo,
} from '../src/protocol/bus.ts';
import { formatStamp, parseStamp } from '../src/protocol/bus-signature.ts';
import { beatOrder, MAX_REMEMBERED_IDS, nextHistory, ReplayGuard, RETIRED_INCARNATIONS, type BeatHistory } from '../src/shard/bus-replay.ts';

const DESK = 'desk-1';
const MAX = 4096 + 2048;
const info: BusSessionInfo = { sessionId: 'session_1', userId: 'user-1', firstName: 'Ann', email: 'ann@example.com', permission: 'editor' };
const stamp = { sessionId: 'session_1', userId: 'user-1', firstName: 'Ann', email: 'ann@example.com', timestamp: 5 };
const bytes = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
const parse = (value: unknown, desk = DESK, max = MAX) => parseRoomMessage(bytes(value), desk, max);
const reason = (value: unknown) => {
  const parsed = parse(value);
  return parsed.ok ? 'ok' : parsed.reason;
};

test("subjects and envelopes are the Go relay's", () => {
  assert.equal(roomSubject('abc_-1'), 'room.abc_-1');
  assert.equal(envelope('"node-a"', '{"type":"x"}'), '{"r":"node-a","p":{"type":"x"}}');
  assert.deepEqual(JSON.parse(sessionInfoJson(info)), info);
  assert.deepEqual(Object.keys(JSON.parse(sessionInfoJson(info))), ['sessionId', 'userId', 'firstName', 'email', 'permission']);
  const left = JSON.parse(sessionLeftJson(info, 42));
  assert.deepEqual(left, { type: 'session_left', ...stamp, timestamp: 42, payload: info });
});

test('a sync request, presence and a relayed event are accepted, and presence is rebuilt from checked fields', () => {
  const sync = parse({ r: 'n1', p: { type: 'presence_sync_request' } });
  assert.deepEqual(sync, { ok: true, node: 'n1', value: { kind: 'sync_request' } });

  const joined = parse({ r: 'n1', p: { type: 'session_joined', ...stamp, extra: '<script>', payload: { ...info, more: 1 } } });
  assert.ok(joined.ok && joined.value.kind === 'joined');
  assert.deepEqual(joined.value.info, info);
  assert.deepEqual(JSON.parse(joined.value.text), { type: 'session_joined', ...stamp, payload: info }, 'nothing unchecked reaches clients');

  const left = parse({ r: 'n1', p: { type: 'session_left', ...stamp, payload: info } });
  assert.ok(left.ok && left.value.kind === 'left');

  const updated = parse({ r: 'n1', p: { type: 'session_updated', ...stamp, permission: 'viewer', payload: { ...info, permission: 'viewer' } } });
  assert.ok(updated.ok && updated.value.kind === 'updated');
  assert.equal(updated.value.info.permission, 'viewer');
  assert.deepEqual(JSON.parse(updated.value.text), { type: 'session_updated', ...stamp, permission: 'viewer', payload: { ...info, permission: 'viewer' } });
  assert.equal(
    reason({ r: 'n1', p: { type: 'session_updated', ...stamp, permission: 'editor', payload: { ...info, permission: 'viewer' } } }),
    'invalid_event',
    'the two roles must agree',
  );

  const text =
    '{"r":"n1","p":{"type":"asset_moved","sessionId":"session_1","userId":"user-1","firstName":"Ann","email":"a@x","timestamp":5,"payload":{"x":1e3}}}';
  const relayed = parseRoomMessage(bytes(text), DESK, MAX);
  assert.ok(relayed.ok && relayed.value.kind === 'relayed');
  assert.equal(relayed.value.type, 'asset_moved');
  assert.equal(relayed.value.sessionId, 'session_1');
  assert.equal(relayed.value.text, text.slice('{"r":"n1","p":'.length, -1), 'the event travels as the origin wrote it');
});

test('each refusal has its reason', () => {
  assert.equal(reason('nope'), 'malformed');
  assert.equal(reason('[]'), 'malformed');
  assert.equal(reason('null'), 'malformed');
  assert.equal(reason({ p: { type: 'x', ...stamp } }), 'malformed', 'no origin');
  assert.equal(reason({ r: '', p: { type: 'x', ...stamp } }), 'malformed', 'empty origin');
  assert.equal(reason({ r: 7, p: { type: 'x', ...stamp } }), 'malformed');
  assert.equal(reason({ r: 'x'.repeat(257), p: { type: 'x', ...stamp } }), 'malformed', 'origin too long');
  assert.equal(reason({ r: 'n', p: [1] }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: 'text' }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: null }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp } }), 'invalid_event', 'no type');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: '' } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'x'.repeat(65) } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'x'.repeat(64) } }), 'ok', '64 characters is the limit, inclusive');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'room_joined' } }), 'reserved_type');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'error' } }), 'reserved_type');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', desktopId: 'other' } }), 'room_mismatch');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', desktopId: DESK } }), 'ok');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', sessionId: 3 } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', userId: null } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', timestamp: '5' } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', firstName: 1 } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { ...stamp, type: 'asset_moved', email: {} } }), 'invalid_event');
  // Presence must describe the whole session, under the same id as its stamp.
  assert.equal(reason({ r: 'n', p: { type: 'session_joined', ...stamp } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { type: 'session_joined', ...stamp, payload: { ...info, permission: 'owner' } } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { type: 'session_joined', ...stamp, payload: { ...info, sessionId: 'session_2' } } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { type: 'session_left', ...stamp, userId: 'user-2', payload: info } }), 'invalid_event');
  assert.equal(reason({ r: 'n', p: { type: 'session_joined', ...stamp, payload: { ...info, sessionId: '' }, sessionId: '' } }), 'invalid_event');
});

test('size is checked before parsing', () => {
  const big = JSON.stringify({ r: 'n', p: { ...stamp, type: 'asset_moved', payload: 'x'.repeat(MAX) } });
  assert.equal(parseRoomMessage(bytes(big), DESK, MAX).ok, false);
  assert.deepEqual(parseRoomMessage(bytes(big), DESK, MAX), { ok: false, reason: 'too_large' });
  assert.equal(parseRoomMessage(bytes(big), DESK, big.length).ok, true, 'exactly the limit passes');
  assert.deepEqual(parseRoomMessage(bytes(big), DESK, big.length - 1), { ok: false, reason: 'too_large' });
});

test('heartbeats are checked field by field', () => {
  const beat = { r: 'n1', i: 'abc', t: 1, s: 0, w: 2, k: 'k1', h: 1000, g: '', q: 0 };
  const ok = parseHeartbeat(bytes(beat));
  assert.ok(ok.ok);
  assert.equal(ok.node, 'n1');
  for (const broken of [
    { ...beat, r: '' },
    { ...beat, i: 5 },
    { ...beat, w: 0 },
    { ...beat, s: 2 },
    { ...beat, h: 5 },
    { ...beat, h: 600_001 },
    { ...beat, t: -1 },
    { ...beat, t: 1.5 },
    { ...beat, g: null },
    { ...beat, q: undefined },
    { ...beat, q: -1 },
    { ...beat, q: 1.5 },
    { ...beat, q: '2' },
  ]) {
    assert.equal(parseHeartbeat(bytes(broken)).ok, false, JSON.stringify(broken));
  }
  assert.equal(parseHeartbeat(bytes('x'.repeat(1025))).ok, false);
  assert.equal(parseHeartbeat(bytes('{')).ok, false);
});

test('signatures cover the subject, the payload and the roster, and nothing else passes', async () => {
  const { BusSigner } = await import('../src/protocol/bus-signature.ts');
  const signer = new BusSigner('k'.repeat(32));
  const data = Buffer.from('{"r":"n","p":{}}');
  const stamp = formatStamp(1_700_000_000_000, 'abc1');
  const signature = signer.sign('room.d', data, stamp, 'a,b');
  assert.equal(signature.length, 43);
  assert.ok(signer.verify('room.d', data, signature, stamp, 'a,b'));
  assert.equal(signer.verify('room.e', data, signature, stamp, 'a,b'), false, 'another subject');
  assert.equal(signer.verify('room.d', Buffer.from('{"r":"n","p":{ }}'), signature, stamp, 'a,b'), false, 'another payload');
  assert.equal(signer.verify('room.d', data, signature, stamp, 'a'), false, 'another roster');
  assert.equal(signer.verify('room.d', data, signature, formatStamp(1_700_000_000_001, 'abc1'), 'a,b'), false, 'another time');
  assert.equal(signer.verify('room.d', data, signature, formatStamp(1_700_000_000_000, 'abc2'), 'a,b'), false, 'another id');
  assert.equal(signer.verify('room.d', data, new BusSigner('j'.repeat(32)).sign('room.d', data, stamp, 'a,b'), stamp, 'a,b'), false, 'another key');
  assert.equal(signer.verify('room.d', data, undefined, stamp, 'a,b'), false);
  assert.equal(signer.verify('room.d', data, signature.slice(1), stamp, 'a,b'), false);
});

test('stamps: a time and an id, read back exactly, and nothing else', () => {
  assert.equal(formatStamp(1_700_000_000_123, 'a1b2c3-x_9'), '1700000000123.a1b2c3-x_9');
  assert.deepEqual(parseStamp('1700000000123.a1b2c3-x_9'), { time: 1_700_000_000_123, id: 'a1b2c3-x_9' });
  assert.deepEqual(parseStamp(`1.${'i'.repeat(64)}`), { time: 1, id: 'i'.repeat(64) });
  for (const bad of [
    undefined,
    '',
    '1700000000123',
    '.abc',
    '1700000000123.',
    '-5.abc',
    '1.5.abc',
    'x.abc',
    '1.a b',
    '1.a/b',
    `1.${'i'.repeat(65)}`,
    `${'9'.repeat(16)}.abc`,
  ]) {
    assert.equal(parseStamp(bad), null, String(bad));
  }
});

test('the replay window: a stamp further than the window from now, either way, is stale', () => {
  const now = 1_700_000_000_000;
  const guard = new ReplayGuard(30_000);
  assert.equal(guard.check({ time: now - 30_001, id: 'a' }, now), 'stale', 'a millisecond too old');
  assert.equal(guard.check({ time: now + 30_001, id: 'b' }, now), 'stale', 'a millisecond too far ahead (a clock ahead of ours)');
  assert.equal(guard.check({ time: now - 30_000, id: 'c' }, now), 'fresh', 'the window is inclusive');
  assert.equal(guard.check({ time: now + 30_000, id: 'd' }, now), 'fresh');
  assert.equal(guard.check({ time: now, id: 'e' }, now), 'fresh');
  assert.equal(guard.size, 3, 'stale stamps are not remembered');
  // The window follows the receiver's clock: what was fresh is stale once its time is out of it.
  assert.equal(guard.check({ time: now, id: 'f' }, now + 30_001), 'stale');
});

test('the replay memory: each id is taken once while its time is in the window, and forgotten after', () => {
  const now = 1_700_000_000_000;
  const guard = new ReplayGuard(30_000);
  assert.equal(guard.check({ time: now, id: 'x1' }, now), 'fresh');
  assert.equal(guard.check({ time: now, id: 'x1' }, now), 'replayed', 'the same stamp again');
  assert.equal(guard.check({ time: now, id: 'x1' }, now + 29_999), 'replayed', 'until the end of the window');
  assert.equal(guard.check({ time: now, id: 'x2' }, now + 10), 'fresh', 'another id of the same time');
  // Once their times are out of the window, the window refuses them, and the memory lets them go.
  assert.equal(guard.check({ time: now, id: 'x1' }, now + 30_001), 'stale');
  assert.equal(guard.check({ time: now + 60_000, id: 'y' }, now + 60_000), 'fresh');
  assert.equal(guard.size, 1, 'only the id still in the window is remembered');
});

test('the replay memory is bounded: over capacity the oldest ids go, and stamps as old are refused, never taken twice', () => {
  const now = 1_700_000_000_000;
  const guard = new ReplayGuard(30_000, 100);
  // 100 ids spread over the last 20 s, oldest first.
  for (let i = 0; i < 100; i++) assert.equal(guard.check({ time: now - 20_000 + i * 200, id: `id${i}` }, now), 'fresh');
  assert.equal(guard.size, 100);
  assert.equal(guard.check({ time: now, id: 'new' }, now), 'fresh', 'room is made');
  assert.ok(guard.size <= 100, `${guard.size} ids remembered`);
  assert.equal(guard.check({ time: now - 20_000, id: 'id0' }, now), 'stale', 'a forgotten id is refused by its age, not taken again');
  assert.equal(guard.check({ time: now - 20_000, id: 'other' }, now), 'stale', 'and so is anything as old');
  assert.equal(guard.check({ time: now - 20_000 + 99 * 200, id: 'id99' }, now), 'replayed', 'a recent id is still remembered');
  // A flood of ids all of one time: each is taken once or refused, and the memory stays within its bound.
  for (let i = 0; i < 1000; i++) {
    const verdict = guard.check({ time: now, id: `flood${i}` }, now);
    assert.notEqual(verdict, 'replayed');
    assert.ok(guard.size <= 100);
  }
  for (let i = 0; i < 1000; i++) assert.notEqual(guard.check({ time: now, id: `flood${i}` }, now), 'fresh', `flood${i} taken twice`);
  assert.ok(MAX_REMEMBERED_IDS >= 100_000, 'the real bound holds minutes of heavy traffic');
});

test('heartbeat sequences: each must grow within its incarnation, and a past incarnation is a replay', () => {
  assert.equal(beatOrder(undefined, 'k1', 7), 'first');
  let h: BeatHistory = nextHistory(undefined, 'k1', 7);
  assert.deepEqual(h, { incarnation: 'k1', seq: 7, retired: [] });
  assert.equal(beatOrder(h, 'k1', 8), 'next');
  assert.equal(beatOrder(h, 'k1', 7), 'replayed', 'the same sequence again');
  assert.equal(beatOrder(h, 'k1', 3), 'replayed', 'an older one');
  assert.equal(beatOrder(h, 'k1', 100), 'next', 'gaps are fine (a beat lost on the bus)');
  h = nextHistory(h, 'k1', 100);
  assert.equal(beatOrder(h, 'k2', 0), 'restarted', 'a new incarnation starts its own sequence');
  h = nextHistory(h, 'k2', 0);
  assert.deepEqual(h, { incarnation: 'k2', seq: 0, retired: ['k1'] });
  assert.equal(beatOrder(h, 'k1', 101), 'replayed', 'the old incarnation, whatever its sequence');
  assert.equal(beatOrder(h, 'k2', 1), 'next');
  for (let i = 3; i < 3 + RETIRED_INCARNATIONS + 2; i++) h = nextHistory(h, `k${i}`, 0);
  assert.equal(h.retired.length, RETIRED_INCARNATIONS, 'bounded');
  assert.ok(!h.retired.includes('k1') && h.retired.includes(`k${RETIRED_INCARNATIONS + 3}`), 'the oldest forgotten first');
});

test('API requests from the bus are checked field by field', async () => {
  const { parseBusRequest } = await import('../src/protocol/api.ts');
  const event = (type: string, sender = 'server') => JSON.stringify({ type, sessionId: sender, userId: sender, timestamp: 1 });
  const publish = { kind: 'publish', id: 'i1', desktopId: 'd-1', type: 'x', event: event('note') };
  assert.deepEqual(
    parseBusRequest(publish),
    { kind: 'publish', id: 'i1', desktopId: 'd-1', type: 'note', event: event('note') },
    'the type is taken from the event itself',
  );
  for (const bad of [
    null,
    [],
    { ...publish, id: '' },
    { ...publish, id: 'x'.repeat(65) },
    { ...publish, kind: 'drop_tables' },
    { ...publish, desktopId: 'bad/id' },
    { ...publish, event: event('room_joined') },
    { ...publish, event: event('session_whatever') },
    { ...publish, event: event('note', 'session_1') },
    { ...publish, event: '[1]' },
    { ...publish, exceptUserId: 5 },
    { kind: 'set_permission', id: 'i', desktopId: 'd', userId: 'u', permission: 'owner' },
    { kind: 'set_permission', id: 'i', desktopId: 'd', userId: '', permission: 'none' },
    { kind: 'disconnect', id: 'i', userId: 'u', reason: 'r'.repeat(124) },
    { kind: 'user_sessions', id: 'i', userId: 7 },
  ]) {
    assert.equal(parseBusRequest(bad), null, JSON.stringify(bad));
  }
  assert.deepEqual(parseBusRequest({ kind: 'disconnect', id: 'i', userId: 'u', reason: 'bye' }), { kind: 'disconnect', id: 'i', userId: 'u', reason: 'bye' });
  assert.deepEqual(parseBusRequest({ kind: 'set_permission', id: 'i', desktopId: 'd', userId: 'u', permission: 'none' }), {
    kind: 'set_permission',
    id: 'i',
    desktopId: 'd',
    userId: 'u',
    permission: 'none',
  });
});

test("topic subjects and messages are the upstream relay's: checked as the flat ones, read into the legacy framing", () => {
  const topic = 'desktop:abc';
  const enc = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  assert.equal(topicSubject(topic), 'room.desktop:abc');
  assert.equal(topicSyncRequestJson(topic), '{"op":"event","topic":"desktop:abc","type":"presence_sync_request"}');
  const sync = parseTopicMessage(enc({ r: 'up', p: { op: 'event', topic, type: 'presence_sync_request' } }), topic, 4096);
  assert.deepEqual(sync, { ok: true, node: 'up', value: { kind: 'sync_request' } });
  const who = { sessionId: 'session_1', userId: 'user-1', firstName: 'Ann', email: 'a@example.com' };
  const joined = parseTopicMessage(
    enc({ r: 'up', p: { op: 'event', topic, type: 'session_joined', ...who, timestamp: 5, payload: { ...who, permission: 'owner' } } }),
    topic,
    4096,
  );
  assert.ok(joined.ok && joined.value.kind === 'joined');
  assert.equal(joined.value.info.permission, 'editor', 'owner acts as editor');
  assert.equal(
    joined.value.text,
    `{"type":"session_joined","sessionId":"session_1","userId":"user-1","firstName":"Ann","email":"a@example.com","timestamp":5,"payload":${sessionInfoJson({ ...who, permission: 'editor' })}}`,
  );
  const event = parseTopicMessage(
    new TextEncoder().encode(
      `{"r":"up","p":{"op":"event","topic":"desktop:abc","type":"asset_moved","sessionId":"session_1","userId":"user-1","timestamp":7,"payload":{"x":1e20}}}`,
    ),
    topic,
    4096,
  );
  assert.ok(event.ok && event.value.kind === 'relayed');
  assert.equal(
    event.value.text,
    '{"type":"asset_moved","sessionId":"session_1","userId":"user-1","firstName":"","email":"","timestamp":7,"payload":{"x":1e20}}',
    'the payload as sent',
  );
  const bare = parseTopicMessage(enc({ r: 'up', p: { op: 'event', topic, type: 'cursor', ...who, timestamp: 7 } }), topic, 4096);
  assert.ok(bare.ok && bare.value.kind === 'relayed' && bare.value.text.endsWith(',"payload":null}'));
  const refused = (p: unknown, size = 4096) => {
    const parsed = parseTopicMessage(enc({ r: 'up', p }), topic, size);
    return parsed.ok ? 'ok' : parsed.reason;
  };
  assert.equal(refused({ op: 'event', topic: 'desktop:other', type: 'asset_moved', ...who, timestamp: 1 }), 'room_mismatch');
  assert.equal(refused({ topic, type: 'asset_moved', ...who, timestamp: 1 }), 'invalid_event', 'no op');
  assert.equal(refused({ type: 'asset_moved', ...who, timestamp: 1, op: 'event', topic: ' desktop:abc' }), 'room_mismatch');
  assert.equal(refused({ op: 'event', topic, type: 'room_joined', ...who, timestamp: 1 }), 'reserved_type');
  assert.equal(refused({ op: 'event', topic, type: 'session_joined', ...who, timestamp: 1, payload: { ...who, permission: 'admin' } }), 'invalid_event');
  assert.equal(refused({ op: 'event', topic, type: 'asset_moved', ...who, timestamp: 1 }, 10), 'too_large');
});
