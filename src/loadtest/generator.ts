/**
 * A load-generator thread (a piscina task): connects its rooms' sessions,
 * waits for the runner's start, sends open-loop and measures deliveries.
 *
 * Open loop: each sender has a schedule (start + k × interval) and every
 * message carries its *scheduled* send time. A stalled server or generator
 * therefore shows up as latency instead of silently slowing the senders
 * (no coordinated omission). Receivers read that time straight from the
 * frame bytes; they never JSON.parse.
 *
 * Payload layout: `{"p":"<pad>","m":1,"s":"000123","t":"000001234567890"}`,
 * m = 1 in the measured window and 0 in the warm-up (see Tally).
 * The server relays the payload with its keys in order, as the last field of
 * the event, so every relayed load frame ends with
 * `,"m":M,"s":"SSSSSS","t":"TTTTTTTTTTTTTTT"}}` and the receiver reads the
 * fields at fixed offsets from the frame's end: no search per frame. On
 * `--route connection` the event frame (`{"op":"event","topic":…}`) has the
 * payload last too, so the offsets hold; its topic picks the room. A
 * relayed event of moodio-rt ends with its `,"offset":N` (issue 21) after
 * the payload: the offsets count from where the frame would end without it
 * ({@link loadEnd}), so the generator reads servers with and without offsets.
 */
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { MessagePort } from 'node:worker_threads';
import { CONNECTION_PATH, ServerOp } from '../protocol/topics.ts';
import { createHistogram, encodeHistogram, recordUs, type Histogram } from './histogram.ts';
import type { RoomPlan, StartCommand, ThreadEvent, ThreadPlan, ThreadResult } from './plan.ts';
import { clientTextTemplate, HandshakeError, maskFrame, RawWebSocket } from './ws-client.ts';

export interface GeneratorTask {
  plan: ThreadPlan;
  port: MessagePort;
}

const nowUs = (): number => performance.now() * 1000;
/** Longest the send loop busy-waits before letting I/O run (µs); see `loop`. */
const SPIN_SLICE_US = 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Offsets from the end of a relayed load frame (see the layout above).
const T_DIGITS = 15;
const S_DIGITS = 6;
const T_END = 3; // `"}}` after the digits
const T_START = T_END + T_DIGITS;
const S_END = T_START + 7; // `","t":"` between s and t digits
const S_START = S_END + S_DIGITS;
const M_AT = S_START + 7; // m digit, then `,"s":"` before the s digits
const ERROR_PREFIX = Buffer.from('{"type":"error","code":"');
const JOINED_PREFIX = Buffer.from('{"type":"room_joined"');
// The multiplexed route's frames (--route connection).
const EVENT_PREFIX = Buffer.from(`{"op":"${ServerOp.EVENT}","topic":"`);
const SUBSCRIBED_PREFIX = Buffer.from(`{"op":"${ServerOp.SUBSCRIBED}"`);
const TOPIC_ERROR_PREFIX = Buffer.from(`{"op":"${ServerOp.ERROR}"`);
const CODE_KEY = Buffer.from('"code":"');

/** The decimal digits in `buf[start, end)`. */
function readDigits(buf: Buffer, start: number, end: number): number {
  let value = 0;
  for (let i = start; i < end; i++) value = value * 10 + (buf[i]! - 48);
  return value;
}

/** Write `value` as zero-padded decimal digits into `buf[start, end)` (higher digits dropped). */
function writeDigits(buf: Buffer, start: number, end: number, value: number): void {
  for (let i = end - 1; i >= start; i--) {
    buf[i] = 48 + (value % 10);
    value = Math.floor(value / 10);
  }
}

/** True when `buf[start, end)` begins with `prefix` (a bounded check: `buf` may be a large shared read buffer). */
function startsWith(buf: Buffer, start: number, end: number, prefix: Buffer): boolean {
  return end - start >= prefix.length && buf.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0;
}

const OFFSET_MEMBER = Buffer.from(',"offset":');

/**
 * Where a frame's fixed offsets count from: its end, or for a frame that
 * ends `…"}},"offset":N}` the end it would have without the offset (just
 * past the `,` that follows the payload).
 */
function loadEnd(buf: Buffer, start: number, end: number): number {
  let i = end - 2;
  while (i > start && buf[i]! >= 48 && buf[i]! <= 57) i--;
  if (i === end - 2 || buf[end - 1] !== 125) return end;
  const comma = i - OFFSET_MEMBER.length + 1;
  if (comma <= start || buf.compare(OFFSET_MEMBER, 0, OFFSET_MEMBER.length, comma, i + 1) !== 0) return end;
  return comma + 1;
}

