/**
 * The limits a shard's `ws` server is built with, in process (a real Shard
 * behind test/helpers/in-process-server.ts): the seed's 4096-byte message
 * limit by default (and --max-message-size when set), at most 64 fragments
 * per message, and no permessage-deflate. test/bad-frames.test.ts and
 * test/rate-limit.test.ts check the same through the real server.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CloseCode } from '../src/protocol/events.ts';
import { join, type TestClient } from './helpers/client.ts';
import { inProcessServer } from './helpers/in-process-server.ts';
import { token, user } from './helpers/tokens.ts';

/** An asset_added message of exactly `bytes` bytes. */
function message(bytes: number): string {
  const envelope = JSON.stringify({ type: 'asset_added', payload: { pad: '' } });
  const text = JSON.stringify({ type: 'asset_added', payload: { pad: 'p'.repeat(bytes - envelope.length) } });
  assert.equal(Buffer.byteLength(text), bytes);
  return text;
}

async function room(t: TestContext, options: Parameters<typeof inProcessServer>[1] = {}) {
  const server = await inProcessServer(t, options, 1);
  const id = server.desktopOn(0);
  const { client: sender } = await join(t, server.wsUrl(id), { token: token(user('Sen')) });
  const { client: bystander } = await join(t, server.wsUrl(id), { token: token(user('Bys')) });
  await sender.expect('session_joined');
  return { server, id, sender, bystander };
}

/** The sender is closed with `code`; the bystander hears only that it left, and still gets a marker from a newcomer. */
async function closedAlone(
  t: TestContext,
  server: Awaited<ReturnType<typeof inProcessServer>>,
  id: string,
  sender: TestClient,
  bystander: TestClient,
  code: number,
) {
  assert.equal((await sender.closed).code, code);
  assert.equal((await bystander.next()).type, 'session_left');
  const { client: other } = await join(t, server.wsUrl(id), { token: token(user('Oth')) });
  assert.equal((await bystander.next()).type, 'session_joined');
  other.send({ type: 'marker' });
  assert.equal((await bystander.next()).type, 'marker');
}

test('by default a 4096-byte message is relayed; 4097 bytes closes the sender with 1009, and nobody else', async (t) => {
  const { server, id, sender, bystander } = await room(t);
  assert.equal(server.config.maxMessageSize, 4096);
  sender.send(message(4096));
  assert.deepEqual((await bystander.expect('asset_added')).payload, JSON.parse(message(4096)).payload);
  sender.send(message(4097));
  await closedAlone(t, server, id, sender, bystander, CloseCode.MESSAGE_TOO_BIG);
});

test('--max-message-size 8192: 8192 bytes are relayed, 8193 close with 1009', async (t) => {
  const { server, id, sender, bystander } = await room(t, { maxMessageSize: '8192' });
  sender.send(message(8192));
  assert.deepEqual((await bystander.expect('asset_added')).payload, JSON.parse(message(8192)).payload);
  sender.send(message(8193));
  await closedAlone(t, server, id, sender, bystander, CloseCode.MESSAGE_TOO_BIG);
});

test('a message in 64 fragments is relayed; in 65 it closes the sender with 1008', async (t) => {
  const { server, id, sender, bystander } = await room(t, { rateLimit: '0' });
  const text = message(640);
  for (const count of [64, 65]) {
    for (let i = 0; i < count; i++) sender.ws.send(text.slice(i * 10, i === count - 1 ? undefined : (i + 1) * 10), { fin: i === count - 1 });
    if (count === 64) assert.deepEqual((await bystander.expect('asset_added')).payload, JSON.parse(text).payload);
  }
  await closedAlone(t, server, id, sender, bystander, CloseCode.POLICY_VIOLATION);
});

test('permessage-deflate is never negotiated, even when the client offers it', async (t) => {
  const server = await inProcessServer(t, {}, 1);
  const { client } = await join(t, server.wsUrl(server.desktopOn(0)), { token: token(user('Def')), wsOptions: { perMessageDeflate: true } });
  assert.equal(client.ws.extensions, '');
});
