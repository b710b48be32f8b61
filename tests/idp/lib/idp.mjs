// The demo/test OpenID provider: oidc-provider (certified) with our own login pages, a fixed demo
// one-time code for multi-factor users, step-up on acr_values, and resource tokens for connector
// registration. For demos and tests on loopback only: plain HTTP, in-memory state, demo passwords.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors, interactionPolicy } from 'oidc-provider';
import {
  ACR_MFA, ACR_PWD, AMR_MFA, AMR_PWD, AUDIENCE_RESOURCE_PREFIX, DEMO_OTP,
} from './config.mjs';
import {
  errorPage, loggedOutPage, loginPage, logoutPage, otpPage,
} from './pages.mjs';

/**
 * Scope → claims. `tid`, `groups`, `roles`, `acr`, `amr` and `auth_time` come with `openid`, so every
 * ID token carries them (oidc-provider only puts a claim in a token when some scope or the claims
 * parameter names it).
 */
export const CLAIMS = {
  openid: ['sub', 'tid', 'groups', 'roles', 'acr', 'amr', 'auth_time'],
  profile: ['name', 'preferred_username'],
  email: ['email', 'email_verified'],
  groups: ['groups'],
  roles: ['roles'],
};

/** Scope carried by admin (resource) tokens. */
export const ADMIN_SCOPE = 'connector:register';

/**
 * Signing keys: loaded from `keysFile` when it exists, else generated (RS256 + ES256) and, when
 * `keysFile` is given, written there (mode 0600) so a restarted provider keeps its keys.
 */
export async function loadOrCreateKeys(keysFile) {
  if (keysFile && existsSync(keysFile)) {
    const jwks = JSON.parse(readFileSync(keysFile, 'utf8'));
    if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) throw new Error(`${keysFile}: keys: must be a non-empty array`);
    return jwks.keys;
  }
  const stamp = Date.now().toString(36);
  const keys = [];
  for (const [alg, extra] of [['RS256', { modulusLength: 2048 }], ['ES256', {}]]) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true, ...extra });
    const jwk = await exportJWK(privateKey);
    keys.push({ ...jwk, kid: `${alg.toLowerCase()}-${stamp}`, alg, use: 'sig' });
  }
  if (keysFile) writeFileSync(keysFile, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  return keys;
}

function parseForm(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'",
    'x-frame-options': 'DENY',
  });
  res.end(html);
}

function wantsMfa(params) {
  return String(params.acr_values ?? '').split(' ').includes(ACR_MFA);
}

/**
 * Starts the provider. Options: `port` (0 = free port), `host` (default 127.0.0.1), `issuer`
 * (default `http://<host>:<port>`), `config` (parsed clients file), `users` (parsed users file),
 * `keysFile`, `log` (function for one-line logs, default none).
 * Returns `{ issuer, port, provider, server, close() }`.
 */
