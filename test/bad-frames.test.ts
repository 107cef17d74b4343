/**
 * Bad client frames get an answer addressed to their sender only, and never
 * disturb the rest of the room.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { CloseCode, ErrorCode } from '../src/protocol/events.ts';
import { memberText } from '../src/protocol/json-member.ts';
import { join, type TestClient } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base });
});
after(() => cleanup.run());

/** A room with a sender and a bystander who has seen the sender arrive. */
async function room(t: TestContext): Promise<{ sender: TestClient; bystander: TestClient; id: string }> {
  const id = desktop();
  const { client: bystander } = await join(t, server.wsUrl(id), { token: token(user('Bys')) });
  const { client: sender } = await join(t, server.wsUrl(id), { token: token(user('Snd')) });
  await bystander.expect('session_joined');
  return { sender, bystander, id };
}

/** The bystander's next frame is the marker: nothing from the bad frames reached it. */
async function bystanderUndisturbed(sender: TestClient, bystander: TestClient): Promise<void> {
  sender.send({ type: 'marker', payload: 'after' });
  const next = await bystander.next();
  assert.deepEqual([next.type, next.payload], ['marker', 'after'], `bystander saw ${JSON.stringify(next)}`);
}

test('invalid JSON, non-objects and bad types are answered with invalid_message', async (t) => {
  const { sender, bystander } = await room(t);
  const bad = [
    'not json',
    '{"type":"asset_moved"',
    '',
    '[]',
    '[{"type":"asset_moved"}]',
    'null',
    '42',
    '"asset_moved"',
    '{}',
    '{"payload":{}}',
    '{"type":1}',
    '{"type":null}',
    '{"type":["asset_moved"]}',
    '{"type":{"x":1}}',
    '{"type":""}',
    JSON.stringify({ type: 'x'.repeat(65) }),
  ];
  for (const text of bad) {
    sender.send(text);
    const reply = await sender.next();
    assert.equal(reply.type, 'error', `for ${JSON.stringify(text)}`);
    assert.equal(reply.code, ErrorCode.INVALID_MESSAGE, `for ${JSON.stringify(text)}`);
    assert.equal(typeof reply.message, 'string');
    assert.deepEqual(Object.keys(reply), ['type', 'code', 'message']);
  }
  sender.send({ type: 'y'.repeat(64), payload: 1 });
  assert.equal((await bystander.next()).type, 'y'.repeat(64), 'a 64-character type is valid');
  await bystanderUndisturbed(sender, bystander);
});

/** Every text frame `client` receives from now on, as sent (before its own JSON.parse, which would throw on invalid JSON). */
function rawFrames(client: TestClient): string[] {
  const frames: string[] = [];
  client.ws.prependListener('message', (data, isBinary) => {
    if (!isBinary) frames.push(data.toString());
  });
  return frames;
}

test('frames only a strict JSON reader refuses are answered with invalid_message and reach no other member', async (t) => {
  const { sender, bystander } = await room(t);
  const heard = rawFrames(bystander);
  const frame = (payload: string) => `{"type":"asset_moved","payload":${payload}}`;
  const bad = [
    frame('01'),
    frame('1.'),
    frame('-'),
    frame('1e+'),
    frame('.5'),
    frame('tru'),
    frame('NaN'),
    frame("'x'"),
    frame('"a\u0001b"'), // a raw control character
    frame('"\\x41"'),
    frame('"\\u12G4"'),
    '{"type":"asset_moved","payload":"\\u',
    frame('[1,]'),
    frame('[1}'),
    frame('{"a":1]'),
    frame(`${'['.repeat(100)}${']'.repeat(99)}}`),
    `${frame('{}')}}`,
    `${frame('1')}\u00a0`,
    `\ufeff${frame('1')}`,
    '{"type":"asset_moved",\u2028"payload":1}',
    `${frame('1')} x`,
    `${frame('1')}{}`,
    '{"type":"asset_moved","payload":1,}',
    '{"type":"asset_moved" "payload":1}',
    '{"type":"asset_moved","payload"}',
    '{"\\u0074ype":"asset_moved","payload":[1 2]}',
  ];
  for (const text of bad) {
    assert.throws(() => JSON.parse(text), SyntaxError, `JSON.parse refuses ${JSON.stringify(text)}`);
    sender.send(text);
    const reply = await sender.next();
    assert.deepEqual([reply.type, reply.code], ['error', ErrorCode.INVALID_MESSAGE], `for ${JSON.stringify(text)}`);
  }
  await bystanderUndisturbed(sender, bystander);
  assert.equal(heard.length, 1, `the bystander heard only the marker: ${JSON.stringify(heard)}`);
});