/** True when the frame ends like a relayed load message: `…,"t":"…"}}` (or `…"}` and its offset, `end` from {@link loadEnd}). */
function isLoadFrame(buf: Buffer, start: number, end: number): boolean {
  return (
    end - start > M_AT + 4 &&
    (buf[end - 1] === 125 || buf[end - 1] === 44) &&
    buf[end - 2] === 125 &&
    buf[end - 3] === 34 &&
    buf[end - T_START - 1] === 34 &&
    buf[end - T_START - 2] === 58 &&
    buf[end - T_START - 3] === 34 &&
    buf[end - T_START - 4] === 116
  );
}

interface Sender {
  client: RawWebSocket;
  /** This sender's frame with m, s and t zeroed, not yet masked; each send patches and masks a copy. */
  template: Buffer;
  /** Offset of the payload in `template`. */
  header: number;
  room: RoomState;
  intervalUs: number;
  nextAt: number;
  /** Messages sent, per tally slot (warm-up, measured). */
  sent: [number, number];
  /** Most messages to send, per tally slot (Infinity: no limit). */
  limit: [number, number];
}

interface RoomState {
  plan: RoomPlan;
  receivers: number;
  /** For the target room, per tally: per message, receivers reached and the worst latency. */
  reached: [Uint16Array, Uint16Array] | null;
  worst: [Float64Array, Float64Array] | null;
}

/**
 * What one phase sent and received. The warm-up has a tally of its own,
 * filled by the same code as the measured one and then thrown away: the
 * measured window starts with that code already optimized, instead of
 * compiling it (on this core, beside the sends) in its first milliseconds.
 */
interface Tally {
  /** Index into RoomState.reached / worst. */
  readonly slot: 0 | 1;
  readonly deliveryHist: Histogram;
  readonly targetHist: Histogram;
  /** How late the generator sent each message after its scheduled time. */
  readonly lagHist: Histogram;
  sends: number;
  expected: number;
  pressureSends: number;
  pressureExpected: number;
  targetMessages: number;
  targetExpected: number;
  deliveries: number;
  targetDeliveries: number;
  targetComplete: number;
  pressureDeliveries: number;
}

function newTally(slot: 0 | 1): Tally {
  return {
    slot,
    deliveryHist: createHistogram(),
    targetHist: createHistogram(),
    lagHist: createHistogram(),
    sends: 0,
    expected: 0,
    pressureSends: 0,
    pressureExpected: 0,
    targetMessages: 0,
    targetExpected: 0,
    deliveries: 0,
    targetDeliveries: 0,
    targetComplete: 0,
    pressureDeliveries: 0,
  };
}

/** The `m` digit of a load frame: which tally it counts in. */
const M_WARMUP = 48; // '0'
const M_MEASURED = 49; // '1'

