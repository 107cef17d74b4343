/**
 * One pass over a client frame's text that decides what `JSON.parse` would
 * (valid JSON or not, an object or not) and finds where two of the object's
 * members sit, without building anything: the relay's hot path (relay.ts)
 * needs only `type` (a short string) and the raw text of `payload`, which it
 * forwards byte for byte (json-member.ts says why).
 *
 * Why not `JSON.parse` then json-member.ts: at the ceiling a shard takes in
 * ~170k frames a second, and parsing built each one's payload as objects
 * (internalizing every key and short string) only to throw them away, then
 * scanned the text again for the payload: together ~10% of the core
 * (docs/performance.md, The collector at the ceiling). This scanner reads
 * each character once and allocates nothing; a string is decoded only for
 * `type`, and only when it holds an escape.
 *
 * It accepts exactly what `JSON.parse` accepts (RFC 8259 as V8 reads it:
 * whitespace is space, tab, LF and CR; strings may hold any code unit from
 * U+0020 but `"` and `\`, lone surrogates included; numbers in JSON's
 * grammar; no byte order mark), which test/json-scan.test.ts checks against
 * `JSON.parse` on a seeded corpus. Like `JSON.parse`, the last of duplicate
 * keys wins, and an escaped key (`"pay\u006coad"`) is its decoded name.
 * Nesting is followed with a depth count and one bit per level, in a stack
 * that grows with the deepest frame seen (a frame is at most
 * `--max-message-size` bytes).
 *
 * The state a scan reuses (that stack, where the members sit) belongs to a
 * {@link JsonScanner} its caller owns (the relay: one per shard thread), not
 * to this module: protocol/ keeps no module-level state (test/layering.test.ts).
 */

/** What {@link JsonScanner.scan} found the text to be. */
export const Scan = {
  /** Not JSON at all. */
  INVALID: 0,
  /** JSON, but not an object (an array, a string, a number…). */
  NOT_OBJECT: 1,
  /** A JSON object: {@link ScannedMembers} says where `type` and `payload` are. */
  OBJECT: 2,
} as const;
export type ScanValue = (typeof Scan)[keyof typeof Scan];

/**
 * Where the top-level members `type` and `payload` sit in the text: the
 * value's start and end (end exclusive), -1 when absent. Filled by each
 * {@link JsonScanner.scan} (one object per scanner, reused: read it before
 * the next scan).
 */
export interface ScannedMembers {
  typeStart: number;
  typeEnd: number;
  /** `type` is a string holding an escape (decode it with `JSON.parse`; otherwise its text between the quotes is its value). */
  typeEscaped: boolean;
  payloadStart: number;
  payloadEnd: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const ZERO = 0x30;
const NINE = 0x39;

/** Not a position: a scan that failed returns it. */
const FAIL = -1;

const isSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
const isDigit = (c: number): boolean => c >= ZERO && c <= NINE;
const isHex = (c: number): boolean => (c >= ZERO && c <= NINE) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);

function skipSpace(text: string, i: number): number {
  while (i < text.length && isSpace(text.charCodeAt(i))) i++;
  return i;
}

/** Index just past the number that starts at `i`, or FAIL. */
function scanNumber(text: string, i: number): number {
  if (text.charCodeAt(i) === MINUS) i++;
  const first = text.charCodeAt(i);
  if (first === ZERO) i++;
  else if (first > ZERO && first <= NINE) while (isDigit(text.charCodeAt(++i)));
  else return FAIL;
  if (text.charCodeAt(i) === DOT) {
    if (!isDigit(text.charCodeAt(++i))) return FAIL;
    while (isDigit(text.charCodeAt(++i)));
  }
  const e = text.charCodeAt(i) | 0x20;
  if (e === 0x65) {
    const sign = text.charCodeAt(++i);
    if (sign === PLUS || sign === MINUS) i++;
    if (!isDigit(text.charCodeAt(i))) return FAIL;
    while (isDigit(text.charCodeAt(++i)));
  }
  return i;
}

/** Index just past `word` at `i`, or FAIL. */
function scanWord(text: string, i: number, word: string): number {
  return text.startsWith(word, i) ? i + word.length : FAIL;
}

