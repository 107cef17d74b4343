/**
 * The server API's events and queries against the real server (primary + 2
 * shards, sessions on both) and a real permission stub: a publish reaches
 * its desktop, a user event its user, a broadcast everyone, each stamped as
 * the server's; presence and a user's sessions are gathered from the shards.
 * Absence is proven by a marker published afterwards that must come next.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SERVER_SENDER } from '../src/protocol/events.ts';
import { api, API_KEY, desktopOnShard, fill, type Member } from './helpers/api.ts';
import { join, type Frame } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { signAccessToken } from '../src/auth/token.ts';
import { user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  // One broadcast per 10 s: the second of the broadcast test is refused whatever the machine's pace.
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--api-broadcast-rate', '0.1'] });
});
after(() => cleanup.run());

/**
 * A server event as it must arrive: type, the server's stamp, the payload;
 * a publish to a desktop also its offset in the room (issue 21), a user
 * event or a broadcast none (they belong to no room); nothing else.
 */
function assertServerEvent(frame: Frame, type: string, payload: unknown, inRoom = true): void {
  assert.equal(frame.type, type, JSON.stringify(frame));
  assert.deepEqual(Object.keys(frame).sort(), [...(inRoom ? ['offset'] : []), 'payload', 'sessionId', 'timestamp', 'type', 'userId']);
  if (inRoom) assert.ok(Number.isSafeInteger(frame.offset) && frame.offset > 0);
  assert.equal(frame.sessionId, SERVER_SENDER);
  assert.equal(frame.userId, SERVER_SENDER);
  assert.equal(typeof frame.timestamp, 'number');
  assert.deepEqual(frame.payload, payload);
}

/** Publish a marker to each desktop and check it is the next frame of each of `members`. */
async function markerIsNext(members: Member[]): Promise<void> {
  for (const desktopId of new Set(members.map((m) => m.desktopId))) {
    assert.equal((await api(server, 'POST', `desktops/${desktopId}/events`, { type: 'marker' })).status, 202);
  }
  for (const m of members) assert.equal((await m.client.next()).type, 'marker', `${m.userId} on ${m.desktopId}`);
}

/** Ann with two tabs and Ben on a desktop of shard 0; Ann and Cat on a desktop of shard 1. */
async function twoShards(t: Parameters<typeof fill>[0]) {
  const ann = user('Ann');
  const [a1, b, a2] = await fill(t, server, desktopOnShard(0), [ann, user('Ben'), ann]);
  const [a3, c] = await fill(t, server, desktopOnShard(1), [ann, user('Cat')]);
  return { ann, a1: a1!, a2: a2!, a3: a3!, b: b!, c: c! };
}

test('a publish reaches every session of its desktop, stamped by the server, and no one else', async (t) => {
  const { a1, a2, a3, b, c } = await twoShards(t);
  const res = await api(server, 'POST', `desktops/${a1.desktopId}/events`, { type: 'table_generated', payload: { rows: 3, done: true } });
  assert.equal(res.status, 202);
  assert.equal(res.body.delivered, 3);
  assert.equal(typeof res.body.id, 'string');
  for (const m of [a1, b, a2]) assertServerEvent(await m.client.next(), 'table_generated', { rows: 3, done: true });
  await markerIsNext([a1, b, a2, a3, c]);

  // Without a payload, the event has none.
  assert.equal((await api(server, 'POST', `desktops/${c.desktopId}/events`, { type: 'render_started' })).body.delivered, 2);
  const bare = await c.client.next();
  assert.deepEqual(Object.keys(bare).sort(), ['offset', 'sessionId', 'timestamp', 'type', 'userId']);
  await a3.client.expect('render_started');
});

test('exceptUserId leaves out every session of that user; a desktop without sessions is reached by nobody', async (t) => {
  const { ann, a1, a2, b } = await twoShards(t);
  const res = await api(server, 'POST', `desktops/${a1.desktopId}/events`, { type: 'progress', payload: 50, exceptUserId: ann.userId });
  assert.deepEqual([res.status, res.body.delivered], [202, 1]);
  assertServerEvent(await b.client.next(), 'progress', 50);
  await markerIsNext([a1, a2, b]);
  const empty = await api(server, 'POST', `desktops/${desktopOnShard(1)}/events`, { type: 'progress' });
  assert.deepEqual([empty.status, empty.body.delivered], [202, 0]);
});

