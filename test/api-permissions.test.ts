/**
 * Changing a live session's grant through the server API, against the real
 * server (primary + 2 shards) and a real permission stub: a role change
 * applies from the session's very next frame, is told once, and shows in
 * presence; `none` closes with 4003; a user disconnect closes the user's
 * sessions on every shard with 4001. Absence is proven by a marker that
 * must come next.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ClientEvent, CloseCode } from '../src/protocol/events.ts';
import { api, API_KEY, desktopOnShard, fill, type Member } from './helpers/api.ts';
import { join } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const cleanup = new Cleanup();
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup);
  server = await startServer(cleanup, { workers: 2, permissionApiBase: stub.base, args: ['--api-key', API_KEY, '--rate-limit', '0'] });
});
after(() => cleanup.run());

const permissionPath = (m: Member) => `desktops/${m.desktopId}/permissions/${encodeURIComponent(m.userId)}`;

/** `from` sends a non-mutating marker; it must be the next frame `to` gets (from `from`). */
async function markerIsNext(from: Member, to: Member): Promise<void> {
  from.client.send({ type: 'marker' });
  const got = await to.client.next();
  assert.deepEqual([got.type, got.sessionId], ['marker', from.sessionId], JSON.stringify(got));
}

test('editor → viewer: no mutation the shard reads after the 202 is relayed, and the room sees the new role', async (t) => {
  const ann = user('Ann');
  const [a, b] = await fill(t, server, desktopOnShard(0), [ann, user('Ben')]);
  // Ann also edits another desktop, on the other shard: that grant is not touched.
  const [elsewhere, watcher] = await fill(t, server, desktopOnShard(1), [ann, user('Cat')]);

  // Ann streams mutations; the PUT lands somewhere in the stream.
  let seq = 0;
  let streaming = true;
  const pump = () => {
    if (!streaming) return;
    a!.client.send({ type: ClientEvent.ASSET_MOVED, payload: { seq: seq++ } });
    setImmediate(pump);
  };
  pump();
  const res = await api(server, 'PUT', permissionPath(a!), { permission: 'viewer' });
  const sentBefore202 = seq;
  // Frames sent after the answer, then a marker to end the stream.
  for (let i = 0; i < 20; i++) a!.client.send({ type: ClientEvent.ASSET_MOVED, payload: { seq: seq++ } });
  streaming = false;
  a!.client.send({ type: 'marker' });
  assert.equal(res.status, 202);
  assert.deepEqual([res.body.sessions, res.body.changed], [1, 1]);

  // Ben: mutations sent before the answer (some, maybe none), then session_updated, then only the marker.
  let updated = null;
  for (;;) {
    const frame = await b!.client.next();
    if (frame.type === 'marker') break;
    if (frame.type === 'session_updated') {
      updated = frame;
      continue;
    }
    assert.equal(frame.type, ClientEvent.ASSET_MOVED);
    assert.equal(updated, null, `a mutation was relayed after session_updated: ${JSON.stringify(frame)}`);
    assert.ok(frame.payload.seq < sentBefore202, `mutation ${frame.payload.seq} was sent after the 202 (at ${sentBefore202}) and relayed`);
  }
  assert.ok(updated !== null, 'the room was told of the new role');
  assert.equal(updated.sessionId, a!.sessionId);
  assert.equal(updated.userId, ann.userId);
  assert.equal(updated.permission, 'viewer');
  assert.deepEqual(updated.payload, { sessionId: a!.sessionId, userId: ann.userId, firstName: 'Ann', email: 'ann@example.com', permission: 'viewer' });
  // Ann herself: permission_changed, once.
  assert.deepEqual(await a!.client.next(), { type: 'permission_changed', permission: 'viewer' });

  // The same user on the other desktop still edits.
  elsewhere!.client.send({ type: ClientEvent.ASSET_ADDED, payload: { id: 'x' } });
  assert.equal((await watcher!.client.next()).type, ClientEvent.ASSET_ADDED);

  // Presence and a newcomer's room_joined show the new role.
  const presence = await api(server, 'GET', `desktops/${a!.desktopId}/presence`);
  assert.equal(presence.body.sessions.find((s: any) => s.sessionId === a!.sessionId).permission, 'viewer');
  const { joined } = await join(t, server.wsUrl(a!.desktopId), { token: token(user('Dan')) });
  assert.equal(joined.sessions.find((s: any) => s.sessionId === a!.sessionId).permission, 'viewer');
});

