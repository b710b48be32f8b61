// End-to-end sign-in and logout through stock Envoy with the preauth filter against the second
// OpenID provider (django-oauth-toolkit, tests/idp-django), with a real Chromium. Run by
// tests/e2e/tests/second_provider.rs, which starts Envoy, the provider and the sample app on free
// ports:
//
//   node tests/browser/flows/second-provider.mjs --app http://127.0.0.1:PORT --issuer http://127.0.0.1:OP/o
//
// Exits non-zero with the failed check on stderr; prints a JSON summary on success.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { launch, clickAndWaitForLoad, pageJson, cookieNamed } from '../lib.mjs';

const { values: args } = parseArgs({ options: { app: { type: 'string' }, issuer: { type: 'string' } } });
assert.ok(args.app && args.issuer, 'usage: second-provider.mjs --app URL --issuer URL');
const app = args.app.replace(/\/$/, '');
const issuer = args.issuer.replace(/\/$/, '');
const origin = new URL(issuer).origin;
const summary = {};

const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
assert.equal(discovery.issuer, issuer);
assert.deepEqual(discovery.code_challenge_methods_supported, ['S256']);
assert.ok(discovery.end_session_endpoint, 'the provider advertises no end_session_endpoint');
summary.provider = {
  issuer: discovery.issuer,
  end_session_endpoint: discovery.end_session_endpoint,
  code_challenge_methods_supported: discovery.code_challenge_methods_supported,
};

/** On the provider's sign-in page (Django's login view in front of the toolkit's authorize)? */
async function onLoginPage(page) {
  return page.url().startsWith(`${origin}/accounts/login/`) && (await page.locator('#signin').count()) === 1;
}

