// Configuration checks of the demo provider: errors name the field; server.mjs refuses bad files.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import {
  ConfigError, INSTALLER_CLIENT_ID, parseProviderConfig, parseUsers, readJson,
} from '../lib/config.mjs';
import { IDP_DIR, runNode, startServer, tempJson } from '../lib/testing.mjs';

const good = {
  client_id: 'app', client_secret: 's', redirect_uris: ['http://127.0.0.1:1/cb'],
};

function fieldOf(fn) {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `ConfigError expected, got ${err}`);
    return err.field;
  }
  assert.fail('no error');
  return undefined;
}

describe('clients file', () => {
  it('maps a confidential and a public client and adds the installer client', () => {
    const cfg = parseProviderConfig({
      clients: [good, { client_id: 'spa', public: true, redirect_uris: ['https://x.localhost/cb'], post_logout_redirect_uris: ['https://x.localhost/'] }],
    });
    const [app, spa, installer] = cfg.clients;
    assert.equal(app.token_endpoint_auth_method, 'client_secret_basic');
    assert.equal(app.client_secret, 's');
    assert.equal(app.require_auth_time, true);
    assert.deepEqual(app.response_types, ['code']);
    assert.equal(spa.token_endpoint_auth_method, 'none');
    assert.equal(spa.client_secret, undefined);
    assert.deepEqual(spa.post_logout_redirect_uris, ['https://x.localhost/']);
    assert.equal(installer.client_id, INSTALLER_CLIENT_ID);
    assert.equal(cfg.tenant, 'portcullis-demo');
    assert.deepEqual(cfg.audiences, ['portcullis-edge']);
    assert.equal(cfg.ttl.AdminToken, 600);
  });

  it('accepts a bare array of clients', () => {
    assert.equal(parseProviderConfig([good]).clients[0].client_id, 'app');
  });

  it('names the wrong field', () => {
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, colour: 1 }] })), 'clients[0].colour');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, client_secret: undefined }] })), 'clients[0].client_secret');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, redirect_uris: ['http://ok/', 'ftp://x'] }] })), 'clients[0].redirect_uris[1]');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, redirect_uris: [] }] })), 'clients[0].redirect_uris');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [good, good] })), 'clients[1].client_id');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, public: true }] })), 'clients[0].client_secret');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, token_endpoint_auth_method: 'none' }] })), 'clients[0].token_endpoint_auth_method');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [{ ...good, id_token_signed_response_alg: 'HS256' }] })), 'clients[0].id_token_signed_response_alg');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [], ttl: { IdToken: 0 } })), 'ttl.IdToken');
    assert.equal(fieldOf(() => parseProviderConfig({ clients: [], audiences: ['a', ''] })), 'audiences[1]');
    assert.equal(fieldOf(() => parseProviderConfig({ client: [] })), 'client');
  });
});

describe('users file', () => {
  it('loads the documented demo users', () => {
    const users = parseUsers(readJson(join(IDP_DIR, 'users.json')));
    assert.deepEqual([...users.byName.keys()], ['alice', 'bob', 'carol', 'dave', 'erin']);
    assert.equal(users.byName.get('bob').mfa, 'always');
    assert.equal(users.byName.get('erin').mfa, 'on-demand');
    assert.deepEqual(users.byName.get('carol').roles, ['connector-admin']);
    assert.deepEqual(users.byName.get('carol').groups, ['portcullis-connector-admins']);
    assert.deepEqual(users.byName.get('dave').groups, []);
    for (const u of users.byName.values()) assert.equal(u.password, `${u.username}-password`);
  });

  it('names the wrong field', () => {
    const u = {
      sub: 's', username: 'u', password: 'p', name: 'n', email: 'e',
    };
    assert.equal(fieldOf(() => parseUsers({ users: [{ ...u, mfa: 'sometimes' }] })), 'users[0].mfa');
    assert.equal(fieldOf(() => parseUsers({ users: [u, { ...u, sub: 't' }] })), 'users[1].username');
    assert.equal(fieldOf(() => parseUsers({ users: [{ ...u, groups: [1] }] })), 'users[0].groups[0]');
  });
});

describe('server.mjs', () => {
  it('refuses a bad clients file with exit code 2 and the field name', async () => {
    const bad = tempJson({ clients: [{ ...good, redirect_uri: 'x' }] });
    const { code, stderr, stdout } = await runNode([join(IDP_DIR, 'server.mjs'), '--port', '0', '--config', bad]);
    assert.equal(code, 2);
    assert.match(stderr, /clients\[0\]\.redirect_uri: unknown field/);
    assert.doesNotMatch(stdout, /READY/);
  });

  it('keeps its signing keys in --keys-file across restarts', async () => {
    const keysFile = join(tempJson({}), '..', 'jwks.json');
    const kids = [];
    for (let i = 0; i < 2; i += 1) {
      const idp = await startServer({ clients: [] }, ['--keys-file', keysFile, '--quiet']);
      try {
        const { keys } = await (await fetch(`${idp.issuer}/jwks`)).json();
        kids.push(keys.map((k) => k.kid).join(','));
      } finally {
        assert.equal(await idp.stop(), 0, 'exit 0 on SIGTERM');
      }
    }
    assert.equal(kids[0], kids[1]);
    assert.equal(statSync(keysFile).mode & 0o777, 0o600);
  });

  it('prints its usage', async () => {
    const { code, stdout } = await runNode([join(IDP_DIR, 'server.mjs'), '--help']);
    assert.equal(code, 0);
    assert.match(stdout, /--config/);
  });
});
