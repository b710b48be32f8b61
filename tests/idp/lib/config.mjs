// Loading and checking the provider's configuration files (clients + users). Every error names the
// field that is wrong, e.g. `clients[0].redirect_uris[1]: must be an absolute http(s) URL`.

import { readFileSync } from 'node:fs';

/** The acr value of a password-only sign-in. */
export const ACR_PWD = 'urn:portcullis:pwd';
/** The acr value of a sign-in with password and one-time code. */
export const ACR_MFA = 'urn:portcullis:mfa';
/** amr of a password-only sign-in. */
export const AMR_PWD = ['pwd'];
/** amr of a sign-in with password and one-time code. */
export const AMR_MFA = ['pwd', 'otp', 'mfa'];
/** The fixed demo one-time code (documented; this provider is for demos and tests only). */
export const DEMO_OTP = '123456';
/** Default tenant id, sent as the `tid` claim. */
export const DEFAULT_TENANT = 'portcullis-demo';
/** Audiences for which admin (resource) tokens may be issued by default. */
export const DEFAULT_AUDIENCES = ['portcullis-edge'];
/** The built-in public client used by admin-token.mjs. */
export const INSTALLER_CLIENT_ID = 'portcullis-installer';
/** Its redirect URI: never fetched, admin-token.mjs reads the code from the Location header. */
export const INSTALLER_REDIRECT_URI = 'http://127.0.0.1/portcullis-installer/callback';
/** Resource indicator prefix: `resource=urn:portcullis:audience:<aud>` asks for a JWT with `aud=<aud>`. */
export const AUDIENCE_RESOURCE_PREFIX = 'urn:portcullis:audience:';

/** A configuration error naming the field. */
export class ConfigError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.name = 'ConfigError';
    this.field = field;
  }
}

function isObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(obj, field, allowed) {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw new ConfigError(field ? `${field}.${key}` : key, `unknown field (allowed: ${allowed.join(', ')})`);
    }
  }
}

function at(field, key) {
  return field ? `${field}.${key}` : key;
}

function str(obj, key, field, { required = true } = {}) {
  const v = obj[key];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || v.length === 0) {
    throw new ConfigError(at(field, key), 'must be a non-empty string');
  }
  return v;
}

function strList(obj, key, field, { required = true, check } = {}) {
  const v = obj[key];
  if (v === undefined && !required) return [];
  if (!Array.isArray(v)) throw new ConfigError(at(field, key), 'must be an array of strings');
  v.forEach((item, i) => {
    if (typeof item !== 'string' || item.length === 0) {
      throw new ConfigError(`${at(field, key)}[${i}]`, 'must be a non-empty string');
    }
    if (check) check(item, `${at(field, key)}[${i}]`);
  });
  return [...v];
}

function httpUrl(value, field) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(field, 'must be an absolute http(s) URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(field, 'must be an absolute http(s) URL');
  }
  if (url.hash) throw new ConfigError(field, 'must not have a fragment');
}

const CLIENT_FIELDS = [
  'client_id', 'client_secret', 'public', 'client_name', 'redirect_uris', 'post_logout_redirect_uris',
  'token_endpoint_auth_method', 'id_token_signed_response_alg',
];
const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'none'];
const SIGNING_ALGS = ['RS256', 'PS256', 'ES256'];

/** Turns one client entry of the configuration file into oidc-provider client metadata. */
export function parseClient(entry, field) {
  if (!isObject(entry)) throw new ConfigError(field, 'must be an object');
  checkKeys(entry, field, CLIENT_FIELDS);
  const clientId = str(entry, 'client_id', field);
  if (entry.public !== undefined && typeof entry.public !== 'boolean') {
    throw new ConfigError(`${field}.public`, 'must be true or false');
  }
  const isPublic = entry.public === true;
  const secret = str(entry, 'client_secret', field, { required: !isPublic });
  if (isPublic && secret !== undefined) {
    throw new ConfigError(`${field}.client_secret`, 'a public client has no secret');
  }
  const redirectUris = strList(entry, 'redirect_uris', field, { check: httpUrl });
  if (redirectUris.length === 0) throw new ConfigError(`${field}.redirect_uris`, 'must not be empty');
  const postLogout = strList(entry, 'post_logout_redirect_uris', field, { required: false, check: httpUrl });
  let method = str(entry, 'token_endpoint_auth_method', field, { required: false });
  if (method !== undefined && !AUTH_METHODS.includes(method)) {
    throw new ConfigError(`${field}.token_endpoint_auth_method`, `must be one of ${AUTH_METHODS.join(', ')}`);
  }
  if (isPublic && method !== undefined && method !== 'none') {
    throw new ConfigError(`${field}.token_endpoint_auth_method`, 'a public client uses "none"');
  }
  if (!isPublic && method === 'none') {
    throw new ConfigError(`${field}.token_endpoint_auth_method`, 'use "public": true for a client without secret');
  }
  method ??= isPublic ? 'none' : 'client_secret_basic';
  const alg = str(entry, 'id_token_signed_response_alg', field, { required: false }) ?? 'RS256';
  if (!SIGNING_ALGS.includes(alg)) {
    throw new ConfigError(`${field}.id_token_signed_response_alg`, `must be one of ${SIGNING_ALGS.join(', ')}`);
  }
  const metadata = {
    client_id: clientId,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogout,
    token_endpoint_auth_method: method,
    id_token_signed_response_alg: alg,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    require_auth_time: true,
  };
  if (secret !== undefined) metadata.client_secret = secret;
  const name = str(entry, 'client_name', field, { required: false });
  if (name !== undefined) metadata.client_name = name;
  return metadata;
}