/** Signs in on the provider's page; returns once the browser has left the provider. */
async function signIn(page, user, password) {
  assert.ok(await onLoginPage(page), `expected the provider's sign-in page, got ${page.url()}`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  const back = page.waitForURL((u) => !u.href.startsWith(origin), { waitUntil: 'load' });
  await page.click('#signin');
  await back;
}

const b = await launch();
try {
  const authRequests = [];
  const logoutResponses = [];
  b.context.on('request', (r) => { if (r.url().startsWith(discovery.authorization_endpoint)) authRequests.push(new URL(r.url())); });
  b.context.on('response', (r) => {
    if (r.url().startsWith(discovery.end_session_endpoint)) logoutResponses.push({ method: r.request().method(), status: r.status(), location: r.headers().location });
  });

  // 1. No session: the app is not reached; the browser lands on the provider's sign-in page,
  //    sent there by an authorization request with PKCE (S256), state and nonce.
  await b.page.goto(`${app}/headers?from=e2e`);
  assert.ok(await onLoginPage(b.page), `expected the provider's sign-in page, got ${b.page.url()}`);
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

  // 2. A wrong password stays on the provider.
  await b.page.fill('#username', 'alice');
  await b.page.fill('#password', 'not-her-password');
  await clickAndWaitForLoad(b.page, '#signin');
  assert.ok(await onLoginPage(b.page), 'a wrong password must not sign in');
  assert.equal(await b.page.locator('#error').count(), 1, 'no error shown for a wrong password');

  // 3. Sign in: the filter redeems the code with its PKCE verifier, and the browser is back on
  //    the original URL; the app sees the identity the provider's ID token carries.
  await signIn(b.page, 'alice', 'alice-password');
  assert.equal(b.page.url(), `${app}/headers?from=e2e`, 'not back on the original URL');
  const seen = await pageJson(b.page);
  await b.page.goto(`${app}/.auth/me`);
  const me = await pageJson(b.page);
  const sub = me.sub ?? me.identity?.sub;
  assert.match(sub ?? '', /^[0-9]+$/, `the toolkit's subject is the user's database id, got ${sub}`);
  assert.equal(seen.headers['x-forwarded-user'], sub);
  assert.equal(seen.headers['x-forwarded-email'], 'alice@example.com');
  assert.equal(seen.headers['x-forwarded-preferred-username'], 'alice');
  assert.equal(seen.headers['x-forwarded-groups'], 'staff');
  summary.identity_headers = Object.fromEntries(Object.entries(seen.headers).filter(([k]) => k.startsWith('x-forwarded-')));
  summary.me = me;

  const c = await cookieNamed(b.context, `${app}/`, '__Host-portcullis');
  assert.ok(c, 'no __Host-portcullis cookie');
  assert.equal(c.httpOnly, true, 'HttpOnly');
  assert.equal(c.secure, true, 'Secure');
  assert.equal(c.sameSite, 'Lax', 'SameSite');

  // 4. Identity headers from the client never reach the app.
  await b.page.setExtraHTTPHeaders({ 'X-Forwarded-User': 'mallory', 'X-Forwarded-Email': 'mallory@evil' });
  await b.page.goto(`${app}/headers?spoof=1`);
  const spoofed = await pageJson(b.page);
  assert.equal(spoofed.headers['x-forwarded-user'], sub);
  assert.equal(spoofed.headers['x-forwarded-email'], 'alice@example.com');
  await b.page.setExtraHTTPHeaders({});

  // 5. RP-initiated logout: /.auth/logout clears the session and sends the browser to the
  //    provider's end_session_endpoint with client_id and post_logout_redirect_uri; the provider
  //    asks to confirm (no id_token_hint), ends its own session and returns to the app.
  await b.page.goto(`${app}/.auth/logout`);
  const endSession = new URL(b.page.url());
  assert.equal(`${endSession.origin}${endSession.pathname}`, discovery.end_session_endpoint, `expected the end-session page, got ${b.page.url()}`);
  assert.equal(endSession.searchParams.get('client_id'), 'portcullis-demo');
  assert.equal(endSession.searchParams.get('post_logout_redirect_uri'), `${app}/`);
  assert.equal(await cookieNamed(b.context, `${app}/`, '__Host-portcullis'), undefined, 'session cookie still present after /.auth/logout');
  await clickAndWaitForLoad(b.page, 'input[name="allow"]');
  const confirmed = logoutResponses.find((r) => r.method === 'POST');
  assert.ok(confirmed, `no confirmed logout seen: ${JSON.stringify(logoutResponses)}`);
  assert.equal(confirmed.status, 302);
  assert.equal(confirmed.location, `${app}/`, 'the provider must return to the registered post-logout URI');
  // Back at the app without a session, the app asks for a sign-in, and the provider, whose
  // session ended, asks for the password again instead of signing alice in silently.
  await b.page.waitForLoadState('load');
  assert.ok(await onLoginPage(b.page), `after logout the provider must ask for a sign-in again, got ${b.page.url()}`);
  summary.logout = { end_session: `${endSession.origin}${endSession.pathname}`, returned_to: confirmed.location };

  // 6. PKCE is enforced by the provider: a code issued for a challenge is redeemed only with its
  //    verifier. Signed in again at the provider, the browser asks for a code with a challenge of
  //    our own; the callback's code (which the filter refuses: no login started) is then
  //    presented with no verifier and a wrong one (refused) and with the right one (accepted).
  await signIn(b.page, 'alice', 'alice-password');
  assert.equal(b.page.url(), `${app}/`, 'not back on the app after signing in again');
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  let callback;
  b.context.on('request', (r) => { if (r.url().startsWith(`${app}/.auth/callback?`)) callback = new URL(r.url()); });
  const own = new URL(discovery.authorization_endpoint);
  for (const [k, v] of Object.entries({
    response_type: 'code', client_id: 'portcullis-demo', redirect_uri: `${app}/.auth/callback`, scope: 'openid',
    state: randomBytes(16).toString('base64url'), code_challenge: challenge, code_challenge_method: 'S256',
  })) own.searchParams.set(k, v);
  await b.page.goto(own.href);
  assert.ok(callback?.searchParams.get('code'), 'no authorization code seen at the callback');
  const basic = Buffer.from('portcullis-demo:portcullis-demo-secret').toString('base64');
  const redeem = async (extra) => {
    const r = await fetch(discovery.token_endpoint, {
      method: 'POST',
      headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code: callback.searchParams.get('code'), redirect_uri: `${app}/.auth/callback`, ...extra }),
    });
    return { status: r.status, body: await r.json() };
  };
  const noVerifier = await redeem({});
  assert.equal(noVerifier.status, 400, `a code without its verifier was redeemed: ${JSON.stringify(noVerifier)}`);
  const wrongVerifier = await redeem({ code_verifier: randomBytes(32).toString('base64url') });
  assert.equal(wrongVerifier.status, 400, `a code with a wrong verifier was redeemed: ${JSON.stringify(wrongVerifier)}`);
  const rightVerifier = await redeem({ code_verifier: verifier });
  assert.equal(rightVerifier.status, 200, `the code with its verifier was refused: ${JSON.stringify(rightVerifier)}`);
  assert.ok(rightVerifier.body.id_token, 'no ID token for the right verifier');
  summary.pkce = { without_verifier: noVerifier.body.error, wrong_verifier: wrongVerifier.body.error, right_verifier: rightVerifier.status };
} finally {
  await b.close();
}
process.stdout.write(`${JSON.stringify(summary)}\n`);
