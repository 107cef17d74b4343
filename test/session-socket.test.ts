/**
 * shard/session-socket.ts in process: the listeners every session of a route
 * shares find their session through the emitter they are called on, and a
 * SessionWebSocket's listener table stays a fast object while keeping
 * EventEmitter's behaviour.
 */
import assert from 'node:assert/strict';
import { Socket } from 'node:net';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import type { Session } from '../src/shard/session.ts';
import { listen, SessionTcpSocket, SessionWebSocket, sessionListeners, type SessionEvents } from '../src/shard/session-socket.ts';

setFlagsFromString('--allow-natives-syntax');
const hasFastProperties = new Function('o', 'return %HasFastProperties(o)') as (o: object) => boolean;

const quietLog = { info() {}, warn() {}, error() {}, debug() {} } as never;

function fakeSession(id: string): Session {
  return { id, alive: false, ws: new SessionWebSocket(null, undefined, {}), socket: new SessionTcpSocket() } as unknown as Session;
}

function recorder() {
  const calls: string[] = [];
  const events: SessionEvents<Session> = {
    message: (s, data, isBinary) => calls.push(`message ${s.id} ${data.toString()} ${isBinary}`),
    control: (s) => calls.push(`control ${s.id}`),
    bytes: (s, n) => calls.push(`bytes ${s.id} ${n}`),
    closed: (s, code, reason) => calls.push(`closed ${s.id} ${code} ${reason.toString()}`),
  };
  return { calls, events };
}

test("one set of listeners serves every session: each event reaches the emitter's own session", () => {
  const { calls, events } = recorder();
  const listeners = sessionListeners(events, quietLog);
  const a = fakeSession('a');
  const b = fakeSession('b');
  listen(a, listeners);
  listen(b, listeners);
  b.ws.emit('message', Buffer.from('hi'), false);
  a.ws.emit('pong', Buffer.alloc(0));
  b.ws.emit('ping', Buffer.alloc(0));
  a.socket.emit('data', Buffer.from('12345'));
  a.ws.emit('close', 1000, Buffer.from('bye'));
  assert.deepEqual(calls, ['message b hi false', 'control a', 'control b', 'bytes a 5', 'closed a 1000 bye']);
  assert.equal(b.alive, true, 'a message marks its session alive');
  assert.equal(a.alive, true, 'so does a pong');
  // No closure per session: both sessions hold the very same functions.
  assert.equal(a.ws.listeners('message')[0], b.ws.listeners('message')[0]);
  assert.equal(a.socket.listeners('data')[0], b.socket.listeners('data')[0]);
});

test('bytes read on a socket that carries no session are not counted', () => {
  const { calls, events } = recorder();
  const listeners = sessionListeners(events, quietLog);
  const bare = new SessionTcpSocket();
  bare.on('data', listeners.data);
  bare.emit('data', Buffer.from('abc'));
  const plain = new Socket();
  plain.on('data', listeners.data);
  plain.emit('data', Buffer.from('abc'));
  assert.deepEqual(calls, []);
});

test("a SessionWebSocket's listener table stays a fast object with a session's five events, and behaves as EventEmitter's", () => {
  const { events } = recorder();
  const session = fakeSession('s');
  const table = () => (session.ws as unknown as { _events: object })._events;
  assert.equal(session.ws.listenerCount('message'), 0);
  assert.throws(() => session.ws.emit('error', new Error('no listener')), /no listener/, 'an error with no listener throws, as ever');
  listen(session, sessionListeners(events, quietLog));
  assert.equal(hasFastProperties(table()), true, 'five events in a { __proto__: null } table made it a dictionary');
  for (const name of ['message', 'pong', 'ping', 'error', 'close']) assert.equal(session.ws.listenerCount(name), 1, name);
  assert.doesNotThrow(() => session.ws.emit('error', Object.assign(new Error('bad frame'), { code: 'WS_ERR_INVALID_OPCODE' })));
  const extra = () => {};
  session.ws.on('message', extra);
  assert.equal(session.ws.listenerCount('message'), 2);
  session.ws.off('message', extra);
  assert.equal(session.ws.listenerCount('message'), 1);
  assert.equal(session.ws.emit('upgrade'), false, 'an event nobody listens to has no listener');
});
