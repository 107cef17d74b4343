/// <reference lib="dom" />
/**
 * The demo desktop in a real browser (Debian's Chromium through
 * playwright-core):
 * - every window holds its desktop and production table on one connection
 *   (/ws/connection); a cell edited in one window changes in the others, a
 *   viewer's cells are read-only and the SDK refuses its forced edit, and a
 *   late joiner gets the table as the editors have it;
 * - two windows see each other, a drag in one moves the card in the other
 *   and names the dragger, the SDK refuses a viewer's forced move, closing
 *   a window removes it from the other's presence bar; colours are per user,
 *   the help line and the icon are there;
 * - three windows of one browser (one cookie jar) keep their identities and
 *   roles across a server restart, a drag that ends while the server is down
 *   ends where it was dropped for everyone, and a late joiner sees every
 *   moved card;
 * - a window held away (its user disconnected, its reconnects answered by a
 *   socket that never acks) while another moves a card and edits a cell
 *   comes back through the history: the move and the edit reach it, it says
 *   `recovered`, and it asks nobody for the state;
 * - at 420 px the header stays on one line, the presence bar shows everyone,
 *   and a card moved far right in a wide window can be scrolled to;
 * - a role changed through the server API shows in every window's presence
 *   bar at once: a viewer turned editor drags a card and the others see it
 *   move, an editor turned viewer cannot pick one up;
 * - a revoked window says so and stops, while the others see it leave.
 * Screenshots land in test-artifacts/ (not committed). Waits are on
 * conditions, with generous limits: Chromium shares 2 cores with the server
 * and other tests.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as pathJoin } from 'node:path';
import { after, before, test } from 'node:test';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import type { WebSocketRoute } from 'playwright-core';
import { api, API_KEY } from './helpers/api.ts';
import { join } from './helpers/client.ts';
import { launchChromium } from './helpers/chromium.ts';
import { Cleanup, desktop } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';

const ARTIFACTS = new URL('../test-artifacts/', import.meta.url);
const cleanup = new Cleanup();
const secretFile = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-demo-')), 'secret');
let browser: Browser;
let server: ServerProcess;
/** Page errors and failed responses (any status ≥ 400, a favicon's 404 included) of every page. */
const failures: string[] = [];

/** Start the dev server, on `port` when given (a restart keeps the pages' origin). */
async function serve(port = 0): Promise<void> {
  server = await startServer(cleanup, {
    workers: 1,
    args: ['--dev', '--api-key', API_KEY, ...(port ? ['--port', String(port)] : [])],
    env: { JWT_ACCESS_SECRET: undefined, MOODIO_RT_DEV_SECRET_FILE: secretFile },
  });
}

before(async () => {
  browser = await launchChromium(cleanup);
  await serve();
});
after(() => cleanup.run());

interface OpenOptions {
  desk: string;
  as?: 'editor' | 'viewer';
  /** A window of this browser context (shared cookies and all); a new context by default. */
  context?: BrowserContext;
  width?: number;
  /** Called before the page loads (a route of its WebSockets must be set before the page makes them). */
  before?: (page: Page) => Promise<void>;
}

async function open(name: string, { desk, as = 'editor', context, width = 900, before }: OpenOptions): Promise<Page> {
  const ctx = context ?? (await browser.newContext({ viewport: { width, height: 500 } }));
  const page = await ctx.newPage();
  if (context) await page.setViewportSize({ width, height: 500 });
  page.on('pageerror', (err) => failures.push(`${name}: ${err.message}`));
  page.on('response', (res) => res.status() >= 400 && failures.push(`${name}: ${res.status()} ${res.url()}`));
  await before?.(page);
  await page.goto(`http://127.0.0.1:${server.port}/demo?name=${name}&desk=${desk}${as === 'viewer' ? '&as=viewer' : ''}`);
  await waitOpen(page);
  return page;
}

const waitOpen = (page: Page) => page.waitForFunction(() => document.body.dataset.state === 'open', undefined, { timeout: 30_000 });

const position = (page: Page, id: string) => page.$eval(`#${id}`, (el) => [(el as HTMLElement).style.left, (el as HTMLElement).style.top] as [string, string]);

