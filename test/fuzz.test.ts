/**
 * Seeded, reproducible fuzzing (FUZZ_SEED=N npm test explores another seed):
 *  - the request-head parser and router, in process (20,000 inputs);
 *  - the real primary over raw TCP (2,000 hostile requests);
 *  - the message handler over a real WebSocket (3,000 hostile frames),
 *    each checked against an oracle of the protocol's rules;
 *  - the multiplexed route's ops (3,000 hostile ops), the same way.
 * The server must answer every case as documented and stay up.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { route } from '../src/primary/router.ts';
import { ErrorCode, MAX_TYPE_LENGTH, RESERVED_TYPES } from '../src/protocol/events.ts';
import { parseRequestHead } from '../src/protocol/http.ts';
import { join, rawRequest, upgradeHead, untilJoined } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { desktopOnShard } from './helpers/api.ts';
import { fnv1a32 } from '../src/protocol/hash.ts';
import { SERVER_ONLY_TOPIC_TYPES, TopicErrorCode } from '../src/protocol/topics.ts';
import { connectTopics, expectOp, subscribe } from './helpers/topics.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

// A fixed default keeps CI reproducible; set FUZZ_SEED to explore other inputs.
const SEED = Number(process.env.FUZZ_SEED ?? 20261122);
console.log(`# fuzz seed ${SEED} (replay with FUZZ_SEED=${SEED})`);

/** A seeded generator (helpers/mulberry32.ts) with the draws the fuzzer uses. */
function rng(seed: number) {
  const next = mulberry32(seed);
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!,
  };
}
type Rng = ReturnType<typeof rng>;

const cleanup = new Cleanup();
let server: ServerProcess;
before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--rate-limit', '0', '--handshake-timeout', '2s'] });
});
after(() => cleanup.run());

const AUTH = () => ({ Cookie: `moodio_access_token=${token(user('Fuz'))}` });

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = r.int(256);
  return b;
}

const NASTY = ['\0', '\r', '\n', '\r\n', ' ', '\t', '\x7f', 'é', '漢', '\u2028', '%00', '%2e%2e', '../', '..%2f', '//', '\\', '"', "'", '<', '{', '$'];

/** A hostile request, and whether the client completes its head. */
function hostileRequest(r: Rng): { bytes: Buffer; complete: boolean } {
  const id = r.pick(['demo', desktop(), 'a'.repeat(r.int(200)), r.pick(NASTY) + 'x', '../../etc/passwd', '%2e%2e/health', '']);
  const path = r.pick([`/ws/desktop/${id}`, '/health', '/metrics', '/', `/ws/desktop/${id}/x`, `/${r.pick(NASTY)}`, '/ws/desktop/' + r.pick(NASTY)]);
  switch (r.int(8)) {
    case 0:
      return { bytes: randomBytes(r, 1 + r.int(600)), complete: false };
    case 1: {
      const head = upgradeHead(path, AUTH());
      return { bytes: Buffer.from(head.slice(0, r.int(head.length - 1))), complete: false };
    }
    case 2:
      return { bytes: Buffer.from(upgradeHead(path, { 'X-Long': 'l'.repeat(4000 + r.int(6000)) })), complete: true };
    case 3: {
      const inject = `X-A: b${r.pick(NASTY)}Injected: 1`;
      return { bytes: Buffer.from(upgradeHead(path, { ...AUTH(), 'X-Inject': inject })), complete: true };
    }
    case 4: {
      const headers: Record<string, string> = { ...AUTH() };
      for (let i = 0, n = r.int(140); i < n; i++) headers[`X-H${i}`] = String(i);
      return { bytes: Buffer.from(upgradeHead(path, headers)), complete: true };
    }
    case 5:
      return {
        bytes: Buffer.from(
          `${r.pick(['GET', 'POST', 'PUT', 'G\0T', 'GET /x', 'DELETE'])} ${path} ${r.pick(['HTTP/1.1', 'HTTP/1.0', 'HTTP/2', 'HTTP/1.1 x', ''])}\r\n\r\n`,
          'utf8',
        ),
        complete: true,
      };
    case 6:
      return { bytes: Buffer.concat([Buffer.from(`GET ${path} HTTP/1.1\r\nHost: `), randomBytes(r, 1 + r.int(64)), Buffer.from('\r\n\r\n')]), complete: true };
    default:
      return { bytes: Buffer.from(upgradeHead(path, r.next() < 0.5 ? AUTH() : {}), 'utf8'), complete: true };
  }
}

