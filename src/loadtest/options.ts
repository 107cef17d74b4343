/**
 * Options of `moodio-rt loadtest`, its presets, and their validation. Like
 * the server's, every option is validated once here and named in its error.
 */
import { availableParallelism } from 'node:os';
import { DEV_SECRET_FILE, readDevSecret } from '../auth/dev-secret.ts';
import { ConfigError } from '../errors.ts';
import { ConnectionLimit } from '../protocol/topics.ts';
import { intIn, numberIn, oneOf, parseDuration, resolveTable, type TableSpec } from '../option-parsers.ts';

export const PRESETS = ['light', 'medium', 'heavy', 'extreme'] as const;
/** The routes the generator drives: one socket per desktop, or the multiplexed `/ws/connection`. */
export const ROUTES = ['desktop', 'connection'] as const;
export type RouteName = (typeof ROUTES)[number];
export type PresetName = (typeof PRESETS)[number];

/** Rooms per preset: the seed's "latency under pressure" levels, 10 users each. */
export const PRESET_ROOMS: Record<PresetName, number> = { light: 5, medium: 20, heavy: 50, extreme: 100 };
export const PRESET = {
  usersPerRoom: 10,
  /** Each pressure room has one sender firing every 2 ms. */
  pressureRate: 500,
  /** The target room sends one asset_moved every 10 ms … */
  targetRate: 100,
  /** … 300 of them. */
  targetMessages: 300,
} as const;

export interface LoadtestOptions {
  /** One ws:// URL, or several joined with commas (nodes of one fleet). */
  url: string;
  /** Signs one token per session: --secret, JWT_ACCESS_SECRET, or else a dev server's secret file. */
  secret: string;
  /** How sessions authenticate: tokens signed with --secret, with the dev server's secret, or read from --token-file. */
  auth: 'secret' | 'dev-secret-file' | 'token-file';
  devSecretFile: string;
  tokenFile: string;
  preset: PresetName | null;
  /** `desktop`: a socket per session on /ws/desktop/{id}; `connection`: a socket per user on /ws/connection, subscribed to `topicsPerConnection` rooms. */
  route: RouteName;
  /** On --route connection: the rooms (topics) each connection holds; each of them gets that connection's session. */
  topicsPerConnection: number;
  rooms: number;
  usersPerRoom: number;
  sendersPerRoom: number;
  /** Messages per second per sender. */
  rate: number;
  durationMs: number;
  warmupMs: number;
  messageType: string;
  payloadBytes: number;
  /** New connections per second, all threads together. */
  connectRate: number;
  threads: number;
  /** Fraction 0..1 of expected deliveries that must arrive. */
  minDelivery: number;
  /** p99 gate in ms; 0 = none. */
  maxP99Ms: number;
  json: boolean;
  hgrm: string;
  progress: boolean;
}

export type LoadtestOptionSpec = TableSpec<keyof LoadtestOptions>;

const text = (raw: string): string => raw;
const flag = (raw: string): boolean => raw === 'true';
const percent = (raw: string, option: string): number => numberIn(0, 100)(raw.replace(/%$/, ''), option) / 100;