/**
 * Which tracked member the key literal text[start, end) names: 1 `type`,
 * 2 `payload`, 0 another. An escaped key is decoded once, and only when it
 * is short enough to be one of them (an escape takes 2 to 6 characters for
 * one, so a key of more than 42 is neither): a frame of escaped keys costs
 * a scan, not a decode per key.
 */
function memberOf(text: string, start: number, end: number, wasEscaped: boolean): number {
  const length = end - start - 2;
  if (!wasEscaped) {
    if (length === 4 && text.startsWith('type', start + 1)) return 1;
    return length === 7 && text.startsWith('payload', start + 1) ? 2 : 0;
  }
  if (length > 7 * 6) return 0;
  const name = JSON.parse(text.slice(start, end)) as string;
  return name === 'type' ? 1 : name === 'payload' ? 2 : 0;
}

/**
 * A scanner with the state its scans reuse: the nesting stack and where the
 * last scan found `type` and `payload`. One per thread is enough (a scan
 * runs to its end synchronously); read a scan's members before the next.
 */
export class JsonScanner {
  /** Where the last {@link scan} found `type` and `payload` (valid until the next scan). */
  readonly members: ScannedMembers = { typeStart: -1, typeEnd: -1, typeEscaped: false, payloadStart: -1, payloadEnd: -1 };
  /** 1 for an array, 0 for an object, per level of nesting; grown when a frame nests deeper. */
  private kinds = new Uint8Array(64);
  /** Whether the string {@link scanString} scanned last holds an escape. */
  private escaped = false;
  /** Which top-level member the key {@link readKey} read last names: 1 `type`, 2 `payload`, 0 another. */
  private keyMember = 0;

