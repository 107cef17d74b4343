/**
 * A legacy socket on `/ws/desktop/x` and a `/ws/connection` subscriber of
 * `desktop:x` are in one room, each seeing the other's presence and events
 * in its own framing; the new legacy route `/ws/production-table/{id}` asks
 * the app's production-table permission endpoint, and its rooms never mix
 * with desktops'. Real server (one worker here; the link between shards has
 * its own file), real permission API.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ClientEvent } from '../src/protocol/events.ts';
import { HandshakeRejected, join } from './helpers/client.ts';
import { rolesByUser, startPermissionStub, type PermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';
import { connectTopics, expectEvent, subscribe } from './helpers/topics.ts';

const cleanup = new Cleanup();
let server: ServerProcess;
let stub: PermissionStub;

before(async () => {
  stub = await startPermissionStub(cleanup, (req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ permission: req.userId?.includes('viewer') ? 'viewer' : 'editor' }));
  });
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base });
});
after(() => cleanup.run());

const tableUrl = (id: string): string => `ws://127.0.0.1:${server.port}/ws/production-table/${id}`;

describe('one room, two framings', () => {
  test('a subscriber sees the legacy socket, and the legacy socket sees the subscriber, both ways', async (t) => {
    const id = desktop();
    const on = `desktop:${id}`;
    const legacyUser = user('Leo');
    const { client: legacy, joined } = await join(t, server.wsUrl(id), { token: token(legacyUser) });
    const subUser = user('Sue');
    const sub = await connectTopics(t, server, token(subUser));
    const ack = await subscribe(sub, on);
    assert.deepEqual(ack.sessions, [
      { sessionId: joined.sessionId, userId: legacyUser.userId, firstName: 'Leo', email: 'leo@example.com', permission: 'editor' },
    ]);
    const info = { sessionId: ack.sessionId, userId: subUser.userId, firstName: 'Sue', email: 'sue@example.com', permission: 'editor' };
    // The legacy framing, exactly as between two legacy sockets.
    const seen = await legacy.expect('session_joined');
    assert.deepEqual(seen, {
      type: 'session_joined',
      sessionId: ack.sessionId,
      userId: subUser.userId,
      firstName: 'Sue',
      email: 'sue@example.com',
      timestamp: seen.timestamp,
      payload: info,
    });

    sub.send({ op: 'publish', topic: on, type: ClientEvent.ASSET_MOVED, payload: { id: 'a1', x: 3 } });
    const moved = await legacy.expect(ClientEvent.ASSET_MOVED);
    assert.deepEqual(moved, {
      type: ClientEvent.ASSET_MOVED,
      sessionId: ack.sessionId,
      userId: subUser.userId,
      firstName: 'Sue',
      email: 'sue@example.com',
      timestamp: moved.timestamp,
      payload: { id: 'a1', x: 3 },
      offset: 1,
    });
    sub.send({ op: 'publish', topic: on, type: 'ping_cursor' });
    const bare = await legacy.expect('ping_cursor');
    assert.equal(Object.hasOwn(bare, 'payload'), false, 'the legacy framing leaves an absent payload out');

    legacy.send({ type: ClientEvent.ASSET_RESIZED, payload: { id: 'a1', w: 9 } });
    const resized = await expectEvent(sub, on, ClientEvent.ASSET_RESIZED);
    assert.deepEqual(resized, {
      op: 'event',
      topic: on,
      type: ClientEvent.ASSET_RESIZED,
      sessionId: joined.sessionId,
      userId: legacyUser.userId,
      firstName: 'Leo',
      email: 'leo@example.com',
      timestamp: resized.timestamp,
      payload: { id: 'a1', w: 9 },
      offset: 3,
    });
    legacy.send({ type: 'ping_cursor' });
    assert.equal((await expectEvent(sub, on, 'ping_cursor')).payload, null);

    sub.send({ op: 'unsubscribe', topic: on });
    const left = await legacy.expect('session_left');
    assert.equal(left.sessionId, ack.sessionId);
  });

  test("a legacy socket that joins after a subscriber finds it in room_joined, and the subscriber hears the legacy socket's join and leave", async (t) => {
    const id = desktop();
    const on = `desktop:${id}`;
    const sub = await connectTopics(t, server, token(user('viewer')));
    const ack = await subscribe(sub, on);
    const { client: legacy, joined } = await join(t, server.wsUrl(id), { token: token(user('Leo')) });
    assert.deepEqual(
      joined.sessions.map((s: { sessionId: string; permission: string }) => [s.sessionId, s.permission]),
      [[ack.sessionId, 'viewer']],
    );
    const seen = await expectEvent(sub, on, 'session_joined');
    assert.equal(seen.sessionId, joined.sessionId);
    // A viewer's mutation is dropped for the legacy socket too; its next frame is the later event.
    sub.send({ op: 'publish', topic: on, type: ClientEvent.ASSET_REMOVED, payload: {} });
    sub.send({ op: 'publish', topic: on, type: 'cursor', payload: 1 });
    assert.equal((await legacy.expect('cursor')).payload, 1);
    await legacy.close();
    assert.equal((await expectEvent(sub, on, 'session_left')).sessionId, joined.sessionId);
  });
});

describe('production tables', () => {
  test('the legacy route asks /api/production-table/{id}/permission?userId= and relays like a desktop', async (t) => {
    const id = desktop('table');
    const ann = user('Ann');
    const { client: a, joined } = await join(t, tableUrl(id), { token: token(ann) });
    assert.equal(joined.permission, 'editor');
    const asked = stub.requests.filter((r) => r.endpoint === 'production-table' && r.desktopId === id);
    assert.equal(asked.length, 1);
    assert.equal(asked[0]!.url, `/api/production-table/${id}/permission?userId=${ann.userId}`);
    const { client: b } = await join(t, tableUrl(id), { token: token(user('Bob')) });
    await a.expect('session_joined');
    b.send({ type: 'pt_cell_updated', payload: { row: 2, col: 'A', value: 'x' } });
    assert.deepEqual((await a.expect('pt_cell_updated')).payload, { row: 2, col: 'A', value: 'x' });
  });

  test('a refusal on the production-table endpoint is 403, as for a desktop', async (t) => {
    const id = desktop('table');
    stub.handle(rolesByUser({}));
    t.after(() =>
      stub.handle((req, res) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ permission: req.userId?.includes('viewer') ? 'viewer' : 'editor' }));
      }),
    );
    await assert.rejects(join(t, tableUrl(id), { token: token(user('Ann')) }), (err: unknown) => err instanceof HandshakeRejected && err.status === 403);
  });

  test('desktop:x and production-table:x never mix, on either route', async (t) => {
    const id = desktop('same');
    const { client: onDesktop } = await join(t, server.wsUrl(id), { token: token(user('Dee')) });
    const { client: onTable } = await join(t, tableUrl(id), { token: token(user('Tab')) });
    const sub = await connectTopics(t, server, token(user('Sue')));
    const ack = await subscribe(sub, `production-table:${id}`);
    assert.equal(ack.sessions.length, 1, 'the table socket only');
    assert.equal((await onTable.expect('session_joined')).sessionId, ack.sessionId);
    onDesktop.send({ type: 'from_desktop' });
    onTable.send({ type: 'from_table' });
    // The subscriber's next frame is the table's event: the desktop's never came.
    assert.equal((await sub.next()).type, 'from_table');
    sub.send({ op: 'publish', topic: `production-table:${id}`, type: 'from_sub' });
    assert.equal((await onTable.expect('from_sub')).type, 'from_sub');
    onTable.send({ type: 'marker' });
    await expectEvent(sub, `production-table:${id}`, 'marker');
    assert.equal(onDesktop.pending, 0);
  });
});
