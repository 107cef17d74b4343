/**
 * What the relay's scanner (src/protocol/json-scan.ts) costs on the worst
 * frames a client can shape: deep nesting, many escaped keys, long runs of
 * escapes, numbers, empty containers, duplicate members. Each shape is
 * built at 16 KiB and 64 KiB; the test asserts that the scanner reads it as
 * `JSON.parse` and json-member.ts do, and reports (no timed assertion) the
 * scan's time per character at both sizes (linear: the same) and its ratio
 * to `JSON.parse` on the same text in the same run.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memberText } from '../src/protocol/json-member.ts';
import { JsonScanner, Scan } from '../src/protocol/json-scan.ts';

const scanner = new JsonScanner();

/** `head`, then `unit` repeated, then `tail`, to about `size` characters. */
const filled = (size: number, head: string, unit: string, tail: string) =>
  head + unit.repeat(Math.floor((size - head.length - tail.length) / unit.length)) + tail;

/** Each worst shape at `size` characters (about). */
function shapes(size: number): Record<string, string> {
  const arrays = (size - 30) >> 1;
  const objects = Math.floor((size - 30) / 7);
  return {
    'deep arrays': `{"type":"x","payload":${'['.repeat(arrays)}${']'.repeat(arrays)}}`,
    'deep objects': `{"type":"x","payload":${'{"a":'.repeat(objects)}0${'}'.repeat(objects)}}`,
    'escaped keys': filled(size, '{"type":"x"', ',"\\u0061":0', '}'),
    'escaped type keys': filled(size, '{', '"\\u0074ype":"x",', '"payload":0}'),
    'escapes in payload': filled(size, '{"type":"x","payload":"', '\\u0041', '"}'),
    'escapes in type': filled(size, '{"payload":0,"type":"', '\\u0041', '"}'),
    backslashes: filled(size, '{"type":"x","payload":"', '\\\\', '"}'),
    numbers: filled(size, '{"type":"x","payload":[0', ',-1.5e+10', ']}'),
    'empty containers': filled(size, '{"type":"x","payload":[{}', ',[]', ']}'),
    'duplicate payloads': filled(size, '{"type":"x"', ',"payload":[]', '}'),
    whitespace: filled(size, '{"type":"x","payload":', ' \t\r\n', '1}'),
  };
}

/** Milliseconds for `reps` calls of `run`. */
function time(reps: number, run: () => unknown): number {
  const start = performance.now();
  for (let r = 0; r < reps; r++) run();
  return performance.now() - start;
}

test('the worst shapes at 64 KiB scan as JSON.parse reads them, in time linear in their size (reported against JSON.parse)', (t) => {
  const small = shapes(16 * 1024);
  const large = shapes(64 * 1024);
  for (const name of Object.keys(large)) {
    const texts = [small[name]!, large[name]!];
    const scanOf = (text: string) => () => scanner.scan(text) + (scanner.type(text)?.length ?? 0);
    for (const text of texts) {
      assert.equal(scanner.scan(text), Scan.OBJECT, name);
      assert.equal(scanner.payload(text), memberText(text, 'payload'), name);
      assert.equal(scanner.type(text), (JSON.parse(text) as { type: string }).type, name);
      // Warm both sizes of both readers before timing any.
      time(3, scanOf(text));
      time(3, () => JSON.parse(text));
    }
    const perChar: number[] = [];
    let ratio = 0;
    for (const text of texts) {
      // The same number of characters at each size: ~1.3 MB.
      const reps = Math.ceil((1.3 * 1024 * 1024) / text.length);
      const scan = time(reps, scanOf(text));
      const parse = time(reps, () => JSON.parse(text));
      perChar.push((scan * 1e6) / reps / text.length);
      ratio = scan / parse;
    }
    t.diagnostic(`${name}: ${perChar[0]!.toFixed(1)} ns/char at 16 KiB, ${perChar[1]!.toFixed(1)} at 64 KiB; ${ratio.toFixed(2)}x JSON.parse`);
  }
});
