#!/bin/sh
# One-shot (connector image): registers the connector with the edge once. Does nothing
# when the state directory already holds a registration (connector.json).
#   PORTCULLIS_EDGE_URL    default https://edge:8441 (the edge's registration listener)
#   PORTCULLIS_TOKEN_FILE  default /var/lib/portcullis/token/admin-token
#   PORTCULLIS_EDGE_CA     default /var/lib/portcullis/edge-public/connector-ca.pem (the edge's
#                          connector CA, published by the edge container; or set
#                          PORTCULLIS_EDGE_FINGERPRINT to pin the CA's SHA-256 instead)
#   PORTCULLIS_STATE_DIR   default /var/lib/portcullis/connector
#   PORTCULLIS_GROUP       default: the edge's first group
set -eu
state=${PORTCULLIS_STATE_DIR:-/var/lib/portcullis/connector}
if [ -f "$state/connector.json" ]; then
  echo "connector already registered ($state/connector.json)"
  exit 0
fi
set -- register --edge "${PORTCULLIS_EDGE_URL:-https://edge:8441}" \
  --token-file "${PORTCULLIS_TOKEN_FILE:-/var/lib/portcullis/token/admin-token}" \
  --state-dir "$state"
if [ -n "${PORTCULLIS_EDGE_FINGERPRINT:-}" ]; then
  set -- "$@" --edge-fingerprint "$PORTCULLIS_EDGE_FINGERPRINT"
else
  set -- "$@" --edge-ca "${PORTCULLIS_EDGE_CA:-/var/lib/portcullis/edge-public/connector-ca.pem}"
fi
if [ -n "${PORTCULLIS_GROUP:-}" ]; then
  set -- "$@" --group "$PORTCULLIS_GROUP"
fi
exec portcullis-connector "$@"
