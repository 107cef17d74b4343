/**
 * A shard's federation closing, in process: the real Federation class on a
 * real nats-server, driven by a raw NATS client signing as a fleet node.
 * Every timer it set for later work (a room's linger, a deferred sync
 * answer, a deferred resync of every room) must be gone once close()
 * resolves: their work would run on a closed bus, and a deferred answer
 * would announce the shard's sessions again after their session_left.
 * The multi-node side is test/federation.test.ts.
 */
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { after, before, test } from 'node:test';
import { connect as natsConnect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { BusSigner, formatStamp, SIGNATURE_HEADER, STAMP_HEADER } from '../src/protocol/bus-signature.ts';
import { DROP_REASONS, DropReason } from '../src/protocol/bus.ts';
import { createMetricsBuffer, Metric, MetricsSlot } from '../src/protocol/metrics.ts';
import { Federation } from '../src/shard/federation/index.ts';
import { newRoomSlot, RoomIndex } from '../src/shard/room-index.ts';
import type { Session } from '../src/shard/session.ts';
import { startNats, type NatsServer } from './helpers/nats.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { recordingLogger } from './helpers/shard-parts.ts';

const KEY = 'federation-unit-key-0123456789-abcdefghij';
const signer = new BusSigner(KEY);
const HEARTBEAT_MS = 50;
const cleanup = new Cleanup();
let nats: NatsServer;
let raw: NatsConnection;

before(async () => {
  nats = await startNats(cleanup);
  raw = await natsConnect({ servers: nats.url });
  cleanup.after(() => raw.close());
});
after(() => cleanup.run());

let stamps = 0;
function signedHeaders(subject: string, data: string) {
  const h = natsHeaders();
  const stamp = formatStamp(Date.now(), `unit-${process.pid}-${stamps++}`);
  h.set(STAMP_HEADER, stamp);
  h.set(SIGNATURE_HEADER, signer.sign(subject, data, stamp));
  return h;
}

/** Until `condition` holds, checked every 10 ms; throws after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The timers set by src/shard/federation/ itself (not by the NATS client) that are still pending. */
function federationTimers() {
  const live = new Set<number>();
  const hook = createHook({
    init(id, type) {
      if (type !== 'Timeout') return;
      const frames = (new Error().stack ?? '').split('\n').slice(2);
      const caller = frames.find((f) => !f.includes('node:') && !f.includes('(<anonymous>)'));
      if (caller?.includes('src/shard/federation/')) live.add(id);
    },
    destroy(id) {
      live.delete(id);
    },
  });
  hook.enable();
  return { live, stop: () => hook.disable() };
}

test('close() leaves no timer of its own behind: not a room linger, a deferred sync answer or a deferred resync', async (t) => {
  const timers = federationTimers();
  t.after(() => timers.stop());
  const metrics = new MetricsSlot(createMetricsBuffer(1), 0);
  const rooms = new RoomIndex();
  const dropped = (reason: (typeof DROP_REASONS)[number]) => metrics.values[Metric.BUS_DROPPED_0 + DROP_REASONS.indexOf(reason)]!;
  const fed = new Federation({
    config: {
      natsUrls: [nats.url],
      natsCreds: '',
      nodeId: 'unit-node',
      region: '',
      federationHeartbeatMs: HEARTBEAT_MS,
      federationKey: KEY,
      federationUnsignedRooms: 'drop',
      federationReplayWindowMs: 30_000,
      processInstance: 'unit-instance',
      startedAt: Date.now(),
      workers: 1,
      maxMessageSize: 4096,
      maxRoomSize: 0,
      apiBroadcastRate: 0,
    },
    shardId: 0,
    log: recordingLogger(false),
    metrics,
    rooms,
    deliver: () => undefined,
    transientTypes: new Set(),
    mutationTypes: new Set(),
    onFatal: (code, message) => assert.fail(`${code}: ${message}`),
    applyApi: () => ({ duplicate: false, reached: 0, changed: 0 }),
  });
  let closed = false;
  t.after(() => (closed ? undefined : fed.close(1000)));
  await until(() => fed.stats().connected, 'connected');

  // A room that had a session and lost it: it lingers 10 s. (The session is what the room index and the bus read of one.)
  const desk = desktop();
  const info = { sessionId: 'session_unit', userId: 'user-unit-0001', firstName: 'Una', email: 'una@example.com', permission: 'editor' };
  const session = {
    id: info.sessionId,
    desktopId: desk,
    slot: newRoomSlot(),
    stamp: `,"sessionId":"${info.sessionId}","userId":"${info.userId}","firstName":"Una","email":"una@example.com"`,
    infoJson: JSON.stringify(info),
  } as unknown as Session;
  await new Promise<void>((resolve) =>
    fed.admit(desk, () => {
      rooms.join(session);
      resolve();
    }),
  );
  rooms.leave(session);
  fed.roomEmptied(desk);

  // A peer seen, expired for silence, and back within 5 s of the last resync: the resync of every room waits.
  const beat = (q: number) => JSON.stringify({ r: 'peer-1', i: 'p', t: 1, s: 0, w: 1, k: 'k', h: HEARTBEAT_MS, g: '', q });
  const publishBeat = (q: number) => raw.publish('moodio-rt.heartbeat', beat(q), { headers: signedHeaders('moodio-rt.heartbeat', beat(q)) });
  publishBeat(1);
  await until(() => fed.stats().peers.some((p) => p.nodeId === 'peer-1'), 'peer-1 up');
  await until(() => !fed.stats().peers.some((p) => p.nodeId === 'peer-1'), 'peer-1 expired');
  publishBeat(2);
  await until(() => fed.stats().peers.some((p) => p.nodeId === 'peer-1'), 'peer-1 back');

  // Last (its wait is 100 ms): two sync requests, the first answered at once, the second waiting for its turn.
  // Should this process stall past the wait before close(), the answer went out: ask again.
  const subject = `room.${desk}`;
  const request = JSON.stringify({ r: 'peer-1', p: { type: 'presence_sync_request' } });
  for (let attempt = 0; attempt < 5 && timers.live.size < 5; attempt++) {
    const first = await raw.request(subject, request, { headers: signedHeaders(subject, request), timeout: 2000 });
    assert.deepEqual(JSON.parse(first.string()), { r: 'unit-node', s: [] });
    raw.publish(subject, request, { headers: signedHeaders(subject, request), reply: `unit.reply.${process.pid}` });
    // A malformed message after it: once it is counted, the request before it was handled.
    const malformed = dropped(DropReason.MALFORMED);
    raw.publish(subject, 'not json');
    await until(() => dropped(DropReason.MALFORMED) > malformed, 'the request handled');
  }

  // The heartbeat, the sweeper, and the three above.
  assert.equal(timers.live.size, 5, 'the linger, the answer and the resync are pending');
  await fed.close(1000);
  closed = true;
  assert.equal(timers.live.size, 0, `${timers.live.size} timers of src/shard/federation/ still pending after close()`);
});