test("a user event reaches that user's sessions on every desktop and shard, and no one else", async (t) => {
  const { ann, a1, a2, a3, b, c } = await twoShards(t);
  const res = await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/events`, { type: 'export_ready', payload: { url: '/exports/1.zip' } });
  assert.deepEqual([res.status, res.body.delivered], [202, 3]);
  for (const m of [a1, a2, a3]) assertServerEvent(await m.client.next(), 'export_ready', { url: '/exports/1.zip' }, false);
  await markerIsNext([a1, a2, a3, b, c]);
  const nobody = await api(server, 'POST', `users/${encodeURIComponent(user('Nobody').userId)}/events`, { type: 'export_ready' });
  assert.deepEqual([nobody.status, nobody.body.delivered], [202, 0]);
});

test('a broadcast reaches everyone on both shards; a second one within --api-broadcast-rate is refused with 429 and reaches no one', async (t) => {
  const { a1, a2, a3, b, c } = await twoShards(t);
  const res = await api(server, 'POST', 'broadcast', { type: 'maintenance', payload: { at: '02:00' } });
  assert.equal(res.status, 202);
  assert.ok(res.body.delivered >= 5, `delivered ${res.body.delivered}`);
  for (const m of [a1, a2, a3, b, c]) assertServerEvent(await m.client.next(), 'maintenance', { at: '02:00' }, false);
  const again = await api(server, 'POST', 'broadcast', { type: 'maintenance_again' });
  assert.equal(again.status, 429);
  assert.equal(again.body.code, 'rate_limited');
  assert.ok(Number(again.headers.get('retry-after')) >= 1, `Retry-After ${again.headers.get('retry-after')}`);
  await markerIsNext([a1, a2, a3, b, c]);
});

test('presence lists the sessions of a desktop as the room knows them', async (t) => {
  const ann = user('Ann');
  const ben = user('Ben');
  const desktopId = desktopOnShard(1);
  const started = Date.now();
  const [a, b] = await fill(t, server, desktopId, [ann, ben]);
  const res = await api(server, 'GET', `desktops/${desktopId}/presence`);
  assert.equal(res.status, 200);
  assert.equal(res.body.desktopId, desktopId);
  const sessions = [...res.body.sessions].sort((x: any, y: any) => x.firstName.localeCompare(y.firstName));
  assert.deepEqual(
    sessions.map((s: any) => ({ ...s, connectedAt: 0, node: '' })),
    [
      {
        sessionId: a!.sessionId,
        userId: ann.userId,
        firstName: 'Ann',
        email: 'ann@example.com',
        desktopId,
        permission: 'editor',
        connectedAt: 0,
        node: '',
        shard: 1,
      },
      {
        sessionId: b!.sessionId,
        userId: ben.userId,
        firstName: 'Ben',
        email: 'ben@example.com',
        desktopId,
        permission: 'editor',
        connectedAt: 0,
        node: '',
        shard: 1,
      },
    ],
  );
  for (const s of sessions) {
    assert.ok(s.connectedAt >= started - 1000 && s.connectedAt <= Date.now(), `connectedAt ${s.connectedAt}`);
    assert.ok(typeof s.node === 'string' && s.node.length > 0);
  }
  // Leaving shows: Ben closes, and presence follows once the room has seen him go.
  await b!.client.close();
  await a!.client.expect('session_left');
  const after = await api(server, 'GET', `desktops/${desktopId}/presence`);
  assert.deepEqual(
    after.body.sessions.map((s: any) => s.sessionId),
    [a!.sessionId],
  );
  assert.deepEqual((await api(server, 'GET', `desktops/${desktopOnShard(0)}/presence`)).body.sessions, []);
});

test("a user's sessions are gathered from every shard: desktop, shard, node, permission, connected since", async (t) => {
  const { ann, a1, a2, a3 } = await twoShards(t);
  const res = await api(server, 'GET', `users/${encodeURIComponent(ann.userId)}/sessions`);
  assert.equal(res.status, 200);
  assert.equal(res.body.userId, ann.userId);
  const got = res.body.sessions.map((s: any) => [s.sessionId, s.desktopId, s.shard, s.permission]).sort();
  const want = [
    [a1.sessionId, a1.desktopId, 0, 'editor'],
    [a2.sessionId, a2.desktopId, 0, 'editor'],
    [a3.sessionId, a3.desktopId, 1, 'editor'],
  ].sort();
  assert.deepEqual(got, want);
  for (const s of res.body.sessions) {
    assert.equal(typeof s.connectedAt, 'number');
    assert.ok(s.node.length > 0);
  }
  assert.deepEqual((await api(server, 'GET', `users/${encodeURIComponent(user('Zed').userId)}/sessions`)).body.sessions, []);
});

test('without --enforce-token-expiry a session outlives its token, as the reference server does', async (t) => {
  const room = desktopOnShard(0);
  const shortLived = signAccessToken(user('Sho'), TEST_SECRET, 2);
  const exp = (JSON.parse(Buffer.from(shortLived.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp;
  const { client } = await join(t, server.wsUrl(room), { token: shortLived });
  // Wait out the token's life (the condition is the clock itself), then the session still gets its room's events.
  while (Date.now() <= exp * 1000 + 100) await new Promise((resolve) => setTimeout(resolve, exp * 1000 + 101 - Date.now()));
  assert.equal((await api(server, 'POST', `desktops/${room}/events`, { type: 'still_here' })).body.delivered, 1);
  await client.expect('still_here');
});

test('server events and calls are counted in /metrics', async () => {
  const res = await fetch(`http://127.0.0.1:${server.port}/metrics`);
  const text = await res.text();
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
  assert.ok(value('moodio_rt_api_requests_total{endpoint="publish"}') >= 6);
  assert.ok(value('moodio_rt_api_requests_total{endpoint="broadcast"}') >= 1);
  assert.ok(value('moodio_rt_api_requests_total{endpoint="presence"}') >= 3);
  assert.ok(value('moodio_rt_api_refused_total{status="429"}') >= 1);
  assert.ok(value('moodio_rt_api_deliveries_total') >= 20);
});
