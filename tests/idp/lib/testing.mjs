// Test support, also for other end-to-end tests: start server.mjs on a free port with a clients
// configuration (startServer), run a node script (runNode), and a tiny relying party (plain node http)
// that does the authorization code flow with PKCE, checks the ID token with the provider's JWKS
// (jose), and shows the result as JSON so a browser test can read it (startRp).

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRemoteJWKSet, jwtVerify } from 'jose';

/** Directory of the provider (tests/idp). */
export const IDP_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Writes `obj` as JSON to a new temp file and returns its path. */
export function tempJson(obj) {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-idp-test-'));
  const path = join(dir, 'config.json');
  writeFileSync(path, JSON.stringify(obj));
  return path;
}

/**
 * Runs `node server.mjs --port 0 --config <file>` and waits for its READY line.
 * Returns `{ issuer, proc, stderr(), stop() }`.
 */
export async function startServer(config, extraArgs = []) {
  const proc = spawn(process.execPath, [join(IDP_DIR, 'server.mjs'), '--port', '0', '--config', tempJson(config), ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  const issuer = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no READY line in 10 s; stderr: ${err}`)), 10_000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^READY (\S+)$/m);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${err}`));
    });
  });
  return {
    issuer,
    proc,
    stderr: () => err,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null) {
        resolve(proc.exitCode);
        return;
      }
      proc.once('exit', (code) => resolve(code));
      proc.kill('SIGTERM');
    }),
  };
}

/** Runs a node script to completion; resolves `{ code, stdout, stderr }`. */
export function runNode(args, { timeout = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => { stdout += d; });
    proc.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`timeout: node ${args.join(' ')}`));
    }, timeout);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

function sendJson(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(obj));
}

/**
 * A relying party on a free loopback port. Call `setIssuer(issuer)` once the provider runs.
 * Routes: /login[?acr=&max_age=&prompt=&login_hint=] starts a login; /callback finishes it and
 * answers JSON `{ claims, header, userinfo }` (or `{ error }`); /logout starts RP-initiated logout;
 * /logged-out answers `{ loggedOut: true }`.
 */
export async function startRp({ clientId, clientSecret }) {
  const pending = new Map();
  let meta;
  let jwks;
  let lastIdToken;
  const server = createServer((req, res) => {
    handle(req, res).catch((err) => sendJson(res, 500, { error: 'rp_error', message: String(err.message || err) }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;

  async function handle(req, res) {
    const url = new URL(req.url, base);
    if (url.pathname === '/login') {
      const state = b64url(randomBytes(16));
      const nonce = b64url(randomBytes(16));
      const verifier = b64url(randomBytes(32));
      pending.set(state, { nonce, verifier });
      const q = new URLSearchParams({
        client_id: clientId,
        response_type: 'code',
        redirect_uri: `${base}/callback`,
        scope: 'openid profile email',
        state,
        nonce,
        code_challenge: b64url(createHash('sha256').update(verifier).digest()),
        code_challenge_method: 'S256',
      });
      if (url.searchParams.get('acr')) q.set('acr_values', url.searchParams.get('acr'));
      for (const k of ['max_age', 'prompt', 'login_hint']) {
        if (url.searchParams.has(k)) q.set(k, url.searchParams.get(k));
      }
      res.writeHead(302, { location: `${meta.authorization_endpoint}?${q}` });
      res.end();
      return;
    }
    if (url.pathname === '/callback') {
      const p = url.searchParams;
      if (p.get('error')) {
        sendJson(res, 200, { error: p.get('error'), error_description: p.get('error_description') });
        return;
      }
      const st = pending.get(p.get('state'));
      if (!st) {
        sendJson(res, 400, { error: 'state_mismatch' });
        return;
      }
      pending.delete(p.get('state'));
      const tokenRes = await fetch(meta.token_endpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64')}`,
        },
        body: new URLSearchParams({
          grant_type: 'authorization_code', code: p.get('code'), redirect_uri: `${base}/callback`, code_verifier: st.verifier,
        }),
      });
      const tokens = await tokenRes.json();
      if (!tokenRes.ok) {
        sendJson(res, 200, { error: `token_${tokens.error}`, error_description: tokens.error_description });
        return;
      }
      const { payload, protectedHeader } = await jwtVerify(tokens.id_token, jwks, {
        issuer: meta.issuer, audience: clientId, algorithms: ['RS256', 'ES256', 'PS256'], clockTolerance: 5,
      });
      if (payload.nonce !== st.nonce) {
        sendJson(res, 200, { error: 'nonce_mismatch' });
        return;
      }
      const ui = await fetch(meta.userinfo_endpoint, { headers: { authorization: `Bearer ${tokens.access_token}` } });
      lastIdToken = tokens.id_token;
      sendJson(res, 200, { claims: payload, header: protectedHeader, userinfo: ui.ok ? await ui.json() : { status: ui.status } });
      return;
    }
    if (url.pathname === '/logout') {
      const q = new URLSearchParams({ client_id: clientId, post_logout_redirect_uri: `${base}/logged-out` });
      if (url.searchParams.get('hint') === '1' && lastIdToken) q.set('id_token_hint', lastIdToken);
      res.writeHead(302, { location: `${meta.end_session_endpoint}?${q}` });
      res.end();
      return;
    }
    if (url.pathname === '/logged-out') {
      sendJson(res, 200, { loggedOut: true });
      return;
    }
    sendJson(res, 404, { error: 'not_found' });
  }

  return {
    base,
    redirectUri: `${base}/callback`,
    postLogoutUri: `${base}/logged-out`,
    async setIssuer(issuer) {
      meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
      jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
    },
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
