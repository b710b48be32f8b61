// End-to-end tests of the demo provider: server.mjs on a free port, a relying party in this process,
// Debian's chromium through tests/browser/lib.mjs. Run: node --test tests/idp/test/

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import {
  SignInError, cancelSignIn, confirmLogout, cookiesFor, idpPage, launch, open, pageJson, signIn,
} from '../../browser/lib.mjs';
import {
  IDP_DIR, runNode, startRp, startServer,
} from '../lib/testing.mjs';

const ACR_PWD = 'urn:portcullis:pwd';
const ACR_MFA = 'urn:portcullis:mfa';
const OTP = '123456';

describe('demo OpenID provider', () => {
  let rp;
  let rpEs;
  let idp;
  let browser;
  let page;
  let meta;

  before(async () => {
    rp = await startRp({ clientId: 'test-rp', clientSecret: 'test-rp-secret' });
    rpEs = await startRp({ clientId: 'test-es', clientSecret: 'test-es-secret' });
    idp = await startServer({
      tenant: 'test-tenant',
      audiences: ['portcullis-edge', 'other-api'],
      clients: [{
        client_id: 'test-rp',
        client_secret: 'test-rp-secret',
        client_name: 'Test RP',
        redirect_uris: [rp.redirectUri],
        post_logout_redirect_uris: [rp.postLogoutUri],
      }, {
        client_id: 'test-es',
        client_secret: 'test-es-secret',
        id_token_signed_response_alg: 'ES256',
        redirect_uris: [rpEs.redirectUri],
      }, {
        client_id: 'test-public',
        public: true,
        redirect_uris: ['http://127.0.0.1:1/cb'],
      }],
    });
    await rp.setIssuer(idp.issuer);
    await rpEs.setIssuer(idp.issuer);
    meta = await (await fetch(`${idp.issuer}/.well-known/openid-configuration`)).json();
    browser = await launch();
    page = browser.page;
  });

  after(async () => {
    await browser?.close();
    await idp?.stop();
    await rp?.close();
    await rpEs?.close();
  });

  async function freshSession() {
    await browser.context.clearCookies();
  }

  async function login(query, creds) {
    await page.goto(`${rp.base}/login${query ? `?${query}` : ''}`);
    const { steps } = await signIn(page, creds);
    const body = await pageJson(page);
    return { steps, ...body };
  }

  it('serves discovery with the advertised features', () => {
    assert.equal(meta.issuer, idp.issuer);
    assert.match(idp.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(meta.code_challenge_methods_supported, ['S256']);
    assert.deepEqual(meta.response_types_supported, ['code']);
    assert.deepEqual(meta.acr_values_supported, [ACR_PWD, ACR_MFA]);
    for (const k of ['authorization_endpoint', 'token_endpoint', 'userinfo_endpoint', 'jwks_uri', 'end_session_endpoint']) {
      assert.ok(meta[k]?.startsWith(`${idp.issuer}/`), k);
    }
    for (const c of ['preferred_username', 'email', 'name', 'groups', 'roles', 'amr', 'acr', 'auth_time', 'tid']) {
      assert.ok(meta.claims_supported.includes(c), c);
    }
  });

  it('serves a JWKS with public RS256 and ES256 keys only', async () => {
    const res = await fetch(meta.jwks_uri);
    assert.equal(res.status, 200);
    const { keys } = await res.json();
    assert.deepEqual(keys.map((k) => k.alg).sort(), ['ES256', 'RS256']);
    for (const k of keys) {
      assert.ok(k.kid, 'kid');
      assert.equal(k.use, 'sig');
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi']) assert.equal(k[priv], undefined, `private part ${priv}`);
    }
  });

  it('signs alice in with a password only: amr pwd, claims in the verified ID token', async () => {
    await freshSession();
    const before = Math.floor(Date.now() / 1000);
    const { steps, claims, header, userinfo, error } = await login('', { user: 'alice', password: 'alice-password' });
    assert.equal(error, undefined);
    assert.deepEqual(steps, ['login']);
    assert.equal(header.alg, 'RS256');
    assert.equal(claims.iss, idp.issuer);
    assert.equal(claims.aud, 'test-rp');
    assert.equal(claims.sub, 'u-alice');
    assert.equal(claims.preferred_username, 'alice');
    assert.equal(claims.email, 'alice@example.com');
    assert.equal(claims.name, 'Alice Example');
    assert.deepEqual(claims.groups, ['staff']);
    assert.deepEqual(claims.roles, []);
    assert.equal(claims.tid, 'test-tenant');
    assert.deepEqual(claims.amr, ['pwd']);
    assert.equal(claims.acr, ACR_PWD);
    assert.ok(claims.auth_time >= before - 1 && claims.auth_time <= claims.iat, 'auth_time');
    assert.equal(userinfo.sub, 'u-alice');
    assert.equal(userinfo.email, 'alice@example.com');
    assert.equal(userinfo.preferred_username, 'alice');
    assert.deepEqual(userinfo.groups, ['staff']);
    assert.equal(userinfo.tid, 'test-tenant');
  });

  it('keeps the provider session: a second login asks nothing', async () => {
    const { steps, claims } = await login('', {});
    assert.deepEqual(steps, []);
    assert.equal(claims.sub, 'u-alice');
  });

  it('sets its own cookies HttpOnly and SameSite=Lax on plain HTTP', async () => {
    const cookies = await cookiesFor(browser.context, `${idp.issuer}/`);
    const session = cookies.find((c) => c.name === 'idp_session');
    assert.ok(session, 'session cookie');
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, 'Lax');
    assert.equal(session.secure, false);
  });

  it('max_age=0 forces a fresh password login', async () => {
    const { claims: first } = await login('', {});
    await new Promise((r) => { setTimeout(r, 1100); });
    await page.goto(`${rp.base}/login?max_age=0`);
    assert.equal(await (async () => { await page.waitForSelector('#login-page'); return idpPage(page); })(), 'login');
    const { steps } = await signIn(page, { user: 'alice', password: 'alice-password' });
    assert.deepEqual(steps, ['login']);
    const { claims } = await pageJson(page);
    assert.ok(claims.auth_time > first.auth_time, 'auth_time moved forward');
  });

  it('prompt=login forces a fresh password login', async () => {
    const { steps, claims } = await login('prompt=login', { user: 'alice', password: 'alice-password' });
    assert.deepEqual(steps, ['login']);
    assert.equal(claims.sub, 'u-alice');
  });

  it('does not step alice (no second factor) up: acr stays pwd and the client decides', async () => {
    const { steps, claims } = await login(`acr=${encodeURIComponent(ACR_MFA)}`, {});
    assert.deepEqual(steps, []);
    assert.equal(claims.acr, ACR_PWD);
    assert.deepEqual(claims.amr, ['pwd']);
  });

  it('signs ID tokens with ES256 for a client configured so', async () => {
    await page.goto(`${rpEs.base}/login`);
    const { steps } = await signIn(page, { user: 'alice', password: 'alice-password' });
    assert.deepEqual(steps, []);
    const { header, claims } = await pageJson(page);
    assert.equal(header.alg, 'ES256');
    assert.equal(claims.aud, 'test-es');
    assert.equal(claims.sub, 'u-alice');
  });

  it('signs bob in with password and one-time code: amr pwd,otp,mfa', async () => {
    await freshSession();
    const { steps, claims } = await login('', { user: 'bob', password: 'bob-password', otp: OTP });
    assert.deepEqual(steps, ['login', 'otp']);
    assert.equal(claims.sub, 'u-bob');
    assert.deepEqual(claims.groups, ['staff', 'admins']);
    assert.deepEqual(claims.amr, ['pwd', 'otp', 'mfa']);
    assert.equal(claims.acr, ACR_MFA);
  });

  it('refuses a wrong password and a wrong one-time code', async () => {
    await freshSession();
    await page.goto(`${rp.base}/login`);
    await assert.rejects(signIn(page, { user: 'alice', password: 'nope' }), (e) => e instanceof SignInError && e.code === 'bad_credentials');
    assert.match(await page.locator('#login-error').textContent(), /Invalid username or password/);
    await page.goto(`${rp.base}/login`);
    await assert.rejects(signIn(page, { user: 'bob', password: 'bob-password', otp: '000000' }), (e) => e.code === 'bad_otp');
    await page.goto(`${rp.base}/login`);
    await assert.rejects(signIn(page, { user: 'bob', password: 'bob-password' }), (e) => e.code === 'otp_required');
  });

  it('steps erin up: password only at first, then only the one-time code for acr_values=mfa', async () => {
    await freshSession();
    const first = await login('', { user: 'erin', password: 'erin-password' });
    assert.deepEqual(first.steps, ['login']);
    assert.equal(first.claims.acr, ACR_PWD);
    assert.deepEqual(first.claims.amr, ['pwd']);
    const up = await login(`acr=${encodeURIComponent(ACR_MFA)}`, { otp: OTP });
    assert.deepEqual(up.steps, ['otp'], 'existing session: only the second factor is asked');
    assert.equal(up.claims.sub, 'u-erin');
    assert.equal(up.claims.acr, ACR_MFA);
    assert.deepEqual(up.claims.amr, ['pwd', 'otp', 'mfa']);
    const again = await login(`acr=${encodeURIComponent(ACR_MFA)}`, {});
    assert.deepEqual(again.steps, [], 'an MFA session satisfies the next step-up request');
    assert.equal(again.claims.acr, ACR_MFA);
  });

  it('asks erin for both factors at once when a fresh login and MFA are requested', async () => {
    await freshSession();
    const { steps, claims } = await login(`acr=${encodeURIComponent(ACR_MFA)}`, { user: 'erin', password: 'erin-password', otp: OTP });
    assert.deepEqual(steps, ['login', 'otp']);
    assert.equal(claims.acr, ACR_MFA);
  });

  it('ends the session with RP-initiated logout', async () => {
    await freshSession();
    await login('', { user: 'alice', password: 'alice-password' });
    await page.goto(`${rp.base}/logout`);
    assert.equal(await idpPage(page), 'logout');
    const landed = await confirmLogout(page);
    assert.equal(landed, `${rp.base}/logged-out`);
    assert.deepEqual(await pageJson(page), { loggedOut: true });
    await page.goto(`${rp.base}/login`);
    await page.waitForSelector('#login-page');
    assert.equal(await idpPage(page), 'login', 'a new login is needed after logout');
  });

  it('returns access_denied to the client when the user cancels', async () => {
    await freshSession();
    await page.goto(`${rp.base}/login`);
    await cancelSignIn(page);
    const body = await pageJson(page);
    assert.equal(body.error, 'access_denied');
  });

  it('requires PKCE with S256', async () => {
    const base = {
      client_id: 'test-rp', response_type: 'code', redirect_uri: rp.redirectUri, scope: 'openid', state: 's', nonce: 'n',
    };
    const noPkce = await fetch(`${meta.authorization_endpoint}?${new URLSearchParams(base)}`, { redirect: 'manual' });
    assert.equal(noPkce.status, 303);
    const loc = new URL(noPkce.headers.get('location'));
    assert.equal(loc.searchParams.get('error'), 'invalid_request');
    assert.match(loc.searchParams.get('error_description'), /PKCE/);
    const plain = await fetch(`${meta.authorization_endpoint}?${new URLSearchParams({ ...base, code_challenge: 'a'.repeat(43), code_challenge_method: 'plain' })}`, { redirect: 'manual' });
    assert.equal(new URL(plain.headers.get('location')).searchParams.get('error'), 'invalid_request');
  });

  it('shows its own page for a real browser with a chromium-visible status', async () => {
    await freshSession();
    const { status } = await open(page, `${rp.base}/login`);
    assert.equal(status, 200);
    assert.equal(await page.locator('#client-name').textContent(), 'Test RP');
    for (const id of ['#username', '#password', '#login-submit', '#login-cancel']) {
      assert.equal(await page.locator(id).count(), 1, id);
    }
  });

  describe('admin token', () => {
    const script = join(IDP_DIR, 'admin-token.mjs');

    it('issues carol a JWT for portcullis-edge with her roles, groups and tenant', async () => {
      const t0 = Math.floor(Date.now() / 1000);
      const { code, stdout, stderr } = await runNode([script, '--issuer', idp.issuer, '--user', 'carol', '--password', 'carol-password']);
      assert.equal(code, 0, stderr);
      const token = stdout.trim();
      assert.equal(token.split('.').length, 3);
      const jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
      const { payload, protectedHeader } = await jwtVerify(token, jwks, {
        issuer: idp.issuer, audience: 'portcullis-edge', algorithms: ['RS256'], typ: 'at+jwt',
      });
      assert.equal(protectedHeader.alg, 'RS256');
      assert.equal(payload.sub, 'u-carol');
      assert.equal(payload.aud, 'portcullis-edge');
      assert.equal(payload.tid, 'test-tenant');
      assert.deepEqual(payload.roles, ['connector-admin']);
      assert.deepEqual(payload.groups, ['portcullis-connector-admins']);
      assert.equal(payload.preferred_username, 'carol');
      assert.equal(payload.client_id, 'portcullis-installer');
      assert.equal(payload.scope, 'connector:register');
      assert.ok(payload.exp > t0 && payload.exp <= t0 + 600 + 2, `exp ${payload.exp - t0}s from now`);
      assert.ok(payload.iat >= t0 - 2);
    });

    it('is refused with another audience key set (signature really checked)', async () => {
      const { stdout } = await runNode([script, '--issuer', idp.issuer, '--user', 'carol', '--password', 'carol-password']);
      const other = await startServer({ clients: [] });
      try {
        const otherKeys = await (await fetch(`${other.issuer}/jwks`)).json();
        await assert.rejects(jwtVerify(stdout.trim(), createLocalJWKSet(otherKeys)));
        assert.ok(decodeProtectedHeader(stdout.trim()).kid);
      } finally {
        await other.stop();
      }
    });

    it('carries the claims of a non-admin user (the edge refuses them) and needs the OTP for bob', async () => {
      const alice = await runNode([script, '--issuer', idp.issuer, '--user', 'alice', '--password', 'alice-password', '--json']);
      assert.equal(alice.code, 0, alice.stderr);
      const { claims } = JSON.parse(alice.stdout);
      assert.deepEqual(claims.roles, []);
      assert.deepEqual(claims.groups, ['staff']);
      const bob = await runNode([script, '--issuer', idp.issuer, '--user', 'bob', '--password', 'bob-password']);
      assert.equal(bob.code, 1);
      assert.match(bob.stderr, /otp_required/);
      const bobOtp = await runNode([script, '--issuer', idp.issuer, '--user', 'bob', '--password', 'bob-password', '--otp', OTP, '--json']);
      assert.equal(bobOtp.code, 0, bobOtp.stderr);
      assert.deepEqual(JSON.parse(bobOtp.stdout).claims.groups, ['staff', 'admins']);
    });

    it('fails with a wrong password or an audience not configured', async () => {
      const bad = await runNode([script, '--issuer', idp.issuer, '--user', 'carol', '--password', 'wrong']);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /bad_credentials/);
      assert.equal(bad.stdout, '');
      const aud = await runNode([script, '--issuer', idp.issuer, '--user', 'carol', '--password', 'carol-password', '--audience', 'nope']);
      assert.equal(aud.code, 1);
      assert.match(aud.stderr, /invalid_target/);
      const other = await runNode([script, '--issuer', idp.issuer, '--user', 'carol', '--password', 'carol-password', '--audience', 'other-api', '--json']);
      assert.equal(other.code, 0, other.stderr);
      assert.equal(JSON.parse(other.stdout).claims.aud, 'other-api');
    });
  });
});