export async function startIdp({
  port = 0, host = '127.0.0.1', issuer: fixedIssuer, config, users, keysFile, log = () => {},
}) {
  const keys = await loadOrCreateKeys(keysFile);
  // Pending second factor per interaction uid (in memory; interactions live 10 minutes).
  const pending = new Map();

  const policy = interactionPolicy.base();
  const stepUp = new interactionPolicy.Check(
    'portcullis_mfa_required',
    'the client asked for multi-factor authentication (acr_values)',
    'login_required',
    (ctx) => {
      const { oidc } = ctx;
      if (!wantsMfa(oidc.params) || !oidc.session.accountId) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      if (oidc.acr === ACR_MFA) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      const user = users.bySub.get(oidc.session.accountId);
      // A user without a second factor cannot be stepped up: the client gets acr pwd and decides.
      if (!user || user.mfa === 'none') return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      return interactionPolicy.Check.REQUEST_PROMPT;
    },
  );
  policy.get('login').checks.push(stepUp);

  const configuration = {
    clients: config.clients,
    async findAccount(ctx, sub) {
      const user = users.bySub.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            tid: config.tenant,
            preferred_username: user.username,
            name: user.name,
            email: user.email,
            email_verified: true,
            groups: user.groups,
            roles: user.roles,
          };
        },
      };
    },
    jwks: { keys },
    cookies: {
      // Browsers share cookies across ports of one host: apps on 127.0.0.1:10000 receive these too,
      // so they get names that say whose they are.
      names: { session: 'idp_session', interaction: 'idp_interaction', resume: 'idp_interaction_resume' },
      keys: [randomBytes(32).toString('base64url')],
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    claims: CLAIMS,
    conformIdTokenClaims: false,
    acrValues: [ACR_PWD, ACR_MFA],
    pkce: { required: () => true },
    responseTypes: ['code'],
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
      require_auth_time: true,
    },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.type = 'html';
          ctx.body = logoutPage({ form, clientName: ctx.oidc.client?.clientName || ctx.oidc.client?.clientId });
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = loggedOutPage({ clientName: ctx.oidc.client?.clientName || ctx.oidc.client?.clientId });
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        async getResourceServerInfo(_ctx, resourceIndicator) {
          if (resourceIndicator.startsWith(AUDIENCE_RESOURCE_PREFIX)) {
            const audience = resourceIndicator.slice(AUDIENCE_RESOURCE_PREFIX.length);
            if (config.audiences.includes(audience)) {
              return {
                scope: ADMIN_SCOPE,
                audience,
                accessTokenTTL: config.ttl.AdminToken,
                accessTokenFormat: 'jwt',
                jwt: { sign: { alg: 'RS256' } },
              };
            }
          }
          throw new errors.InvalidTarget(`unknown resource; allowed: ${config.audiences.map((a) => AUDIENCE_RESOURCE_PREFIX + a).join(', ')}`);
        },
      },
    },
    async extraTokenClaims(_ctx, token) {
      // Only resource (JWT) access tokens: they are what the connector registration checks.
      if (token.kind !== 'AccessToken' || !token.resourceServer || !token.accountId) return undefined;
      const user = users.bySub.get(token.accountId);
      if (!user) return undefined;
      return {
        tid: config.tenant,
        preferred_username: user.username,
        email: user.email,
        groups: user.groups,
        roles: user.roles,
      };
    },
    issueRefreshToken: async () => false,
    interactions: {
      policy,
      url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = errorPage({ error: out.error, description: out.error_description });
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? config.ttl.AccessToken,
      AuthorizationCode: 60,
      IdToken: config.ttl.IdToken,
      Interaction: 600,
      Session: config.ttl.Session,
      Grant: config.ttl.Session,
    },
  };

  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actualPort = server.address().port;
  const issuer = fixedIssuer ?? `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx, err) => log(`server_error ${err.stack || err}`));
  provider.on('authorization.error', (_ctx, err) => log(`authorization.error ${err.error || ''} ${err.error_description || err.message}`));
  provider.on('grant.error', (_ctx, err) => log(`grant.error ${err.error || ''} ${err.error_description || err.message}`));
  const providerCallback = provider.callback();

  async function finish(req, res, result, merge = false) {
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: merge });
  }

  async function autoConsent(req, res, details) {
    const { prompt: { details: missing }, params, session } = details;
    let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
    if (!grant) grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    await finish(req, res, { consent: { grantId } }, true);
  }

  function loginResult(user, mfa) {
    return {
      login: {
        accountId: user.sub,
        acr: mfa ? ACR_MFA : ACR_PWD,
        amr: mfa ? AMR_MFA : AMR_PWD,
        remember: true,
      },
    };
  }

  async function clientName(clientId) {
    const client = await provider.Client.find(clientId);
    return client?.clientName || clientId;
  }

  function dropExpired() {
    const now = Date.now();
    for (const [uid, p] of pending) if (p.expires < now) pending.delete(uid);
  }

  async function handleInteraction(req, res, url) {
    const parts = url.pathname.split('/').filter(Boolean); // ['interaction', uid, action?]
    if (parts.length < 2 || parts.length > 3) {
      sendHtml(res, 404, errorPage({ error: 'not_found', description: 'No such page.' }));
      return;
    }
    const [, uidInPath, action] = parts;
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch (err) {
      sendHtml(res, 400, errorPage({ error: 'invalid_interaction', description: 'This sign-in has expired or was not started here. Go back to the application and try again.' }));
      log(`interaction lookup failed: ${err.message}`);
      return;
    }
    if (details.uid !== uidInPath) {
      sendHtml(res, 400, errorPage({ error: 'invalid_interaction', description: 'Interaction mismatch.' }));
      return;
    }
    dropExpired();
    const { uid, prompt, params } = details;
    const method = req.method ?? 'GET';

    if (method === 'POST' && action === 'abort') {
      pending.delete(uid);
      await finish(req, res, { error: 'access_denied', error_description: 'End-User aborted the sign-in' });
      return;
    }
    if (prompt.name === 'consent') {
      // Every client here is first-party: consent is given without a page.
      await autoConsent(req, res, details);
      return;
    }
    if (prompt.name !== 'login') {
      sendHtml(res, 400, errorPage({ error: 'unsupported_prompt', description: prompt.name }));
      return;
    }

    // Step-up only (an existing session, nothing else asks for a new login): the second factor alone.
    const onlyStepUp = details.session?.accountId
      && prompt.reasons.length > 0
      && prompt.reasons.every((r) => r === 'portcullis_mfa_required');
    if (onlyStepUp && !pending.has(uid)) {
      const user = users.bySub.get(details.session.accountId);
      if (user) pending.set(uid, { sub: user.sub, stepUp: true, expires: Date.now() + 600_000 });
    }

    if (method === 'GET' && !action) {
      const p = pending.get(uid);
      if (p) {
        const user = users.bySub.get(p.sub);
        sendHtml(res, 200, otpPage({ uid, username: user?.username, stepUp: p.stepUp }));
      } else {
        sendHtml(res, 200, loginPage({
          uid, clientName: await clientName(params.client_id), loginHint: params.login_hint, reasons: prompt.reasons,
        }));
      }
      return;
    }
    if (method === 'POST' && action === 'login') {
      const form = await parseForm(req);
      const user = users.byName.get(form.get('username') ?? '');
      if (!user || user.password !== (form.get('password') ?? '')) {
        log(`login failed for "${form.get('username')}"`);
        sendHtml(res, 401, loginPage({
          uid, clientName: await clientName(params.client_id), loginHint: form.get('username') ?? '',
          error: 'Invalid username or password.', reasons: prompt.reasons,
        }));
        return;
      }
      const needOtp = user.mfa === 'always' || (user.mfa === 'on-demand' && wantsMfa(params));
      if (needOtp) {
        pending.set(uid, { sub: user.sub, stepUp: false, expires: Date.now() + 600_000 });
        res.writeHead(303, { location: `/interaction/${uid}`, 'cache-control': 'no-store' });
        res.end();
        return;
      }
      log(`login ${user.username} amr=pwd`);
      await finish(req, res, loginResult(user, false));
      return;
    }
    if (method === 'POST' && action === 'otp') {
      const p = pending.get(uid);
      const form = await parseForm(req);
      const user = p && users.bySub.get(p.sub);
      if (!user) {
        sendHtml(res, 400, errorPage({ error: 'invalid_interaction', description: 'No password step for this sign-in.' }));
        return;
      }
      if ((form.get('otp') ?? '').trim() !== DEMO_OTP) {
        log(`otp failed for ${user.username}`);
        sendHtml(res, 401, otpPage({ uid, username: user.username, stepUp: p.stepUp, error: 'Wrong one-time code.' }));
        return;
      }
      pending.delete(uid);
      log(`login ${user.username} amr=pwd,otp,mfa${p.stepUp ? ' (step-up)' : ''}`);
      await finish(req, res, loginResult(user, true));
      return;
    }
    sendHtml(res, 405, errorPage({ error: 'method_not_allowed', description: `${method} ${url.pathname}` }));
  }

  server.on('request', (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === '/interaction' || url.pathname.startsWith('/interaction/')) {
      handleInteraction(req, res, url).catch((err) => {
        log(`interaction error: ${err.stack || err}`);
        if (!res.headersSent) sendHtml(res, 500, errorPage({ error: 'server_error', description: 'Unexpected error.' }));
        else res.end();
      });
      return;
    }
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    providerCallback(req, res);
  });

  return {
    issuer,
    port: actualPort,
    provider,
    server,
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
