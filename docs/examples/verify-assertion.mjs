// Verifies Portcullis's identity assertion (X-Portcullis-Jwt-Assertion) in a Node backend,
// with no dependency: `node docs/examples/verify-assertion.mjs JWKS_URL ISSUER AUDIENCE < token`
// prints the claims. Cache the JWKS in a real app (it is public and cacheable).
import { createPublicKey, verify } from 'node:crypto';

export async function verifyAssertion(token, { jwksUrl, issuer, audience, skew = 60 }) {
  const [h, p, s] = token.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  if (header.alg !== 'EdDSA') throw new Error('not an EdDSA assertion');
  const { keys } = await (await fetch(jwksUrl)).json();
  const jwk = keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error('unknown key');
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  if (!verify(null, Buffer.from(`${h}.${p}`), key, Buffer.from(s, 'base64url'))) throw new Error('bad signature');
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  const now = Date.now() / 1000;
  if (claims.iss !== issuer || claims.aud !== audience) throw new Error('not for this app');
  if (claims.exp + skew <= now || claims.iat - skew > now) throw new Error('expired');
  return claims; // claims.sub, claims.email, claims.groups, ...
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [jwksUrl, issuer, audience] = process.argv.slice(2);
  let token = '';
  for await (const chunk of process.stdin) token += chunk;
  console.log(JSON.stringify(await verifyAssertion(token.trim(), { jwksUrl, issuer, audience })));
}
