/**
 * `moodio-rt-client/react` (src/client/react.ts) rendered for real, with
 * react-test-renderer, against the real server and permission stub: the
 * hook connects on mount (once for good in strict mode) and renders the
 * state, the role and the others (its `url` an inline list, which must
 * not reconnect it on each render); `send` reaches a peer; an effect on `client` hears the peer; a viewer's
 * mutation is refused; a new `desktopId` moves the session to that room;
 * unmounting closes it.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createElement, StrictMode, useEffect, useState } from 'react';
import TestRenderer from 'react-test-renderer';
import WebSocket from 'ws';
import type { ConnectOptions, WebSocketConstructor } from '../src/client/index.ts';
import { useDesktop, type Desktop } from '../src/client/react.ts';
import { join } from './helpers/client.ts';
import { rolesByUser, startPermissionStub } from './helpers/permission-stub.ts';
import { Cleanup, desktop, type Scope } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

// Updates come from the socket, outside act(): let React schedule them as in an app.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

const WS = WebSocket as unknown as WebSocketConstructor;
const cleanup = new Cleanup();
const roles: Record<string, string> = {};
let server: ServerProcess;

before(async () => {
  const stub = await startPermissionStub(cleanup, rolesByUser(roles));
  server = await startServer(cleanup, { workers: 1, permissionApiBase: stub.base });
});
after(() => cleanup.run());

/** A user with `role` on every desktop, and a token of theirs. */
function member(name: string, role: string): string {
  const claims = user(name);
  roles[claims.userId] = role;
  return token(claims);
}

interface Props {
  desktopId: string;
  token: string;
  /** Gets each render's hook result and text. */
  seen: (desk: Desktop, text: string) => void;
}

/** What an app writes: the hook, an effect on `client` for relayed events, and a render of it all. */
function Desk({ desktopId, token, seen }: Props) {
  // A list of URLs written inline, a new array on every render: the hook must not reconnect for it.
  const options: ConnectOptions = { url: [`ws://127.0.0.1:${server.port}`], desktopId, token: () => token, WebSocket: WS };
  const desk = useDesktop(options);
  const [moved, setMoved] = useState('-');
  useEffect(() => desk.client?.onEvent('asset_moved', (e) => setMoved(`${e.payload?.id}@${e.payload?.x}`)), [desk.client]);
  const text = `${desk.state} ${desk.permission} [${desk.others.map((o) => o.firstName).join(',')}] ${moved}`;
  seen(desk, text);
  return createElement('p', null, text);
}

/** Render `Desk` (unmounted after the test); returns the renderer, the latest hook result, every text rendered, and a wait for the text. */
function render(t: Scope, props: Omit<Props, 'seen'>) {
  let latest: Desktop | null = null;
  const texts: string[] = [];
  const seen = (desk: Desktop, text: string) => {
    latest = desk;
    if (texts.at(-1) !== text) texts.push(text);
  };
  // Strict mode, as in an app's development build: the effect runs, is cleaned up, and runs again.
  const element = (next: Omit<Props, 'seen'>) => createElement(StrictMode, null, createElement(Desk, { ...next, seen }));
  const renderer = TestRenderer.create(element(props));
  let mounted = true;
  const unmount = () => {
    if (mounted) renderer.unmount();
    mounted = false;
  };
  t.after(unmount);
  const text = () => (renderer.toJSON() as { children: string[] } | null)?.children.join('') ?? '';
  /** Wait (at most 10 s) until the rendered text matches `pattern`. */
  const until = async (pattern: RegExp) => {
    const deadline = Date.now() + 10_000;
    while (!pattern.test(text())) {
      assert.ok(Date.now() < deadline, `rendered ${JSON.stringify(text())}, never ${pattern}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  };
  return { texts, until, unmount, desk: () => latest!, rerender: (next: Omit<Props, 'seen'>) => renderer.update(element(next)) };
}

test('useDesktop connects on mount and renders state, role and the others; send reaches a peer, the peer reaches an effect on client; unmount closes', async (t) => {
  const room = desktop('react');
  const view = render(t, { desktopId: room, token: member('Rea', 'editor') });
  await view.until(/^open editor \[\] -$/);
  assert.deepEqual(view.texts, ['connecting null [] -', 'open editor [] -'], 'connecting first, then joined with the role room_joined named');

  const { client: peer, joined } = await join(t, server.wsUrl(room), { token: member('Pia', 'editor') });
  assert.deepEqual(
    joined.sessions.map((s: { firstName: string }) => s.firstName),
    ['Rea'],
    "strict mode's first client closed: one session in the room",
  );
  await view.until(/^open editor \[Pia\] -$/);

  view.desk().send('asset_moved', { id: 'card', x: 7 });
  const sent = await peer.expect('asset_moved');
  assert.deepEqual([sent.firstName, sent.payload], ['Rea', { id: 'card', x: 7 }]);
  peer.send({ type: 'asset_moved', payload: { id: 'card', x: 9 } });
  await view.until(/ card@9$/);

  const send = view.desk().send;
  view.unmount();
  const left = await peer.expect('session_left');
  assert.equal(left.payload.firstName, 'Rea');
  assert.throws(() => send('asset_moved', { id: 'card', x: 10 }), { code: 'ERR_CLOSED' });
});

test("a viewer's hook renders its role, and its send refuses a mutation; a new desktopId moves the session to that room", async (t) => {
  const first = desktop('react-viewer');
  const second = desktop('react-viewer');
  const viewerToken = member('Vic', 'viewer');
  const { client: inFirst } = await join(t, server.wsUrl(first), { token: member('Fay', 'editor') });
  const { client: inSecond } = await join(t, server.wsUrl(second), { token: member('Sam', 'editor') });
  const view = render(t, { desktopId: first, token: viewerToken });
  await view.until(/^open viewer \[Fay\] -$/);
  assert.throws(() => view.desk().send('asset_moved', { id: 'card', x: 1 }), { code: 'ERR_VIEWER_MUTATION' });
  view.desk().send('cursor', { x: 1 });
  assert.deepEqual((await inFirst.expect('session_joined')).firstName, 'Vic');
  assert.deepEqual((await inFirst.expect('cursor')).payload, { x: 1 }, 'other types go, and the mutation before it did not');

  view.rerender({ desktopId: second, token: viewerToken });
  await view.until(/^open viewer \[Sam\] -$/);
  assert.equal((await inFirst.expect('session_left')).payload.firstName, 'Vic');
  assert.equal((await inSecond.expect('session_joined')).firstName, 'Vic');
});
