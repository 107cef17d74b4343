/**
 * Clients of the multiplexed route (`/ws/connection`): a real `ws` client
 * with an ordered inbox (helpers/client.ts), and the few steps every test
 * takes (subscribe and read the ack, read the next frame of an op).
 */
import assert from 'node:assert/strict';
import { connect, type ConnectOptions, type Frame, type TestClient } from './client.ts';
import type { Scope } from './scope.ts';
import type { ServerProcess } from './server.ts';

export function connectionUrl(server: ServerProcess): string {
  return `ws://127.0.0.1:${server.port}/ws/connection`;
}

/** Open a multiplexed connection (cookie token by default). */
export function connectTopics(t: Scope, server: ServerProcess, token: string, options: Omit<ConnectOptions, 'token'> = {}): Promise<TestClient> {
  return connect(t, connectionUrl(server), { token, ...options });
}

/** The next frame, which must have `op` (and the fields of `match`, when given). */
export async function expectOp(client: TestClient, op: string, match: Record<string, unknown> = {}, timeoutMs = 5000): Promise<Frame> {
  const frame = await client.next(timeoutMs);
  assert.equal(frame.op, op, `expected op ${op}, got ${JSON.stringify(frame)}`);
  for (const [key, value] of Object.entries(match)) assert.deepEqual(frame[key], value, `${key} of ${JSON.stringify(frame)}`);
  return frame;
}

/** Subscribe to `topic` and read the `subscribed` ack. */
export async function subscribe(client: TestClient, topic: string, ref?: string): Promise<Frame> {
  client.send({ op: 'subscribe', topic, ...(ref === undefined ? {} : { ref }) });
  return expectOp(client, 'subscribed', { topic });
}

/** The next frame, which must be an event of `type` on `topic`. */
export function expectEvent(client: TestClient, topic: string, type: string, timeoutMs = 5000): Promise<Frame> {
  return expectOp(client, 'event', { topic, type }, timeoutMs);
}