test('odd but legal frames reach the others with the payload exactly as sent', async (t) => {
  const { sender, bystander } = await room(t);
  const heard = rawFrames(bystander);
  const cases: { frame: string; payload: string }[] = [
    // An escaped key names `type`.
    { frame: '{"\\u0074ype":"asset_moved","payload":{"x":1}}', payload: '{"x":1}' },
    // The last `payload` wins, after `type`, spaced.
    { frame: '{"payload":"first","type":"asset_moved","payload" : [ 1 ,2 ] }', payload: '[ 1 ,2 ]' },
    // Whitespace (all four kinds) everywhere, escapes and U+2028 in a string.
    {
      frame: ' \t\r\n{ \t"type"\r\n:\n"asset_moved"\t,\r"payload"\n:\t{ "a" :\n[ -0.5E+3 , true , null , "é\u2028\\ud83d\\ude00\\u0000\\/" ] }\r\n} \n',
      payload: '{ "a" :\n[ -0.5E+3 , true , null , "é\u2028\\ud83d\\ude00\\u0000\\/" ] }',
    },
    // `type` and `payload` nested are not the frame's; escaped ones at the top are, and a number goes as written.
    { frame: '{"payload":{"type":"inner","payload":"inner"},"typ\\u0065":"asset_\\u006doved","pay\\u006coad":1e400}', payload: '1e400' },
    { frame: '{"type":"asset_moved","payload":{"keep":false},"x":{"payload":"no"},"payload":[[[{}]],[]]}', payload: '[[[{}]],[]]' },
    // Deeper than the scanner's first stack.
    { frame: `{"type":"asset_moved","payload":${'[ '.repeat(100)}${' ]'.repeat(100)}}`, payload: `${'[ '.repeat(100)}${' ]'.repeat(100)}` },
  ];
  for (const { frame, payload } of cases) {
    assert.doesNotThrow(() => JSON.parse(frame), `JSON.parse accepts ${JSON.stringify(frame)}`);
    sender.send(frame);
    await bystander.expect('asset_moved');
    assert.equal(memberText(heard.at(-1)!, 'payload'), payload, `for ${JSON.stringify(frame)}`);
  }
  assert.equal(heard.length, cases.length);
  await bystanderUndisturbed(sender, bystander);
});

test('server-only types are refused with reserved_type', async (t) => {
  const { sender, bystander } = await room(t);
  for (const type of ['room_joined', 'session_joined', 'session_left', 'error']) {
    sender.send({ type, payload: { sessionId: 'session_forged' } });
    const reply = await sender.next();
    assert.deepEqual([reply.type, reply.code], ['error', ErrorCode.RESERVED_TYPE], type);
  }
  await bystanderUndisturbed(sender, bystander);
});

test('a binary frame is answered with unsupported_binary', async (t) => {
  const { sender, bystander } = await room(t);
  sender.ws.send(Buffer.from('{"type":"asset_moved"}'), { binary: true });
  const reply = await sender.next();
  assert.deepEqual([reply.type, reply.code], ['error', ErrorCode.UNSUPPORTED_BINARY]);
  await bystanderUndisturbed(sender, bystander);
});

test('hostile payloads relay intact: __proto__ keys, deep nesting, edge numbers, unicode', async (t) => {
  const { sender, bystander } = await room(t);
  const payloads = [
    '{"__proto__":{"polluted":true},"constructor":{"prototype":{"x":1}}}',
    `${'['.repeat(1000)}1${']'.repeat(1000)}`,
    '{"a":1e308,"b":-1e-308,"c":9007199254740991,"d":-9007199254740991,"e":5e-324}',
    '{"s":"\\u0000\\u2028\\ud83d\\ude00 é 漢字","e":"</script>"}',
  ];
  for (const payload of payloads) {
    sender.send(`{"type":"asset_added","payload":${payload}}`);
    const got = await bystander.expect('asset_added');
    assert.deepEqual(got.payload, JSON.parse(payload));
  }
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  await bystanderUndisturbed(sender, bystander);
});

test('a 4096-byte message is relayed; 4097 bytes closes the sender with 1009 and nobody else', async (t) => {
  const { sender, bystander, id } = await room(t);
  const envelope = JSON.stringify({ type: 'asset_added', payload: { pad: '' } });
  const exact = JSON.stringify({ type: 'asset_added', payload: { pad: 'p'.repeat(4096 - envelope.length) } });
  assert.equal(Buffer.byteLength(exact), 4096);
  sender.send(exact);
  assert.equal((await bystander.expect('asset_added')).payload.pad.length, 4096 - envelope.length);

  const over = JSON.stringify({ type: 'asset_added', payload: { pad: 'p'.repeat(4097 - envelope.length) } });
  assert.equal(Buffer.byteLength(over), 4097);
  sender.send(over);
  const { code } = await sender.closed;
  assert.equal(code, CloseCode.MESSAGE_TOO_BIG);
  // The bystander learns the sender left, and nothing else: a newcomer to
  // the same room finds only the bystander there, and its join and marker
  // are the bystander's next frames.
  assert.equal((await bystander.next()).type, 'session_left');
  const { client: other, joined } = await join(t, server.wsUrl(id), { token: token(user('Oth')) });
  assert.equal(joined.sessions.length, 1);
  assert.equal((await bystander.next()).type, 'session_joined');
  await bystanderUndisturbed(other, bystander);
});

test('bad frames from one session leave a busy neighbour room untouched', async (t) => {
  const { sender } = await room(t);
  const { sender: a, bystander: b } = await room(t);
  for (let i = 0; i < 50; i++) {
    sender.send('{oops');
    a.send({ type: 'asset_dragging', payload: { i } });
  }
  for (let i = 0; i < 50; i++) assert.deepEqual((await b.expect('asset_dragging')).payload, { i });
  for (let i = 0; i < 50; i++) assert.equal((await sender.next()).code, ErrorCode.INVALID_MESSAGE);
});