const waitPosition = (page: Page, id: string, [x, y]: [string, string]) =>
  page.waitForFunction(
    ([id, x, y]) => {
      const el = document.getElementById(id!) as HTMLElement;
      return el.style.left === x && el.style.top === y;
    },
    [id, x, y],
    { timeout: 15_000 },
  );

/**
 * Pointer input goes to the window in front: one in the back of a shared
 * context acknowledges each event only about once a second.
 */
async function drag(page: Page, id: string, dx: number, dy: number): Promise<void> {
  await page.bringToFront();
  const box = (await page.locator(`#${id}`).boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + dx, box.y + box.height / 2 + dy, { steps: 12 });
  await page.mouse.up();
}

/** Names and permissions in a page's presence bar, this window first. */
const presence = (page: Page) =>
  page.$$eval('#presence .person[data-name]', (items) => items.map((el) => `${(el as HTMLElement).dataset.name}:${(el as HTMLElement).dataset.permission}`));

const dotColour = (page: Page, name: string) => page.$eval(`#presence .person[data-name="${name}"] .dot`, (el) => getComputedStyle(el).backgroundColor);

test('two windows share a desktop: presence, live drags with the dragger named, viewers, leaving, colours, help and icon', async () => {
  const desk = desktop('demo');
  const alice = await open('Alice', { desk });
  const bob = await open('Bob', { desk });
  await alice.locator('#presence .person[data-name="Bob"]').waitFor();
  await bob.locator('#presence .person[data-name="Alice"]').waitFor();

  // Bob's page records every relayed event on the desktop (the SDK's connection is window.moodio, the desktop's topic window.moodioDesk).
  await bob.evaluate(() => {
    const w = window as unknown as { moodioDesk: { onAnyEvent(h: (e: unknown) => void): void }; seen: { type: string; userId: string; payload?: unknown }[] };
    w.seen = [];
    w.moodioDesk.onAnyEvent((e) => w.seen.push(e as never));
  });
  // Mid-drag, Bob's card has a dashed outline naming Alice; her drop moves it in Bob's window and clears the outline.
  const start = await position(bob, 'asset-1');
  const box = (await alice.locator('#asset-1').boundingBox())!;
  await alice.mouse.move(box.x + 60, box.y + 40);
  await alice.mouse.down();
  await alice.mouse.move(box.x + 140, box.y + 90, { steps: 8 });
  await bob.waitForFunction(() => document.querySelector('#asset-1.remote')?.getAttribute('data-dragger') === 'Alice', undefined, { timeout: 10_000 });
  assert.match(await bob.$eval('#asset-1', (el) => getComputedStyle(el, '::after').content), /Alice is dragging/);
  await alice.mouse.move(box.x + 220, box.y + 130, { steps: 8 });
  await alice.mouse.up();
  const moved = await position(alice, 'asset-1');
  assert.notDeepEqual(moved, start);
  await waitPosition(bob, 'asset-1', moved);
  await bob.waitForFunction(() => !document.querySelector('#asset-1.remote'), undefined, { timeout: 10_000 });

  // A viewer is listed as such; its page does not move cards, and the SDK
  // refuses a move the page is made to send anyway (the server would drop it).
  const vic = await open('Vic', { desk, as: 'viewer' });
  await alice.locator('#presence .person[data-name="Vic"][data-permission="viewer"]').waitFor();
  const before2 = await position(alice, 'asset-2');
  await drag(vic, 'asset-2', 200, 120);
  assert.deepEqual(await position(vic, 'asset-2'), before2, "the viewer's page does not move it");
  // Forced through the SDK, then a type viewers may send, on the same socket:
  // the server handles a socket's frames in order, so once Bob has the
  // marker, the move before it would have been relayed already.
  const refused = await vic.evaluate(() => {
    const client = (window as unknown as { moodioDesk: { send(type: string, payload: unknown): void } }).moodioDesk;
    let code = 'sent';
    try {
      client.send('asset_moved', { id: 'asset-2', x: 999, y: 999 });
    } catch (err) {
      code = (err as { code: string }).code;
    }
    client.send('cursor', { marker: true });
    return code;
  });
  assert.equal(refused, 'ERR_VIEWER_MUTATION');
  await bob.waitForFunction(() => (window as unknown as { seen: { type: string }[] }).seen.some((e) => e.type === 'cursor'), undefined, { timeout: 10_000 });
  const fromVic = await bob.evaluate(() =>
    (window as unknown as { seen: { type: string; firstName?: string }[] }).seen
      .filter((e) => e.firstName === 'Vic' && !e.type.startsWith('desktop_state'))
      .map((e) => e.type),
  );
  assert.deepEqual(fromVic, ['cursor'], "the viewer's forced move never reached the room");
  assert.deepEqual(await position(bob, 'asset-2'), before2, 'nothing moved asset-2 for the others');

  // Help: what to do, for an editor and for a viewer.
  assert.match((await alice.textContent('#help')) ?? '', /Drag a card.*another window.*as=viewer.*read-only/s);
  assert.match((await vic.textContent('#help')) ?? '', /viewer: read-only/);
  // A colour per user: Alice's dot is the same in her window, in Bob's, and in a new window of hers.
  const aliceColour = await dotColour(alice, 'Alice');
  assert.equal(await dotColour(bob, 'Alice'), aliceColour);
  assert.notEqual(await dotColour(bob, 'Bob'), aliceColour);
  const alice2 = await open('Alice', { desk });
  assert.equal(await dotColour(alice2, 'Alice'), aliceColour);
  await alice2.context().close();
  // The icon is served (no 404 for it, nor for anything else: see `failures`).
  const icon = await alice.$eval('link[rel=icon]', (el) => (el as HTMLLinkElement).href);
  const answer = await alice.request.get(icon);
  assert.equal(answer.status(), 200);
  assert.equal(answer.headers()['content-type'], 'image/svg+xml');

  mkdirSync(ARTIFACTS, { recursive: true });
  await alice.screenshot({ path: new URL('demo-alice.png', ARTIFACTS).pathname });
  await bob.screenshot({ path: new URL('demo-bob.png', ARTIFACTS).pathname });

  // Closing Bob's window removes him from Alice's presence bar.
  await bob.context().close();
  await alice.locator('#presence .person[data-name="Bob"]').waitFor({ state: 'detached' });
  assert.deepEqual(await presence(alice), ['Alice:editor', 'Vic:viewer']);
  await Promise.all([alice.context().close(), vic.context().close()]);
  assert.deepEqual(failures, []);
});

