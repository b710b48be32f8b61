// Real-browser helpers for Portcullis end-to-end tests: Debian's chromium driven by playwright-core,
// plus the steps on the demo provider's pages (tests/idp). See README.md.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Path of the browser: $PORTCULLIS_CHROMIUM, else Debian's /usr/bin/chromium. */
export const CHROMIUM_PATH = process.env.PORTCULLIS_CHROMIUM || '/usr/bin/chromium';

/** Command-line switches for a quiet, hermetic headless chromium (no network of its own). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/** Default timeout (ms) for each page action and wait. */
export const DEFAULT_TIMEOUT_MS = 15_000;

/**
 * Launches chromium with a fresh temporary user-data-dir and returns its one browser context
 * (a persistent context: cookies live in that dir until close). Options:
 * `headless` (default true unless $PORTCULLIS_HEADED=1), `ignoreHTTPSErrors` (default true: the demo
 * uses a locally generated certificate), `args` (extra switches), `timeout` (ms per action).
 * Returns `{ context, page, userDataDir, close() }`; `close()` also removes the directory.
 */
export async function launch({
  headless = process.env.PORTCULLIS_HEADED !== '1',
  ignoreHTTPSErrors = true,
  args = [],
  timeout = DEFAULT_TIMEOUT_MS,
} = {}) {
  const userDataDir = await mkdtemp(join(tmpdir(), 'portcullis-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless,
      args: [...CHROMIUM_ARGS, ...args],
      ignoreHTTPSErrors,
      timeout: 30_000,
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true });
    throw new Error(`cannot start ${CHROMIUM_PATH} (install it: apt-get install -y chromium): ${err.message}`);
  }
  context.setDefaultTimeout(timeout);
  context.setDefaultNavigationTimeout(timeout);
  const page = context.pages()[0] ?? await context.newPage();
  let closed = false;
  return {
    context,
    page,
    userDataDir,
    async close() {
      if (closed) return;
      closed = true;
      await context.close().catch(() => {});
      await rm(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Clicks `selector` and waits until the main frame has navigated and the new page has loaded. */
export async function clickAndWaitForLoad(page, selector) {
  const navigated = page.waitForEvent('framenavigated', { predicate: (f) => f === page.mainFrame() });
  await page.click(selector);
  await navigated;
  await page.waitForLoadState('load');
}

/** Which provider page is shown: 'login', 'otp', 'logout', 'logged-out', 'error', or null. */
export async function idpPage(page) {
  const main = page.locator('main[data-idp][data-page]');
  if ((await main.count()) === 0) return null;
  const id = await main.first().getAttribute('data-page');
  return id ? id.replace(/-page$/, '') : null;
}

/** Error raised when the provider refuses a step of signIn; `code` is 'bad_credentials', 'bad_otp', 'otp_required' or 'idp_error'. */
export class SignInError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'SignInError';
    this.code = code;
  }
}

/**
 * Signs in on the demo provider's pages. Call it once the navigation that may lead to the provider
 * has loaded (`page.goto` waits for that). The page is then on the provider's login page, on its
 * one-time code page (step-up with an existing session), or already back on the application
 * (the provider's session sufficed: nothing is filled in).
 * `otp` is needed for MFA users (demo code 123456). Resolves when the browser has left the
 * provider (usually landed back on the application) and returns
 * `{ url, steps }` where steps lists the pages filled in, e.g. ['login', 'otp'], or [] for none.
 */
export async function signIn(page, { user, password, otp } = {}) {
  await page.waitForLoadState('load');
  const steps = [];
  for (let i = 0; i < 4; i += 1) {
    const which = await idpPage(page);
    if (which === 'login') {
      if (steps.includes('login')) {
        const msg = await page.locator('#login-error').textContent().catch(() => '');
        throw new SignInError('bad_credentials', `sign-in refused for ${user}: ${msg}`);
      }
      if (user === undefined || password === undefined) throw new SignInError('bad_credentials', 'login page shown but no user/password given');
      await page.fill('#username', user);
      await page.fill('#password', password);
      steps.push('login');
      await clickAndWaitForLoad(page, '#login-submit');
    } else if (which === 'otp') {
      if (steps.includes('otp')) {
        const msg = await page.locator('#otp-error').textContent().catch(() => '');
        throw new SignInError('bad_otp', `one-time code refused for ${user}: ${msg}`);
      }
      if (otp === undefined) throw new SignInError('otp_required', `the provider asks ${user ?? 'the user'} for a one-time code but none was given`);
      await page.fill('#otp', String(otp));
      steps.push('otp');
      await clickAndWaitForLoad(page, '#otp-submit');
    } else if (which === 'error') {
      const code = await page.locator('#error-code').textContent();
      const desc = await page.locator('#error-description').textContent();
      throw new SignInError('idp_error', `provider error ${code}: ${desc}`);
    } else {
      return { url: page.url(), steps };
    }
  }
  throw new SignInError('idp_error', `sign-in did not finish; still on ${page.url()}`);
}

/** Presses "Cancel" on the provider's login or OTP page (the client then gets error=access_denied). */
export async function cancelSignIn(page) {
  await page.waitForSelector('#login-cancel, #otp-cancel');
  const sel = (await page.locator('#login-cancel').count()) ? '#login-cancel' : '#otp-cancel';
  await clickAndWaitForLoad(page, sel);
  return page.url();
}

/** Confirms the provider's RP-initiated logout page; resolves after the next page has loaded. */
export async function confirmLogout(page) {
  await page.waitForSelector('#logout-confirm');
  await clickAndWaitForLoad(page, '#logout-confirm');
  return page.url();
}

/** The browser's cookies that would be sent to `url`, as playwright cookie objects. */
export async function cookiesFor(context, url) {
  return context.cookies(url);
}

/** One cookie by name for `url`, or undefined. */
export async function cookieNamed(context, url, name) {
  return (await context.cookies(url)).find((c) => c.name === name);
}

/** Opens `url` and returns the response's status and headers and the page (navigation follows redirects). */
export async function open(page, url) {
  const response = await page.goto(url, { waitUntil: 'load' });
  return { status: response?.status() ?? 0, headers: response ? await response.allHeaders() : {}, url: page.url() };
}

/** Parses the current page's text as JSON (chromium shows a JSON response as text). */
export async function pageJson(page) {
  const text = await page.evaluate(() => document.body?.innerText ?? '');
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`page ${page.url()} is not JSON: ${text.slice(0, 300)}`);
  }
}

/** Saves a PNG screenshot of the page (for humans reviewing a failed test). */
export async function screenshot(page, path) {
  await page.screenshot({ path, fullPage: true });
  return path;
}
