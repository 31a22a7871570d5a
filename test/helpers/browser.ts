// Debian's Chromium, headless, driven by playwright-core (which never downloads a browser of its own).
// The flags keep it off the network: on these machines its background connections are refused.
import type { Browser } from 'playwright-core';
import { hasTool } from './tools';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** A headless Chromium, or undefined when none is installed (a failure under CI, see hasTool). */
export async function launchChromium(): Promise<Browser | undefined> {
  if (!hasTool(CHROMIUM)) return undefined;
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ], // playwright gives each launch a new empty profile directory of its own

  });
}
