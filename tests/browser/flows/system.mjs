// The whole-system flow through the demo stack (Envoy with all four filters →
// edge → connector tunnel → apps), in a real Chromium. Run by
// tests/e2e/tests/system.rs, or by hand against `make demo`:
//
//   node tests/browser/flows/system.mjs --http 10000
//
// Exits non-zero with the failed check on stderr; prints a JSON summary on success.
import assert from 'node:assert/strict';
import { parseArgs } from 'node:util';
import { launch, signIn, pageJson, idpPage, cookiesFor } from '../lib.mjs';

const { values: args } = parseArgs({ options: { http: { type: 'string', default: '10000' } } });
const app = `http://127.0.0.1:${args.http}`;
const admin = `http://admin.localhost:${args.http}`;
const summary = {};

/** Signs in (again) until the browser has left the provider: a step-up may send it back for the code. */
async function signInThrough(page, creds) {
  const steps = [];
  for (let i = 0; i < 4; i += 1) {
    await page.waitForLoadState('load');
    if ((await idpPage(page)) === null) break;
    const r = await signIn(page, creds);
    steps.push(...r.steps);
  }
  await page.waitForLoadState('load');
  return steps;
}

// 1. robots.txt needs no sign-in and never reaches an app.
{
  const r = await fetch(`${app}/robots.txt`, { redirect: 'manual' });
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'User-agent: *\nDisallow: /\n');
  assert.equal(r.headers.get('x-robots-tag'), 'noindex, nofollow');
  summary.robots = 'ok';
}

// 2. Sign in, reach the app through the tunnel; the app sees the identity, not the session cookie.
{
  const b = await launch();
  try {
    await b.page.goto(`${app}/headers`);
    assert.equal(await idpPage(b.page), 'login', `expected the login page, got ${b.page.url()}`);
    await signInThrough(b.page, { user: 'alice', password: 'alice-password' });
    assert.equal(b.page.url(), `${app}/headers`);
    const seen = await pageJson(b.page);
    assert.equal(seen.app, 'Portcullis sample app', 'the response must come from the sample app (via the connector)');
    assert.equal(seen.headers['x-forwarded-user'], 'u-alice');
    assert.equal(seen.headers['x-forwarded-email'], 'alice@example.com');
    const browserCookies = (await cookiesFor(b.context, `${app}/`)).map((c) => c.name);
    assert.ok(browserCookies.includes('__Host-portcullis'), `the browser holds the session cookie: ${browserCookies}`);
    const appCookies = Object.keys(seen.cookies ?? {});
    assert.ok(!appCookies.some((n) => n.toLowerCase().includes('portcullis')), `the app received a proxy cookie: ${appCookies}`);
    assert.ok(!('x-portcullis-identity' in seen.headers));
    summary.app_headers = Object.fromEntries(Object.entries(seen.headers).filter(([k]) => k.startsWith('x-forwarded-')));
    summary.app_cookies = appCookies;
    summary.assertion = seen.headers['x-portcullis-jwt-assertion'];

    // The same session is no good at the admin app (another app id in the sealed cookie's AAD,
    // and another host): it asks for its own sign-in.
    await b.page.goto(`${admin}/`);
    await signInThrough(b.page, { user: 'alice', password: 'alice-password' });
    assert.equal(b.page.url(), `${admin}/`);
    // alice has no second factor: /admin is refused after one step-up attempt, not looped.
    const resp = await b.page.goto(`${admin}/admin`);
    await signInThrough(b.page, { user: 'alice', password: 'alice-password' });
    const text = await b.page.content();
    assert.ok(/mfa_required/.test(text), `alice on /admin should be denied with mfa_required, got ${b.page.url()}: ${text.slice(0, 300)}`);
    summary.alice_admin = 'mfa_required';
    void resp;
  } finally {
    await b.close();
  }
}

// 3. Step-up: erin signs in with a password; /admin asks the provider for MFA; she gives the code and gets in.
{
  const b = await launch();
  try {
    await b.page.goto(`${admin}/`);
    const first = await signInThrough(b.page, { user: 'erin', password: 'erin-password', otp: '123456' });
    assert.deepEqual(first, ['login'], 'the app itself needs only a password');
    await b.page.goto(`${admin}/.auth/me`);
    assert.deepEqual((await pageJson(b.page)).amr, ['pwd']);
    await b.page.goto(`${admin}/admin`);
    assert.notEqual(await idpPage(b.page), null, `/admin must send erin back to the provider, got ${b.page.url()}`);
    const second = await signInThrough(b.page, { user: 'erin', password: 'erin-password', otp: '123456' });
    assert.ok(second.includes('otp'), `the step-up must ask for the code: ${second}`);
    assert.equal(b.page.url(), `${admin}/admin`);
    assert.match(await b.page.content(), /Portcullis admin app/);
    await b.page.goto(`${admin}/.auth/me`);
    const me = await pageJson(b.page);
    assert.ok(me.amr.includes('mfa'), `amr after step-up: ${me.amr}`);
    summary.step_up = { first, second, amr: me.amr };
  } finally {
    await b.close();
  }
}

// 4. dave is not assigned to the admin app.
{
  const b = await launch();
  try {
    await b.page.goto(`${admin}/`);
    await signInThrough(b.page, { user: 'dave', password: 'dave-password' });
    assert.match(await b.page.content(), /not_assigned/);
    summary.dave = 'not_assigned';
  } finally {
    await b.close();
  }
}
process.stdout.write(`${JSON.stringify(summary)}\n`);