test('the head parser and router never throw and answer only documented statuses', () => {
  const r = rng(SEED);
  for (let i = 0; i < 20_000; i++) {
    const { bytes } = hostileRequest(r);
    const parsed = parseRequestHead(bytes);
    if (!parsed.ok) {
      assert.ok([400, 431, 505].includes(parsed.status), `case ${i}: ${parsed.status}`);
      continue;
    }
    const decision = route(parsed.head, { workers: 3, adminToken: 'adm', allowedOrigins: [], metricsToken: '' });
    assert.ok(['health', 'metrics', 'shard', 'terminate-shard', 'reject'].includes(decision.kind), `case ${i}`);
    if (decision.kind === 'shard') assert.ok(decision.shard >= 0 && decision.shard < 3 && /^[A-Za-z0-9_-]{1,128}$/.test(decision.desktopId));
  }
});

test('the real primary answers 2,000 hostile requests as documented and stays up', async () => {
  const r = rng(SEED + 1);
  const DOCUMENTED = new Set([101, 200, 400, 401, 403, 404, 405, 426, 431, 503, 505]);
  const cases = Array.from({ length: 2000 }, () => hostileRequest(r));
  let next = 0;
  const seen = new Map<number, number>();
  const worker = async () => {
    while (next < cases.length) {
      const i = next++;
      const { bytes, complete } = cases[i]!;
      const res = await rawRequest(server.port, [bytes], { end: !complete, until: (raw) => untilJoined(raw) || raw.startsWith('HTTP/1.1 101') });
      seen.set(res.status, (seen.get(res.status) ?? 0) + 1);
      // An incomplete head is closed when the client hangs up or at the handshake timeout;
      // a complete one always gets an answer.
      if (res.status === 0) {
        assert.ok(!complete, `case ${i}: a complete head was closed without an answer: ${JSON.stringify(bytes.toString('latin1').slice(0, 120))}`);
        continue;
      }
      assert.ok(DOCUMENTED.has(res.status), `case ${i}: status ${res.status} for ${JSON.stringify(bytes.toString('latin1').slice(0, 120))}`);
    }
  };
  await Promise.all(Array.from({ length: 25 }, worker));
  assert.equal(
    [...seen.values()].reduce((a, b) => a + b, 0),
    2000,
    'every case ran',
  );
  assert.ok((seen.get(400) ?? 0) > 0 && (seen.get(431) ?? 0) > 0, `statuses seen: ${[...seen]}`);
  assert.equal((await rawRequest(server.port, ['GET /health HTTP/1.1\r\n\r\n'])).status, 200);
  assert.equal((await join({ after: () => {} }, server.wsUrl(desktop()), { token: token(user('Aft')) })).joined.type, 'room_joined');
});

/** A random JSON value within a depth budget. */
function value(r: Rng, depth: number): unknown {
  switch (depth <= 0 ? r.int(4) : r.int(7)) {
    case 0:
      // biome-ignore lint/suspicious/noApproximativeNumericConstant: any fraction will do, not π.
      return r.pick([0, -0, 1, -1, 1e308, -1e308, 5e-324, 2 ** 53 + 1, -(2 ** 53), 3.14159, 1e-7]);
    case 1:
      return r.pick(['', 'x', '__proto__', 'constructor', 'é漢😀', '\u0000\u001f', '</script>', '\\"', 's'.repeat(r.int(300))]);
    case 2:
      return r.pick([true, false, null]);
    case 3:
      return r.int(1000);
    case 4:
      return Array.from({ length: r.int(5) }, () => value(r, depth - 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = 0, n = r.int(5); i < n; i++)
        o[r.pick(['__proto__', 'constructor', 'prototype', 'type', 'payload', 'a', 'b', 'toString'])] = value(r, depth - 1);
      return o;
    }
  }
}