test('one connection per window holds the desktop and its production table: a cell edited in one window changes in the other; a viewer cannot edit', async () => {
  const desk = desktop('demo');
  /** The WebSocket URLs each page opened. */
  const sockets = new Map<Page, string[]>();
  const openCounted = async (name: string, as: 'editor' | 'viewer' = 'editor') => {
    const ctx = await browser.newContext({ viewport: { width: 900, height: 500 } });
    const page = await ctx.newPage();
    sockets.set(page, []);
    page.on('websocket', (ws) => sockets.get(page)!.push(new URL(ws.url()).pathname));
    page.on('pageerror', (err) => failures.push(`${name}: ${err.message}`));
    page.on('response', (res) => res.status() >= 400 && failures.push(`${name}: ${res.status()} ${res.url()}`));
    await page.goto(`http://127.0.0.1:${server.port}/demo?name=${name}&desk=${desk}${as === 'viewer' ? '&as=viewer' : ''}`);
    await waitOpen(page);
    await page.waitForFunction(
      () => document.getElementById('table-state')!.textContent === 'editor' || document.getElementById('table-state')!.textContent === 'viewer',
      undefined,
      { timeout: 15_000 },
    );
    return page;
  };
  const alice = await openCounted('Alice');
  const bob = await openCounted('Bob');
  const vic = await openCounted('Vic', 'viewer');
  await alice.locator('#presence .person[data-name="Vic"]').waitFor();
  for (const page of [alice, bob, vic]) await page.waitForFunction(() => document.body.hasAttribute('data-table-synced'), undefined, { timeout: 15_000 });

  // Alice types in a cell: Bob's cell shows it, outlined in Alice's colour; so does the viewer's.
  await alice.bringToFront();
  await alice.fill('#cell-r2-c2', 'approved');
  for (const page of [bob, vic]) {
    await page.waitForFunction(() => (document.getElementById('cell-r2-c2') as HTMLInputElement).value === 'approved', undefined, { timeout: 15_000 });
  }
  assert.equal(await bob.$eval('#cell-r2-c2', (el) => el.classList.contains('remote') && el.getAttribute('title')), 'Alice is here');

  // And back: Bob's edit reaches Alice.
  await bob.bringToFront();
  await bob.fill('#cell-r1-c3', 'Bob');
  await alice.waitForFunction(() => (document.getElementById('cell-r1-c3') as HTMLInputElement).value === 'Bob', undefined, { timeout: 15_000 });

  // The viewer's cells are read-only: typing changes nothing, and an edit forced through the SDK is refused before it leaves.
  assert.equal(await vic.$eval('#cell-r3-c2', (el) => (el as HTMLInputElement).readOnly), true);
  await vic.bringToFront();
  await vic.click('#cell-r3-c2');
  await vic.keyboard.type('hacked');
  assert.equal(await vic.$eval('#cell-r3-c2', (el) => (el as HTMLInputElement).value), 'draft');
  const refused = await vic.evaluate(() => {
    const table = (window as unknown as { moodioTable: { send(type: string, payload: unknown): void } }).moodioTable;
    try {
      table.send('pt_cell_updated', { id: 'r3:c2', value: 'hacked' });
      return 'sent';
    } catch (err) {
      return (err as { code: string }).code;
    }
  });
  assert.equal(refused, 'ERR_VIEWER_MUTATION');
  // A late joiner gets the table as the editors have it.
  const dan = await openCounted('Dan');
  await dan.waitForFunction(() => document.body.hasAttribute('data-table-synced'), undefined, { timeout: 15_000 });
  assert.deepEqual(
    await dan.$$eval('#sheet input', (els) => els.map((el) => (el as HTMLInputElement).value)),
    await alice.$$eval('#sheet input', (els) => els.map((el) => (el as HTMLInputElement).value)),
  );
  assert.equal(await alice.$eval('#cell-r3-c2', (el) => (el as HTMLInputElement).value), 'draft', "the viewer's edit reached nobody");

  // One socket per window, on the multiplexed route, for both topics.
  for (const [page, urls] of sockets) assert.deepEqual(urls, ['/ws/connection'], await page.title());
  mkdirSync(ARTIFACTS, { recursive: true });
  await bob.screenshot({ path: new URL('demo-table.png', ARTIFACTS).pathname });
  for (const page of [alice, bob, vic, dan]) await page.context().close();
  assert.deepEqual(failures, []);
});