function wsUrl(raw: string, option: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(option, `must be a ws:// URL, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'ws:') throw new ConfigError(option, `must be a ws:// URL (wss is not supported), got ${JSON.stringify(raw)}`);
  return `ws://${url.host}`;
}

/** One URL, or several (`--url A --url B`, or `A,B`): normalized and joined with commas. */
function wsUrls(raw: string, option: string): string {
  const urls = raw
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
  if (urls.length === 0) throw new ConfigError(option, 'must be a ws:// URL');
  return urls.map((url) => wsUrl(url, option)).join(',');
}

export const LOADTEST_OPTIONS: readonly LoadtestOptionSpec[] = [
  {
    key: 'url',
    flags: '--url <url...>',
    default: 'ws://127.0.0.1:8081',
    description:
      "server to load (ws://host:port); give it several times for federated nodes: each room's sessions are spread round-robin over them, so senders and receivers sit on different nodes",
    parse: wsUrls,
  },
  {
    key: 'secret',
    flags: '--secret <secret>',
    env: 'JWT_ACCESS_SECRET',
    description: 'HS256 secret to mint one token per user (or JWT_ACCESS_SECRET)',
    parse: text,
  },
  {
    key: 'devSecretFile',
    flags: '--dev-secret-file <path>',
    env: 'MOODIO_RT_DEV_SECRET_FILE',
    default: DEV_SECRET_FILE,
    description: 'with neither --secret nor --token-file: the secret of a `serve --dev` server, as `moodio-rt token` reads it',
    parse: text,
  },
  { key: 'tokenFile', flags: '--token-file <path>', description: 'file with one token per line, used round-robin instead of --secret', parse: text },
  {
    key: 'preset',
    flags: '--preset <level>',
    description: `latency under pressure: ${PRESETS.join(', ')} (overrides the workload flags)`,
    parse: oneOf(PRESETS),
    unset: null,
  },
  {
    key: 'route',
    flags: '--route <route>',
    default: 'desktop',
    description: `${ROUTES.join(' or ')}: a socket per session on /ws/desktop/{id}, or a socket per user on the multiplexed /ws/connection holding --topics-per-connection rooms`,
    parse: oneOf(ROUTES),
  },
  {
    key: 'topicsPerConnection',
    flags: '--topics-per-connection <n>',
    default: '1',
    description: `with --route connection: rooms (topics desktop:{id}) per connection, at most ${ConnectionLimit.SUBSCRIBE_BURST} (the server's subscribe burst)`,
    parse: intIn(1, ConnectionLimit.SUBSCRIBE_BURST),
  },
  { key: 'rooms', flags: '--rooms <n>', default: '10', description: 'rooms (desktops)', parse: intIn(1, 100_000) },
  { key: 'usersPerRoom', flags: '--users-per-room <n>', default: '10', description: 'sessions per room', parse: intIn(2, 10_000) },
  { key: 'sendersPerRoom', flags: '--senders-per-room <n>', default: '1', description: 'sessions per room that send', parse: intIn(0, 10_000) },
  { key: 'rate', flags: '--rate <msgs/s>', default: '10', description: 'messages per second per sender (open loop)', parse: numberIn(0.01, 100_000) },
  { key: 'durationMs', flags: '--duration <duration>', default: '10s', description: 'measured time', parse: parseDuration },
  {
    key: 'warmupMs',
    flags: '--warmup <duration>',
    default: '2s',
    description: 'sending before the measurement, measured the same way and discarded',
    parse: parseDuration,
  },
  { key: 'messageType', flags: '--message-type <type>', default: 'asset_moved', description: 'type of the messages sent', parse: text },
  { key: 'payloadBytes', flags: '--payload-bytes <n>', default: '64', description: 'approximate size of each payload', parse: intIn(32, 3500) },
  { key: 'connectRate', flags: '--connect-rate <n/s>', default: '500', description: 'new connections per second', parse: numberIn(1, 1_000_000) },
  {
    key: 'threads',
    flags: '--threads <n>',
    default: String(Math.max(1, availableParallelism() - 1)),
    description: 'generator worker threads (one fewer than the cores, at least 1)',
    parse: intIn(1, 256),
  },
  { key: 'minDelivery', flags: '--min-delivery <percent>', default: '100', description: 'exit 1 when fewer deliveries arrive', parse: percent },
  { key: 'maxP99Ms', flags: '--max-p99 <ms>', default: '0', description: 'exit 1 when p99 latency exceeds this (0 = no gate)', parse: numberIn(0, 600_000) },
  { key: 'json', flags: '--json', description: 'print the report as JSON', parse: flag, unset: false },
  { key: 'hgrm', flags: '--hgrm <file>', description: 'write the latency histogram (HdrHistogram percentile distribution, ms)', parse: text },
  { key: 'progress', flags: '--no-progress', description: 'no progress line on stderr', parse: flag, unset: true },
];

/**
 * Validate raw values (strings, booleans for switches) into options; missing
 * keys take defaults. With neither a secret nor a token file, the secret of a
 * dev server is read from `--dev-secret-file`, as `moodio-rt token` does.
 */
export function resolveLoadtestOptions(raw: Partial<Record<keyof LoadtestOptions, string | boolean>>): LoadtestOptions {
  const options = resolveTable(LOADTEST_OPTIONS, raw) as unknown as LoadtestOptions;
  options.auth = options.tokenFile !== '' ? 'token-file' : 'secret';
  if (options.secret === '' && options.tokenFile === '') {
    const dev = readDevSecret(options.devSecretFile);
    if (dev === null) {
      throw new ConfigError(
        '--secret',
        `a --secret (or JWT_ACCESS_SECRET) or a --token-file is required; against a \`moodio-rt serve --dev\` server, start it first and its secret is read from ${options.devSecretFile}`,
      );
    }
    options.secret = dev;
    options.auth = 'dev-secret-file';
  }
  if (options.sendersPerRoom > options.usersPerRoom) throw new ConfigError('--senders-per-room', 'cannot exceed --users-per-room');
  if (options.topicsPerConnection > 1 && options.route !== 'connection') throw new ConfigError('--topics-per-connection', 'needs --route connection');
  return options;
}
