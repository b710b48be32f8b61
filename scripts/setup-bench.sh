#!/usr/bin/env bash
# Installs, idempotently, what `make bench` needs beyond scripts/setup.sh:
# wrk (Debian), and rathole 0.5.0 from crates.io into .tools/rathole (the tunnel
# benchmarks' peer; built with its TLS transport, which links OpenSSL).
set -euo pipefail
cd "$(dirname "$0")/.."

RATHOLE_VERSION=0.5.0
say() { printf '[setup-bench] %s\n' "$*"; }

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! .tools/rathole/bin/rathole --version 2>/dev/null | grep -q "$RATHOLE_VERSION"; then
  # Not --locked: rathole 0.5.0's lock file pins time 0.3.29, which no longer
  # compiles with this rustc; cargo resolves the newest compatible versions instead.
  say "building rathole $RATHOLE_VERSION from crates.io into .tools/rathole (about 5 minutes on 2 cores)"
  cargo install --quiet rathole --version "$RATHOLE_VERSION" --no-default-features \
    --features server,client,tls --root .tools/rathole
fi
say "ok"