export default async function run({ plan, port }: GeneratorTask): Promise<ThreadResult> {
  const post = (event: ThreadEvent) => port.postMessage(event);
  const connectHist: Histogram = createHistogram();
  const warm = newTally(0);
  const measured = newTally(1);
  const errors: Record<string, number> = {};
  const countError = (kind: string) => (errors[kind] = (errors[kind] ?? 0) + 1);
  /** Load frames are counted from the start until the grace period ends. */
  let counting = false;
  let finished = false;

  const rooms: RoomState[] = plan.rooms.map((room) => ({
    plan: room,
    receivers: room.tokens.length - 1,
    reached: room.role === 'target' ? [new Uint16Array(room.maxMessages), new Uint16Array(room.maxMessages)] : null,
    worst: room.role === 'target' ? [new Float64Array(room.maxMessages), new Float64Array(room.maxMessages)] : null,
  }));
  const clients: RawWebSocket[] = [];
  const meter = { busyUs: 0 };
  const senders: Sender[] = [];

  const onTextFor = (room: RoomState) => (buf: Buffer, start: number, frameEnd: number) => {
    const end = loadEnd(buf, start, frameEnd);
    if (!isLoadFrame(buf, start, end)) {
      if (startsWith(buf, start, end, ERROR_PREFIX)) {
        const codeStart = start + ERROR_PREFIX.length;
        const codeEnd = buf.indexOf(34, codeStart);
        countError(`server_${buf.toString('latin1', codeStart, codeEnd === -1 || codeEnd > end ? end : codeEnd)}`);
      }
      return;
    }
    const m = buf[end - M_AT];
    if (!counting || (m !== M_MEASURED && m !== M_WARMUP)) return;
    const tally = m === M_MEASURED ? measured : warm;
    const latency = nowUs() - readDigits(buf, end - T_START, end - T_END);
    tally.deliveries++;
    const role = room.plan.role;
    if (role === 'target') {
      tally.targetDeliveries++;
      const seq = readDigits(buf, end - S_START, end - S_END);
      const reached = room.reached![tally.slot];
      const worst = room.worst![tally.slot];
      if (seq < reached.length) {
        if (latency > worst[seq]!) worst[seq] = latency;
        if (++reached[seq]! === room.receivers) {
          tally.targetComplete++;
          recordUs(tally.targetHist, worst[seq]!);
        }
      }
    } else {
      recordUs(tally.deliveryHist, latency);
      if (role === 'pressure') tally.pressureDeliveries++;
    }
  };

  const payloadPad = 'x'.repeat(Math.max(0, plan.payloadBytes - 50));

  // Connect, paced, without waiting for each handshake before starting the next.
  const pending: Promise<void>[] = [];
  let roomIndex = 0;
  let connected = 0;
  let failed = 0;
  let sockets = 0;
  const pace = async (): Promise<void> => {
    if (plan.connectIntervalMs > 0) await sleep(plan.connectIntervalMs);
  };
  /** A refused handshake, counted by status and, from moodio-rt, by its reason. */
  const refused = (err: unknown) => {
    if (!(err instanceof HandshakeError)) countError('connect_error');
    else {
      countError(`connect_${err.status}`);
      // moodio-rt names why: a full room and a permission API outage are both 503s.
      if (err.reason !== '') countError(`refused_${err.reason}`);
    }
  };
  /** A sender's frame template: `{…,"payload":{"p":…,"m":0,"s":"000000","t":"000…"}}`, so the digits sit at the same offsets from the end on both routes. */
  const payloadTemplate = (): string => `{"p":"${payloadPad}","m":0,"s":"${'0'.repeat(S_DIGITS)}","t":"${'0'.repeat(T_DIGITS)}"}`;
  const addSender = (client: RawWebSocket, room: RoomState, text: string) => {
    const { frame, header } = clientTextTemplate(text);
    senders.push({
      client,
      template: frame,
      header,
      room,
      intervalUs: 1e6 / room.plan.rate,
      nextAt: 0,
      sent: [0, 0],
      limit: [Infinity, room.plan.maxMessages > 0 ? room.plan.maxMessages : Infinity],
    });
  };
  /**
   * --route connection: the `user`-th session of each room of `group`, on
   * one socket to /ws/connection, subscribed to all of them. Its frames name
   * their topic (`{"op":"event","topic":"desktop:…",…`), which picks the
   * room whose tally counts it; the timestamp is read at the same offsets
   * from the end as on the legacy route, the payload being last in both.
   */
  const connectTopics = async (group: RoomState[], user: number, groupIndex: number): Promise<void> => {
    const members = group.filter((room) => user < room.plan.tokens.length);
    const topics = members.map((room) => `desktop:${room.plan.desktopId}`);
    // A topic with its closing quote, so that `…-1` never matches `…-10`.
    const keys = topics.map((topic) => Buffer.from(`${topic}"`));
    const handlers = members.map(onTextFor);
    const target = plan.targets[(user + groupIndex) % plan.targets.length]!;
    const started = nowUs();
    let answered = 0;
    let refusedTopics = 0;
    let isJoined = false;
    let joined: () => void = () => {};
    const joinedP = new Promise<void>((resolve) => (joined = resolve));
    const answer = () => {
      if (++answered < members.length || isJoined) return;
      isJoined = true;
      recordUs(connectHist, nowUs() - started);
      joined();
    };
    let client: RawWebSocket;
    try {
      client = await RawWebSocket.connect({
        meter,
        host: target.host,
        port: target.port,
        path: CONNECTION_PATH,
        headers: { Cookie: `moodio_access_token=${members[0]!.plan.tokens[user]}` },
        onText: (buf, start, end) => {
          if (isLoadFrame(buf, start, loadEnd(buf, start, end))) {
            const at = start + EVENT_PREFIX.length;
            for (let k = 0; k < keys.length; k++) {
              const key = keys[k]!;
              if (at + key.length <= end && buf.compare(key, 0, key.length, at, at + key.length) === 0) return handlers[k]!(buf, start, end);
            }
            return;
          }
          if (startsWith(buf, start, end, SUBSCRIBED_PREFIX)) return answer();
          if (startsWith(buf, start, end, TOPIC_ERROR_PREFIX)) {
            const codeAt = buf.indexOf(CODE_KEY, start);
            const codeStart = codeAt === -1 || codeAt >= end ? -1 : codeAt + CODE_KEY.length;
            const codeEnd = codeStart === -1 ? -1 : buf.indexOf(34, codeStart);
            countError(codeStart === -1 ? 'server_error' : `server_${buf.toString('latin1', codeStart, codeEnd === -1 || codeEnd > end ? end : codeEnd)}`);
            // Before every topic is answered, an error is a subscribe's (the ops carry no publish yet).
            if (!isJoined) {
              refusedTopics++;
              answer();
            }
          }
        },
        onClose: (code) => {
          if (!finished) countError(`closed_${code}`);
          joined();
        },
      });
    } catch (err) {
      failed += members.length;
      refused(err);
      return;
    }
    clients.push(client);
    for (const topic of topics) client.sendText(`{"op":"subscribe","topic":${JSON.stringify(topic)}}`);
    await joinedP;
    if (!client.isOpen) {
      failed += members.length;
      return;
    }
    connected += members.length - refusedTopics;
    failed += refusedTopics;
    members.forEach((room, k) => {
      if (user < room.plan.senders)
        addSender(
          client,
          room,
          `{"op":"publish","topic":${JSON.stringify(topics[k])},"type":${JSON.stringify(room.plan.messageType)},"payload":${payloadTemplate()}}`,
        );
    });
  };
  if (plan.route === 'connection') {
    for (let first = 0; first < rooms.length; first += plan.topicsPerConnection) {
      const group = rooms.slice(first, first + plan.topicsPerConnection);
      const users = Math.max(...group.map((room) => room.plan.tokens.length));
      for (let i = 0; i < users; i++) {
        sockets++;
        pending.push(connectTopics(group, i, roomIndex));
        await pace();
      }
      roomIndex++;
    }
  }
  for (const room of plan.route === 'connection' ? [] : rooms) {
    const onText = onTextFor(room);
    const offset = roomIndex++;
    for (let i = 0; i < room.plan.tokens.length; i++) {
      const token = room.plan.tokens[i]!;
      // Round-robin over the servers, shifted per room: with two nodes, a sender and half its receivers are on different nodes.
      const target = plan.targets[(i + offset) % plan.targets.length]!;
      const isSender = i < room.plan.senders;
      const started = nowUs();
      let joined: () => void = () => {};
      const joinedP = new Promise<void>((resolve) => (joined = resolve));
      let isJoined = false;
      pending.push(
        RawWebSocket.connect({
          meter,
          host: target.host,
          port: target.port,
          path: `/ws/desktop/${room.plan.desktopId}`,
          headers: { Cookie: `moodio_access_token=${token}` },
          onText: (buf, start, end) => {
            if (!isJoined && startsWith(buf, start, end, JOINED_PREFIX)) {
              isJoined = true;
              recordUs(connectHist, nowUs() - started);
              joined();
              return;
            }
            onText(buf, start, end);
          },
          onClose: (code) => {
            if (!finished) countError(`closed_${code}`);
            joined();
          },
        }).then(
          async (client) => {
            clients.push(client);
            await joinedP;
            if (!client.isOpen) {
              failed++;
              return;
            }
            connected++;
            if (isSender) addSender(client, room, `{"type":${JSON.stringify(room.plan.messageType)},"payload":${payloadTemplate()}}`);
          },
          (err: unknown) => {
            failed++;
            refused(err);
          },
        ),
      );
      sockets++;
      await pace();
    }
  }
  await Promise.all(pending);
  post({ type: 'connected', thread: plan.thread, connected, failed });
  const [start] = (await once(port, 'message')) as [StartCommand];

  // Run: warm-up, then the measured window.
  const cpuStart = process.threadCpuUsage();
  const runStart = nowUs();
  const measureFrom = runStart + start.warmupMs * 1000;
  const measureUntil = measureFrom + start.durationMs * 1000;
  for (const s of senders) s.nextAt = runStart + Math.random() * s.intervalUs;

  /** Send every message due by now; returns when the next one is due (µs, Infinity if none). */
  const tick = (): number => {
    const now = nowUs();
    let next = Infinity;
    let sent = false;
    for (let i = 0; i < senders.length; i++) {
      const s = senders[i]!;
      const room = s.room.plan;
      while (s.nextAt <= now && s.nextAt < measureUntil) {
        // The same code for both phases, so that the warm-up trains it.
        const tally = s.nextAt >= measureFrom ? measured : warm;
        const slot = tally.slot;
        if (s.sent[slot] >= s.limit[slot]) break;
        // Warm-up target messages reuse their tally's slots round-robin.
        let seq = s.sent[slot];
        if (room.role === 'target') {
          seq %= room.maxMessages;
          s.room.reached![slot][seq] = 0;
          s.room.worst![slot][seq] = 0;
        }
        recordUs(tally.lagHist, now - s.nextAt);
        // A copy of the template with the digits patched in (see the layout above).
        const frame = Buffer.allocUnsafe(s.template.length);
        s.template.copy(frame);
        const end = frame.length;
        frame[end - M_AT] = slot === 1 ? M_MEASURED : M_WARMUP;
        writeDigits(frame, end - S_START, end - S_END, seq);
        writeDigits(frame, end - T_START, end - T_END, Math.round(s.nextAt));
        s.client.sendFrame(maskFrame(frame, s.header));
        sent = true;
        s.sent[slot]++;
        tally.sends++;
        tally.expected += s.room.receivers;
        if (room.role === 'pressure') {
          tally.pressureSends++;
          tally.pressureExpected += s.room.receivers;
        } else if (room.role === 'target') {
          tally.targetMessages++;
          tally.targetExpected += s.room.receivers;
        }
        s.nextAt += s.intervalUs;
      }
      const done = s.nextAt >= measureUntil || s.sent[1] >= s.limit[1];
      if (!done && s.nextAt < next) next = s.nextAt;
    }
    if (sent) meter.busyUs += nowUs() - now;
    return next;
  };

  // Node timers have 1 ms granularity, too coarse for sub-millisecond
  // latencies measured from the scheduled time. So: sleep on a timer while
  // the next send is more than 1.5 ms away (waking ~1 ms early), and spin on
  // setImmediate — which still lets I/O run every turn — when it is closer.
  // Each spin turn first waits in place for up to SPIN_SLICE_US. Yielding
  // after every check allocated an Immediate per turn, hundreds of thousands
  // a second: at the light preset the thread's young generation was
  // scavenged every 6 ms; with the slice, every ~110 ms. I/O waits at most
  // one slice.
  let running = true;
  let timer: NodeJS.Timeout | null = null;
  let immediate: NodeJS.Immediate | null = null;
  const loop = (): void => {
    timer = null;
    immediate = null;
    if (!running) return;
    let next = tick();
    let now = nowUs();
    if (next - now <= 1500) {
      const sliceEnd = now + SPIN_SLICE_US;
      while (now < sliceEnd && now < next) now = nowUs();
      if (now >= next) next = tick();
    }
    const wait = next - nowUs();
    if (wait === Infinity) return;
    if (wait > 1500) timer = setTimeout(loop, Math.floor((wait - 1000) / 1000));
    else immediate = setImmediate(loop);
  };
  counting = true;
  loop();
  // Measured counts only, as the report has them: warm-up sends are discarded.
  const progress = setInterval(
    () => post({ type: 'progress', thread: plan.thread, warmingUp: nowUs() < measureFrom, sends: measured.sends, deliveries: measured.deliveries }),
    1000,
  );
  await sleep(start.warmupMs + start.durationMs);
  running = false;
  if (timer) clearTimeout(timer);
  if (immediate) clearImmediate(immediate);
  tick();
  const windowMs = (nowUs() - measureFrom) / 1000;
  // Let in-flight deliveries land, up to the grace period.
  const graceUntil = Date.now() + start.graceMs;
  while (measured.deliveries < measured.expected && Date.now() < graceUntil) await sleep(5);
  counting = false;
  finished = true;
  clearInterval(progress);
  const cpu = process.threadCpuUsage(cpuStart);
  const wallUs = nowUs() - runStart;
  for (const client of clients) client.close();
  port.close();

  return {
    thread: plan.thread,
    sessions: rooms.reduce((n, r) => n + r.plan.tokens.length, 0),
    connections: sockets,
    connected,
    connectFailed: failed,
    errors,
    sends: measured.sends,
    expectedDeliveries: measured.expected,
    deliveries: measured.deliveries,
    deliveryHistogram: encodeHistogram(measured.deliveryHist),
    targetHistogram: encodeHistogram(measured.targetHist),
    connectHistogram: encodeHistogram(connectHist),
    lagHistogram: encodeHistogram(measured.lagHist),
    targetMessages: measured.targetMessages,
    targetComplete: measured.targetComplete,
    targetExpectedDeliveries: measured.targetExpected,
    targetDeliveries: measured.targetDeliveries,
    pressureSends: measured.pressureSends,
    pressureExpectedDeliveries: measured.pressureExpected,
    pressureDeliveries: measured.pressureDeliveries,
    windowMs,
    cpuPercent: Math.round(((cpu.user + cpu.system) / wallUs) * 1000) / 10,
    busyPercent: Math.round((meter.busyUs / wallUs) * 1000) / 10,
    framesReceived: clients.reduce((n, c) => n + c.frames, 0),
  };
}
