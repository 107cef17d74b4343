/**
 * The relay's one-pass scanner (src/protocol/json-scan.ts) against the
 * definition it replaces: `JSON.parse` for the verdict (JSON or not, an
 * object or not), and for an object the `type` value and the raw `payload`
 * text that `JSON.parse` plus json-member.ts gave. Edge cases by hand, then
 * a seeded corpus of generated JSON and of mutations of it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memberText } from '../src/protocol/json-member.ts';
import { Scan, scanMessage, scannedMembers, scannedPayload, scannedType, type ScanValue } from '../src/protocol/json-scan.ts';

/** What the scanner must say about `text`, from JSON.parse and memberText. */
interface Seen {
  verdict: ScanValue;
  /** The raw text of `type`'s value. */
  type?: string;
  /** `type`'s value when it is a string. */
  decodedType?: string;
  payload?: string;
}

function expected(text: string): Seen {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { verdict: Scan.INVALID };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { verdict: Scan.NOT_OBJECT };
  const object = value as Record<string, unknown>;
  const result: Seen = { verdict: Scan.OBJECT };
  if (Object.hasOwn(object, 'type')) {
    result.type = memberText(text, 'type');
    if (typeof object.type === 'string') result.decodedType = object.type;
  }
  if (Object.hasOwn(object, 'payload')) result.payload = memberText(text, 'payload');
  return result;
}

/** What the scanner said, in the same shape. */
function actual(text: string): Seen {
  const verdict = scanMessage(text);
  if (verdict !== Scan.OBJECT) return { verdict };
  const m = scannedMembers();
  const result: Seen = { verdict };
  if (m.typeStart !== -1) result.type = text.slice(m.typeStart, m.typeEnd);
  const decoded = scannedType(text);
  if (decoded !== undefined) result.decodedType = decoded;
  const payload = scannedPayload(text);
  if (payload !== undefined) result.payload = payload;
  return result;
}

const agree = (text: string) => assert.deepEqual(actual(text), expected(text), `for ${JSON.stringify(text)}`);

test('hand-picked cases agree with JSON.parse and memberText', () => {
  const cases = [
    '',
    ' ',
    '{}',
    ' { } ',
    '[]',
    '[ ]',
    '{"type":"a"}',
    '{"type":"a","payload":{"x":1}}',
    '{"payload":[1,2,{"a":[]}],"type":"b"}',
    '{"type":"a","type":"b"}',
    '{"type":1}',
    '{"type":{"nested":"x"},"payload":"p"}',
    '{"pay\\u006coad":{"a":1},"\\u0074ype":"t"}',
    '{"type":"a\\"b","payload":"\\\\"}',
    '{"type":"","payload":null}',
    '{"payload":{}}',
    '{"payload":[]}',
    '{"payload":{},"x":1}',
    '{"a":{"type":"inner","payload":1}}',
    '{"type":"x"} ',
    '{"type":"x"}x',
    '{"type":"x"}{}',
    '{"type":"x",}',
    '{,"type":"x"}',
    '{"type" "x"}',
    '{"type":}',
    '{type:"x"}',
    "{'type':'x'}",
    '{"a":01}',
    '{"a":-0}',
    '{"a":-}',
    '{"a":1.}',
    '{"a":.5}',
    '{"a":1e}',
    '{"a":1e+}',
    '{"a":1E-7}',
    '{"a":-12.5e+30}',
    '{"a":+1}',
    '{"a":0x10}',
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":tru}',
    '{"a":true,"b":false,"c":null}',
    '{"a":nulll}',
    '{"a":"\u0001"}',
    '{"a":"\u007f"}',
    '{"a":"\ud800"}',
    '{"a":"\\x41"}',
    '{"a":"\\u12"}',
    '{"a":"\\u12G4"}',
    '{"a":"\\/"}',
    '{"a":"\\b\\f\\n\\r\\t"}',
    '{"a":"unterminated}',
    '{"a":"x\\',
    '{"a":[1,2,]}',
    '{"a":[,1]}',
    '{"a":[1 2]}',
    '{"a":{"b":1]}',
    '{"a":[1}',
    '{"a":1',
    '"string"',
    '42',
    'true',
    'null',
    '[{"type":"x"}]',
    '\ufeff{}',
    '\u00a0{}',
    '{\t"type"\n:\r"x" }',
    '{"type":"x","payload":{"p":"xxxxxxxx","m":0,"s":"1733613600000","t":"1733613600000"}}',
    '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
  ];
  for (const text of cases) agree(text);
  // Deeper than the scanner's first stack, and unbalanced.
  agree(`{"payload":${'['.repeat(500)}${']'.repeat(500)},"type":"deep"}`);
  agree(`{"payload":${'['.repeat(500)}${']'.repeat(499)},"type":"deep"}`);
});

/** A small seeded generator (mulberry32). */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('a seeded corpus of generated JSON, and of mutations of it, agrees with JSON.parse and memberText', () => {
  const rand = random(20261207);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const space = () => (rand() < 0.8 ? '' : pick([' ', '\n', '\t', '\r', '  ']));
  const keys = ['type', 'payload', 'a', 'x', 'pay\\u006coad', '\\u0074ype', 'typ', 'payloads', ''];
  const strings = ['', 'asset_moved', 'a\\"b', '\\\\', '\\u00e9', 'é', '\ud83d\ude00', '\\n', 'x y', '\\/'];
  const numbers = ['0', '-0', '1', '-12', '3.25', '1e5', '2E-3', '-0.5e+10', '123456789012345678901234567890'];
  function value(depth: number): string {
    const r = rand();
    if (depth < 4 && r < 0.2) {
      const n = Math.floor(rand() * 4);
      const members = Array.from({ length: n }, () => `${space()}"${pick(keys)}"${space()}:${space()}${value(depth + 1)}${space()}`);
      return `{${members.join(',')}${n === 0 ? space() : ''}}`;
    }
    if (depth < 4 && r < 0.35) {
      const n = Math.floor(rand() * 4);
      return `[${Array.from({ length: n }, () => `${space()}${value(depth + 1)}${space()}`).join(',')}]`;
    }
    if (r < 0.6) return `"${pick(strings)}"`;
    if (r < 0.85) return pick(numbers);
    return pick(['true', 'false', 'null']);
  }
  const alphabet = ['{', '}', '[', ']', '"', ':', ',', '\\', ' ', '0', '1', '-', '.', 'e', 'u', 'a', 't', 'n', '\u0000', '\u001f', '\ud800'];
  function mutate(text: string): string {
    const i = Math.floor(rand() * (text.length + 1));
    const r = rand();
    if (r < 0.33) return text.slice(0, i) + pick(alphabet) + text.slice(i);
    if (r < 0.66) return text.slice(0, i) + text.slice(i + 1);
    return text.slice(0, i) + pick(alphabet) + text.slice(i + 1);
  }
  let objects = 0;
  let invalid = 0;
  for (let n = 0; n < 20_000; n++) {
    let text = rand() < 0.7 ? `{${space()}"type":${value(1)},"payload":${value(1)}${space()}}` : value(0);
    if (rand() < 0.5) {
      const mutations = 1 + Math.floor(rand() * 3);
      for (let m = 0; m < mutations; m++) text = mutate(text);
    }
    const verdict = expected(text).verdict;
    if (verdict === Scan.OBJECT) objects++;
    if (verdict === Scan.INVALID) invalid++;
    agree(text);
  }
  // The corpus exercised both sides.
  assert.ok(objects > 5000 && invalid > 3000, `objects ${objects}, invalid ${invalid}`);
});
