/**
 * Server API publishes against the outbound memory cap (issue 19): N large
 * publishes (`POST /api/v1/desktops/{id}/events`, ~64 KB each) to one
 * desktop of 200 members that all read, sent as fast as the API answers,
 * against the real server (`--workers 2`, a real permission stub, every
 * other option at its default unless given after `--`).
 *
 *   node bench/api-memory.ts [--publishes 200] [--concurrency 1] [--members 200] [-- <serve flags>]
 *
 * Measures the server's RSS (/proc, sampled every 20 ms) before, at its
 * peak, once every accepted event has reached every member, and 5 s later;
 * counts the answers (202, 429, other), the deliveries against
 * 202s × members, and the members closed (by code). Prints a Markdown
 * table with the machine and the command.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import WebSocket from 'ws';
import { signAccessToken } from '../src/auth/token.ts';
import { ACCESS_TOKEN_COOKIE } from '../src/protocol/events.ts';
import { describeMachine } from '../scripts/machine-info.ts';
import { rssOf } from './connections.ts';
import { startPermissionStub } from '../test/helpers/permission-stub.ts';
import { Cleanup } from '../test/helpers/scope.ts';
import { startServer, TEST_SECRET } from '../test/helpers/server.ts';

const dashdash = process.argv.indexOf('--');
const own = dashdash < 0 ? process.argv : process.argv.slice(0, dashdash);
const serveFlags = dashdash < 0 ? [] : process.argv.slice(dashdash + 1);
const arg = (name: string, fallback: number): number => {
  const i = own.indexOf(name);
  return i > 0 ? Number(own[i + 1]) : fallback;
};
const PUBLISHES = arg('--publishes', 200);
const CONCURRENCY = arg('--concurrency', 1);
const MEMBERS = arg('--members', 200);
const KEY = 'bench-api-key-0123456789abcdef';
const DESKTOP = 'bench-api-memory';
const MiB = 1024 * 1024;
/** A body of 64,000 bytes: `{"type":"big","payload":{"seq":N,"pad":"…"}}`. */
const BODY_BYTES = 64_000;
const SEQ = Buffer.from('"seq":');

const cleanup = new Cleanup();

interface Member {
  ws: WebSocket;
  got: Uint8Array;
  count: number;
  closed: number | null;
}

/** Open `count` members (each its own user); each marks the seqs it receives, reading the seq from the frame's head only. */
async function openMembers(url: string, count: number): Promise<Member[]> {
  const members: Member[] = [];
  for (let i = 0; i < count; i++) {
    const token = signAccessToken({ userId: `bench-mem-${String(i).padStart(4, '0')}`, firstName: 'Bench', email: 'bench@example.com' }, TEST_SECRET, 3600);
    const ws = new WebSocket(url, { headers: { cookie: `${ACCESS_TOKEN_COOKIE}=${token}` }, perMessageDeflate: false, maxPayload: 1 << 20 });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const member: Member = { ws, got: new Uint8Array(PUBLISHES), count: 0, closed: null };
    ws.on('message', (data: Buffer) => {
      const at = data.subarray(0, 200).indexOf(SEQ);
      if (at < 0 || !data.subarray(0, 16).toString().startsWith('{"type":"big"')) return;
      let seq = 0;
      for (let j = at + SEQ.length; data[j]! >= 48 && data[j]! <= 57; j++) seq = seq * 10 + data[j]! - 48;
      if (member.got[seq] === 0) member.count++;
      member.got[seq]! += 1;
    });
    ws.on('close', (code: number) => (member.closed = code));
    members.push(member);
  }
  return members;
}