  /**
   * Whether `text` is JSON, and an object; for an object, {@link members}
   * holds where its `type` and `payload` values are.
   */
  scan(text: string): ScanValue {
    const members = this.members;
    members.typeStart = members.typeEnd = members.payloadStart = members.payloadEnd = -1;
    members.typeEscaped = false;
    const n = text.length;
    let i = skipSpace(text, 0);
    if (i >= n) return Scan.INVALID;
    const top = text.charCodeAt(i);
    if (top !== OPEN_BRACE && top !== OPEN_BRACKET) {
      const end = this.scanScalar(text, i, top);
      return end !== FAIL && skipSpace(text, end) === n ? Scan.NOT_OBJECT : Scan.INVALID;
    }
    let depth = 0;
    this.keyMember = 0;
    // Walk: at each step `i` is where a value starts (after a key and colon, or in an array).
    for (;;) {
      i = skipSpace(text, i);
      const c = text.charCodeAt(i);
      let end: number;
      if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (depth === this.kinds.length) {
          const grown = new Uint8Array(this.kinds.length * 2);
          grown.set(this.kinds);
          this.kinds = grown;
        }
        this.kinds[depth++] = c === OPEN_BRACKET ? 1 : 0;
        if (depth === 2 && this.keyMember !== 0) {
          // A container value of a tracked member: its start now, its end when it closes.
          if (this.keyMember === 1) {
            members.typeStart = i;
            members.typeEscaped = false;
          } else members.payloadStart = i;
        }
        i = skipSpace(text, i + 1);
        const close = c === OPEN_BRACKET ? CLOSE_BRACKET : CLOSE_BRACE;
        if (text.charCodeAt(i) === close) {
          // An empty container: closed at once, then what follows it.
          end = i + 1;
          depth--;
          if (depth === 1 && this.keyMember !== 0) this.closeMember(end);
        } else {
          if (c === OPEN_BRACE) {
            // A key, then a colon, then the value at the top of the loop.
            i = this.readKey(text, i, depth);
            if (i === FAIL) return Scan.INVALID;
          }
          continue;
        }
      } else {
        end = this.scanScalar(text, i, c);
        if (end === FAIL) return Scan.INVALID;
        if (depth === 1 && this.keyMember !== 0) {
          if (this.keyMember === 1) {
            members.typeStart = i;
            members.typeEnd = end;
            members.typeEscaped = c === QUOTE && this.escaped;
          } else {
            members.payloadStart = i;
            members.payloadEnd = end;
          }
        }
      }
      // After a value at `end`: a comma and the next element or member, or the container's close (maybe several).
      for (;;) {
        if (depth === 0) return skipSpace(text, end) === n ? (top === OPEN_BRACE ? Scan.OBJECT : Scan.NOT_OBJECT) : Scan.INVALID;
        i = skipSpace(text, end);
        const d = text.charCodeAt(i);
        const inArray = this.kinds[depth - 1] === 1;
        if (d === COMMA) {
          i++;
          if (!inArray) {
            i = this.readKey(text, skipSpace(text, i), depth);
            if (i === FAIL) return Scan.INVALID;
          }
          break;
        }
        if (d !== (inArray ? CLOSE_BRACKET : CLOSE_BRACE)) return Scan.INVALID;
        end = i + 1;
        depth--;
        if (depth === 1 && this.keyMember !== 0) this.closeMember(end);
      }
    }
  }

  /** The value of `type` the last {@link scan} of `text` found, when it is a string (decoded); undefined when absent or not a string. */
  type(text: string): string | undefined {
    const start = this.members.typeStart;
    if (start === -1 || text.charCodeAt(start) !== QUOTE) return undefined;
    return this.members.typeEscaped ? (JSON.parse(text.slice(start, this.members.typeEnd)) as string) : text.slice(start + 1, this.members.typeEnd - 1);
  }

  /** The raw text of `payload` the last {@link scan} of `text` found; undefined when absent. */
  payload(text: string): string | undefined {
    return this.members.payloadStart === -1 ? undefined : text.slice(this.members.payloadStart, this.members.payloadEnd);
  }

  /** Index just past the string literal that opens at `i` (a quote), or FAIL. Sets {@link escaped}. */
  private scanString(text: string, i: number): number {
    this.escaped = false;
    const n = text.length;
    for (i++; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c === QUOTE) return i + 1;
      if (c < 0x20) return FAIL;
      if (c === BACKSLASH) {
        this.escaped = true;
        const e = text.charCodeAt(++i);
        if (e === 0x75) {
          // \uXXXX
          if (i + 4 >= n) return FAIL;
          if (!isHex(text.charCodeAt(i + 1)) || !isHex(text.charCodeAt(i + 2)) || !isHex(text.charCodeAt(i + 3)) || !isHex(text.charCodeAt(i + 4))) return FAIL;
          i += 4;
        } else if (e !== QUOTE && e !== BACKSLASH && e !== 0x2f && e !== 0x62 && e !== 0x66 && e !== 0x6e && e !== 0x72 && e !== 0x74) {
          return FAIL; // not one of " \ / b f n r t (NaN past the end fails too)
        }
      }
    }
    return FAIL;
  }

  /** Index just past the scalar (string, number, literal) at `i`, or FAIL; containers are the caller's. */
  private scanScalar(text: string, i: number, c: number): number {
    if (c === QUOTE) return this.scanString(text, i);
    if (c === MINUS || isDigit(c)) return scanNumber(text, i);
    if (c === 0x74) return scanWord(text, i, 'true');
    if (c === 0x66) return scanWord(text, i, 'false');
    if (c === 0x6e) return scanWord(text, i, 'null');
    return FAIL;
  }

  /** At `i`, a key and its colon; returns the index of its value, or FAIL. At `depth` 1 it sets {@link keyMember}. */
  private readKey(text: string, i: number, depth: number): number {
    if (text.charCodeAt(i) !== QUOTE) return FAIL;
    const keyEnd = this.scanString(text, i);
    if (keyEnd === FAIL) return FAIL;
    if (depth === 1) this.keyMember = memberOf(text, i, keyEnd, this.escaped);
    const colon = skipSpace(text, keyEnd);
    if (text.charCodeAt(colon) !== COLON) return FAIL;
    return colon + 1;
  }

  /** A tracked member's container value closed just before `end`. */
  private closeMember(end: number): void {
    if (this.keyMember === 1) this.members.typeEnd = end;
    else this.members.payloadEnd = end;
  }
}
