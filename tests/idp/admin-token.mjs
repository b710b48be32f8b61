#!/usr/bin/env node
// Gets an admin token (a JWT access token signed by the demo provider) for connector registration,
// without a browser: the authorization code flow with PKCE, driven by plain HTTP requests through the
// provider's own login form, for the built-in public client `portcullis-installer`, with the resource
// indicator `urn:portcullis:audience:<audience>`. See README.md ("Admin token").
//
//   node tests/idp/admin-token.mjs --issuer http://127.0.0.1:9000 --user carol --password carol-password
//
// Prints the token alone on stdout (or the token response and decoded claims with --json).

import { createHash, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { AUDIENCE_RESOURCE_PREFIX, INSTALLER_CLIENT_ID, INSTALLER_REDIRECT_URI } from './lib/config.mjs';

const MAX_HOPS = 20;

/** Error of the admin-token flow, with a short stable `code`. */
export class AdminTokenError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'AdminTokenError';
    this.code = code;
  }
}

class CookieJar {
  constructor() {
    this.cookies = new Map();
  }

  store(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq < 1) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v] = a.split('=');
        const key = k.trim().toLowerCase();
        if (key === 'max-age') return Number(v) <= 0;
        if (key === 'expires') return Date.parse(v) <= Date.now();
        return false;
      });
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** Decodes a JWT's payload without checking it (for display; the edge verifies the signature). */
export function decodeJwtPayload(jwt) {
  const part = String(jwt).split('.')[1];
  if (!part) throw new AdminTokenError('bad_token', 'not a JWT');
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function formAction(html, formId) {
  const m = html.match(new RegExp(`<form id="${formId}"[^>]*action="([^"]+)"`));
  return m ? m[1].replaceAll('&amp;', '&') : undefined;
}

function pageId(html) {
  const m = html.match(/<main id="([a-z-]+)" data-page=/);
  return m ? m[1] : undefined;
}

/**
 * Signs `user` in and returns `{ token, claims, response }`: `token` is the JWT access token for
 * `audience` (default portcullis-edge), `claims` its decoded payload, `response` the token response.
 */
export async function getAdminToken({
  issuer, user, password, otp, audience = 'portcullis-edge', clientId = INSTALLER_CLIENT_ID,
  redirectUri = INSTALLER_REDIRECT_URI,
}) {
  if (!issuer || !user || !password) throw new AdminTokenError('usage', '--issuer, --user and --password are required');
  const discoveryUrl = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  let meta;
  try {
    const r = await fetch(discoveryUrl);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    meta = await r.json();
  } catch (err) {
    throw new AdminTokenError('unreachable', `cannot read ${discoveryUrl}: ${err.message}`);
  }
  const verifier = b64url(randomBytes(32));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  const state = b64url(randomBytes(16));
  const resource = AUDIENCE_RESOURCE_PREFIX + audience;
  const auth = new URL(meta.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: redirectUri,
    scope: 'openid connector:register',
    resource,
    state,
    nonce: b64url(randomBytes(16)),
    code_challenge: challenge,
    code_challenge_method: 'S256',
    prompt: 'login',
  }).toString();

  const jar = new CookieJar();
  let url = auth.toString();
  let method = 'GET';
  let body;
  const submitted = new Set();
  let code;
  for (let hop = 0; hop < MAX_HOPS && code === undefined; hop += 1) {
    const res = await fetch(url, {
      method,
      body,
      redirect: 'manual',
      headers: {
        cookie: jar.header(),
        ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      },
    });
    jar.store(res);
    method = 'GET';
    body = undefined;
    if (res.status >= 300 && res.status < 400) {
      const next = new URL(res.headers.get('location') ?? '', url);
      if (next.toString().startsWith(redirectUri)) {
        const p = next.searchParams;
        if (p.get('error')) throw new AdminTokenError(`idp_error:${p.get('error')}`, `provider refused: ${p.get('error')} ${p.get('error_description') ?? ''}`.trim());
        if (p.get('state') !== state) throw new AdminTokenError('state_mismatch', 'state mismatch in the redirect');
        code = p.get('code') ?? undefined;
        if (!code) throw new AdminTokenError('no_code', 'redirect without code');
        break;
      }
      url = next.toString();
      continue;
    }
    const html = await res.text();
    const page = pageId(html);
    if (page === 'login-page') {
      if (submitted.has('login')) throw new AdminTokenError('bad_credentials', `sign-in refused for ${user} (wrong username or password)`);
      submitted.add('login');
      url = new URL(formAction(html, 'login-form') ?? '', url).toString();
      method = 'POST';
      body = new URLSearchParams({ username: user, password }).toString();
    } else if (page === 'otp-page') {
      if (submitted.has('otp')) throw new AdminTokenError('bad_otp', 'one-time code refused');
      if (!otp) throw new AdminTokenError('otp_required', `${user} has multi-factor authentication: give --otp`);
      submitted.add('otp');
      url = new URL(formAction(html, 'otp-form') ?? '', url).toString();
      method = 'POST';
      body = new URLSearchParams({ otp }).toString();
    } else {
      const err = html.match(/id="error-code">([^<]*)</)?.[1];
      const desc = html.match(/id="error-description">([^<]*)</)?.[1];
      throw new AdminTokenError(err ? `idp_error:${err}` : 'unexpected_page', `unexpected answer from ${url} (HTTP ${res.status}): ${err ?? ''} ${desc ?? html.slice(0, 200)}`);
    }
  }
  if (code === undefined) throw new AdminTokenError('too_many_redirects', 'the sign-in did not finish');

  const tokenRes = await fetch(meta.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier, client_id: clientId, resource,
    }).toString(),
  });
  const response = await tokenRes.json();
  if (!tokenRes.ok) throw new AdminTokenError(`token_error:${response.error}`, `token endpoint refused: ${response.error} ${response.error_description ?? ''}`);
  const token = response.access_token;
  return { token, claims: decodeJwtPayload(token), response };
}

async function main() {
  const usage = `usage: node admin-token.mjs --issuer URL --user NAME --password PASSWORD [--otp CODE]
                          [--audience portcullis-edge] [--json]
Prints a JWT access token (aud = --audience, roles/groups/tid of the user) on stdout.\n`;
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        issuer: { type: 'string', default: 'http://127.0.0.1:9000' },
        user: { type: 'string' },
        password: { type: 'string' },
        otp: { type: 'string' },
        audience: { type: 'string', default: 'portcullis-edge' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`admin-token: ${err.message}\n${usage}`);
    process.exit(2);
  }
  if (args.help) {
    process.stdout.write(usage);
    return;
  }
  try {
    const out = await getAdminToken(args);
    if (args.json) process.stdout.write(`${JSON.stringify({ ...out.response, claims: out.claims }, null, 2)}\n`);
    else process.stdout.write(`${out.token}\n`);
  } catch (err) {
    process.stderr.write(`admin-token: ${err.code ?? 'error'}: ${err.message}\n`);
    process.exit(1);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main();
}
