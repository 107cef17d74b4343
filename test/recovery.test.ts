/**
 * Offsets, history and resume on the legacy route (issue 21), against the
 * real server (primary + 2 shards), real WebSocket clients and the real
 * permission stub: a client away while events were sent resumes with
 * `?epoch=…&offset=…` and gets exactly what it missed, in order, before
 * any live event; a viewer recovers; a refused user gets nothing; bad
 * parameters are refused at the handshake; positions past a bound, or from
 * a shard that restarted, get `recovered: false` and no replay.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CloseCode } from '../src/protocol/events.ts';
import { REASON_HEADER } from '../src/protocol/rejections.ts';
import { api, API_KEY, desktopOnShard } from './helpers/api.ts';
import { connect, HandshakeRejected, join, rawRequest, type Frame, type TestClient } from './helpers/client.ts';
import type { PermissionHandler } from './helpers/permission-stub.ts';
import { grant, startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

/** Users whose id says `viewer` are viewers, `nobody` are refused (403), the rest editors. */
const roles: PermissionHandler = (req, res) => {
  if (req.userId?.includes('nobody')) {
    res.statusCode = 403;
    res.end('{"error":"forbidden"}');
    return;
  }
  grant(req.userId?.includes('viewer') ? 'viewer' : 'editor')(req, res);
};

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup, roles);
  server = await startServer(cleanup, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--rate-limit', '100000', '--rate-limit-burst', '100000'],
  });
});
after(() => cleanup.run());

function resumeUrl(s: ServerProcess, desktopId: string, epoch: string, offset: number): string {
  return `${s.wsUrl(desktopId)}?epoch=${epoch}&offset=${offset}`;
}

/** Send `count` events numbered from `from` as `type` and wait until `witness` received them all; their offsets. */
async function sendAndWitness(sender: TestClient, witness: TestClient, count: number, from = 0, type = 'n', pad = ''): Promise<number[]> {
  for (let i = 0; i < count; i++) sender.send({ type, payload: { n: from + i, pad } });
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) {
    const frame = await witness.expect(type);
    assert.equal(frame.payload.n, from + i);
    offsets.push(frame.offset);
  }
  return offsets;
}

/** A room of three editors: the sender, a witness that stays, and one that will be away. */
async function room(t: Scope, s: ServerProcess, desktopId: string) {
  const a = await join(t, s.wsUrl(desktopId), { token: token(user('Ann')) });
  const w = await join(t, s.wsUrl(desktopId), { token: token(user('Wit')) });
  await a.client.expect('session_joined');
  const b = await join(t, s.wsUrl(desktopId), { token: token(user('Bob')) });
  await a.client.expect('session_joined');
  await w.client.expect('session_joined');
  return { a: a.client, w: w.client, b: b.client, bJoined: b.joined };
}

test('room_joined carries the room epoch and latest offset; every relayed event an offset, increasing; presence none; no resume, no recovered', async (t) => {
  const id = desktopOnShard(1);
  const { a, w, b, bJoined } = await room(t, server, id);
  assert.equal(typeof bJoined.epoch, 'string');
  assert.equal(bJoined.offset, 0);
  assert.equal('recovered' in bJoined, false);
  const offsets = await sendAndWitness(a, w, 5);
  for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i]! > offsets[i - 1]!, `${offsets}`);
  for (let i = 0; i < 5; i++) assert.equal((await b.expect('n')).offset, offsets[i]);
  // A server API publish is stamped in the same sequence.
  assert.equal((await api(server, 'POST', `desktops/${id}/events`, { type: 'srv' })).status, 202);
  const srv = await b.expect('srv');
  assert.equal(srv.offset, offsets[4]! + 1);
  await w.expect('srv');
  await a.expect('srv');
  // A newcomer learns the latest offset; the others' session_joined has none.
  const c = await join(t, server.wsUrl(id), { token: token(user('Cat')) });
  assert.deepEqual([c.joined.epoch, c.joined.offset, 'recovered' in c.joined], [bJoined.epoch, srv.offset, false]);
  const joined = await a.expect('session_joined');
  assert.equal('offset' in joined, false);
  // A plain connect replays nothing: the next frame is live.
  a.send({ type: 'live' });
  assert.equal((await c.client.next()).type, 'live');
});