test('three windows of one browser keep their identities and roles across a server restart; a drag dropped while the server is down ends there for everyone; a late joiner sees every moved card', async () => {
  const desk = desktop('demo');
  // One context: the three windows share one cookie jar, as windows of one browser do.
  const context = await browser.newContext({ viewport: { width: 900, height: 500 } });
  const alice = await open('Alice', { desk, context });
  const bob = await open('Bob', { desk, context });
  const vic = await open('Vic', { desk, context, as: 'viewer' });
  const windows = { alice, bob, vic };
  const everyone = ['Alice:editor', 'Bob:editor', 'Vic:viewer'];
  const expected = (self: string) => [self, ...everyone.filter((p) => p !== self)];
  const waitPresence = (page: Page, self: string) =>
    page.waitForFunction(
      (want) =>
        [...document.querySelectorAll('#presence .person[data-name]')]
          .map((el) => `${(el as HTMLElement).dataset.name}:${(el as HTMLElement).dataset.permission}`)
          .sort()
          .join() === want,
      [...expected(self)].sort().join(),
      { timeout: 30_000 },
    );
  await Promise.all([waitPresence(alice, 'Alice:editor'), waitPresence(bob, 'Bob:editor'), waitPresence(vic, 'Vic:viewer')]);

  // Bob moves asset-2 while connected.
  await drag(bob, 'asset-2', 150, 100);
  const bobMoved = await position(bob, 'asset-2');
  await waitPosition(alice, 'asset-2', bobMoved);

  // Alice starts dragging asset-3 while connected...
  await alice.bringToFront();
  const box = (await alice.locator('#asset-3').boundingBox())!;
  let x = box.x + 60;
  let y = box.y + 40;
  await alice.mouse.move(x, y);
  await alice.mouse.down();
  await alice.mouse.move((x -= 40), (y += 30), { steps: 5 });
  await bob.waitForFunction(() => document.querySelector('#asset-3')?.getAttribute('data-dragger') === 'Alice', undefined, { timeout: 10_000 });

  // ...the server goes down: each window says so, presence is unknown, cards are frozen.
  const port = server.port;
  await server.stop();
  for (const page of Object.values(windows)) {
    await page.locator('#banner').waitFor({ state: 'visible', timeout: 15_000 });
    assert.match((await page.textContent('#banner')) ?? '', /Disconnected/);
    await page.locator('#banner button', { hasText: 'Retry now' }).waitFor();
    assert.equal(await page.$eval('#presence', (el) => el.hasAttribute('data-unknown')), true);
    assert.equal(await page.locator('#presence .person[data-name]').count(), 1, 'only this window is known');
  }
  const bobBefore = await position(bob, 'asset-1');
  await drag(bob, 'asset-1', 120, 80);
  assert.deepEqual(await position(bob, 'asset-1'), bobBefore, 'a card cannot be picked up while disconnected');

  // Alice's drag goes on offline (a hundred pointer moves) and is dropped: no error, no backlog.
  await alice.bringToFront();
  for (let i = 0; i < 10; i++) await alice.mouse.move((x += 12), (y += 7), { steps: 10 });
  await alice.mouse.up();
  const dropped = await position(alice, 'asset-3');
  assert.equal(
    await alice.evaluate(() => (window as unknown as { moodioDesk: { queued: number } }).moodioDesk.queued),
    2,
    'the newest asset_dragging and the asset_moved, nothing more',
  );

  // "Retry now" starts an attempt at once (clicked while a retry is scheduled).
  const clicked = await alice.waitForFunction(
    () => {
      const w = window as unknown as { moodio: { nextRetryInMs: number | null }; moodioRetries: unknown[] };
      if (w.moodio.nextRetryInMs === null) return false;
      const before = w.moodioRetries.length;
      (document.getElementById('retry') as HTMLButtonElement).click();
      return { before };
    },
    undefined,
    { timeout: 15_000 },
  );
  const { before } = (await clicked.jsonValue()) as { before: number };
  assert.equal(
    await alice.evaluate((i) => (window as unknown as { moodioRetries: { inMs: number }[] }).moodioRetries[i]?.inMs, before),
    0,
    'the click asked for an attempt at once',
  );

  // The server comes back on the same port: every window finds it, as itself, in sync.
  await serve(port);
  for (const page of Object.values(windows)) {
    await waitOpen(page);
    await page.locator('#banner').waitFor({ state: 'hidden' });
    await page.waitForFunction(() => document.body.hasAttribute('data-synced'), undefined, { timeout: 15_000 });
  }
  await Promise.all([waitPresence(alice, 'Alice:editor'), waitPresence(bob, 'Bob:editor'), waitPresence(vic, 'Vic:viewer')]);
  for (const [name, page] of Object.entries(windows)) {
    assert.equal(await page.textContent('#me'), name === 'vic' ? 'Vic (viewer)' : `${name[0]!.toUpperCase()}${name.slice(1)} (editor)`);
  }
  assert.equal(await vic.evaluate(() => document.body.classList.contains('viewer')), true);

  // The card dropped offline is where Alice dropped it, for everyone, without a stale outline.
  for (const page of [bob, vic]) {
    await waitPosition(page, 'asset-3', dropped);
    await page.waitForFunction(() => !document.querySelector('#asset-3.remote'), undefined, { timeout: 10_000 });
  }
  assert.deepEqual(await position(alice, 'asset-3'), dropped);

  const positions = async (page: Page) => Promise.all(['asset-1', 'asset-2', 'asset-3', 'asset-4'].map((id) => position(page, id)));
  const final = await positions(alice);
  assert.deepEqual(final[1], bobMoved);

  // A window that joins late asks the room and shows every card where the others have it.
  const dan = await open('Dan', { desk, context });
  await dan.waitForFunction(() => document.body.hasAttribute('data-synced'), undefined, { timeout: 15_000 });
  assert.deepEqual(await positions(dan), final);
  assert.deepEqual(await positions(bob), final);
  assert.deepEqual(await positions(vic), final);

  for (const page of [alice, bob, vic, dan]) {
    assert.deepEqual(
      await page.evaluate(() => (window as unknown as { moodioErrors: string[] }).moodioErrors),
      [],
      'no error frame (rate_limited…) after the reconnect',
    );
  }
  await context.close();
  assert.deepEqual(
    failures.filter((f) => !f.includes('/ws/connection')),
    [],
  );
});

