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
  /** The refusal's reason as a moodio-rt server names it (its `Moodio-Reason` header); '' from other servers. */
  readonly reason: string;
  constructor(status: number, message: string, reason = '') {
    super(message);
    this.status = status;
    this.reason = reason;
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

/** A client text frame, masked with a fresh key. */
export function encodeClientText(text: string): Buffer {
  const { frame, header } = clientTextTemplate(text);
  return maskFrame(frame, header);
}

/**
 * A client text frame for `text` with its payload not yet masked (masking key
 * zero), and the payload's offset. The generator builds one per sender and
 * sends copies with digits patched in, through {@link maskFrame}: no string
 * work per send.
 */
export function clientTextTemplate(text: string): { frame: Buffer; header: number } {
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
  frame.writeUInt32BE(0, header - 4);
  frame.write(text, header, length, 'utf8');
  return { frame, header };
}

/** Mask `frame` (an unmasked payload from `header` on, as {@link clientTextTemplate} builds) in place with a fresh key. */
export function maskFrame(frame: Buffer, header: number): Buffer {
  frame.writeUInt32BE(nextMask(), header - 4);
  maskPayload(frame, header);
  return frame;
}

/** XOR the payload with the key stored just before it. */
function maskPayload(frame: Buffer, header: number): void {
  const k0 = frame[header - 4]!,
    k1 = frame[header - 3]!,
    k2 = frame[header - 2]!,
    k3 = frame[header - 1]!;
  let i = header;
  const end = frame.length;
  for (; i + 3 < end; i += 4) {
    frame[i]! ^= k0;
    frame[i + 1]! ^= k1;
    frame[i + 2]! ^= k2;
    frame[i + 3]! ^= k3;
  }
  for (let j = 0; i < end; i++, j++) frame[i]! ^= j === 0 ? k0 : j === 1 ? k1 : k2;
}

/** Every client of a thread reads into this one buffer (see `onread` in connect). */
const readBuffer = Buffer.allocUnsafe(256 * 1024);

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
    const expected = createHash('sha1')
      .update(key + GUID)
      .digest('base64');
    return new Promise((resolve, reject) => {
      let client: RawWebSocket;
      let head: Buffer | null = Buffer.alloc(0);
      const fail = (err: Error) => {
        socket.destroy();
        reject(err);
      };
      // Until the upgrade completes: collect the response head. After it: frames.
      const onHead = (nread: number, buf: Buffer) => {
        head = Buffer.concat([head!, buf.subarray(0, nread)]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) {
          if (head.length > 16384) fail(new HandshakeError(0, 'response head too large'));
          return;
        }
        const text = head.subarray(0, end).toString('latin1');
        const rest = head.subarray(end + 4);
        head = null;
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
        if (status !== 101) {
          const reason = /\r\nmoodio-reason:[ \t]*([a-z0-9_]{1,64})/i.exec(text)?.[1] ?? '';
          return fail(new HandshakeError(status, `handshake answered ${status || 'garbage'}${reason ? ` (${reason})` : ''}`, reason));
        }
        const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(text)?.[1];
        if (accept !== expected) return fail(new HandshakeError(101, 'bad Sec-WebSocket-Accept'));
        client.open = true;
        socket.on('close', () => client.finish(1006));
        resolve(client);
        if (rest.length > 0) client.onData(rest, 0, rest.length);
      };
      // `onread`: the kernel's bytes land in one buffer shared by every
      // client of this thread and are parsed in place. No Buffer per read and
      // no Readable stream machinery; what a read leaves of a frame is copied.
      const socket = netConnect({
        host: options.host,
        port: options.port,
        noDelay: true,
        onread: {
          buffer: readBuffer,
          callback: (nread: number, buf: Uint8Array) => {
            if (head !== null) onHead(nread, buf as Buffer);
            else client.onData(buf as Buffer, 0, nread);
            return true;
          },
        },
      });
      client = new RawWebSocket(socket, options);
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

  private onData(chunk: Buffer, from: number, to: number): void {
    const started = performance.now();
    this.parse(chunk, from, to);
    this.options.meter.busyUs += (performance.now() - started) * 1000;
  }

  // Parse every complete frame in `chunk[from, to)` (plus what was left over).
  private parse(chunk: Buffer, from: number, to: number): void {
    let buf = chunk;
    let offset = from;
    let length = to;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk.subarray(from, to)]);
      this.pending = null;
      offset = 0;
      length = buf.length;
    }
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
    // The read buffer is reused by the next read: keep a copy of a partial frame.
    if (offset < length) this.pending = Buffer.from(buf.subarray(offset, length));
  }

  private sendPong(payload: Buffer): void {
    // A zero masking key leaves the payload as is; pongs are rare and tiny.
    const frame = Buffer.concat([Buffer.from([0x8a, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
    if (this.isOpen) this.socket.write(frame);
  }
}