/** A hostile frame and the outcome the protocol prescribes for it. */
function hostileFrame(r: Rng): { text?: string; binary?: Buffer; expect: 'relay' | string } {
  const kind = r.int(10);
  if (kind === 0) return { binary: randomBytes(r, 1 + r.int(100)), expect: ErrorCode.UNSUPPORTED_BINARY };
  let text: string;
  if (kind === 1) text = r.pick(['', '{', '{"type":', 'nul', '[1,', '{"type":"a",}', "{'type':'a'}", 'undefined', '"\\ud800"']);
  else if (kind === 2) text = `${'['.repeat(1 + r.int(1500))}${']'.repeat(1 + r.int(1500))}`;
  else if (kind === 3) text = JSON.stringify(value(r, 3));
  else {
    const type = r.pick([
      'asset_moved',
      'asset_dragging',
      'cursor',
      'room_joined',
      'error',
      'session_left',
      '',
      't'.repeat(64),
      't'.repeat(65),
      '漢'.repeat(64),
      1,
      null,
    ]);
    const frame: Record<string, unknown> = { type, payload: value(r, 3) };
    if (r.next() < 0.3) frame.sessionId = 'session_forged';
    if (r.next() < 0.2) Object.defineProperty(frame, '__proto__', { value: { type: 'asset_moved' }, enumerable: true });
    text = JSON.stringify(frame);
  }
  if (Buffer.byteLength(text) > 4096) text = '{"type":"too_big_trimmed","payload":1}';
  // The oracle: the protocol's rules, written independently of relay.ts.
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { text, expect: ErrorCode.INVALID_MESSAGE };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { text, expect: ErrorCode.INVALID_MESSAGE };
  const type = Object.getOwnPropertyDescriptor(parsed, 'type')?.value;
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_TYPE_LENGTH) return { text, expect: ErrorCode.INVALID_MESSAGE };
  if (RESERVED_TYPES.has(type)) return { text, expect: ErrorCode.RESERVED_TYPE };
  return { text, expect: 'relay' };
}

test('3,000 hostile frames: each relayed or answered exactly as the protocol says; the room survives', async (t) => {
  const r = rng(SEED + 2);
  const room = desktop();
  const { client: peer } = await join(t, server.wsUrl(room), { token: token(user('Pee')) });
  const { client: sender, joined } = await join(t, server.wsUrl(room), { token: token(user('Fuz')) });
  await peer.expect('session_joined');
  const frames = Array.from({ length: 3000 }, () => hostileFrame(r));
  for (const f of frames) {
    if (f.binary) sender.ws.send(f.binary, { binary: true });
    else sender.send(f.text!);
  }
  for (const [i, f] of frames.entries()) {
    if (f.expect === 'relay') {
      const got = await peer.next();
      const sent = JSON.parse(f.text!) as { type: string; payload?: unknown };
      assert.equal(got.type, sent.type, `frame ${i}`);
      assert.equal(got.sessionId, joined.sessionId, `frame ${i}: stamped`);
      if ('payload' in sent) assert.deepEqual(got.payload, JSON.parse(JSON.stringify(sent.payload)), `frame ${i}: payload`);
    } else {
      const got = await sender.next();
      assert.deepEqual([got.type, got.code], ['error', f.expect], `frame ${i}: ${JSON.stringify(f.text ?? '<binary>').slice(0, 100)}`);
    }
  }
  assert.equal(sender.ws.readyState, sender.ws.OPEN);
  sender.send({ type: 'marker' });
  assert.equal((await peer.next()).type, 'marker');
  assert.equal(sender.pending + peer.pending, 0);
});