test('a window that drops and returns catches up from the history: the move and the edit made meanwhile reach it, with no state request', async () => {
  const desk = desktop('demo');
  // Rita's sockets go through a route: passed to the server, until `holding`, when they open and are never answered.
  let holding = false;
  const held: WebSocketRoute[] = [];
  const route = (page: Page) =>
    page.routeWebSocket(/\/ws\/connection/, (ws) => {
      if (holding) held.push(ws);
      else ws.connectToServer();
    });
  const rita = await open('Rita', { desk, before: route });
  const sam = await open('Sam', { desk });
  for (const page of [rita, sam]) {
    await page.waitForFunction(() => document.body.hasAttribute('data-synced') && document.body.hasAttribute('data-table-synced'), undefined, {
      timeout: 15_000,
    });
  }
  await rita.locator('#presence .person[data-name="Sam"]').waitFor();
  // Sam's page notes the state requests it gets; Rita's, how her rejoins went.
  await sam.evaluate(() => {
    const w = window as unknown as { moodioDesk: { onEvent(t: string, h: (e: { firstName: string }) => void): void }; requests: string[] };
    w.requests = [];
    w.moodioDesk.onEvent('desktop_state_request', (e) => w.requests.push(e.firstName));
  });
  await rita.evaluate(() => {
    const w = window as unknown as { moodioDesk: { on(n: string, h: (v: unknown) => void): void }; rejoins: string[] };
    w.rejoins = [];
    w.moodioDesk.on('recovered', (r) => w.rejoins.push(`recovered ${(r as { count: number }).count}`));
    w.moodioDesk.on('gap', () => w.rejoins.push('gap'));
  });
  const syncCounts = (page: Page) =>
    page.evaluate(() => {
      const sync = (window as unknown as { moodioSync: Record<'desk' | 'table', { requests: number; recovered: number }> }).moodioSync;
      return { desk: sync.desk.requests, table: sync.table.requests, recovered: sync.desk.recovered + sync.table.recovered };
    });
  assert.deepEqual(await syncCounts(rita), { desk: 1, table: 1, recovered: 0 }, 'one request per topic, on the first subscribe');

  // Rita is sent away, and every reconnect of hers meets a socket that opens and never answers.
  holding = true;
  const { token: obsToken } = (await (await fetch(`http://127.0.0.1:${server.port}/demo/token?name=Obs`)).json()) as { token: string };
  const { client: observer } = await join(cleanup, server.wsUrl(desk), { token: obsToken, via: 'protocol' });
  assert.equal((await api(server, 'POST', 'users/demo-rita/disconnect')).status, 202);
  await rita.waitForFunction(() => document.body.dataset.state !== 'open', undefined, { timeout: 15_000 });
  await sam.locator('#presence .person[data-name="Rita"]').waitFor({ state: 'detached' });

  // Meanwhile Sam edits a cell and moves a card; a legacy observer of the
  // desktop sees the drop land (the edit went first on Sam's one socket, to
  // the same single shard, so it is in the table's history by then).
  await sam.locator('#cell-r2-c2').fill('approved');
  await drag(sam, 'asset-4', 180, 60);
  const moved = await position(sam, 'asset-4');
  while ((await observer.next(15_000)).type !== 'asset_moved');

  // Rita comes back: the held socket closes (1012), and the route is gone.
  holding = false;
  for (const ws of held) await ws.close({ code: 1012, reason: 'restart' });
  await waitOpen(rita);
  await waitPosition(rita, 'asset-4', moved);
  await rita.waitForFunction(() => (document.getElementById('cell-r2-c2') as HTMLInputElement).value === 'approved', undefined, { timeout: 15_000 });
  await rita.waitForFunction(
    () => {
      const sync = (window as unknown as { moodioSync: Record<'desk' | 'table', { recovered: number }> }).moodioSync;
      return sync.desk.recovered + sync.table.recovered === 2;
    },
    undefined,
    { timeout: 15_000 },
  );
  const rejoins = await rita.evaluate(() => (window as unknown as { rejoins: string[] }).rejoins);
  assert.ok(rejoins.length === 1 && /^recovered [1-9]/.test(rejoins[0]!), `the desktop recovered the drag: ${JSON.stringify(rejoins)}`);
  assert.deepEqual(await syncCounts(rita), { desk: 1, table: 1, recovered: 2 }, 'both topics recovered; no new state request');
  assert.deepEqual(await sam.evaluate(() => (window as unknown as { requests: string[] }).requests), [], 'Sam was asked for nothing');
  await Promise.all([rita.context().close(), sam.context().close()]);
  assert.deepEqual(failures, []);
});

