// End-to-end sign-in through stock Envoy with the preauth filter, the real
// OpenID provider and a real Chromium. Run by tests/e2e/tests/preauth_browser.rs
// (which starts Envoy, the provider and the sample app on free ports):
//
//   node tests/browser/flows/preauth.mjs --app http://127.0.0.1:PORT --issuer http://127.0.0.1:IDP
//
// Exits non-zero with the failed check on stderr; prints a JSON summary on success.
import assert from 'node:assert/strict';
import { parseArgs } from 'node:util';
import { launch, signIn, pageJson, cookieNamed, confirmLogout, idpPage } from '../lib.mjs';

const { values: args } = parseArgs({ options: { app: { type: 'string' }, issuer: { type: 'string' } } });
assert.ok(args.app && args.issuer, 'usage: preauth.mjs --app URL --issuer URL');
const app = args.app.replace(/\/$/, '');
const summary = {};

const b = await launch();
try {
  // Capture the authorization requests the filter sends the browser to.
  const authRequests = [];
  b.context.on('request', (r) => { if (r.url().startsWith(`${args.issuer}/auth`)) authRequests.push(new URL(r.url())); });

  // 1. No session: the app is not reached; the browser lands on the provider's login page.
  await b.page.goto(`${app}/headers?from=e2e`);
  assert.equal(await idpPage(b.page), 'login', `expected the provider's login page, got ${b.page.url()}`);
  const auth = authRequests[0];
  assert.ok(auth, 'no authorization request seen');
  const q = auth.searchParams;
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('client_id'), 'portcullis-demo');
  assert.equal(q.get('code_challenge_method'), 'S256');
  assert.match(q.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.ok((q.get('state') ?? '').length >= 16, 'state too short');
  assert.ok((q.get('nonce') ?? '').length >= 16, 'nonce too short');
  assert.equal(q.get('redirect_uri'), `${app}/.auth/callback`);
  summary.authorize = Object.fromEntries(['response_type', 'code_challenge_method', 'redirect_uri', 'scope'].map((k) => [k, q.get(k)]));

  // 2. Sign in: back on the original URL, and the app sees the identity.
  await signIn(b.page, { user: 'alice', password: 'alice-password' });
  assert.equal(b.page.url(), `${app}/headers?from=e2e`, 'not back on the original URL');
  const seen = await pageJson(b.page);
  assert.equal(seen.headers['x-forwarded-user'], 'u-alice');
  assert.equal(seen.headers['x-forwarded-email'], 'alice@example.com');
  assert.equal(seen.headers['x-forwarded-preferred-username'], 'alice');
  summary.identity_headers = Object.fromEntries(Object.entries(seen.headers).filter(([k]) => k.startsWith('x-forwarded-')));

  // 3. The session cookie's attributes, as the browser stored them.
  const c = await cookieNamed(b.context, `${app}/`, '__Host-portcullis');
  assert.ok(c, 'no __Host-portcullis cookie');
  assert.equal(c.httpOnly, true, 'HttpOnly');
  assert.equal(c.secure, true, 'Secure');
  assert.equal(c.sameSite, 'Lax', 'SameSite');
  assert.equal(c.path, '/', 'Path');
  assert.equal(c.expires, -1, 'a session cookie (no Max-Age/Expires)');
  assert.ok(!c.domain.startsWith('.'), 'host-only (no Domain attribute)');
  assert.ok(c.value.length < 4096);
  summary.cookie = { name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite, path: c.path, size: c.value.length };
  const loginCookies = (await b.context.cookies(`${app}/`)).filter((k) => k.name.includes('-login-'));
  assert.deepEqual(loginCookies.map((k) => k.name), [], 'the login-state cookie must be cleared after the callback');

  // 4. Identity headers from the client never reach the app, in any spelling.
  await b.page.setExtraHTTPHeaders({ 'X-Forwarded-User': 'mallory', 'x-forwarded-email': 'mallory@evil', 'X-Portcullis-Identity': 'forged' });
  await b.page.goto(`${app}/headers?spoof=1`);
  const spoofed = await pageJson(b.page);
  assert.equal(spoofed.headers['x-forwarded-user'], 'u-alice');
  assert.equal(spoofed.headers['x-forwarded-email'], 'alice@example.com');
  assert.equal(spoofed.headers['x-portcullis-identity'], undefined);
  await b.page.setExtraHTTPHeaders({});

  // 5. /.auth/me shows the identity.
  await b.page.goto(`${app}/.auth/me`);
  const me = await pageJson(b.page);
  assert.equal(me.sub ?? me.identity?.sub, 'u-alice');
  summary.me = me;

  // 6. Logout clears the session and signs out at the provider; the app asks for a login again.
  await b.page.goto(`${app}/.auth/logout`);
  assert.equal(await idpPage(b.page), 'logout', `expected the provider's logout page, got ${b.page.url()}`);
  await confirmLogout(b.page);
  assert.equal(await cookieNamed(b.context, `${app}/`, '__Host-portcullis'), undefined, 'session cookie still present after logout');
  await b.page.goto(`${app}/headers`);
  assert.equal(await idpPage(b.page), 'login', 'after logout the app must ask for a login again');
  summary.logout = 'ok';
} finally {
  await b.close();
}

// 7. Two logins in parallel tabs do not break each other.
const t = await launch();
try {
  const tabA = t.page;
  const tabB = await t.context.newPage();
  await tabA.goto(`${app}/headers?tab=a`);
  await tabB.goto(`${app}/headers?tab=b`);
  assert.equal(await idpPage(tabA), 'login');
  assert.equal(await idpPage(tabB), 'login');
  await signIn(tabB, { user: 'alice', password: 'alice-password' });
  await signIn(tabA, { user: 'alice', password: 'alice-password' });
  assert.equal(tabA.url(), `${app}/headers?tab=a`);
  assert.equal(tabB.url(), `${app}/headers?tab=b`);
  assert.equal((await pageJson(tabA)).headers['x-forwarded-user'], 'u-alice');
  assert.equal((await pageJson(tabB)).headers['x-forwarded-user'], 'u-alice');
  summary.parallel_tabs = 'ok';

  // 8. A request that is not a page navigation gets 401 JSON, not a redirect.
  for (const headers of [{ accept: 'application/json' }, { accept: 'text/html', 'x-requested-with': 'XMLHttpRequest' }]) {
    const api = await fetch(`${app}/headers`, { headers, redirect: 'manual' });
    assert.equal(api.status, 401, JSON.stringify(headers));
    assert.equal((await api.json()).error, 'login_required');
  }
  summary.api_401 = 'ok';
} finally {
  await t.close();
}
process.stdout.write(`${JSON.stringify(summary)}\n`);