try {
  const stub = await startPermissionStub(cleanup);
  const server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--api-key', KEY, ...serveFlags] });
  const pid = server.child.pid!;
  const members = await openMembers(server.wsUrl(DESKTOP), MEMBERS);
  await sleep(1000);
  const baseline = rssOf(pid);
  let peak = baseline;
  const sampler = setInterval(() => (peak = Math.max(peak, rssOf(pid))), 20);

  const pool = new Pool(`http://127.0.0.1:${server.port}`, { connections: CONCURRENCY, pipelining: 1 });
  const statuses = new Map<number, number>();
  const accepted: number[] = [];
  const retryAfter = new Set<string>();
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < PUBLISHES) {
      const seq = next++;
      const head = `{"type":"big","payload":{"seq":${seq},"pad":"`;
      const body = head + 'x'.repeat(BODY_BYTES - head.length - 3) + '"}}';
      const res = await pool.request({
        method: 'POST',
        path: `/api/v1/desktops/${DESKTOP}/events`,
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body,
      });
      await res.body.text();
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
      if (res.statusCode === 202) accepted.push(seq);
      if (res.statusCode === 429) retryAfter.add(String(res.headers['retry-after']));
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const sentMs = performance.now() - started;
  await pool.close();

  // Wait (bounded) until every accepted event reached every member still open.
  const expected = (m: Member) => accepted.reduce((n, seq) => n + (m.got[seq]! > 0 ? 1 : 0), 0);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && members.some((m) => m.closed === null && expected(m) < accepted.length)) await sleep(20);
  const deliveredMs = performance.now() - started;
  const whenDelivered = rssOf(pid);
  await sleep(5000);
  const after5s = rssOf(pid);
  clearInterval(sampler);

  const delivered = members.reduce((n, m) => n + expected(m), 0);
  const duplicates = members.reduce((n, m) => n + m.got.reduce((d, c) => d + (c > 1 ? c - 1 : 0), 0), 0);
  const closes = new Map<number, number>();
  for (const m of members) if (m.closed !== null) closes.set(m.closed, (closes.get(m.closed) ?? 0) + 1);
  for (const m of members) m.ws.terminate();
  const list = (map: Map<number, number>) =>
    [...map]
      .sort((a, b) => a[0] - b[0])
      .map(([k, v]) => `${v} × ${k}`)
      .join(', ') || 'none';
  const fmt = (bytes: number) => `${Math.round(bytes / MiB)} MiB`;
  console.log(
    [
      `${PUBLISHES} API publishes of ${BODY_BYTES.toLocaleString('en-US')}-byte bodies to one desktop of ${MEMBERS} reading members, ${CONCURRENCY} call(s) in flight; \`serve --workers 2${serveFlags.length > 0 ? ' ' + serveFlags.join(' ') : ''}\`.`,
      `Machine: ${describeMachine()}.`,
      `Command: \`npx node bench/api-memory.ts --publishes ${PUBLISHES} --concurrency ${CONCURRENCY} --members ${MEMBERS}${serveFlags.length > 0 ? ' -- ' + serveFlags.join(' ') : ''}\``,
      '',
      '| what | value |',
      '|---|---|',
      `| answers | ${list(statuses)}${retryAfter.size > 0 ? ` (Retry-After: ${[...retryAfter].join(', ')} s)` : ''} |`,
      `| calls sent in | ${(sentMs / 1000).toFixed(2)} s |`,
      `| deliveries of accepted events | ${delivered.toLocaleString('en-US')} of ${(accepted.length * MEMBERS).toLocaleString('en-US')} (${duplicates} duplicates), all in by ${(deliveredMs / 1000).toFixed(2)} s |`,
      `| members closed | ${list(closes)} |`,
      `| RSS before | ${fmt(baseline)} |`,
      `| RSS peak | ${fmt(peak)} (+${fmt(peak - baseline)}) |`,
      `| RSS once delivered | ${fmt(whenDelivered)} (+${fmt(whenDelivered - baseline)}) |`,
      `| RSS 5 s later | ${fmt(after5s)} (+${fmt(after5s - baseline)}) |`,
    ].join('\n'),
  );
} finally {
  await cleanup.run();
}
