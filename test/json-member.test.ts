/**
 * memberText: the raw text of a top-level member, as JSON.parse would read
 * it (last duplicate wins, escaped keys decoded), checked on hand-picked
 * cases and on seeded random objects.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memberText } from '../src/protocol/json-member.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

test('finds a member as written, whatever surrounds it', () => {
  assert.equal(memberText('{"type":"a","payload":{"x":[1,2,{"y":"}\\"]"}]}}', 'payload'), '{"x":[1,2,{"y":"}\\"]"}]}');
  assert.equal(memberText('{ "payload" : 1e20 , "type":"x"}', 'payload'), '1e20');
  assert.equal(memberText('{"payload":"a","payload":[1e20, 2]}', 'payload'), '[1e20, 2]');
  assert.equal(memberText('{"pay\\u006coad":true}', 'payload'), 'true');
  assert.equal(memberText('{"a":{"payload":1},"payload":null}', 'payload'), 'null');
  assert.equal(memberText('{"payload":"\\\\"}', 'payload'), '"\\\\"');
  assert.equal(memberText('{"payload":-0.5e-3}', 'payload'), '-0.5e-3');
  assert.equal(memberText('\n{\t"payload"\r\n:\n{ }\n}\n', 'payload'), '{ }');
  assert.equal(memberText('{"type":"x","a":{"payload":1}}', 'payload'), undefined);
  assert.equal(memberText('{}', 'payload'), undefined);
});

const STRINGS = ['', 'payload', '"', '\\', '}', ']', '{[', ',:', 'é', '\u2028', '\ud83d\ude00', 'a"b\\c'];
const SPACES = ['', ' ', '\n', '\t ', '\r\n'];

function randomText(next: () => number, depth: number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  const ws = () => pick(SPACES);
  const r = next();
  if (depth > 3 || r < 0.35) {
    return pick(['1e20', '-0.5E+3', '0', 'true', 'false', 'null', '123456789012345678901234567890', JSON.stringify(pick(STRINGS)), '"\\u0070"']);
  }
  if (r < 0.65) {
    const items = Array.from({ length: Math.floor(next() * 4) }, () => ws() + randomText(next, depth + 1) + ws());
    return `[${items.join(',')}]`;
  }
  const members = Array.from({ length: Math.floor(next() * 5) }, () => {
    const key = next() < 0.3 ? (next() < 0.5 ? '"payload"' : '"pay\\u006coad"') : JSON.stringify(pick(STRINGS));
    return `${ws()}${key}${ws()}:${ws()}${randomText(next, depth + 1)}${ws()}`;
  });
  return `{${members.join(',')}}`;
}

test('agrees with JSON.parse on 5,000 random objects', () => {
  const next = mulberry32(11);
  let found = 0;
  for (let i = 0; i < 5000; i++) {
    let text = randomText(next, 0);
    if (!text.startsWith('{')) text = `{"payload":${text}}`;
    const parsed = JSON.parse(text) as Record<string, unknown>;
    const raw = memberText(text, 'payload');
    if (!Object.hasOwn(parsed, 'payload')) {
      assert.equal(raw, undefined, text);
      continue;
    }
    found++;
    assert.ok(raw !== undefined, text);
    assert.deepEqual(JSON.parse(raw), parsed.payload, text);
    assert.ok(raw.length <= text.length);
  }
  assert.ok(found > 1000, `only ${found} objects had a payload`);
});
