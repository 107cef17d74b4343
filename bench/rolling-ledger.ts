/**
 * The books of bench/rolling-restart.ts: what each client sent, when each
 * client's session was up, and what each client received from each other
 * member of its desktop. Kept apart from the bench so that the counting can
 * be checked in process (test/rolling-ledger.unit.test.ts).
 *
 * The definitions, as the bench prints them:
 * - A tick is *sent* when the bench called the SDK's send() while the
 *   sender's session was joined (the SDK wrote it to the open socket, or
 *   queued it for the next one if that socket was already closing). Ticks
 *   due while a sender was away are skipped, not queued: they are not sent.
 * - Every client is a member of its desktop for the whole window: joined
 *   before the first tick, closed only after the settle that follows the
 *   last one. So every sent tick is owed to every other member of its
 *   desktop, exactly once, in the sender's order.
 * - *Lost*: a delivery owed and never made (one tick missed by three
 *   members counts 3). *Duplicated*: a delivery made again. *Reordered*: a
 *   tick that arrived after a later tick of the same sender.
 *
 * Each lost delivery is given its likeliest cause, from the clock of the
 * one process that runs every client: the receiver was away when it was
 * sent; the sender's session ended within {@link IN_FLIGHT_MS} of sending
 * it; the receiver's session ended within that time; or none of these.
 */

/** How soon after a send a session's end counts as having taken the tick with it, ms. */
export const IN_FLIGHT_MS = 2_000;

interface Session {
  start: number;
  end: number | null;
}

interface Sent {
  at: number;
  /** Index of the sender's session it was sent on. */
  session: number;
}

/** What one receiver got from one sender. */
interface Stream {
  /** Arrivals per tick number (index n - 1). */
  counts: number[];
  highest: number;
  duplicated: number;
  reordered: number;
}

export interface LossCauses {
  /** The receiver was not joined when the tick was sent. */
  receiverAway: number;
  /** The session the tick was sent on ended within IN_FLIGHT_MS after it. */
  senderDropped: number;
  /** The receiver's session ended within IN_FLIGHT_MS after the send. */
  receiverDropped: number;
  other: number;
}

export interface Tally {
  /** Ticks sent (see the module's definition). */
  sent: number;
  /** Ticks due while their sender was away: not sent. */
  skipped: number;
  /** Deliveries owed: each sent tick times the other members of its desktop. */
  owed: number;
  /** Distinct deliveries made. */
  delivered: number;
  lost: number;
  /** Sent ticks that at least one member never got. */
  lostTicks: number;
  duplicated: number;
  reordered: number;
  causes: LossCauses;
}

export class Ledger {
  /** Desktop of each client, by client index. */
  readonly desktopOf: readonly number[];
  private readonly sessions: Session[][];
  private readonly sends: Sent[][];
  private readonly skips: number[];
  /** streams[receiver].get(sender). */
  private readonly streams: Map<number, Stream>[];
  /** Arrivals so far, for a caller waiting for the deliveries to stop. */
  arrivals = 0;

  constructor(desktopOf: readonly number[]) {
    this.desktopOf = desktopOf;
    this.sessions = desktopOf.map(() => []);
    this.sends = desktopOf.map(() => []);
    this.skips = desktopOf.map(() => 0);
    this.streams = desktopOf.map(() => new Map());
  }

  /** The members of `client`'s desktop other than itself. */
  peers(client: number): number[] {
    const desk = this.desktopOf[client];
    const out: number[] = [];
    for (let c = 0; c < this.desktopOf.length; c++) if (c !== client && this.desktopOf[c] === desk) out.push(c);
    return out;
  }

  /** `client` joined (a new session) at `at`. */
  up(client: number, at: number): void {
    const list = this.sessions[client]!;
    const last = list[list.length - 1];
    if (last !== undefined && last.end === null) return;
    list.push({ start: at, end: null });
  }

