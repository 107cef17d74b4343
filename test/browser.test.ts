/// <reference lib="dom" />
/**
 * The demo desktop in a real browser (Debian's Chromium through
 * playwright-core): two windows see each other, a drag in one moves the card
 * in the other, the server drops a viewer's forced move, and closing a
 * window removes it from the other's presence bar. Screenshots land in
 * test-artifacts/ (not committed). Waits are on conditions, with generous
 * limits: Chromium shares 2 cores with the server and other tests.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as pathJoin } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Cleanup } from './helpers/scope.ts';
import { startServer, type ServerProcess } from './helpers/server.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = new URL('../test-artifacts/', import.meta.url);
const cleanup = new Cleanup();
let browser: Browser;
let server: ServerProcess;

before(async () => {
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (err) {
    throw new Error(
      `Chromium could not start from ${CHROMIUM}: ${(err as Error).message.split('\n')[0]}\n` +
        'Install it with `apt-get install -y chromium` (.ci/run does this), or set CHROMIUM_PATH to a Chromium binary.',
    );
  }
  cleanup.after(() => browser.close());
  const secretFile = pathJoin(mkdtempSync(pathJoin(tmpdir(), 'moodio-rt-demo-')), 'secret');
  server = await startServer(cleanup, { workers: 1, args: ['--dev'], env: { JWT_ACCESS_SECRET: undefined, MOODIO_RT_DEV_SECRET_FILE: secretFile } });
});
after(() => cleanup.run());

async function open(name: string, as = 'editor'): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 900, height: 500 } });
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${server.port}/demo?name=${name}${as === 'viewer' ? '&as=viewer' : ''}`);
  await page.waitForFunction(() => document.body.dataset.state === 'open');
  return page;
}

const position = (page: Page, id: string) =>
  page.$eval(`#${id}`, (el) => [(el as HTMLElement).style.left, (el as HTMLElement).style.top] as [string, string]);

async function drag(page: Page, id: string, dx: number, dy: number): Promise<void> {
  const box = (await page.locator(`#${id}`).boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + dx, box.y + box.height / 2 + dy, { steps: 12 });
  await page.mouse.up();
}

test('two windows share a desktop: presence, live drags, viewers, leaving', async () => {
  const alice = await open('Alice');
  const bob = await open('Bob');
  await alice.locator('#presence .person[data-name="Bob"]').waitFor();
  await bob.locator('#presence .person[data-name="Alice"]').waitFor();

  // Bob's page records every relayed event (the SDK's client is window.moodio).
  await bob.evaluate(() => {
    const w = window as unknown as { moodio: { onAnyEvent(h: (e: unknown) => void): void }; seen: { type: string; userId: string; payload?: unknown }[] };
    w.seen = [];
    w.moodio.onAnyEvent((e) => w.seen.push(e as never));
  });
  // A drag in Alice's window moves the card in Bob's.
  const start = await position(bob, 'asset-1');
  await drag(alice, 'asset-1', 160, 90);
  const moved = await position(alice, 'asset-1');
  assert.notDeepEqual(moved, start);
  await bob.waitForFunction(
    ([x, y]) => (document.getElementById('asset-1') as HTMLElement).style.left === x && (document.getElementById('asset-1') as HTMLElement).style.top === y,
    moved,
    { timeout: 10_000 },
  );

  // A viewer is listed as such; its page does not move cards, and the server
  // drops a move the page is made to send anyway.
  const vic = await open('Vic', 'viewer');
  await alice.locator('#presence .person[data-name="Vic"][data-permission="viewer"]').waitFor();
  const before2 = await position(alice, 'asset-2');
  await drag(vic, 'asset-2', 200, 120);
  assert.deepEqual(await position(vic, 'asset-2'), before2, "the viewer's page does not move it");
  // Forced through the SDK, then a type viewers may send, on the same socket:
  // the server handles a socket's frames in order, so once Bob has the
  // marker, the move before it was either relayed already or dropped.
  await vic.evaluate(() => {
    const client = (window as unknown as { moodio: { send(type: string, payload: unknown): void } }).moodio;
    client.send('asset_moved', { id: 'asset-2', x: 999, y: 999 });
    client.send('cursor', { marker: true });
  });
  await bob.waitForFunction(() => (window as unknown as { seen: { type: string }[] }).seen.some((e) => e.type === 'cursor'), undefined, { timeout: 10_000 });
  const fromVic = await bob.evaluate(() => (window as unknown as { seen: { type: string; firstName?: string }[] }).seen.filter((e) => e.firstName === 'Vic').map((e) => e.type));
  assert.deepEqual(fromVic, ['cursor'], "the viewer's forced move was dropped by the server");
  assert.deepEqual(await position(bob, 'asset-2'), before2, 'nothing moved asset-2 for the others');

  mkdirSync(ARTIFACTS, { recursive: true });
  await alice.screenshot({ path: new URL('demo-alice.png', ARTIFACTS).pathname });
  await bob.screenshot({ path: new URL('demo-bob.png', ARTIFACTS).pathname });

  // Closing Bob's window removes him from Alice's presence bar.
  await bob.context().close();
  await alice.locator('#presence .person[data-name="Bob"]').waitFor({ state: 'detached' });
  assert.equal(await alice.locator('#presence .person').count(), 2, 'Alice herself and Vic');
});
