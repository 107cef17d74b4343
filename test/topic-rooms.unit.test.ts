/**
 * The owner's side of the in-process link, in process: a room owned here
 * whose subscribers all live on other shards (so no socket is needed), and
 * a link that records what it is asked to send. Each event goes once to
 * each interested shard, however many subscribers it has there, never to a
 * shard whose only subscriber sent it; a shard that goes away takes its
 * subscribers out of the room. And a connection's subscribe budget, on a
 * clock the test sets.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LinkMessage } from '../src/protocol/messages.ts';
import type { Backpressure } from '../src/shard/backpressure.ts';
import { RoomIndex } from '../src/shard/room-index.ts';
import type { ShardLink } from '../src/shard/shard-link.ts';
import { TopicRooms } from '../src/shard/topic-rooms.ts';
import { SubscribeBudget } from '../src/shard/connection.ts';
import { recordingLogger } from './helpers/shard-parts.ts';

const TOPIC = 'desktop:room-1';

function owner(maxRoomSize = 0): { topics: TopicRooms; rooms: RoomIndex; sent: [number, LinkMessage][] } {
  const rooms = new RoomIndex();
  const sent: [number, LinkMessage][] = [];
  const link = { send: (peer: number, message: LinkMessage) => (sent.push([peer, message]), true) } as unknown as ShardLink;
  // No member is on this shard: nothing is written to a socket here.
  const topics = new TopicRooms({
    shardId: 0,
    workers: 3,
    rooms,
    backpressure: null as unknown as Backpressure,
    log: recordingLogger(false),
    transientTypes: new Set(['asset_dragging']),
    maxRoomSize,
  });
  topics.useLink(link);
  return { topics, rooms, sent };
}

const info = (sid: string): string => `{"sessionId":"${sid}","userId":"u-${sid}","firstName":"","email":"","permission":"editor"}`;
const stamp = (sid: string): string => `,"sessionId":"${sid}","userId":"u-${sid}","firstName":"","email":""`;

function join(topics: TopicRooms, from: number, sid: string): void {
  topics.onLinkMessage(from, { k: 'join', topic: TOPIC, sid, info: info(sid), stamp: stamp(sid), at: 0 });
}

test('each event goes once to each interested shard, not to a shard whose only subscriber sent it', () => {
  const { topics, rooms, sent } = owner();
  join(topics, 1, 'a');
  join(topics, 1, 'b');
  join(topics, 2, 'c');
  const answers = sent.filter(([, m]) => m.k === 'joined').map(([peer, m]) => [peer, (m as { sessions: string }).sessions]);
  assert.deepEqual(answers, [
    [1, ''],
    [1, info('a')],
    [2, `${info('a')},${info('b')}`],
  ]);
  assert.equal(rooms.get('room-1')!.size, 3);
  sent.length = 0;

  topics.onLinkMessage(1, { k: 'pub', topic: TOPIC, sid: 'a', type: 'asset_dragging', payload: '{"x":1}', ts: 5 });
  assert.deepEqual(
    sent.map(([peer, m]) => [peer, m.k, (m as { except: string }).except, (m as { transient: string }).transient]),
    [
      [1, 'ev', 'a', 'a\nasset_dragging'],
      [2, 'ev', 'a', 'a\nasset_dragging'],
    ],
  );
  assert.deepEqual(JSON.parse((sent[0]![1] as { text: string }).text), {
    op: 'event',
    topic: TOPIC,
    type: 'asset_dragging',
    sessionId: 'a',
    userId: 'u-a',
    firstName: '',
    email: '',
    timestamp: 5,
    payload: { x: 1 },
  });
  assert.equal((sent[0]![1] as { text: string }).text, (sent[1]![1] as { text: string }).text, 'framed once');
  sent.length = 0;

  // Shard 2's only subscriber is the sender: shard 2 gets nothing.
  topics.onLinkMessage(2, { k: 'pub', topic: TOPIC, sid: 'c', type: 'cursor', payload: undefined, ts: 6 });
  assert.deepEqual(
    sent.map(([peer]) => peer),
    [1],
  );
  assert.equal(JSON.parse((sent[0]![1] as { text: string }).text).payload, null);
});

test('a publish from a session the room does not hold is ignored; leave and a gone shard say session_left once per shard', () => {
  const { topics, rooms, sent } = owner();
  join(topics, 1, 'a');
  join(topics, 1, 'b');
  join(topics, 2, 'c');
  sent.length = 0;
  topics.onLinkMessage(1, { k: 'pub', topic: TOPIC, sid: 'ghost', type: 'cursor', payload: undefined, ts: 1 });
  assert.equal(sent.length, 0);

  topics.onLinkMessage(2, { k: 'leave', topic: TOPIC, sid: 'c' });
  assert.deepEqual(
    sent.map(([peer, m]) => [peer, JSON.parse((m as { text: string }).text).type]),
    [[1, 'session_left']],
  );
  sent.length = 0;

  // Shard 1 restarts: its two subscribers leave; nobody is left to tell, and the room is gone.
  topics.onPeerGone(1);
  assert.equal(sent.length, 0);
  assert.equal(rooms.get('room-1'), undefined);
});

test('the subscribe budget: 20 at once, then one every 500 ms, never more than 20 saved up', () => {
  const budget = new SubscribeBudget(0);
  for (let i = 0; i < 20; i++) assert.equal(budget.take(0), true, `token ${i}`);
  assert.equal(budget.take(0), false);
  assert.equal(budget.take(499), false);
  assert.equal(budget.take(500), true);
  assert.equal(budget.take(500), false);
  assert.equal(budget.take(1500), true);
  assert.equal(budget.take(1500), true);
  assert.equal(budget.take(1500), false);
  // An hour idle saves up 20, not 7,200.
  let taken = 0;
  while (budget.take(3_600_000)) taken++;
  assert.equal(taken, 20);
});

test('--max-room-size: a join from another shard into a full room is refused, and nobody hears of it', () => {
  const { topics, rooms, sent } = owner(2);
  join(topics, 1, 'a');
  join(topics, 2, 'b');
  sent.length = 0;
  join(topics, 1, 'c');
  assert.deepEqual(sent, [[1, { k: 'joined', topic: TOPIC, sid: 'c', sessions: '', full: true }]]);
  assert.equal(rooms.get('room-1')!.size, 2);
  // Someone leaves: there is room again.
  topics.onLinkMessage(2, { k: 'leave', topic: TOPIC, sid: 'b' });
  sent.length = 0;
  join(topics, 1, 'c');
  assert.deepEqual(
    sent.map(([peer, m]) => [peer, m.k]),
    [
      [1, 'joined'],
      [1, 'ev'],
    ],
  );
  assert.equal(Object.hasOwn(sent[0]![1], 'full'), false);
});
