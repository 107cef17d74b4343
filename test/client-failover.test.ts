/**
 * The SDK given every node's URL, against two real nodes (CLI processes, no
 * NATS: each node has its own rooms, so where a session is shows in who
 * sees it): the client starts on node A; A is SIGTERMed and drains (1012);
 * the client's next attempt is node B, scheduled within the drain's short
 * jitter (< minDelayMs), and it is joined there on that first attempt, with
 * its resume position offered to B (which answers with a new epoch: `gap`,
 * from A's position). On both routes: `connect()` on /ws/desktop/{id}, a
 * topic of `connectTopics()` on /ws/connection.
 * The rotation's order and the option's checks: test/client-urls.unit.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { connect, connectTopics, type Gap, type Retry, type WebSocketConstructor } from '../src/client/index.ts';
import { CloseCode } from '../src/protocol/events.ts';
import { join, type Frame, type TestClient } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const WS = WebSocket as unknown as WebSocketConstructor;
/** The SDK's default backoff floor: the drain's jitter is below it. */
const MIN_DELAY_MS = 500;
const cleanup = new Cleanup();
let stubBase: string;
let nodeB: ServerProcess;

before(async () => {
  stubBase = (await startPermissionStub(cleanup)).base;
  nodeB = await startNode(cleanup);
});
after(() => cleanup.run());

/** A node of one worker that drains at once on SIGTERM. */
function startNode(scope: Scope): Promise<ServerProcess> {
  return startServer(scope, { workers: 1, permissionApiBase: stubBase, args: ['--drain-spread', '0'] });
}

const base = (node: ServerProcess) => `ws://127.0.0.1:${node.port}`;

/** The first draw picks the first URL (0: the first of the list); the jitter draws are real. */
function startAtFirst(): () => number {
  let first = true;
  return () => (first ? ((first = false), 0) : Math.random());
}

/**
 * Frames of `observer` until a `session_joined` (bounded). It may come
 * before the client has read its own join: wait for the client's sessionId.
 */
async function nextJoin(observer: TestClient): Promise<Frame> {
  for (;;) {
    const frame = await observer.next(15_000);
    if (frame.type === 'session_joined') return frame;
  }
}

/** The `retry` events of a client or connection. */
function retries(on: (name: 'retry', handler: (value: Retry) => void) => unknown): Retry[] {
  const heard: Retry[] = [];
  on('retry', (r) => heard.push(r));
  return heard;
}

/** A is drained; the client must land on B on its first attempt, soon, with its position offered. */
async function failover(t: Scope, desk: string, open: (nodeA: ServerProcess) => { sessionId: () => string | null; retries: Retry[] }): Promise<void> {
  const nodeA = await startNode(t);
  const { client: onA } = await join(t, `${base(nodeA)}/ws/desktop/${desk}`, { token: token(user('ObsA')) });
  const { client: onB } = await join(t, `${base(nodeB)}/ws/desktop/${desk}`, { token: token(user('ObsB')) });
  const client = open(nodeA);
  const first = await nextJoin(onA);
  await until(() => client.sessionId() === first.payload.sessionId, `the client starts on node A (${first.payload.sessionId})`);
  assert.equal(client.retries.length, 0, 'joined on its first attempt');

  await nodeA.stop();
  const there = await nextJoin(onB);
  await until(() => client.sessionId() === there.payload.sessionId, `the client is the session that joined on node B (${there.payload.sessionId})`);
  assert.equal(client.retries.length, 1, `one attempt, at B: ${JSON.stringify(client.retries)}`);
  const [retry] = client.retries;
  assert.equal(retry!.url, base(nodeB));
  assert.equal(retry!.code, CloseCode.SERVICE_RESTART);
  assert.equal(retry!.attempt, 1);
  assert.ok(retry!.inMs < MIN_DELAY_MS, `scheduled within the drain's jitter: ${retry!.inMs} ms`);
}

test('connect() given both nodes: A drains (1012), the next attempt is B, within the jitter; the resume position goes along (gap from it)', async (t) => {
  const desk = desktop('failover');
  let position: unknown = null;
  const gaps: Gap[] = [];
  let client!: ReturnType<typeof connect>;
  await failover(t, desk, (nodeA) => {
    client = connect({ url: [base(nodeA), base(nodeB)], desktopId: desk, token: token(user('Ann')), WebSocket: WS, random: startAtFirst() });
    t.after(() => client.close());
    client.on('state', (s) => s === 'open' && position === null && (position = client.resumePosition));
    client.on('gap', (g) => gaps.push(g));
    return { sessionId: () => client.sessionId, retries: retries((name, handler) => client.on(name, handler)) };
  });
  await until(() => gaps.length === 1, 'gap on node B');
  assert.ok(position !== null, 'node A named a position');
  assert.deepEqual(gaps[0]!.from, position, "A's position, offered to B");
  assert.notEqual(gaps[0]!.epoch, (position as { epoch: string }).epoch);
  assert.equal(client.state, 'open');
});

test('connectTopics() given both nodes: A drains (1012), the next attempt is B, within the jitter; the topic is subscribed there, with a gap from its position', async (t) => {
  const desk = desktop('failover-topics');
  let position: unknown = null;
  const gaps: Gap[] = [];
  let topicState = () => '';
  await failover(t, desk, (nodeA) => {
    const conn = connectTopics({ url: [base(nodeA), base(nodeB)], token: token(user('Ann')), WebSocket: WS, random: startAtFirst() });
    t.after(() => conn.close());
    const topic = conn.subscribe(`desktop:${desk}`);
    topic.on('state', (s) => s === 'subscribed' && position === null && (position = topic.resumePosition));
    topic.on('gap', (g) => gaps.push(g));
    topicState = () => topic.state;
    return { sessionId: () => conn.sessionId, retries: retries((name, handler) => conn.on(name, handler)) };
  });
  await until(() => gaps.length === 1, 'gap on node B');
  assert.ok(position !== null, 'node A named a position');
  assert.deepEqual(gaps[0]!.from, position, "A's position, offered to B");
  assert.equal(topicState(), 'subscribed');
});

/** Wait for `condition` (bounded). */
async function until(condition: () => boolean, what: string, boundMs = 10_000): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${boundMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
