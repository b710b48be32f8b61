#!/bin/sh
# Entry point of the Envoy container (official envoyproxy/envoy image, working directory
# /portcullis): replaces the public demo sealing key of envoy-configs/compose.yaml with
# PORTCULLIS_SEALING_KEY (base64 of 32 bytes; keep it in a .env file so sessions survive a
# restart) or, when unset, with a fresh random key, then runs Envoy. The module and
# certificate paths in the config stay relative to /portcullis.
set -eu
config=${PORTCULLIS_ENVOY_CONFIG:-envoy-configs/compose.yaml}
demo_key=cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA=
key=${PORTCULLIS_SEALING_KEY:-$(head -c 32 /dev/urandom | base64)}
case "$key" in
  *[!A-Za-z0-9+/=_-]*) echo "PORTCULLIS_SEALING_KEY is not base64" >&2; exit 2 ;;
esac
sed "s#$demo_key#$key#g" "$config" > /tmp/portcullis-envoy.yaml
exec envoy -c /tmp/portcullis-envoy.yaml --log-level "${ENVOY_LOG_LEVEL:-info}"
