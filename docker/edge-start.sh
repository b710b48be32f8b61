#!/bin/sh
# Entry point of the edge container: makes sure the connector CA exists, publishes its
# certificate and SHA-256 fingerprint (public material only, never the key) to
# PORTCULLIS_EXPORT_DIR for the connector registration, then runs the edge.
#   PORTCULLIS_EDGE_CONFIG  default /etc/portcullis/edge.json
#   PORTCULLIS_EXPORT_DIR   default /var/lib/portcullis/edge-public (empty: export nothing)
set -eu
config=${PORTCULLIS_EDGE_CONFIG:-/etc/portcullis/edge.json}
export_dir=${PORTCULLIS_EXPORT_DIR-/var/lib/portcullis/edge-public}
portcullis-edge check --config "$config"
fingerprint=$(portcullis-edge fingerprint --config "$config")
if [ -n "$export_dir" ]; then
  state_dir=$(sed -n 's/^ *"state_dir": *"\([^"]*\)".*/\1/p' "$config" | head -n 1)
  cp "$state_dir/connector-ca.pem" "$export_dir/connector-ca.pem.tmp"
  mv "$export_dir/connector-ca.pem.tmp" "$export_dir/connector-ca.pem"
  printf '%s\n' "$fingerprint" > "$export_dir/fingerprint"
  echo "connector CA $fingerprint published in $export_dir"
fi
exec portcullis-edge run --config "$config"
