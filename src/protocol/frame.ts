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
  frame.write(text, header, length, 'utf8');
  return frame;
}
