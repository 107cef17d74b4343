/**
 * Pure pieces: the request-head parser, frame encoding (checked against ws's
 * own receiver), the shard hash, and option validation.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import * as wsModule from 'ws';
import { parseDuration, resolveServeConfig } from '../src/config.ts';
import { ConfigError } from '../src/errors.ts';
import { LogBudget } from '../src/log.ts';
import { fnv1a32, route, shardFor } from '../src/primary/router.ts';
import { encodeTextFrame } from '../src/protocol/frame.ts';
import { bearerToken, findHeadEnd, headerHasToken, MAX_HEADER_COUNT, parseRequestHead } from '../src/protocol/http.ts';

const enc = (s: string) => Buffer.from(s, 'latin1');

describe('parseRequestHead', () => {
  test('parses method, target, path, version and lower-cased headers', () => {
    const result = parseRequestHead(
      enc('GET /ws/desktop/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade:  WebSocket \r\nCookie: a=1\r\nCookie: b=2\r\nX-Many: 1\r\nX-Many: 2\r\n\r\nrest'),
    );
    assert.ok(result.ok);
    assert.equal(result.head.method, 'GET');
    assert.equal(result.head.url, '/ws/desktop/a?x=1');
    assert.equal(result.head.path, '/ws/desktop/a');
    assert.equal(result.head.version, '1.1');
    assert.deepEqual({ ...result.head.headers }, { host: 'h', upgrade: 'WebSocket', cookie: 'a=1; b=2', 'x-many': '1, 2' });
    assert.equal(
      result.head.length,
      findHeadEnd(enc('GET /ws/desktop/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade:  WebSocket \r\nCookie: a=1\r\nCookie: b=2\r\nX-Many: 1\r\nX-Many: 2\r\n\r\n')),
    );
  });

  test('rejects what proxies could read differently', () => {
    const cases: [string, number][] = [
      ['GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nX: a\rb\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nX: a\x00\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\n folded\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nBad Name: x\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\n: x\r\n\r\n', 400],
      ['GET http://x/ HTTP/1.1\r\n\r\n', 400],
      ['GET /\x7f HTTP/1.1\r\n\r\n', 400],
      ['G(T / HTTP/1.1\r\n\r\n', 400],
      ['GET / HTTP/3\r\n\r\n', 505],
      ['GET / FTP/1.1\r\n\r\n', 400],
      ['GET / HTTP/1.1 extra\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\n' + 'X: y\r\n'.repeat(MAX_HEADER_COUNT + 1) + '\r\n', 431],
    ];
    for (const [text, status] of cases) {
      const result = parseRequestHead(enc(text));
      assert.equal(result.ok, false, JSON.stringify(text));
      if (!result.ok) assert.equal(result.status, status, JSON.stringify(text));
    }
  });

  test('findHeadEnd finds CRLFCRLF from an offset and only then', () => {
    assert.equal(findHeadEnd(enc('GET / HTTP/1.1\r\n\r')), -1);
    assert.equal(findHeadEnd(enc('a\r\n\r\nb')), 5);
    assert.equal(findHeadEnd(enc('a\r\n\r\nb'), 1), 5);
    assert.equal(findHeadEnd(enc('a\r\n\r\nb'), 2), -1, 'a match must start at or after `from`');
  });

  test('headerHasToken reads comma lists case-insensitively', () => {
    assert.equal(headerHasToken('keep-alive, Upgrade', 'upgrade'), true);
    assert.equal(headerHasToken('websocketx', 'websocket'), false);
    assert.equal(headerHasToken(undefined, 'websocket'), false);
  });
});

describe('encodeTextFrame', () => {
  for (const size of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
    test(`a ${size}-byte text frame decodes with ws's receiver`, async () => {
      const text = 'é'.repeat(Math.floor(size / 2)) + 'a'.repeat(size % 2);
      // ws's frame parser, the same one our clients use (exported, untyped).
      const { Receiver } = wsModule as unknown as { Receiver: new (o: object) => NodeJS.WritableStream & NodeJS.EventEmitter };
      const receiver = new Receiver({ isServer: false, maxPayload: 1 << 20 });
      const got = new Promise<[Buffer, boolean]>((resolve, reject) => {
        receiver.on('message', (data: Buffer, isBinary: boolean) => resolve([data, isBinary]));
        receiver.on('error', reject);
      });
      const frame = encodeTextFrame(text);
      assert.equal(frame.length, Buffer.byteLength(text) + (size < 126 ? 2 : size < 65536 ? 4 : 10));
      receiver.write(frame);
      const [data, isBinary] = await got;
      assert.equal(isBinary, false);
      assert.equal(data.toString(), text);
    });
  }
});

describe('routing', () => {
  test('bearerToken: case-insensitive scheme, one token, surrounding blanks ignored; anything else is no token', () => {
    assert.equal(bearerToken('Bearer abc.def'), 'abc.def');
    assert.equal(bearerToken('bearer\tabc '), 'abc');
    assert.equal(bearerToken('BEARER abc'), 'abc');
    for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Basic abc', 'Bearer a b', 'Bearerabc']) assert.equal(bearerToken(header), null, String(header));
  });

  test('fnv1a32 matches the published FNV-1a test vectors', () => {
    assert.equal(fnv1a32(''), 0x811c9dc5);
    assert.equal(fnv1a32('a'), 0xe40c292c);
    assert.equal(fnv1a32('foobar'), 0xbf9cf968);
  });

  test('shardFor is fnv1a32 mod workers and spreads ids', () => {
    assert.equal(shardFor('foobar', 7), 0xbf9cf968 % 7);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[shardFor(`desk-${i}`, 4)]!++;
    for (const c of counts) assert.ok(c > 800 && c < 1200, `uneven spread: ${counts}`);
  });

  test('route decides health, shard, rejections and admin', () => {
    const head = (text: string) => {
      const r = parseRequestHead(enc(text));
      assert.ok(r.ok);
      return r.head;
    };
    const opts = { workers: 3, adminToken: 'secret-admin', allowedOrigins: [], metricsToken: '' };
    assert.deepEqual(route(head('GET /health HTTP/1.1\r\n\r\n'), opts), { kind: 'health' });
    assert.deepEqual(route(head('GET /ws/desktop/foobar HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'), opts), {
      kind: 'shard',
      desktopId: 'foobar',
      shard: 0xbf9cf968 % 3,
    });
    assert.equal((route(head('GET /ws/desktop/a.b HTTP/1.1\r\n\r\n'), opts) as { rejection: { status: number } }).rejection.status, 400);
    assert.equal((route(head('GET /ws/desktop/ab HTTP/1.1\r\n\r\n'), opts) as { rejection: { status: number } }).rejection.status, 426);
    assert.equal((route(head('GET /nope HTTP/1.1\r\n\r\n'), opts) as { rejection: { status: number } }).rejection.status, 404);
    assert.equal((route(head('POST /admin/shards/1/terminate HTTP/1.1\r\n\r\n'), opts) as { rejection: { status: number } }).rejection.status, 401);
    assert.deepEqual(route(head('POST /admin/shards/1/terminate HTTP/1.1\r\nAuthorization: Bearer secret-admin\r\n\r\n'), opts), {
      kind: 'terminate-shard',
      shard: 1,
    });
    assert.equal(
      (route(head('POST /admin/shards/3/terminate HTTP/1.1\r\nAuthorization: Bearer secret-admin\r\n\r\n'), opts) as { rejection: { status: number } })
        .rejection.status,
      404,
    );
    const disabled = { workers: 3, adminToken: '', allowedOrigins: [], metricsToken: '' };
    assert.equal(
      (route(head('POST /admin/shards/1/terminate HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n'), disabled) as { rejection: { status: number } }).rejection
        .status,
      404,
    );
  });
});

describe('config', () => {
  test('defaults come from the option table', () => {
    const config = resolveServeConfig({ jwtSecret: 's' });
    assert.equal(config.port, 8081);
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.maxMessageSize, 4096);
    assert.equal(config.maxHeadBytes, 16 * 1024, "Node's own limit: nginx forwards heads up to its own, shared with Next.js");
    assert.equal(config.handshakeTimeoutMs, 10_000);
    assert.equal(config.drainTimeoutMs, 10_000);
    assert.equal(config.drainSpreadMs, 5_000);
    assert.equal(config.permissionTimeoutMs, 5_000);
    assert.equal(config.permissionApiBase, 'http://localhost:3000');
    assert.equal(config.dev, false);
  });

  test('dev mode listens on 127.0.0.1 unless the host is given', () => {
    assert.equal(resolveServeConfig({ jwtSecret: 's' }).host, '0.0.0.0');
    const devSecretFile = join(mkdtempSync(join(tmpdir(), 'moodio-rt-dev-')), 'secret');
    assert.equal(resolveServeConfig({ dev: true, devSecretFile }).host, '127.0.0.1');
    assert.equal(resolveServeConfig({ dev: true, devSecretFile, host: '0.0.0.0' }).host, '0.0.0.0');
    assert.equal(resolveServeConfig({ dev: true, devSecretFile, host: '::1' }).host, '::1');
  });

  test('durations accept ms, s, m, h', () => {
    assert.equal(parseDuration('250', '--x'), 250);
    assert.equal(parseDuration('250ms', '--x'), 250);
    assert.equal(parseDuration('1.5s', '--x'), 1500);
    assert.equal(parseDuration('2m', '--x'), 120_000);
    assert.equal(parseDuration('1h', '--x'), 3_600_000);
    assert.throws(() => parseDuration('0', '--x'), ConfigError);
    assert.throws(() => parseDuration('-1s', '--x'), ConfigError);
  });

  test('unset options take their declared empty value (null, [], false, true), not a blank', async () => {
    const { resolveLoadtestOptions } = await import('../src/loadtest/options.ts');
    const lt = resolveLoadtestOptions({ secret: 's' });
    assert.equal(lt.preset, null);
    assert.equal(lt.json, false);
    assert.equal(lt.progress, true);
    assert.equal(lt.tokenFile, '');
    const serve = resolveServeConfig({ jwtSecret: 's' });
    assert.deepEqual([serve.allowedOrigins, serve.trustProxy, serve.coalesceTypes, serve.adminToken], [[], [], [], '']);
    // Each unset list is an array of its own, in every resolved config.
    assert.notEqual(serve.trustProxy, serve.coalesceTypes);
    assert.notEqual(serve.trustProxy, resolveServeConfig({ jwtSecret: 's' }).trustProxy);
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', port: true }),
      (err: unknown) => err instanceof ConfigError && err.option === '--port',
    );
  });

  test('pacing options: defaults, modes and the interval range', () => {
    const serve = resolveServeConfig({ jwtSecret: 's' });
    assert.deepEqual([serve.pacing, serve.paceIntervalMs, serve.paceAbove], ['auto', 32, 200]);
    assert.deepEqual(
      (({ pacing, paceIntervalMs, paceAbove }) => [pacing, paceIntervalMs, paceAbove])(
        resolveServeConfig({ jwtSecret: 's', pacing: 'off', paceIntervalMs: '50ms', paceAbove: '1000' }),
      ),
      ['off', 50, 1000],
    );
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', pacing: 'sometimes' }),
      (err: unknown) => err instanceof ConfigError && err.option === '--pacing' && /auto, always, off/.test(err.message),
    );
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', paceIntervalMs: '2ms' }),
      (err: unknown) => err instanceof ConfigError && err.option === '--pace-interval',
    );
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', paceIntervalMs: '5s' }),
      (err: unknown) => err instanceof ConfigError && err.option === '--pace-interval',
    );
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', paceAbove: '0' }),
      (err: unknown) => err instanceof ConfigError && err.option === '--pace-above',
    );
  });

  test('--drain-spread: 0 closes at once, a duration up to 10m, nothing else', () => {
    assert.equal(resolveServeConfig({ jwtSecret: 's', drainSpreadMs: '0' }).drainSpreadMs, 0);
    assert.equal(resolveServeConfig({ jwtSecret: 's', drainSpreadMs: '2s' }).drainSpreadMs, 2000);
    assert.equal(resolveServeConfig({ jwtSecret: 's', drainSpreadMs: '10m' }).drainSpreadMs, 600_000);
    for (const bad of ['11m', '-1s', 'soon', '']) {
      assert.throws(
        () => resolveServeConfig({ jwtSecret: 's', drainSpreadMs: bad }),
        (err: unknown) => err instanceof ConfigError && err.option === '--drain-spread',
        bad,
      );
    }
  });

  test('history options (issue 21): defaults, 0 turns the history off, bad values name the option', () => {
    const serve = resolveServeConfig({ jwtSecret: 's' });
    assert.deepEqual([serve.historyAgeMs, serve.historyEvents, serve.historyRoomBytes, serve.historyMemoryBytes], [120_000, 2000, 1 << 20, 1 << 30]);
    assert.equal(resolveServeConfig({ jwtSecret: 's', historyAgeMs: '0' }).historyAgeMs, 0);
    assert.equal(resolveServeConfig({ jwtSecret: 's', historyAgeMs: '30s' }).historyAgeMs, 30_000);
    for (const [key, value, option] of [
      ['historyAgeMs', '25h', '--history-age'],
      ['historyAgeMs', '-1s', '--history-age'],
      ['historyEvents', '0', '--history-events'],
      ['historyRoomBytes', '100', '--history-room-bytes'],
      ['historyMemoryBytes', '1000', '--history-memory'],
    ] as const) {
      assert.throws(
        () => resolveServeConfig({ jwtSecret: 's', [key]: value }),
        (err: unknown) => err instanceof ConfigError && err.option === option,
        `${key} ${value}`,
      );
    }
  });

  test('errors carry ERR_CONFIG and the option', () => {
    assert.throws(
      () => resolveServeConfig({ jwtSecret: 's', workers: '0' }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.code, 'ERR_CONFIG');
        assert.equal(err.option, '--workers');
        return true;
      },
    );
    assert.throws(
      () => resolveServeConfig({}),
      (err: unknown) => err instanceof ConfigError && err.option === 'JWT_ACCESS_SECRET',
    );
    assert.doesNotThrow(() => resolveServeConfig({ dev: true }));
  });
});

describe('logs', () => {
  test('a LogBudget lets through perSecond lines a second and counts the rest on the next line let through', () => {
    const budget = new LogBudget(3);
    const t0 = 10_000;
    const taken = [0, 1, 2, 3, 4].map((i) => budget.take({ i }, t0 + i));
    assert.deepEqual(taken, [{ i: 0 }, { i: 1 }, { i: 2 }, null, null]);
    assert.deepEqual(budget.take({ i: 5 }, t0 + 999), null);
    assert.deepEqual(budget.take({ i: 6 }, t0 + 1000), { i: 6, suppressed: 3 });
    assert.deepEqual(budget.take({ i: 7 }, t0 + 1001), { i: 7 });
  });

  test('json: one object per line with level, ts, worker, event and fields; below the level nothing', async () => {
    const { createLogger } = await import('../src/log.ts');
    const lines: string[] = [];
    const log = createLogger({ level: 'info', format: 'json', worker: 3, write: (l) => lines.push(l) });
    log.debug('hidden');
    log.info('session_open', { sessionId: 'session_x', desktopId: 'd' });
    log.error('message_failed', { err: Object.assign(new Error('boom'), { code: 'E_X' }) });
    assert.equal(lines.length, 2);
    const first = JSON.parse(lines[0]!);
    assert.deepEqual({ ...first, ts: undefined }, { level: 'info', ts: undefined, worker: 3, event: 'session_open', sessionId: 'session_x', desktopId: 'd' });
    assert.ok(!Number.isNaN(Date.parse(first.ts)));
    const second = JSON.parse(lines[1]!);
    assert.deepEqual([second.err.message, second.err.code], ['boom', 'E_X']);
    assert.equal(log.enabled('debug'), false);
  });

  test('pretty: one aligned line per event for humans', async () => {
    const { createLogger } = await import('../src/log.ts');
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', format: 'pretty', worker: 'primary', write: (l) => lines.push(l) });
    log.warn('shard_exit', { shard: 1, code: 1 });
    assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT[\d:.]+Z WARN  \[primary\] shard_exit shard=1 code=1\n$/);
  });

  /** Every character a reader could take for a line break or a terminal escape. */
  const CONTROLS = [...Array.from({ length: 0x20 }, (_, i) => i), 0x7f, ...Array.from({ length: 0x20 }, (_, i) => 0x80 + i), 0x2028, 0x2029].map((c) =>
    String.fromCharCode(c),
  );
  const FORGED = '\n2026-01-01T00:00:00.000Z ERROR [primary] forged_line x=1\r\u0085\u2028\u2029\u001b[2J\u009b\u007f';

  test('pretty: control characters in the event, keys and values are escaped, so a value cannot forge a line', async () => {
    const { createLogger } = await import('../src/log.ts');
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', format: 'pretty', worker: 'primary', write: (l) => lines.push(l) });
    log.info('session_close', { reason: FORGED, [`k${FORGED}`]: 1, nested: { reason: FORGED }, err: new Error(FORGED) });
    log.info(`event${FORGED}`);
    log.info('all', { all: CONTROLS.join('') });
    assert.equal(lines.length, 3);
    for (const line of lines) {
      assert.equal(line.indexOf('\n'), line.length - 1, 'one line, ended by the only newline');
      for (const c of CONTROLS)
        if (c !== '\n') assert.ok(!line.includes(c), `U+${c.charCodeAt(0).toString(16).padStart(4, '0')} escaped in ${JSON.stringify(line)}`);
    }
    assert.ok(
      lines[0]!.includes(' reason=\\n2026-01-01T00:00:00.000Z ERROR [primary] forged_line x=1\\r\\u0085\\u2028\\u2029\\u001b[2J\\u009b\\u007f '),
      lines[0],
    );
    assert.match(lines[1]!, /\] event\\n2026-/);
    assert.ok(
      lines[2]!.endsWith(
        ' all=' + CONTROLS.map((c) => ({ '\n': '\\n', '\r': '\\r', '\t': '\\t' })[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('') + '\n',
      ),
    );
  });

  test('json: control characters never leave a line, and every string parses back unchanged', async () => {
    const { createLogger } = await import('../src/log.ts');
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', format: 'json', worker: 0, write: (l) => lines.push(l) });
    log.info(`event${FORGED}`, { reason: FORGED, [`k${FORGED}`]: CONTROLS.join(''), err: new Error(FORGED) });
    assert.equal(lines.length, 1);
    const line = lines[0]!;
    assert.equal(line.indexOf('\n'), line.length - 1);
    for (const c of CONTROLS) if (c !== '\n') assert.ok(!line.includes(c), `U+${c.charCodeAt(0).toString(16).padStart(4, '0')} escaped`);
    const record = JSON.parse(line);
    assert.deepEqual([record.event, record.reason, record[`k${FORGED}`], record.err.message], [`event${FORGED}`, FORGED, CONTROLS.join(''), FORGED]);
  });
});