test('at 420 px the header keeps one line, the presence bar shows everyone, and a card moved past the edge can be reached', async () => {
  const desk = desktop('demo');
  const wide = await open('Ana', { desk });
  const others = await Promise.all(['Bartholomew', 'Cordelia', 'Dmitri'].map((name) => open(name, { desk, as: 'viewer' })));
  await drag(wide, 'asset-4', 600, 150);
  const far = await position(wide, 'asset-4');

  const narrow = await open('Maximiliana', { desk, width: 420 });
  await narrow.waitForFunction(() => document.querySelectorAll('#presence .person[data-name]').length === 5, undefined, { timeout: 15_000 });
  await narrow.waitForFunction(() => document.body.hasAttribute('data-synced'), undefined, { timeout: 15_000 });
  await waitPosition(narrow, 'asset-4', far);
  mkdirSync(ARTIFACTS, { recursive: true });
  await narrow.screenshot({ path: new URL('demo-narrow.png', ARTIFACTS).pathname });

  const layout = await narrow.evaluate(() => {
    const line = ['header h1', '#me', '#state'].map((s) => document.querySelector(s)!.getBoundingClientRect());
    const people = [...document.querySelectorAll('#presence .person')].map((el) => el.getBoundingClientRect());
    const bar = document.getElementById('presence')!;
    return {
      oneLine: Math.max(...line.map((r) => r.top)) < Math.min(...line.map((r) => r.bottom)) && line.every((r) => r.height < 30),
      heights: line.map((r) => Math.round(r.height)),
      pageOverflow: document.documentElement.scrollWidth - window.innerWidth,
      barOverflow: bar.scrollWidth - bar.clientWidth,
      peopleInside: people.every((r) => r.left >= 0 && r.right <= window.innerWidth && r.width > 0),
    };
  });
  assert.ok(layout.oneLine, `title, name and state side by side, each on one line (heights ${layout.heights})`);
  assert.ok(layout.pageOverflow <= 0, 'the page does not scroll sideways');
  assert.ok(layout.barOverflow <= 0, 'the presence bar clips nobody');
  assert.ok(layout.peopleInside, 'every person is inside the window');

  // asset-4 sits past the right edge: the desktop scrolls to it, and it can be grabbed there.
  await narrow.locator('#asset-4').scrollIntoViewIfNeeded();
  const reachable = await narrow.$eval('#asset-4', (el) => {
    const r = el.getBoundingClientRect();
    return r.right <= window.innerWidth && document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === el;
  });
  assert.ok(reachable, 'asset-4 can be scrolled to and grabbed');
  await drag(narrow, 'asset-4', -80, 0);
  const back = await position(narrow, 'asset-4');
  assert.notDeepEqual(back, far);
  await waitPosition(wide, 'asset-4', back);

  for (const page of [wide, narrow, ...others]) await page.context().close();
  assert.deepEqual(
    failures.filter((f) => !f.includes('/ws/connection')),
    [],
  );
});

