#!/usr/bin/env node
// Demo/test OpenID provider for Portcullis. See README.md.
//
//   node tests/idp/server.mjs --port 9000 --config tests/idp/clients.demo.json
//
// Prints `READY <issuer>` on stdout once it listens (port 0 picks a free port), logs on stderr,
// stops cleanly on SIGINT/SIGTERM.

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseProviderConfig, parseUsers, readJson } from './lib/config.mjs';
import { startIdp } from './lib/idp.mjs';

const here = dirname(fileURLToPath(import.meta.url));

const USAGE = `usage: node server.mjs [--port 9000] [--host 127.0.0.1] [--config clients.json]
                      [--users users.json] [--issuer URL] [--keys-file jwks.json] [--quiet]

  --port       TCP port (0 = pick a free one; the READY line says which). Default 9000.
  --host       address to listen on. Default 127.0.0.1.
  --config     clients file (see README.md). Default: clients.demo.json beside this script.
  --users      users file. Default: users.json beside this script.
  --issuer     issuer URL when it is not http://HOST:PORT (e.g. behind a proxy).
  --keys-file  private JWKS to load, or to create (mode 0600) when missing; default: new keys each start.
  --quiet      no log lines on stderr.
`;

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '9000' },
      host: { type: 'string', default: '127.0.0.1' },
      config: { type: 'string', default: join(here, 'clients.demo.json') },
      users: { type: 'string', default: join(here, 'users.json') },
      issuer: { type: 'string' },
      'keys-file': { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  fail(`${err.message}\n${USAGE}`);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port: not a port number: ${args.port}`);

let config;
let users;
try {
  config = parseProviderConfig(readJson(args.config));
} catch (err) {
  fail(`${args.config}: ${err.message}`);
}
try {
  users = parseUsers(readJson(args.users));
} catch (err) {
  fail(`${args.users}: ${err.message}`);
}

const log = args.quiet ? () => {} : (line) => process.stderr.write(`${new Date().toISOString()} idp ${line}\n`);

let idp;
try {
  idp = await startIdp({
    port, host: args.host, issuer: args.issuer, config, users, keysFile: args['keys-file'], log,
  });
} catch (err) {
  fail(`cannot start: ${err.message}`);
}
log(`issuer ${idp.issuer}; clients: ${config.clients.map((c) => c.client_id).join(', ')}; users: ${[...users.byName.keys()].join(', ')}`);
process.stdout.write(`READY ${idp.issuer}\n`);

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  await idp.close();
  process.exit(0);
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
