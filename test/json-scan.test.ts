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
import { JsonScanner, Scan, type ScanValue } from '../src/protocol/json-scan.ts';
import { mulberry32 } from './helpers/mulberry32.ts';

const scanner = new JsonScanner();

/** What the scanner must say about `text`, from JSON.parse and memberText. */
interface Seen {
  verdict: ScanValue;
  /** The raw text of `type`'s value. */
  type?: string;
  /** `type`'s value when it is a string. */
  decodedType?: string;
  /** Whether that string holds an escape (the scanner decodes only then). */
  typeEscaped?: boolean;
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
    if (typeof object.type === 'string') {
      result.decodedType = object.type;
      result.typeEscaped = result.type!.includes('\\');
    }
  }
  if (Object.hasOwn(object, 'payload')) result.payload = memberText(text, 'payload');
  return result;
}

/** What the scanner said, in the same shape. */
function actual(text: string): Seen {
  const verdict = scanner.scan(text);
  if (verdict !== Scan.OBJECT) return { verdict };
  const m = scanner.members;
  const result: Seen = { verdict };
  if (m.typeStart !== -1) result.type = text.slice(m.typeStart, m.typeEnd);
  const decoded = scanner.type(text);
  if (decoded !== undefined) {
    result.decodedType = decoded;
    result.typeEscaped = m.typeEscaped;
  }
  const payload = scanner.payload(text);
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
    // An empty container closing after `payload` (or `type`), under another key or deeper: it must not end their spans (a mutant that did survived the seeded corpus).
    '{"payload":1,"a":{}}',
    '{"payload":"p","a":[]}',
    '{"type":"t","payload":[1],"z":{"y":[]}}',
    '{"payload":{"a":1},"b":[[]]}',
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

test('a seeded corpus of generated JSON, and of mutations of it, agrees with JSON.parse and memberText', () => {
  const rand = mulberry32(20261207);
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

/** Whether the scanner and the oracle disagree on `text` (cheap; `agree` then says how). */
function differs(text: string): boolean {
  const want = expected(text);
  const got = actual(text);
  return (
    got.verdict !== want.verdict ||
    got.type !== want.type ||
    got.decodedType !== want.decodedType ||
    got.typeEscaped !== want.typeEscaped ||
    got.payload !== want.payload
  );
}

test("an attacker's cases: string, number, literal and space corners, mixed closes, escaped and duplicate keys", () => {
  const cases = [
    // Strings: escapes cut short at the text's end, control characters, lone surrogates, U+2028.
    '{"type":"\\u',
    '{"type":"\\u0',
    '{"type":"\\u006',
    '{"type":"\\u0061',
    '{"type":"\\u0061"',
    '{"type":"\\u0061"}',
    '{"type":"\\',
    '{"type":"\\"}',
    '{"type":"\\\\"}',
    '"\\u00"',
    '"\\u00e"',
    '"\\uD800\\uDC00"',
    '"\\uDFFF"',
    '"\\u00G0"',
    '"\\u 000"',
    '"\\U0041"',
    '"\\\'"',
    '"\\0"',
    '"\\\n"',
    '"a\u0000"',
    '"a\u001f"',
    '"a\u0020"',
    '"a\t"',
    '"\u2028\u2029"',
    '"\ud800"',
    '"\udc00\ud800"',
    '{"type":"\u2028","payload":"\u2029"}',
    '{"payload":"\\u005c","type":"\\u0022"}',
    // Numbers: every grammar corner.
    '0',
    '-0',
    '-',
    '--0',
    '+0',
    '00',
    '-00',
    '0.',
    '0.0',
    '-0.0e-0',
    '.0',
    '0e',
    '0e0',
    '0E+0',
    '0e-',
    '0e+-1',
    '1e400',
    '-1e-400',
    '1.5e3.2',
    '1e3e4',
    '1ee3',
    '0.e1',
    '1.0.0',
    '9'.repeat(400),
    '{"payload":-0.0E+00}',
    '{"payload":1 2}',
    '{"payload":-1.}',
    // Literals, their prefixes and their cases.
    't',
    'tr',
    'tru',
    'truE',
    'True',
    'nul',
    'nulL',
    'fals',
    'falsee',
    'null null',
    '{"payload":true,"type":false}',
    '{"payload":nul}',
    '{"payload":undefined}',
    // Whitespace: only space, tab, LF and CR.
    ' \t\n\r{ \t\n\r"type" \t\n\r: \t\n\r"a" \t\n\r, \t\n\r"payload" \t\n\r: \t\n\r[ \t\n\r1 \t\n\r, \t\n\r2 \t\n\r] \t\n\r} \t\n\r',
    '{"type":"a"}\u00a0',
    '{"type":"a"}\ufeff',
    '{"type":"a"}\u2028',
    '{"type":"a"}\u000b',
    '{"type":"a"}\u000c',
    '{"type":"a"}\u0000',
    '{\u00a0"type":"a"}',
    '{"type"\ufeff:"a"}',
    '{"type":\u2028"a"}',
    '[1,\u00852]',
    // Nesting: mixed and unbalanced closes.
    '[}',
    '{]',
    '[{]}',
    '{"a":[}]',
    '[[]]]',
    '[[]',
    '{"payload":{"a":1]}',
    '{"payload":[1,{"a":[2]}]]}',
    '{"payload":[1,{"a":[2}]}',
    '{"payload":{}}}',
    '{"payload":[]]}',
    '{"payload":{"a":{}},"type":"x"',
    // Keys: escaped, duplicate, nested, after payload.
    '{"\\u0074\\u0079\\u0070\\u0065":"a","\\u0070\\u0061\\u0079\\u006C\\u006F\\u0061\\u0064":"p"}',
    '{"\\u0054ype":"a"}',
    '{"typ\\u0065":"a","payload":1}',
    '{"type\\u0000":"a","payload":1}',
    '{"\\u0074ype ":"a"}',
    '{"type":"a","\\u0074ype":"b"}',
    '{"\\u0074ype":"a","type":"b"}',
    '{"type":"\\u0061","type":"b"}',
    '{"type":"\\u0061","type":{}}',
    '{"type":"\\u0061","type":1}',
    '{"payload":[1],"payload":2}',
    '{"payload":2,"payload":[1]}',
    '{"payload":{"a":1},"payload":{}}',
    '{"payload":{"type":"inner","payload":"inner"},"type":"outer"}',
    '{"a":{"type":"x"},"payload":[{"payload":1}]}',
    '{"payload":1,"type":"after"}',
    '{"payload":1,"x":2}',
    '{"":1,"type":"a"}',
    '{"pay\\/load":1,"type":"a"}',
    // Trailing garbage and empty input.
    '{"type":"a"},',
    '{"type":"a"}]',
    '{"type":"a"}}',
    '{"type":"a"}"',
    '{"type":"a"} 1',
    '[] []',
    '1 1',
    '"a""b"',
    '\t\n\r ',
    '\u0000',
  ];
  for (const text of cases) agree(text);
});

test('nothing leaks from one scan to the next: each text agrees after any other', () => {
  const deep = (n: number, tail: string) => `{"\\u0074ype":"\\u0061","payload":${'[{"a":'.repeat(n)}0${'}]'.repeat(n)}${tail}`;
  const texts = [
    deep(200, '}'), // a deep frame, escaped keys and type: the stack grows, typeEscaped is set
    deep(300, ']}'), // deeper, then a wrong close far down
    '{"type":"b"}',
    '{"payload":[[[[[[[[', // members set, then cut short
    '{"type":"c","payload":1}',
    `{"payload":${'['.repeat(100)}`,
    '{"type":"d"}',
    '{"type":"\\u0061","payload":{"x":[1,2,3]}', // cut after both were found
    '[1,2]',
    '{}',
    '"\\u0061"',
    '{"payload":{}}',
    '{"a":{"type":"x","payload":1}}',
    `[${'{"a":['.repeat(80)}]]`,
    '{"type":"e","payload":[]}',
  ];
  for (const first of texts) {
    for (const second of texts) {
      scanner.scan(first);
      agree(second);
    }
  }
});

test('two scanners keep apart: scans on one leave what the other found', () => {
  const a = new JsonScanner();
  const b = new JsonScanner();
  const text = '{"type":"\\u0061","payload":[1,{"b":2}]}';
  assert.equal(a.scan(text), Scan.OBJECT);
  assert.equal(b.scan(`{"payload":${'['.repeat(200)}${']'.repeat(200)},"type":"b"}`), Scan.OBJECT);
  assert.equal(b.scan('{"type":"c","payload":{"x":'), Scan.INVALID);
  assert.deepEqual([a.type(text), a.payload(text), a.members.typeEscaped], ['a', '[1,{"b":2}]', true]);
});

/**
 * The whole grammar, by construction: strings of every kind of code unit and
 * escape, numbers of every shape, literals, objects and arrays (some deeper
 * than the scanner's first stack), keys escaped at random, `type` and
 * `payload` duplicated in any order, whitespace anywhere. Half the texts are
 * valid; in the other half each token may be faulty (a raw control
 * character, a bad escape, a leading zero, a wrong close, a missing colon,
 * a space JSON does not allow…) at a rate drawn per text. A third are then
 * mutated a character at a time.
 */
function grammarCorpus(seed: number): () => string {
  const rand = mulberry32(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  let faultRate = 0;
  const fault = () => rand() < faultRate;
  const SPACE = [' ', '\t', '\n', '\r'];
  const NOT_SPACE = ['\u00a0', '\ufeff', '\u2028', '\u2029', '\u000b', '\u000c', '\u0085', '\u3000', '\u0000', '\u001c'];
  const ws = (): string => {
    if (rand() < 0.75) return '';
    let s = '';
    for (let n = 1 + int(3); n > 0; n--) s += fault() ? pick(NOT_SPACE) : pick(SPACE);
    return s;
  };
  const HEX = '0123456789abcdefABCDEF'.split('');
  const hex4 = (code: number) => {
    const h = code.toString(16).padStart(4, '0');
    return rand() < 0.5 ? h : h.toUpperCase();
  };
  const digits = (n: number) => {
    let s = '';
    for (let k = 0; k < n; k++) s += String.fromCharCode(0x30 + int(10));
    return s;
  };
  const ODD_UNITS = [
    '\u007f',
    '\u0080',
    '\u00a0',
    '\u2028',
    '\u2029',
    '\ufeff',
    '\ufffe',
    '\uffff',
    'é',
    '漢',
    '\ud83d\ude00',
    '\ud800',
    '\udfff',
    '\udbff',
    '\udc00',
  ];
  const BAD_ESCAPES = ['x', 'a', '0', "'", 'U', 'v', 'e', ' ', '\t', 'N', 'B', 'T', '\u2028', '\ud800'];
  /** One unit of a string's content, as it sits in the text. */
  const stringPart = (): string => {
    if (fault()) {
      const r = rand();
      if (r < 0.3) return String.fromCharCode(int(0x20)); // a raw control character
      if (r < 0.55) return `\\${pick(BAD_ESCAPES)}`;
      if (r < 0.8) return `\\u${Array.from({ length: int(4) }, () => pick(HEX)).join('')}${pick(['g', 'G', '"', '', ' ', '-', 'x', '}'])}`;
      return pick(['"', '\\']);
    }
    const r = rand();
    if (r < 0.45) {
      const c = 0x20 + int(0x5f);
      return c === 0x22 || c === 0x5c ? 'a' : String.fromCharCode(c);
    }
    if (r < 0.6) return `\\${pick(['"', '\\', '/', 'b', 'f', 'n', 'r', 't'])}`;
    if (r < 0.75) return `\\u${hex4(rand() < 0.5 ? int(0x80) : int(0x10000))}`;
    return pick(ODD_UNITS);
  };
  const string = (): string => {
    let s = '"';
    for (let n = rand() < 0.2 ? 0 : int(8); n > 0; n--) s += stringPart();
    return fault() && rand() < 0.3 ? s : `${s}"`;
  };
  const BAD_NUMBERS = [
    '+1',
    '01',
    '-01',
    '00',
    '-',
    '--1',
    '1.',
    '-.5',
    '.5',
    '1.e3',
    '1e',
    '1E+',
    '1e-',
    '1e+-1',
    '1e1.5',
    '0x1F',
    'Infinity',
    '-Infinity',
    'NaN',
    '1_000',
    '١',
    '0.0.1',
    '2e3e4',
    '0e',
    '-e1',
  ];
  const number = (): string => {
    if (fault()) return pick(BAD_NUMBERS);
    let s = rand() < 0.3 ? '-' : '';
    s += rand() < 0.3 ? '0' : String(1 + int(9)) + digits(rand() < 0.02 ? 30 + int(100) : int(5));
    if (rand() < 0.3) s += `.${digits(1 + int(rand() < 0.02 ? 100 : 5))}`;
    if (rand() < 0.3) s += `${pick(['e', 'E'])}${pick(['', '+', '-'])}${digits(1 + int(rand() < 0.02 ? 20 : 3))}`;
    return s;
  };
  const BAD_LITERALS = ['tru', 'True', 'nul', 'NULL', 'fals', 'falsey', 'undefined', 'nan', 'truee', 'nulll', 't', 'n', 'f'];
  const literal = (): string => (fault() ? pick(BAD_LITERALS) : pick(['true', 'false', 'null']));
  const NAMES = [
    'type',
    'payload',
    'type',
    'payload',
    'a',
    '',
    'Type',
    'TYPE',
    'typ',
    'typee',
    'payloa',
    'payloads',
    'types',
    '__proto__',
    'é',
    '\ud800',
    'type ',
    ' type',
    'pay/load',
  ];
  /** A key, its characters escaped at random (`\uXXXX` in either case, or `\/`). */
  const key = (): string => {
    if (rand() < 0.1) return string();
    const name = pick(NAMES);
    const rate = rand() < 0.6 ? 0 : rand();
    let s = '"';
    for (const ch of name) {
      if (rand() >= rate) s += ch;
      else if (ch === '/' && rand() < 0.5) s += '\\/';
      else for (let k = 0; k < ch.length; k++) s += `\\u${hex4(ch.charCodeAt(k))}`;
    }
    return fault() && rand() < 0.2 ? s : `${s}"`;
  };
  const comma = () => (fault() ? pick(['', ',,', ';', ' ']) : ',');
  const colon = () => (fault() ? pick(['', '::', '=', ' ']) : ':');
  const member = (depth: number) => `${ws()}${key()}${ws()}${colon()}${ws()}${value(depth + 1)}${ws()}`;
  const object = (depth: number): string => {
    const n = int(5);
    const members = Array.from({ length: n }, () => member(depth));
    return `{${members.join(comma())}${n === 0 ? ws() : ''}${fault() ? pick([']', '', '}}', ',}']) : '}'}`;
  };
  const array = (depth: number): string => {
    const n = int(5);
    const elements = Array.from({ length: n }, () => `${ws()}${value(depth + 1)}${ws()}`);
    return `[${elements.join(comma())}${n === 0 ? ws() : ''}${fault() ? pick(['}', '', ']]', ',]']) : ']'}`;
  };
  /** A chain of containers past the scanner's first stack (64 levels) around a value, maybe closed wrong somewhere. */
  const deep = (depth: number): string => {
    let open = '';
    let close = '';
    for (let levels = 50 + int(40); levels > 0; levels--) {
      if (rand() < 0.5) {
        open += `[${ws()}`;
        close = `]${close}`;
      } else {
        open += `{${ws()}${key()}:${ws()}`;
        close = `}${close}`;
      }
    }
    if (fault()) {
      const at = int(close.length);
      close = close.slice(0, at) + pick(['', close[at] === ']' ? '}' : ']', ']]']) + close.slice(at + 1);
    }
    return open + value(depth + 1) + close;
  };
  function value(depth: number): string {
    const r = rand();
    if (depth < 4 && r < 0.2) return object(depth);
    if (depth < 4 && r < 0.33) return array(depth);
    if (depth < 2 && r < 0.34) return deep(depth);
    if (r < 0.6) return string();
    if (r < 0.85) return number();
    return literal();
  }
  /** A top-level object with `type` and `payload` (and maybe their escaped twins) among other members, in any order. */
  const message = (): string => {
    const members = [`${ws()}"type"${ws()}:${ws()}${rand() < 0.7 ? string() : value(1)}${ws()}`, `${ws()}"payload"${ws()}:${ws()}${value(1)}${ws()}`];
    for (let n = int(4); n > 0; n--) members.push(member(1));
    for (let k = members.length - 1; k > 0; k--) {
      const j = int(k + 1);
      [members[k], members[j]] = [members[j]!, members[k]!];
    }
    return `{${members.join(comma())}}`;
  };
  const ALPHABET = ['{', '}', '[', ']', '"', ':', ',', '\\', 'u', '0', '1', '9', '-', '+', '.', 'e', 'E', 'a', 'F', 't', 'r', 'n', 'f', 'l', '/'];
  const UNITS = [' ', '\t', '\n', '\r', '\u00a0', '\ufeff', '\u2028', '\u0000', '\u001f', '\u007f', '\ud800', '\udc00'];
  const mutate = (text: string): string => {
    const i = int(text.length + 1);
    const c = rand() < 0.7 ? pick(ALPHABET) : pick(UNITS);
    const r = rand();
    if (r < 0.25) return text.slice(0, i) + c + text.slice(i);
    if (r < 0.5) return text.slice(0, i) + text.slice(i + 1);
    if (r < 0.7) return text.slice(0, i) + c + text.slice(i + 1);
    if (r < 0.8) return text.slice(0, i); // cut short
    if (r < 0.9) {
      const j = int(text.length + 1);
      return text.slice(0, i) + text.slice(Math.min(i, j), Math.max(i, j)) + text.slice(i); // a span repeated
    }
    return text.slice(0, i) + text.slice(i + 1, i + 2) + text.slice(i, i + 1) + text.slice(i + 2); // two swapped
  };
  return () => {
    faultRate = rand() < 0.5 ? 0 : rand() * 0.1;
    let text = `${ws()}${rand() < 0.6 ? message() : value(0)}${ws()}`;
    if (rand() < 0.35) for (let m = 1 + int(3); m > 0; m--) text = mutate(text);
    return text;
  };
}

test('200,000 texts from the whole grammar, faulty and mutated, agree with JSON.parse and memberText', () => {
  const next = grammarCorpus(20261208);
  const verdicts = [0, 0, 0];
  let escapedTypes = 0;
  let containerPayloads = 0;
  // JSON.parse throws for half the texts: without stack traces that costs a tenth.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    for (let n = 0; n < 200_000; n++) {
      const text = next();
      if (differs(text)) agree(text);
      const verdict = scanner.scan(text);
      verdicts[verdict]!++;
      if (verdict !== Scan.OBJECT) continue;
      const m = scanner.members;
      if (m.typeEscaped) escapedTypes++;
      const first = text.charCodeAt(m.payloadStart);
      if (first === 0x7b || first === 0x5b) containerPayloads++;
    }
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  const [invalid, notObject, objects] = verdicts as [number, number, number];
  assert.ok(invalid > 80_000 && notObject > 35_000 && objects > 60_000, `invalid ${invalid}, not an object ${notObject}, objects ${objects}`);
  assert.ok(escapedTypes > 15_000 && containerPayloads > 15_000, `escaped types ${escapedTypes}, container payloads ${containerPayloads}`);
});
