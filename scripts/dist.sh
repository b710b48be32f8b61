#!/usr/bin/env bash
# `make dist`: builds the release .wasm modules and the static (musl) portcullis-edge and
# portcullis-connector, writes dist/portcullis-<version>/ (scripts/dist.py: modules with their
# SHA-256, one OCI image layout per module, the binaries, a CycloneDX SBOM, SHA256SUMS) and
# checks it (scripts/check_dist.py, with skopeo). Needs scripts/setup.sh and
# scripts/setup-dist.sh (make dist runs both). See docs/dist.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The four single-stage modules and the all-in-one module (portcullis.wasm).
FILTERS=(portcullis-robots portcullis-preauth portcullis-conditional-access portcullis-cookie portcullis)
args=(); for f in "${FILTERS[@]}"; do args+=(-p "$f"); done
echo "[dist] building the release .wasm modules"
cargo build --quiet --locked --release --target wasm32-wasip1 "${args[@]}"
echo "[dist] building static portcullis-edge and portcullis-connector (x86_64-unknown-linux-musl)"
# The `native` profile: panic = unwind, so a panic ends one task, not every tunnel.
cargo build --quiet --locked --profile native --target x86_64-unknown-linux-musl \
  -p portcullis-connector --bin portcullis-edge --bin portcullis-connector
python=.tools/venv/bin/python
"$python" scripts/dist.py --dist dist
version=$("$python" -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
"$python" scripts/check_dist.py "dist/portcullis-$version" --skopeo --require-binaries
