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

/**
 * A text frame whose text is the UTF-8 bytes `source[start, end)` followed
 * by `tail` (ASCII): a kept event's bytes and its offset member
 * (`,"offset":N}`), without making the text a string again.
 */
export function encodeBytesFrame(source: Buffer, start: number, end: number, tail: string): Buffer {
  const length = end - start + tail.length;
  const frame = frameFor(length);
  const at = frame.length - length;
  source.copy(frame, at, start, end);
  frame.write(tail, at + end - start, 'latin1');
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
