#!/usr/bin/env bash
# Makes the demo's self-signed TLS certificate for Envoy's HTTPS listener
# (127.0.0.1:10443): CN localhost, SANs localhost, *.localhost, 127.0.0.1, ::1.
# The key is for local demos only; it is public in this repository. Never use it
# for anything reachable from another machine.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=localhost/O=Portcullis demo" \
  -addext "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1,IP:::1" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout demo.key -out demo.crt 2>/dev/null
chmod 0644 demo.crt demo.key
echo "wrote $(pwd)/demo.crt and demo.key"