/** Alice and Bob (editors) and Vic (a viewer) in one desktop, in sync; `setRole` changes a role through the server API. */
async function threeWithRoles() {
  const desk = desktop('demo');
  const alice = await open('Alice', { desk });
  const bob = await open('Bob', { desk });
  const vic = await open('Vic', { desk, as: 'viewer' });
  const windows = [alice, bob, vic];
  /** Every window's presence bar lists exactly `want` (name:permission), in any order. */
  const everywhere = (want: string[]) =>
    Promise.all(
      windows.map((page) =>
        page.waitForFunction(
          (want) =>
            [...document.querySelectorAll('#presence .person[data-name]')]
              .map((el) => `${(el as HTMLElement).dataset.name}:${(el as HTMLElement).dataset.permission}`)
              .sort()
              .join() === want,
          [...want].sort().join(),
          { timeout: 15_000 },
        ),
      ),
    );
  await everywhere(['Alice:editor', 'Bob:editor', 'Vic:viewer']);
  for (const page of windows) await page.waitForFunction(() => document.body.hasAttribute('data-synced'), undefined, { timeout: 15_000 });
  /** A user's id, as Alice's SDK knows it from presence. */
  const userIdOf = (name: string) =>
    alice.evaluate(
      (name) =>
        [...(window as unknown as { moodioDesk: { sessions: Map<string, { firstName: string; userId: string }> } }).moodioDesk.sessions.values()].find(
          (s) => s.firstName === name,
        )!.userId,
      name,
    );
  const setRole = async (name: string, permission: string) => {
    const res = await api(server, 'PUT', `desktops/${desk}/permissions/${encodeURIComponent(await userIdOf(name))}`, { permission });
    assert.equal(res.status, 202, JSON.stringify(res.body));
  };

  return { alice, bob, vic, windows, everywhere, setRole };
}