/** A hostile op on the multiplexed route, for a sender holding `held` only, and what the protocol prescribes: relayed, silence, or its answer. */
function hostileOp(r: Rng, held: string): { text: string; expect: { relay: true } | { silent: true } | { op: string; code?: string; ref?: unknown } } {
  const kind = r.int(10);
  let text: string;
  if (kind === 0) text = r.pick(['', '{', '{"op":', 'nul', '[1,', '{"op":"publish",}', "{'op':'publish'}", '"\\ud800"', '1e999']);
  else if (kind === 1) text = JSON.stringify(value(r, 3));
  else {
    const frame: Record<string, unknown> = {
      op: r.pick(['publish', 'publish', 'publish', 'subscribe', 'unsubscribe', 'join', '', 1, null]),
      topic: r.pick([
        held,
        held,
        held,
        ` ${held}`,
        `${held} `,
        held.toUpperCase(),
        'desktop:',
        'canvas:x',
        `desktop:${'a'.repeat(129)}`,
        'desktop:other-topic',
        7,
        null,
      ]),
      type: r.pick(['asset_moved', 'cursor', 'session_joined', 'session_left', 'presence_sync_request', 'room_joined', '', 't'.repeat(64), 't'.repeat(65), 2]),
      payload: value(r, 3),
    };
    // One valid topic besides the held one, only where it changes nothing: an unsubscribe of a topic never held.
    if (frame.op === 'unsubscribe' && frame.topic === held) frame.topic = 'desktop:other-topic';
    if (frame.op === 'subscribe' && frame.topic === 'desktop:other-topic') frame.topic = 'desktop:other topic';
    if (r.next() < 0.5) frame.ref = r.pick(['r1', '', '漢', 1, null, { a: 1 }]);
    if (r.next() < 0.2) frame.sessionId = 'session_forged';
    if (r.next() < 0.2) Object.defineProperty(frame, '__proto__', { value: { op: 'publish', topic: held }, enumerable: true });
    text = JSON.stringify(frame);
  }
  // The oracle: the route's rules as docs/protocol.md states them, written independently of topic-ops.ts.
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST } };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST } };
  const own = (key: string): unknown => Object.getOwnPropertyDescriptor(parsed, key)?.value;
  const ref = own('ref');
  if (ref !== undefined && typeof ref !== 'string') return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST } };
  const op = own('op');
  const topic = own('topic');
  if (op !== 'publish' && op !== 'subscribe' && op !== 'unsubscribe') return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST, ref } };
  if (op === 'subscribe') {
    // The only valid topic here is the one held: a fresh ack, no authorize call, nothing to the room.
    if (topic === held) return { text, expect: { op: 'subscribed', ref } };
    if (typeof topic === 'string' && /^(desktop|production-table):[A-Za-z0-9_-]{1,128}$/.test(topic))
      throw new Error('the generator made a valid topic other than the held one');
    return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST, ref } };
  }
  if (op === 'unsubscribe') {
    if (topic === held) throw new Error('the generator never unsubscribes the held topic');
    return { text, expect: { op: 'error', code: TopicErrorCode.NOT_SUBSCRIBED, ref } };
  }
  const type = own('type');
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_TYPE_LENGTH || SERVER_ONLY_TOPIC_TYPES.has(type)) {
    return { text, expect: { op: 'error', code: TopicErrorCode.BAD_REQUEST, ref } };
  }
  if (topic !== held)
    return ref === undefined ? { text, expect: { silent: true } } : { text, expect: { op: 'error', code: TopicErrorCode.NOT_SUBSCRIBED, ref } };
  return { text, expect: { relay: true } };
}

test('3,000 hostile ops on the multiplexed route: each relayed, answered or ignored exactly as the protocol says; the topic survives', async (t) => {
  const r = rng(SEED + 3);
  // The topic's room on the sender's own shard: every answer is synchronous, so they come in the order sent.
  let sender: TokenClaimsLike;
  do sender = user('Fuz');
  while (fnv1a32(sender.userId) % 2 !== 0);
  const held = `desktop:${desktopOnShard(0, 2, 'fuzz')}`;
  const peer = await connectTopics(t, server, token(user('Pee')));
  const conn = await connectTopics(t, server, token(sender));
  await subscribe(peer, held);
  const ack = await subscribe(conn, held);
  await expectOp(peer, 'event', { type: 'session_joined' });
  const ops = Array.from({ length: 3000 }, () => hostileOp(r, held));
  for (const o of ops) conn.send(o.text);
  for (const [i, o] of ops.entries()) {
    const what = `op ${i}: ${JSON.stringify(o.text).slice(0, 120)}`;
    if ('silent' in o.expect) continue;
    if ('relay' in o.expect) {
      const got = await peer.next();
      const sent = JSON.parse(o.text) as { type: string; payload?: unknown };
      assert.deepEqual([got.op, got.topic, got.type, got.sessionId], ['event', held, sent.type, ack.sessionId], what);
      assert.deepEqual(got.payload, 'payload' in sent ? JSON.parse(JSON.stringify(sent.payload)) : null, what);
      continue;
    }
    const got = await conn.next();
    assert.equal(got.op, o.expect.op, what);
    if (o.expect.code !== undefined) assert.equal(got.code, o.expect.code, what);
    assert.equal(got.ref, o.expect.ref, what);
  }
  conn.send({ op: 'publish', topic: held, type: 'marker', ref: 'last' });
  assert.equal((await peer.next()).type, 'marker');
  assert.equal(conn.ws.readyState, conn.ws.OPEN);
  assert.equal(conn.pending + peer.pending, 0);
});

type TokenClaimsLike = ReturnType<typeof user>;
