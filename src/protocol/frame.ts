/**
 * Server → client WebSocket text frames (RFC 6455 §5.2), unmasked, built
 * once per broadcast so the same bytes go to every recipient.
 *
 * `ws` would frame each `send()` separately — once per recipient. Building
 * the frame here means a broadcast to N sessions costs one JSON.stringify, one
 * UTF-8 encode and one allocation, not N of each.
 */

/**
 * Encode `text` as a single final text frame. The returned buffer is shared
 * by every write of a broadcast and must never be mutated.
 */
export function encodeTextFrame(text: string): Buffer {
  const length = Buffer.byteLength(text);
  const frame = frameFor(length);
  frame.write(text, frame.length - length, length, 'utf8');
  return frame;
}

/** `,"offset":` as bytes, the start of the member {@link encodeOffsetFrame} appends. */
const OFFSET_MEMBER = Buffer.from(',"offset":', 'latin1');

/**
 * A text frame whose text is the UTF-8 bytes `source[start, end)` followed
 * by `,"offset":N}`: a kept event's bytes (its text without the closing
 * brace) and its offset member, without making the text a string again.
 * The digits are written byte by byte: a template string and a `latin1`
 * write cost ~115 ns a frame, half of the function (`offset` is a
 * non-negative safe integer, as history offsets are).
 */
export function encodeOffsetFrame(source: Buffer, start: number, end: number, offset: number): Buffer {
  let digits = 1;
  for (let n = offset; n >= 10; n = Math.floor(n / 10)) digits++;
  const length = end - start + OFFSET_MEMBER.length + digits + 1;
  const frame = frameFor(length);
  let at = frame.length - length;
  source.copy(frame, at, start, end);
  at += end - start;
  for (let i = 0; i < OFFSET_MEMBER.length; i++) frame[at + i] = OFFSET_MEMBER[i]!;
  at += OFFSET_MEMBER.length;
  let n = offset;
  for (let i = at + digits - 1; i >= at; i--) {
    frame[i] = 48 + (n % 10);
    n = Math.floor(n / 10);
  }
  frame[at + digits] = 0x7d; // }
  return frame;
}

/** A frame buffer for `length` bytes of text, its header written: the text goes at `frame.length - length`. */
function frameFor(length: number): Buffer {
  let header: number;
  if (length < 126) header = 2;
  else if (length < 65536) header = 4;
  else header = 10;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = 0x81; // FIN + opcode 1 (text)
  if (header === 2) {
    frame[1] = length;
  } else if (header === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  return frame;
}