const TTL_FIELDS = ['IdToken', 'AccessToken', 'AdminToken', 'Session'];

/**
 * Parses the clients file. Accepted shapes: an array of clients, or
 * `{ "clients": [...], "tenant": "...", "audiences": [...], "ttl": {...} }`.
 */
export function parseProviderConfig(raw) {
  const obj = Array.isArray(raw) ? { clients: raw } : raw;
  if (!isObject(obj)) throw new ConfigError('(root)', 'must be an object or an array of clients');
  checkKeys(obj, '', ['clients', 'tenant', 'audiences', 'ttl']);
  if (!Array.isArray(obj.clients)) throw new ConfigError('clients', 'must be an array');
  const clients = obj.clients.map((c, i) => parseClient(c, `clients[${i}]`));
  const seen = new Set();
  clients.forEach((c, i) => {
    if (seen.has(c.client_id)) throw new ConfigError(`clients[${i}].client_id`, `duplicate "${c.client_id}"`);
    seen.add(c.client_id);
  });
  if (!seen.has(INSTALLER_CLIENT_ID)) {
    clients.push(parseClient({
      client_id: INSTALLER_CLIENT_ID,
      client_name: 'Portcullis connector installer',
      public: true,
      redirect_uris: [INSTALLER_REDIRECT_URI],
    }, 'installer'));
  }
  const tenant = str(obj, 'tenant', '', { required: false }) ?? DEFAULT_TENANT;
  const audiences = obj.audiences === undefined ? [...DEFAULT_AUDIENCES] : strList(obj, 'audiences', '');
  const ttl = { IdToken: 3600, AccessToken: 3600, AdminToken: 600, Session: 8 * 3600 };
  if (obj.ttl !== undefined) {
    if (!isObject(obj.ttl)) throw new ConfigError('ttl', 'must be an object');
    checkKeys(obj.ttl, 'ttl', TTL_FIELDS);
    for (const [k, v] of Object.entries(obj.ttl)) {
      if (!Number.isInteger(v) || v < 1 || v > 30 * 86400) {
        throw new ConfigError(`ttl.${k}`, 'must be a whole number of seconds between 1 and 2592000');
      }
      ttl[k] = v;
    }
  }
  return { clients, tenant, audiences, ttl };
}

const USER_FIELDS = ['sub', 'username', 'password', 'name', 'email', 'groups', 'roles', 'mfa'];
const MFA_MODES = ['none', 'on-demand', 'always'];

/** Parses the users file: `{ "users": [ {sub, username, password, name, email, groups, roles, mfa} ] }`. */
export function parseUsers(raw) {
  if (!isObject(raw)) throw new ConfigError('(root)', 'must be an object');
  checkKeys(raw, '', ['users']);
  if (!Array.isArray(raw.users)) throw new ConfigError('users', 'must be an array');
  const bySub = new Map();
  const byName = new Map();
  raw.users.forEach((u, i) => {
    const field = `users[${i}]`;
    if (!isObject(u)) throw new ConfigError(field, 'must be an object');
    checkKeys(u, field, USER_FIELDS);
    const user = {
      sub: str(u, 'sub', field),
      username: str(u, 'username', field),
      password: str(u, 'password', field),
      name: str(u, 'name', field),
      email: str(u, 'email', field),
      groups: strList(u, 'groups', field, { required: false }),
      roles: strList(u, 'roles', field, { required: false }),
      mfa: str(u, 'mfa', field, { required: false }) ?? 'none',
    };
    if (!MFA_MODES.includes(user.mfa)) throw new ConfigError(`${field}.mfa`, `must be one of ${MFA_MODES.join(', ')}`);
    if (bySub.has(user.sub)) throw new ConfigError(`${field}.sub`, `duplicate "${user.sub}"`);
    if (byName.has(user.username)) throw new ConfigError(`${field}.username`, `duplicate "${user.username}"`);
    bySub.set(user.sub, user);
    byName.set(user.username, user);
  });
  return { bySub, byName };
}

/** Reads and parses a JSON file, naming the file in errors. */
export function readJson(path) {
  let text;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path}: ${err.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: invalid JSON: ${err.message}`);
  }
}
