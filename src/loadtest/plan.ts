/**
 * What each generator thread does, as plain data (it crosses into piscina
 * workers). A room is never split across threads, so its sender and
 * receivers share one clock and a message's latency is measured in one place.
 */

export type RoomRole = 'load' | 'pressure' | 'target';

export interface RoomPlan {
  desktopId: string;
  role: RoomRole;
  /** One token per session; the first `senders` of them send. */
  tokens: string[];
  senders: number;
  /** Messages per second per sender. */
  rate: number;
  /** Stop after this many measured messages per sender (0 = until the window ends). */
  maxMessages: number;
  messageType: string;
}

export interface ThreadPlan {
  thread: number;
  /** The servers: a room's n-th session connects to targets[(n + room) % targets.length]. */
  targets: { host: string; port: number }[];
  rooms: RoomPlan[];
  /** `desktop`: a socket per session. `connection`: each run of `topicsPerConnection` rooms (in order) is held by one socket per user, subscribed to all of them. */
  route: 'desktop' | 'connection';
  topicsPerConnection: number;
  /** Pause between two connection attempts of this thread. */
  connectIntervalMs: number;
  payloadBytes: number;
}

/** Runner → thread, once every thread has connected. */
export interface StartCommand {
  type: 'start';
  warmupMs: number;
  durationMs: number;
  /** Longest wait after the window for in-flight deliveries. */
  graceMs: number;
}

export type ThreadEvent =
  | { type: 'connected'; thread: number; connected: number; failed: number }
  /** Once a second: the measured window's counts so far (0 during the warm-up), as the report counts them. */
  | { type: 'progress'; thread: number; warmingUp: boolean; sends: number; deliveries: number };

export interface ThreadResult {
  thread: number;
  /** Sessions: room memberships (a subscription on --route connection). */
  sessions: number;
  /** Sockets opened: the sessions on --route desktop, fewer on --route connection. */
  connections: number;
  connected: number;
  connectFailed: number;
  /** Errors by kind: `connect_<status>`, `closed_<code>`, `server_<code>`. */
  errors: Record<string, number>;
  /** Measured messages sent. */
  sends: number;
  /** Measured sends × receivers. */
  expectedDeliveries: number;
  deliveries: number;
  /** Encoded histograms (µs). */
  deliveryHistogram: string;
  targetHistogram: string;
  connectHistogram: string;
  lagHistogram: string;
  targetMessages: number;
  targetComplete: number;
  targetExpectedDeliveries: number;
  targetDeliveries: number;
  pressureSends: number;
  pressureExpectedDeliveries: number;
  pressureDeliveries: number;
  windowMs: number;
  /** CPU time of the thread over the run, as a percentage of wall time (includes the scheduler's spinning). */
  cpuPercent: number;
  /** Time spent sending and parsing received frames, as a percentage of wall time. */
  busyPercent: number;
  framesReceived: number;
}
