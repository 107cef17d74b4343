/**
 * A minimal WebSocket client for the load generator, on a raw `net.Socket`.
 *
 * `ws` costs a few µs per received frame (events, buffers, UTF-8 checks). A
 * generator that must take in hundreds of thousands of frames per second on
 * one core cannot afford that, so this client parses frames in place and
 * hands each text payload to the caller as a slice of the read buffer, with
 * no copy and no decoding. It speaks just what the Moodio server sends:
 * unfragmented text frames, ping (answered), pong and close.
 */
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** Called for each text frame; `data[start, end)` is the payload, valid only during the call. */
export type TextHandler = (data: Buffer, start: number, end: number) => void;

export class HandshakeError extends Error {
  readonly code = 'ERR_LOADTEST_HANDSHAKE';
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

// Masking keys come from one random pool, refilled when used up: clients
// must mask, and a fresh key per frame without a syscall per frame.
const maskPool = Buffer.allocUnsafe(64 * 1024);
let maskOffset = maskPool.length;
function nextMask(): number {
  if (maskOffset + 4 > maskPool.length) {
    randomFillSync(maskPool);
    maskOffset = 0;
  }
  const key = maskPool.readUInt32BE(maskOffset);
  maskOffset += 4;
  return key;
}

/** Build a masked client text frame. */
export function encodeClientText(text: string): Buffer {
  const length = Buffer.byteLength(text);
  const header = length < 126 ? 6 : length < 65536 ? 8 : 14;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = 0x81;
  if (length < 126) frame[1] = 0x80 | length;
  else if (length < 65536) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeUInt32BE(0, 2);
    frame.writeUInt32BE(length, 6);
  }
  const key = nextMask();
  frame.writeUInt32BE(key, header - 4);
  frame.write(text, header, length, 'utf8');
  const k0 = key >>> 24, k1 = (key >>> 16) & 0xff, k2 = (key >>> 8) & 0xff, k3 = key & 0xff;
  let i = header;
  const end = header + length;
  for (; i + 3 < end; i += 4) {
    frame[i]! ^= k0;
    frame[i + 1]! ^= k1;
    frame[i + 2]! ^= k2;
    frame[i + 3]! ^= k3;
  }
  for (let j = 0; i < end; i++, j++) frame[i]! ^= j === 0 ? k0 : j === 1 ? k1 : k2;
  return frame;
}

/** Accumulates time spent parsing received data (µs), shared by a thread's clients. */
export interface BusyMeter {
  busyUs: number;
}

export interface ClientOptions {
  meter: BusyMeter;
  host: string;
  port: number;
  path: string;
  headers: Record<string, string>;
  onText: TextHandler;
  onClose: (code: number) => void;
}

export class RawWebSocket {
  private readonly socket: Socket;
  private readonly options: ClientOptions;
  private pending: Buffer | null = null;
  private open = false;
  private closed = false;
  /** Frames received (all opcodes). */
  frames = 0;

  private constructor(socket: Socket, options: ClientOptions) {
    this.socket = socket;
    this.options = options;
  }

  /** Connect and complete the upgrade; rejects with {@link HandshakeError} on any non-101 answer. */
  static connect(options: ClientOptions): Promise<RawWebSocket> {
    const key = randomBytes(16).toString('base64');
    const expected = createHash('sha1').update(key + GUID).digest('base64');
    const socket = netConnect({ host: options.host, port: options.port, noDelay: true });
    const client = new RawWebSocket(socket, options);
    return new Promise((resolve, reject) => {
      let head: Buffer = Buffer.alloc(0);
      const fail = (err: Error) => {
        socket.destroy();
        reject(err);
      };
      const onData = (chunk: Buffer) => {
        head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) {
          if (head.length > 16384) fail(new HandshakeError(0, 'response head too large'));
          return;
        }
        socket.off('data', onData);
        const text = head.subarray(0, end).toString('latin1');
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
        if (status !== 101) return fail(new HandshakeError(status, `handshake answered ${status || 'garbage'}`));
        const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(text)?.[1];
        if (accept !== expected) return fail(new HandshakeError(101, 'bad Sec-WebSocket-Accept'));
        client.open = true;
        socket.on('data', (c: Buffer) => client.onData(c));
        socket.on('close', () => client.finish(1006));
        resolve(client);
        if (head.length > end + 4) client.onData(head.subarray(end + 4));
      };
      socket.on('data', onData);
      socket.once('error', fail);
      socket.once('close', () => fail(new HandshakeError(0, 'connection closed during handshake')));
      socket.once('connect', () => {
        socket.on('error', () => {});
        let req = `GET ${options.path} HTTP/1.1\r\nHost: ${options.host}:${options.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`;
        for (const name of Object.keys(options.headers)) req += `${name}: ${options.headers[name]}\r\n`;
        socket.write(req + '\r\n');
      });
    });
  }

  get isOpen(): boolean {
    return this.open && !this.closed;
  }

  /** Send a pre-encoded frame (see {@link encodeClientText}). */
  sendFrame(frame: Buffer): void {
    if (this.isOpen) this.socket.write(frame);
  }

  sendText(text: string): void {
    this.sendFrame(encodeClientText(text));
  }

  /** Send a close frame (1000) and end the socket. */
  close(): void {
    if (!this.isOpen) return;
    const frame = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    this.socket.end(frame);
    this.finish(1000);
  }

  destroy(): void {
    this.socket.destroy();
    this.finish(1006);
  }

  private finish(code: number): void {
    if (this.closed) return;
    this.closed = true;
    this.options.onClose(code);
  }

  private onData(chunk: Buffer): void {
    const started = performance.now();
    this.parse(chunk);
    this.options.meter.busyUs += (performance.now() - started) * 1000;
  }

  // Parse every complete frame in `chunk` (plus what was left over).
  private parse(chunk: Buffer): void {
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let offset = 0;
    const length = buf.length;
    while (offset + 2 <= length) {
      const b0 = buf[offset]!;
      let payloadLength = buf[offset + 1]! & 0x7f;
      let start = offset + 2;
      if (payloadLength === 126) {
        if (start + 2 > length) break;
        payloadLength = buf.readUInt16BE(start);
        start += 2;
      } else if (payloadLength === 127) {
        if (start + 8 > length) break;
        payloadLength = buf.readUInt32BE(start) * 2 ** 32 + buf.readUInt32BE(start + 4);
        start += 8;
      }
      const end = start + payloadLength;
      if (end > length) break;
      this.frames++;
      const opcode = b0 & 0x0f;
      if (opcode === 1) this.options.onText(buf, start, end);
      else if (opcode === 9) this.sendPong(buf.subarray(start, end));
      else if (opcode === 8) {
        const code = payloadLength >= 2 ? buf.readUInt16BE(start) : 1005;
        this.socket.end(Buffer.from([0x88, 0x80, 0, 0, 0, 0]));
        this.finish(code);
        return;
      }
      offset = end;
    }
    if (offset < length) this.pending = Buffer.from(buf.subarray(offset));
  }

  private sendPong(payload: Buffer): void {
    // A zero masking key leaves the payload as is; pongs are rare and tiny.
    const frame = Buffer.concat([Buffer.from([0x8a, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
    if (this.isOpen) this.socket.write(frame);
  }
}