test('a role changed through the server API shows live: a viewer turned editor drags at once, an editor turned viewer cannot', async () => {
  const { alice, bob, vic, windows, everywhere, setRole } = await threeWithRoles();
  // Vic, a viewer, cannot move a card...
  const start = await position(vic, 'asset-2');
  await drag(vic, 'asset-2', 160, 90);
  assert.deepEqual(await position(vic, 'asset-2'), start);
  // ...until the API makes Vic an editor: every window shows it, and Vic's next drag moves the card for the others.
  await setRole('Vic', 'editor');
  await everywhere(['Alice:editor', 'Bob:editor', 'Vic:editor']);
  assert.equal(await vic.textContent('#me'), 'Vic (editor)');
  assert.equal(await vic.evaluate(() => document.body.classList.contains('viewer')), false);
  assert.match((await vic.textContent('#help')) ?? '', /Drag a card/);
  await drag(vic, 'asset-2', 160, 90);
  const moved = await position(vic, 'asset-2');
  assert.notDeepEqual(moved, start);
  await waitPosition(alice, 'asset-2', moved);
  await waitPosition(bob, 'asset-2', moved);

  // Bob, turned viewer, can no longer pick a card up.
  await setRole('Bob', 'viewer');
  await everywhere(['Alice:editor', 'Bob:viewer', 'Vic:editor']);
  assert.equal(await bob.textContent('#me'), 'Bob (viewer)');
  const bobStart = await position(bob, 'asset-3');
  await drag(bob, 'asset-3', 120, 60);
  assert.deepEqual(await position(bob, 'asset-3'), bobStart, "a viewer's page does not move it");
  for (const page of windows) await page.context().close();
});

test('a revoked window says so and stops; the others see it leave', async () => {
  const { alice, bob, vic, windows, setRole } = await threeWithRoles();
  // Vic's access is revoked: Vic's window says so, the others see Vic leave.
  await setRole('Vic', 'none');
  await vic.waitForFunction(() => document.body.classList.contains('revoked') && document.body.dataset.state === 'closed', undefined, { timeout: 15_000 });
  assert.equal(await vic.isVisible('#banner'), true);
  assert.match((await vic.textContent('#banner')) ?? '', /Access revoked/);
  assert.equal(await vic.isVisible('#retry'), false, 'no "Retry now": the revocation is final');
  assert.equal(await vic.textContent('#state'), 'revoked');
  assert.deepEqual(await presence(vic), ['Vic:none']);
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => !document.querySelector('#presence .person[data-name="Vic"]'), undefined, { timeout: 15_000 });
  }
  assert.deepEqual((await presence(alice)).sort(), ['Alice:editor', 'Bob:editor']);
  const vicBefore = await position(vic, 'asset-1');
  await drag(vic, 'asset-1', 100, 100);
  assert.deepEqual(await position(vic, 'asset-1'), vicBefore, 'a revoked window moves nothing');
  assert.equal(
    await vic.evaluate(() => (window as unknown as { moodio: { state: string; nextRetryInMs: number | null } }).moodio.nextRetryInMs),
    null,
    'and does not reconnect',
  );

  mkdirSync(ARTIFACTS, { recursive: true });
  await vic.screenshot({ path: new URL('demo-revoked.png', ARTIFACTS).pathname });
  await alice.screenshot({ path: new URL('demo-roles.png', ARTIFACTS).pathname });
  for (const page of windows) await page.context().close();
  assert.deepEqual(
    failures.filter((f) => !f.includes('/ws/connection')),
    [],
  );
});