test('away while 50 events are sent: the resume gets exactly those 50, in order, then live ones; a live event sent during the replay comes after it, once', async (t) => {
  const id = desktopOnShard(0);
  const { a, w, b, bJoined } = await room(t, server, id);
  const [last] = await sendAndWitness(a, w, 1);
  assert.equal((await b.expect('n')).offset, last);
  await b.close();
  await a.expect('session_left');
  await w.expect('session_left');
  // 50 events of 3 KB: the replay takes several turns (16 KiB a step), so that live events arrive during it.
  const missed = await sendAndWitness(a, w, 50, 1, 'n', 'x'.repeat(3000));

  const r = await connect(t, resumeUrl(server, id, bJoined.epoch, last!), { token: token(user('Bob')) });
  // Live events race the replay: sent as soon as the handshake is done.
  for (let i = 0; i < 5; i++) a.send({ type: 'n', payload: { n: 51 + i } });
  const joined = await r.expect('room_joined');
  assert.equal(joined.recovered, true);
  assert.equal(joined.epoch, bJoined.epoch);
  assert.ok(joined.offset >= missed[49]!, `${joined.offset} >= ${missed[49]}`);
  const got: Frame[] = [];
  while (got.length < 55) {
    const frame = await r.next();
    if (frame.type === 'n') got.push(frame);
  }
  assert.deepEqual(
    got.map((f) => f.payload.n),
    Array.from({ length: 55 }, (_, i) => 1 + i),
  );
  assert.deepEqual(
    got.slice(0, 50).map((f) => f.offset),
    missed,
  );
  for (let i = 1; i < got.length; i++) assert.ok(got[i]!.offset > got[i - 1]!.offset);
  // Exactly once: a marker is next, nothing after the 55.
  a.send({ type: 'marker' });
  assert.equal((await r.next()).type, 'marker');
  assert.equal(r.pending, 0);
});

test('a resume with the latest offset replays nothing and says recovered: true', async (t) => {
  const id = desktopOnShard(1);
  const { a, w, b, bJoined } = await room(t, server, id);
  const [last] = await sendAndWitness(a, w, 1);
  await b.expect('n');
  const r = await join(t, resumeUrl(server, id, bJoined.epoch, last!), { token: token(user('Bob')) });
  assert.equal(r.joined.recovered, true);
  assert.equal(r.joined.offset, last);
  a.send({ type: 'marker' });
  assert.equal((await r.client.next()).type, 'marker');
});

test('a lone client that drops and comes back recovers an API publish sent meanwhile; so does a viewer', async (t) => {
  const id = desktopOnShard(0);
  const viewer = user('Viewer');
  const v = await join(t, server.wsUrl(id), { token: token(viewer) });
  assert.equal(v.joined.permission, 'viewer');
  await v.client.close();
  const res = await api(server, 'POST', `desktops/${id}/events`, { type: 'table_generated', payload: { rows: 3 } });
  assert.equal(res.status, 202);
  assert.equal(res.body.delivered, 0);
  const r = await join(t, resumeUrl(server, id, v.joined.epoch, v.joined.offset), { token: token(viewer) });
  assert.equal(r.joined.recovered, true);
  const event = await r.client.expect('table_generated');
  assert.deepEqual([event.sessionId, event.payload, event.offset], ['server', { rows: 3 }, v.joined.offset + 1]);
});