test('viewer → editor: the next mutation is relayed; setting the same role again sends nothing', async (t) => {
  const [a, b] = await fill(t, server, desktopOnShard(1), [user('Ann'), user('Ben')]);
  assert.equal((await api(server, 'PUT', permissionPath(a!), { permission: 'viewer' })).body.changed, 1);
  await a!.client.expect('permission_changed');
  await b!.client.expect('session_updated');
  a!.client.send({ type: ClientEvent.ASSET_REMOVED, payload: { id: 'x' } });
  await markerIsNext(a!, b!);

  const res = await api(server, 'PUT', permissionPath(a!), { permission: 'editor' });
  assert.deepEqual([res.status, res.body.sessions, res.body.changed], [202, 1, 1]);
  assert.deepEqual(await a!.client.next(), { type: 'permission_changed', permission: 'editor' });
  assert.equal((await b!.client.next()).permission, 'editor');
  a!.client.send({ type: ClientEvent.ASSET_REMOVED, payload: { id: 'y' } });
  assert.deepEqual((await b!.client.next()).payload, { id: 'y' });

  // Idempotent: the same PUT again matches the session and changes nothing, so no frame is sent.
  const again = await api(server, 'PUT', permissionPath(a!), { permission: 'editor' });
  assert.deepEqual([again.status, again.body.sessions, again.body.changed], [202, 1, 0]);
  await markerIsNext(b!, a!);
  await markerIsNext(a!, b!);
});

test("a role applies to every session of the user on that desktop, and to no one else's", async (t) => {
  const ann = user('Ann');
  const [a1, b, a2] = await fill(t, server, desktopOnShard(0), [ann, user('Ben'), ann]);
  const res = await api(server, 'PUT', permissionPath(a1!), { permission: 'viewer' });
  assert.deepEqual([res.body.sessions, res.body.changed], [2, 2]);
  // Ben sees both of Ann's tabs change; each of Ann's tabs hears its own change and the other's, in the order applied.
  const updates = [(await b!.client.next()).sessionId, (await b!.client.next()).sessionId].sort();
  assert.deepEqual(updates, [a1!.sessionId, a2!.sessionId].sort());
  const seen = async (m: Member) => {
    const frames = [await m.client.next(), await m.client.next()];
    const own = frames.find((f) => f.type === 'permission_changed');
    const other = frames.find((f) => f.type === 'session_updated');
    assert.deepEqual(own, { type: 'permission_changed', permission: 'viewer' });
    return other?.sessionId;
  };
  assert.equal(await seen(a1!), a2!.sessionId);
  assert.equal(await seen(a2!), a1!.sessionId);
  b!.client.send({ type: ClientEvent.ASSET_MOVED, payload: {} });
  assert.equal((await a1!.client.next()).type, ClientEvent.ASSET_MOVED, 'Ben still edits');
  // A user with no session there: 202, nothing matched.
  const nobody = await api(server, 'PUT', `desktops/${a1!.desktopId}/permissions/${encodeURIComponent(user('Zoe').userId)}`, { permission: 'viewer' });
  assert.deepEqual([nobody.status, nobody.body.sessions, nobody.body.changed], [202, 0, 0]);
});

