/**
 * Debian's Chromium through playwright-core, headless, for the tests that
 * need a real browser. When it cannot start, the error says how to install it.
 */
import { chromium, type Browser } from 'playwright-core';
import type { Scope } from './scope.ts';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Launch Chromium; closed after `t`. */
export async function launchChromium(t: Scope): Promise<Browser> {
  let browser: Browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (err) {
    throw new Error(
      `Chromium could not start from ${CHROMIUM}: ${(err as Error).message.split('\n')[0]}\n` +
        'Install it with `sudo apt-get install -y chromium` (`npm test` does this through scripts/test-system-packages when apt is usable), or set CHROMIUM_PATH to a Chromium binary.',
    );
  }
  t.after(() => browser.close());
  return browser;
}
