/**
 * The mutation table (issue 20) on the legacy route, against the real
 * server: the default is the upstream's full list, `pt_*` included, and
 * `--mutation-types` replaces it. Absence is proven by ordering: a marker
 * the viewer sends after its mutation must be the editor's next frame.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '../src/errors.ts';
import { resolveServeConfig } from '../src/config.ts';
import { DEFAULT_MUTATION_TYPES } from '../src/protocol/events.ts';
import { join, type TestClient } from './helpers/client.ts';
import { startPermissionStub, type PermissionHandler } from './helpers/permission-stub.ts';
import { desktop, type Scope } from './helpers/scope.ts';
import { startServer, TEST_SECRET, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

// Users whose id contains "viewer" are viewers, everyone else edits.
const byName: PermissionHandler = (req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ permission: req.userId?.includes('viewer') ? 'viewer' : 'editor' }));
};

async function serve(t: Scope, args: string[] = []): Promise<ServerProcess> {
  const stub = await startPermissionStub(t, byName);
  return startServer(t, { workers: 2, permissionApiBase: stub.base, args });
}

/** An editor and a viewer in a fresh room, each past its presence frames. */
async function editorAndViewer(t: Scope, server: ServerProcess): Promise<{ editor: TestClient; viewer: TestClient; viewerId: string; editorId: string }> {
  const room = desktop();
  const { client: editor, joined: editorJoined } = await join(t, server.wsUrl(room), { token: token(user('Eve')) });
  const { client: viewer, joined } = await join(t, server.wsUrl(room), { token: token(user('Vic', { userId: `viewer-${Date.now()}-${Math.random()}` })) });
  await editor.expect('session_joined');
  assert.equal(joined.permission, 'viewer');
  return { editor, viewer, viewerId: joined.sessionId, editorId: editorJoined.sessionId };
}

test("default table: a viewer's pt_cell_updated is dropped on /ws/desktop, an editor's is relayed", async (t) => {
  const server = await serve(t);
  const { editor, viewer, viewerId, editorId } = await editorAndViewer(t, server);

  viewer.send({ type: 'pt_cell_updated', payload: { cell: 'B2', value: 'x' } });
  viewer.send({ type: 'marker', payload: { n: 1 } });
  const next = await editor.next();
  assert.deepEqual([next.type, next.sessionId, next.payload], ['marker', viewerId, { n: 1 }], "the viewer's pt_cell_updated was dropped");

  editor.send({ type: 'pt_cell_updated', payload: { cell: 'B2', value: 'y' } });
  const got = await viewer.next();
  assert.deepEqual([got.type, got.sessionId, got.payload], ['pt_cell_updated', editorId, { cell: 'B2', value: 'y' }]);
});

test('default table: every listed type from a viewer is dropped, silently, and nothing else is', async (t) => {
  const server = await serve(t);
  const { editor, viewer, viewerId } = await editorAndViewer(t, server);
  for (const type of DEFAULT_MUTATION_TYPES) viewer.send({ type, payload: { type } });
  viewer.send({ type: 'pt_cursor_moved', payload: { cell: 'C3' } });
  const next = await editor.next();
  assert.deepEqual([next.type, next.sessionId], ['pt_cursor_moved', viewerId], `a mutation leaked: ${JSON.stringify(next)}`);
  // No error was sent back for the drops: the editor's marker is the viewer's next frame.
  editor.send({ type: 'marker' });
  assert.equal((await viewer.next()).type, 'marker');
});

test('--mutation-types replaces the default: its types are dropped, the default ones relayed', async (t) => {
  const server = await serve(t, ['--mutation-types', 'cursor_moved, table_locked']);
  const { editor, viewer, viewerId } = await editorAndViewer(t, server);
  viewer.send({ type: 'cursor_moved', payload: { x: 1 } });
  viewer.send({ type: 'table_locked' });
  viewer.send({ type: 'pt_cell_updated', payload: { cell: 'A1' } });
  viewer.send({ type: 'asset_moved', payload: { id: 'a' } });
  const first = await editor.next();
  const second = await editor.next();
  assert.deepEqual(
    [first.type, first.sessionId, second.type, second.sessionId],
    ['pt_cell_updated', viewerId, 'asset_moved', viewerId],
    'the configured types were dropped; the default ones, not configured, were relayed',
  );
});

test('--mutation-types is validated once, at start, naming the option', () => {
  const base = { jwtSecret: TEST_SECRET };
  assert.deepEqual(resolveServeConfig(base).mutationTypes, DEFAULT_MUTATION_TYPES);
  assert.deepEqual(resolveServeConfig({ ...base, mutationTypes: ' a , b,a ' }).mutationTypes, ['a', 'b']);
  assert.deepEqual(
    resolveServeConfig({ ...base }).mutationTypes,
    resolveServeConfig({ ...base, mutationTypes: DEFAULT_MUTATION_TYPES.join(',') }).mutationTypes,
  );
  for (const [raw, message] of [
    ['', /must list at least one event type/],
    ['a,,b', /"" is not an event type/],
    ['x'.repeat(65), /is not an event type/],
    ['asset_moved,session_joined', /"session_joined" is sent by the server only/],
  ] as const) {
    assert.throws(
      () => resolveServeConfig({ ...base, mutationTypes: raw }),
      (err: unknown) => err instanceof ConfigError && err.option === '--mutation-types' && message.test(err.message),
      raw,
    );
  }
});

test('a bad --mutation-types stops the server at start with the option named', async (t) => {
  const stub = await startPermissionStub(t, byName);
  await assert.rejects(startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--mutation-types', 'room_joined'] }), /--mutation-types/);
});