test('none: the user\'s sessions on that desktop close with 4003 "permission revoked" and the room sees session_left', async (t) => {
  const ann = user('Ann');
  // Dan is there so that Ben is not alone once Ann has gone: a room of one relays nothing.
  const [a1, b, a2, dan] = await fill(t, server, desktopOnShard(0), [ann, user('Ben'), ann, user('Dan')]);
  const [kept, watcher] = await fill(t, server, desktopOnShard(1), [ann, user('Cat')]);
  // One of Ann's tabs streams mutations until it sees the close: those still on their way when she is revoked must not reach Ben.
  const pump = () => {
    if (a1!.client.ws.readyState !== a1!.client.ws.OPEN) return;
    a1!.client.send({ type: ClientEvent.ASSET_DRAGGING, payload: {} });
    setImmediate(pump);
  };
  pump();
  const res = await api(server, 'PUT', permissionPath(a1!), { permission: 'none' });
  assert.deepEqual([res.status, res.body.sessions, res.body.changed], [202, 2, 2]);
  for (const m of [a1!, a2!]) assert.deepEqual(await m.client.closed, { code: CloseCode.PERMISSION_REVOKED, reason: 'permission revoked' });
  const left: string[] = [];
  while (left.length < 2) {
    const frame = await b!.client.next();
    if (frame.type === ClientEvent.ASSET_DRAGGING) assert.equal(left.length, 0, 'a frame of a revoked session was relayed after it left');
    else left.push((assert.equal(frame.type, 'session_left'), frame.sessionId));
  }
  assert.deepEqual(left.sort(), [a1!.sessionId, a2!.sessionId].sort());
  assert.equal((await api(server, 'POST', `desktops/${b!.desktopId}/events`, { type: 'marker' })).body.delivered, 2);
  await b!.client.expect('marker');
  const presence = await api(server, 'GET', `desktops/${a1!.desktopId}/presence`);
  assert.deepEqual(presence.body.sessions.map((s: any) => s.sessionId).sort(), [b!.sessionId, dan!.sessionId].sort());
  // Ann's session on the other desktop is untouched.
  await markerIsNext(kept!, watcher!);
  // Revoking again matches nothing.
  const again = await api(server, 'PUT', permissionPath(a1!), { permission: 'none' });
  assert.deepEqual([again.status, again.body.sessions, again.body.changed], [202, 0, 0]);
});

test('a user disconnect closes every session of the user on both shards with 4001 and the reason given; others stay', async (t) => {
  const ann = user('Ann');
  const [a1, b] = await fill(t, server, desktopOnShard(0), [ann, user('Ben')]);
  const [a2, c] = await fill(t, server, desktopOnShard(1), [ann, user('Cat')]);
  const res = await api(server, 'POST', `users/${encodeURIComponent(ann.userId)}/disconnect`, { reason: 'logged out' });
  assert.deepEqual([res.status, res.body.disconnected], [202, 2]);
  for (const m of [a1!, a2!]) assert.deepEqual(await m.client.closed, { code: CloseCode.DISCONNECTED, reason: 'logged out' });
  assert.equal((await b!.client.expect('session_left')).sessionId, a1!.sessionId);
  assert.equal((await c!.client.expect('session_left')).sessionId, a2!.sessionId);
  assert.deepEqual((await api(server, 'GET', `users/${encodeURIComponent(ann.userId)}/sessions`)).body.sessions, []);

  // Without a body the reason is "disconnected".
  const [d] = await fill(t, server, desktopOnShard(1), [user('Dee')]);
  assert.equal((await api(server, 'POST', `users/${encodeURIComponent(d!.userId)}/disconnect`)).status, 202);
  assert.deepEqual(await d!.client.closed, { code: CloseCode.DISCONNECTED, reason: 'disconnected' });
  // Ben and Cat were not disconnected.
  b!.client.send({ type: 'marker' });
  assert.equal((await api(server, 'POST', `desktops/${c!.desktopId}/events`, { type: 'marker' })).body.delivered, 1);
  await c!.client.expect('marker');
});

test('permission changes and server closes are counted in /metrics', async () => {
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
  assert.ok(value('moodio_rt_permission_changes_total{cause="api"}') >= 5);
  assert.ok(value('moodio_rt_server_closes_total{reason="revoked"}') >= 2);
  assert.ok(value('moodio_rt_server_closes_total{reason="disconnected"}') >= 3);
  assert.ok(value('moodio_rt_api_requests_total{endpoint="set_permission"}') >= 7);
});
