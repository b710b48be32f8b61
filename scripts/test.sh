#!/usr/bin/env bash
# Every test: lint, native unit tests, host tests on the release .wasm files,
# end-to-end tests on stock Envoy, and the node (provider + browser) tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] building the release .wasm filters"
WASM_ONLY=1 scripts/build.sh
echo "[test] lint"
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
cargo clippy --quiet --target wasm32-wasip1 -p portcullis-robots -p portcullis-preauth \
  -p portcullis-conditional-access -p portcullis-cookie -p portcullis -p portcullis-proxy-wasm -- -D warnings
echo "[test] cargo test (unit, host, end-to-end)"
cargo test --workspace --no-fail-fast
echo "[test] host tests of the single-stage scenarios on the all-in-one module (PORTCULLIS_LAYOUT=all-in-one)"
PORTCULLIS_LAYOUT=all-in-one cargo test --no-fail-fast -p portcullis-host-tests -p portcullis-preauth \
  -p portcullis-conditional-access
for dir in tests/idp tests/browser; do
  if [ -f "$dir/package.json" ] && grep -q '"test"' "$dir/package.json"; then
    echo "[test] node tests in $dir"
    (cd "$dir" && npm test --silent)
  fi
done
echo "[test] release layout: scripts/dist.py --wasm-only, checked by scripts/check_dist.py with skopeo"
dist_tmp=$(mktemp -d)
.tools/venv/bin/python scripts/dist.py --wasm-only --dist "$dist_tmp"
.tools/venv/bin/python scripts/check_dist.py "$dist_tmp"/portcullis-* --skopeo --self-test
rm -rf "$dist_tmp"
echo "[test] every Envoy config the benchmarks generate validates (scripts/bench.py --check-configs)"
scripts/bench.py --check-configs
echo "[test] container and mesh deployment, offline (scripts/check-deploy.sh)"
scripts/check-deploy.sh
echo "[test] docker-compose.yml rehearsed without an engine (docker/rehearse.sh)"
docker/rehearse.sh
echo "[test] all passed"