  /** `client`'s session ended at `at`. */
  down(client: number, at: number): void {
    const last = this.sessions[client]!.at(-1);
    if (last !== undefined && last.end === null) last.end = at;
  }

  isUp(client: number): boolean {
    const last = this.sessions[client]!.at(-1);
    return last !== undefined && last.end === null;
  }

  /** Sessions `client` has had (its first join counts 1). */
  sessionCount(client: number): number {
    return this.sessions[client]!.length;
  }

  /** The number `client`'s next tick will have. */
  nextTick(client: number): number {
    return this.sends[client]!.length + 1;
  }

  /** Record a tick sent by `client` now; returns its number (1, 2, …). */
  sent(client: number, at: number): number {
    const list = this.sends[client]!;
    list.push({ at, session: this.sessions[client]!.length - 1 });
    return list.length;
  }

  /** A tick was due while `client` was away. */
  skipped(client: number): void {
    this.skips[client]!++;
  }

  /** `receiver` got tick `n` of `sender`. Ticks of a client of another desktop, or never sent, are ignored (and counted nowhere). */
  received(receiver: number, sender: number, n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > (this.sends[sender]?.length ?? 0) || this.desktopOf[sender] !== this.desktopOf[receiver] || sender === receiver)
      return;
    this.arrivals++;
    const streams = this.streams[receiver]!;
    let stream = streams.get(sender);
    if (stream === undefined) {
      stream = { counts: [], highest: 0, duplicated: 0, reordered: 0 };
      streams.set(sender, stream);
    }
    const seen = stream.counts[n - 1] ?? 0;
    stream.counts[n - 1] = seen + 1;
    if (seen > 0) stream.duplicated++;
    else if (n < stream.highest) stream.reordered++;
    if (n > stream.highest) stream.highest = n;
  }

  /** Whether every delivery owed so far has been made. */
  complete(): boolean {
    for (let r = 0; r < this.desktopOf.length; r++) {
      for (const s of this.peers(r)) {
        const counts = this.streams[r]!.get(s)?.counts ?? [];
        const owed = this.sends[s]!.length;
        for (let i = 0; i < owed; i++) if (!counts[i]) return false;
      }
    }
    return true;
  }

  tally(): Tally {
    const causes: LossCauses = { receiverAway: 0, senderDropped: 0, receiverDropped: 0, other: 0 };
    let owed = 0;
    let delivered = 0;
    let duplicated = 0;
    let reordered = 0;
    const lostTicks = new Set<string>();
    for (let r = 0; r < this.desktopOf.length; r++) {
      for (const s of this.peers(r)) {
        const stream = this.streams[r]!.get(s);
        duplicated += stream?.duplicated ?? 0;
        reordered += stream?.reordered ?? 0;
        const sends = this.sends[s]!;
        owed += sends.length;
        for (let i = 0; i < sends.length; i++) {
          if (stream?.counts[i]) {
            delivered++;
            continue;
          }
          lostTicks.add(`${s}:${i}`);
          causes[this.cause(r, s, sends[i]!)]++;
        }
      }
    }
    const sent = this.sends.reduce((sum, list) => sum + list.length, 0);
    const skipped = this.skips.reduce((sum, n) => sum + n, 0);
    return { sent, skipped, owed, delivered, lost: owed - delivered, lostTicks: lostTicks.size, duplicated, reordered, causes };
  }

  private cause(receiver: number, sender: number, tick: Sent): keyof LossCauses {
    const at = tick.at;
    const mine = this.sessions[receiver]!.find((x) => x.start <= at && (x.end === null || x.end > at));
    if (mine === undefined) return 'receiverAway';
    const theirs = this.sessions[sender]![tick.session];
    if (theirs?.end != null && theirs.end - at <= IN_FLIGHT_MS) return 'senderDropped';
    if (mine.end !== null && mine.end - at <= IN_FLIGHT_MS) return 'receiverDropped';
    return 'other';
  }
}