test('a production table resumes the same way', async (t) => {
  const url = `ws://127.0.0.1:${server.port}/ws/production-table/${desktopOnShard(0)}`;
  const a = await join(t, url, { token: token(user('Ann')) });
  const b = await join(t, url, { token: token(user('Bob')) });
  assert.equal(b.joined.offset, 0);
  await b.client.close();
  await a.client.expect('session_joined');
  await a.client.expect('session_left');
  // The sender gets no echo: a third member witnesses that both were relayed before the resume.
  const w = await join(t, url, { token: token(user('Wit')) });
  a.client.send({ type: 'pt_cell_updated', payload: { row: 1 } });
  a.client.send({ type: 'pt_cell_updated', payload: { row: 2 } });
  await w.client.expect('pt_cell_updated');
  await w.client.expect('pt_cell_updated');
  const r = await join(t, `${url}?epoch=${b.joined.epoch}&offset=0`, { token: token(user('Bob')) });
  assert.deepEqual([r.joined.recovered, r.joined.offset], [true, 2]);
  const rows = [(await r.client.expect('pt_cell_updated')).payload.row, (await r.client.expect('pt_cell_updated')).payload.row];
  assert.deepEqual(rows, [1, 2]);
});

test('a user refused on the desktop gets 403 to a resume, before any replay', async (t) => {
  const id = desktopOnShard(1);
  const { a, w, bJoined } = await room(t, server, id);
  await sendAndWitness(a, w, 3);
  await assert.rejects(
    connect(t, resumeUrl(server, id, bJoined.epoch, 0), { token: token(user('Nobody')) }),
    (err: unknown) => err instanceof HandshakeRejected && err.status === 403,
  );
});

