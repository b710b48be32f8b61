#!/usr/bin/env bash
# Builds the release .wasm filters (and, unless WASM_ONLY=1, the native binaries with
# the `native` profile: panic = "unwind", in target/native), then prints their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
FILTERS=(portcullis-robots portcullis-preauth portcullis-conditional-access portcullis-cookie portcullis)
args=(); for f in "${FILTERS[@]}"; do args+=(-p "$f"); done
cargo build --quiet --release --target wasm32-wasip1 "${args[@]}"
if [ "${WASM_ONLY:-0}" != 1 ]; then
  cargo build --quiet --profile native -p portcullis-connector -p portcullis-e2e -p portcullis-cli --bins
fi
for f in "${FILTERS[@]}"; do
  path="target/wasm32-wasip1/release/${f//-/_}.wasm"
  printf '%-60s %8d bytes\n' "$path" "$(stat -c %s "$path")"
done
if [ "${WASM_ONLY:-0}" != 1 ]; then
  for b in target/native/portcullis-edge target/native/portcullis-connector target/native/portcullis target/native/sample-app; do
    [ -x "$b" ] && printf '%-60s %8d bytes\n' "$b" "$(stat -c %s "$b")"
  done
fi
exit 0
