#!/usr/bin/env bash
# Installs, idempotently, what `make fuzz` needs: the nightly toolchain (libFuzzer
# and the sanitizers need it) and cargo-fuzz. `make test` needs neither: it replays
# the corpora on stable (fuzz-targets/tests/replay.rs).
set -euo pipefail
say() { printf '[setup-fuzz] %s\n' "$*"; }
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
say "ok"
