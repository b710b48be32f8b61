#!/bin/sh
# One-shot (provider image): signs a connector admin in at the provider with
# tests/idp/admin-token.mjs and writes the admin token (valid 10 minutes) for the
# registration step. Runs in the provider's network namespace, so the issuer URL
# (http://127.0.0.1:9000, the browser's view) reaches the provider.
#   PORTCULLIS_ISSUER      default http://127.0.0.1:9000
#   PORTCULLIS_ADMIN_USER  default carol (holds the connector-admin role)
#   PORTCULLIS_ADMIN_PASSWORD default carol-password (the demo's published password)
#   PORTCULLIS_TOKEN_FILE  default /var/lib/portcullis/token/admin-token
#   PORTCULLIS_IDP_DIR     default /opt/portcullis-idp (where the image has tests/idp)
set -eu
issuer=${PORTCULLIS_ISSUER:-http://127.0.0.1:9000}
user=${PORTCULLIS_ADMIN_USER:-carol}
password=${PORTCULLIS_ADMIN_PASSWORD:-carol-password}
out=${PORTCULLIS_TOKEN_FILE:-/var/lib/portcullis/token/admin-token}
node "${PORTCULLIS_IDP_DIR:-/opt/portcullis-idp}/admin-token.mjs" --issuer "$issuer" --user "$user" --password "$password" > "$out.tmp"
mv "$out.tmp" "$out"
echo "admin token for $user written to $out"
