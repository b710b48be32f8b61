#!/usr/bin/env bash
# Runs the whole system locally in the foreground (see tests/e2e/src/stack.rs and
# tests/e2e/src/bin/portcullis-demo.rs); Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
# LAYOUT=split (make demo LAYOUT=split): one Envoy filter per stage instead of portcullis.wasm.
exec target/native/portcullis-demo ${LAYOUT:+--layout "$LAYOUT"}
