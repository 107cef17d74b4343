/**
 * Where a member's value sits in the text of a JSON object, so that the
 * relay can forward a client's `payload` byte for byte instead of
 * re-serializing it. Re-serializing amplifies: `1e20` comes back as
 * `100000000000000000000`, and a 4 KB frame of them as ~18 KB to every
 * recipient. Forwarding the text as sent keeps what a room receives no
 * larger than what the sender sent, apart from the stamp.
 *
 * The scanner trusts its input to be valid JSON (the caller ran `JSON.parse`
 * on it first), so it only tracks strings and nesting; it never validates.
 */

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** Index just past the string literal that starts at `i` (a quote). */
function skipString(text: string, i: number): number {
  for (i++; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === BACKSLASH) i++;
    else if (c === QUOTE) return i + 1;
  }
  return i;
}

/** Index just past the value that starts at `i` (no leading whitespace). */
function skipValue(text: string, i: number): number {
  const first = text.charCodeAt(i);
  if (first === QUOTE) return skipString(text, i);
  if (first === OPEN_BRACE || first === OPEN_BRACKET) {
    let depth = 0;
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === QUOTE) {
        i = skipString(text, i) - 1;
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        depth++;
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        if (--depth === 0) return i + 1;
      }
    }
    return i;
  }
  // Number, true, false, null: up to the next delimiter.
  for (; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === COMMA || c === CLOSE_BRACE || c === CLOSE_BRACKET || isSpace(c)) return i;
  }
  return i;
}

/**
 * The raw text of member `key` of the JSON object `text`, or undefined when
 * the object has no such member. Like `JSON.parse`, the last of duplicate
 * keys wins, and escaped keys (`"pay\u006coad"`) match their decoded name.
 *
 * `text` must be a JSON object that `JSON.parse` accepted.
 */
export function memberText(text: string, key: string): string | undefined {
  let start = -1;
  let end = -1;
  let i = 0;
  const n = text.length;
  while (i < n && text.charCodeAt(i) !== OPEN_BRACE) i++;
  i++;
  while (i < n) {
    let c = text.charCodeAt(i);
    if (isSpace(c) || c === COMMA) {
      i++;
      continue;
    }
    if (c !== QUOTE) break; // the closing brace
    const keyEnd = skipString(text, i);
    const raw = text.slice(i + 1, keyEnd - 1);
    // Escapes are rare in keys; decode only then.
    const name = raw.indexOf('\\') === -1 ? raw : (JSON.parse(text.slice(i, keyEnd)) as string);
    i = keyEnd;
    while (i < n && (isSpace((c = text.charCodeAt(i))) || c === COLON)) i++;
    const valueEnd = skipValue(text, i);
    if (name === key) {
      start = i;
      end = valueEnd;
    }
    i = valueEnd;
  }
  return start === -1 ? undefined : text.slice(start, end);
}
