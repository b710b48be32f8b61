#!/usr/bin/env bash
# Installs, idempotently, what `make dist` needs beyond scripts/setup.sh: the
# x86_64-unknown-linux-musl Rust target (static portcullis-edge and portcullis-connector)
# and Debian's musl-tools (musl-gcc: ring's C and assembly parts are compiled for musl).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup-dist] %s\n' "$*"; }

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  say "adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  say "installing Debian packages: musl-tools"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq musl-tools >/dev/null
fi
say "ok"
