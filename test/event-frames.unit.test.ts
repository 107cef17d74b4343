/**
 * The one encoder of event frames (src/protocol/event-frames.ts): each
 * framing's exact text, member order included, from the parts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  legacyErrorText,
  legacyEventText,
  legacyText,
  legacyToTopicText,
  permissionChangedText,
  roomJoinedText,
  SERVER_STAMP,
  sessionUpdated,
  topicEventText,
  topicPermissionChangedText,
  topicText,
} from '../src/protocol/event-frames.ts';

const stamp = ',"sessionId":"s1","userId":"u1","firstName":"Ann","email":"a@x"';
const info = '{"sessionId":"s1","userId":"u1","firstName":"Ann","email":"a@x","permission":"viewer"}';

test('legacy framing: payload as sent, left out when absent', () => {
  assert.equal(legacyText('asset_moved', stamp, 7, '{"x":1e20}'), `{"type":"asset_moved"${stamp},"timestamp":7,"payload":{"x":1e20}}`);
  assert.equal(legacyText('ping"me', stamp, 7, undefined), `{"type":"ping\\"me"${stamp},"timestamp":7}`);
});

test('topic framing: op and topic first, payload null when absent; no topic member for a user event', () => {
  assert.equal(
    topicText('desktop:a', 'cursor', stamp, 7, undefined),
    `{"op":"event","topic":"desktop:a","type":"cursor"${stamp},"timestamp":7,"payload":null}`,
  );
  assert.equal(
    topicText(undefined, 'export_ready', SERVER_STAMP, 7, '{}'),
    '{"op":"event","type":"export_ready","sessionId":"server","userId":"server","timestamp":7,"payload":{}}',
  );
});

test('session_updated: the role after the stamp, in both framings', () => {
  const event = sessionUpdated(stamp, 'viewer', 7, info);
  assert.equal(legacyEventText(event), `{"type":"session_updated"${stamp},"permission":"viewer","timestamp":7,"payload":${info}}`);
  assert.equal(
    topicEventText('desktop:a', event),
    `{"op":"event","topic":"desktop:a","type":"session_updated"${stamp},"permission":"viewer","timestamp":7,"payload":${info}}`,
  );
  // The server's legacy text turned into the topic framing is the same frame the topic encoder makes.
  assert.equal(legacyToTopicText('desktop:a', legacyEventText(event)), topicEventText('desktop:a', event));
  assert.deepEqual(JSON.parse(legacyToTopicText(undefined, legacyEventText(event))).topic, undefined);
});

test('the server to one session: permission_changed, room_joined, error', () => {
  assert.equal(permissionChangedText('editor'), '{"type":"permission_changed","permission":"editor"}');
  assert.equal(
    topicPermissionChangedText('production-table:t', 'viewer'),
    '{"op":"event","topic":"production-table:t","type":"permission_changed","permission":"viewer"}',
  );
  assert.equal(roomJoinedText('s1', 'editor', info), `{"type":"room_joined","sessionId":"s1","permission":"editor","sessions":[${info}]}`);
  assert.equal(
    legacyErrorText('rate_limited', 'slow "down"', ',"retryAfterMs":40'),
    '{"type":"error","code":"rate_limited","message":"slow \\"down\\"","retryAfterMs":40}',
  );
});