test('bad resume parameters are refused with 400 invalid_resume, on both legacy routes, and never replay', async (t) => {
  const id = desktopOnShard(0);
  const huge = 'e'.repeat(10 * 1024);
  const queries = [
    '?epoch=abc&offset=x',
    '?epoch=abc&offset=-1',
    '?epoch=abc&offset=1.5',
    '?epoch=abc&offset=9007199254740992',
    '?epoch=abc&offset=99999999999999999999',
    `?epoch=${huge}&offset=1`,
    '?epoch=abc',
    '?offset=3',
    '?epoch=&offset=3',
    '?epoch=a%20b&offset=3',
    '?epoch=a&epoch=b&offset=1',
  ];
  for (const route of [`/ws/desktop/${id}`, `/ws/production-table/${id}`]) {
    for (const query of queries) {
      const err = await connect(t, `ws://127.0.0.1:${server.port}${route}${query}`, { token: token(user('Bad')) }).then(
        () => null,
        (e: unknown) => e,
      );
      assert.ok(err instanceof HandshakeRejected, `${route}${query.slice(0, 40)}: ${err}`);
      assert.equal(err.status, 400, query.slice(0, 40));
      assert.equal(err.headers[REASON_HEADER.toLowerCase()], 'invalid_resume', query.slice(0, 40));
      assert.match(err.body, /^invalid resume: /);
    }
  }
  // No token needed to be told: the check comes first, and costs the permission API nothing.
  const raw = await rawRequest(server.port, [
    `GET /ws/desktop/${id}?epoch=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  ]);
  assert.equal(raw.status, 400);
  // Other query members are the client's own: ignored.
  const ok = await join(t, `${server.wsUrl(id)}?v=2&epoch=zz&offset=0&x`, { token: token(user('Ok')) });
  assert.equal(ok.joined.recovered, false);
});

test('an unknown epoch, or an offset the room never gave, gets recovered: false and no replay', async (t) => {
  const id = desktopOnShard(1);
  const { a, w, bJoined } = await room(t, server, id);
  let last = (await sendAndWitness(a, w, 2))[1]!;
  for (const url of [resumeUrl(server, id, 'not-an-epoch', 0), resumeUrl(server, id, bJoined.epoch, last + 10)]) {
    const r = await join(t, url, { token: token(user('Late')) });
    assert.equal(r.joined.recovered, false, url);
    assert.equal(r.joined.offset, last);
    await a.expect('session_joined');
    await w.expect('session_joined');
    a.send({ type: 'marker' });
    assert.equal((await r.client.next()).type, 'marker', 'no replay');
    last = (await w.expect('marker')).offset;
  }
});

/** A room on `s` with a sender and a witness; a client that joined and left, and `count` events sent since. */
async function awayWhile(t: Scope, s: ServerProcess, count: number, payload: (i: number) => unknown = (i) => ({ n: i })) {
  const id = desktop('bound');
  const a = await join(t, s.wsUrl(id), { token: token(user('Ann')) });
  const w = await join(t, s.wsUrl(id), { token: token(user('Wit')) });
  await a.client.expect('session_joined');
  const b = await join(t, s.wsUrl(id), { token: token(user('Bob')) });
  await b.client.close();
  for (const c of [a.client, w.client]) {
    await c.expect('session_joined');
    await c.expect('session_left');
  }
  // The server stamps each event after this instant: the bound on its age.
  const sendingAt = Date.now();
  for (let i = 0; i < count; i++) a.client.send({ type: 'n', payload: payload(i) });
  for (let i = 0; i < count; i++) await w.client.expect('n');
  return { id, a: a.client, w: w.client, from: b.joined, sendingAt };
}

/** Resume from `from` and check it says recovered: false and replays nothing (the next frame is a live marker). */
async function expectNotRecovered(t: Scope, s: ServerProcess, room: { id: string; a: TestClient; from: Frame }): Promise<void> {
  const r = await join(t, resumeUrl(s, room.id, room.from.epoch, room.from.offset), { token: token(user('Bob')) });
  assert.equal(r.joined.recovered, false);
  await room.a.expect('session_joined');
  room.a.send({ type: 'marker' });
  assert.equal((await r.client.next()).type, 'marker', 'no partial replay');
}

test('past the count bound (--history-events) and the byte bound (--history-room-bytes): recovered: false, no partial replay', async (t) => {
  const stub = await startPermissionStub(t);
  const s = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--history-events', '10', '--history-room-bytes', '8192'] });
  // 10 fit: recovered.
  const fits = await awayWhile(t, s, 10);
  const ok = await join(t, resumeUrl(s, fits.id, fits.from.epoch, fits.from.offset), { token: token(user('Bob')) });
  assert.equal(ok.joined.recovered, true);
  for (let i = 0; i < 10; i++) assert.equal((await ok.client.expect('n')).payload.n, i);
  // 11 do not.
  await expectNotRecovered(t, s, await awayWhile(t, s, 11));
  // 5 events of 2 KiB fit 10 by count, not 8 KiB by bytes.
  await expectNotRecovered(t, s, await awayWhile(t, s, 5, () => 'x'.repeat(2048)));
});

test('past the age bound (--history-age): recovered: false, no replay; --history-age 0 keeps nothing', async (t) => {
  const stub = await startPermissionStub(t);
  const s = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--history-age', '400ms'] });
  const room = await awayWhile(t, s, 3);
  // Every missed event was stamped at or after sentAt: younger than now - sentAt.
  const sentAt = room.sendingAt;
  // Within the window (the first try is at once): recovered.
  const first = await join(t, resumeUrl(s, room.id, room.from.epoch, room.from.offset), { token: token(user('Bob')) });
  if (Date.now() - sentAt < 300) assert.equal(first.joined.recovered, true);
  await first.client.close();
  // The window passing is the condition: try again until it says so, within a bound.
  let recovered = true;
  while (recovered) {
    assert.ok(Date.now() - sentAt < 10_000, 'still recovered 10 s after a 400 ms window');
    const r = await join(t, resumeUrl(s, room.id, room.from.epoch, room.from.offset), { token: token(user('Bob')) });
    recovered = r.joined.recovered;
    if (recovered) await r.client.close();
    else {
      room.a.send({ type: 'marker' });
      let frame = await r.client.next();
      while (frame.type === 'session_left' || frame.type === 'session_joined') frame = await r.client.next();
      assert.equal(frame.type, 'marker', 'no replay');
    }
  }
  assert.ok(Date.now() - sentAt >= 400, 'not before the window');

  const none = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--history-age', '0'] });
  const off = await awayWhile(t, none, 1);
  await expectNotRecovered(t, none, off);
});

test('a restarted shard starts a new epoch: a position from before gets recovered: false', async (t) => {
  const ADMIN = 'admin-token-recovery-0123456789';
  const stub = await startPermissionStub(t);
  const s = await startServer(t, { workers: 2, permissionApiBase: stub.base, args: ['--admin-token', ADMIN] });
  const id = desktopOnShard(0);
  const a = await join(t, s.wsUrl(id), { token: token(user('Ann')) });
  const b = await join(t, s.wsUrl(id), { token: token(user('Bob')) });
  await a.client.expect('session_joined');
  a.client.send({ type: 'n' });
  const seen = await b.client.expect('n');
  const kill = await rawRequest(s.port, [`POST /admin/shards/0/terminate HTTP/1.1\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`]);
  assert.equal(kill.status, 202);
  assert.equal((await b.client.closed).code, CloseCode.SERVICE_RESTART);
  await s.waitForLog((l) => l.event === 'shard_ready' && l.shard === 0 && l.restarts === 1);
  const r = await join(t, resumeUrl(s, id, b.joined.epoch, seen.offset), { token: token(user('Bob')) });
  assert.equal(r.joined.recovered, false);
  assert.notEqual(r.joined.epoch, b.joined.epoch);
  assert.equal(r.joined.offset, 0);
});

test('a replay the history overtakes is closed with 4009, and its resume then says recovered: false', async (t) => {
  const stub = await startPermissionStub(t);
  const s = await startServer(t, {
    workers: 2,
    permissionApiBase: stub.base,
    args: ['--api-key', API_KEY, '--api-publish-rate', '0', '--history-events', '300', '--history-room-bytes', String(64 << 20)],
  });
  const id = desktopOnShard(1);
  const away = await join(t, s.wsUrl(id), { token: token(user('Bob')) });
  await away.client.close();
  const big = 'z'.repeat(60_000);
  // 300 events of 60 KB (18 MB): more than the loopback socket buffers hold, so the replay waits for the reader.
  for (let i = 0; i < 300; i++) assert.equal((await api(s, 'POST', `desktops/${id}/events`, { type: 'big', payload: { i, big } })).status, 202);
  const r = await join(t, resumeUrl(s, id, away.joined.epoch, away.joined.offset), { token: token(user('Bob')) });
  assert.equal(r.joined.recovered, true);
  const first = await r.client.expect('big');
  assert.equal(first.offset, away.joined.offset + 1);
  r.client.ws.pause();
  // 300 more: the history lets go of every event the replay has not sent.
  for (let i = 0; i < 300; i++) assert.equal((await api(s, 'POST', `desktops/${id}/events`, { type: 'big', payload: { i: 300 + i, big } })).status, 202);
  r.client.ws.resume();
  let last = first.offset;
  for (;;) {
    // Frames arrive before the close: the inbox is empty once the close won.
    const frame = await Promise.race([r.client.next(3000), r.client.closed.then(() => null)]);
    if (frame === null) break;
    assert.equal(frame.offset, last + 1, 'in order, none skipped');
    last = frame.offset;
  }
  const closed = await r.client.closed;
  assert.deepEqual(closed, { code: CloseCode.RECOVERY_LOST, reason: 'recovery lost' });
  assert.ok(last < away.joined.offset + 300, `the replay stopped short (${last})`);
  const again = await join(t, resumeUrl(s, id, away.joined.epoch, last), { token: token(user('Bob')) });
  assert.equal(again.joined.recovered, false);
});
