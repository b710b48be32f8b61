#!/usr/bin/env bash
# Deterministic cost of the core work per authenticated request, natively:
# instructions (valgrind callgrind) for sealed-cookie open + 20-policy evaluation
# + decision line (filters/core/examples/request_cost.rs). Counts, not seconds:
# the same figure on a busy machine as on a quiet one. Two runs with different
# request counts cancel out start-up and configuration parsing.
# The wasm side of the same view (fuel per request in the test host, with
# budgets) is `cargo test -p portcullis-host-tests --test costs -- --nocapture`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
cargo build --quiet --release -p portcullis-core --example request_cost
bin=target/release/examples/request_cost
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out.$1" "$bin" "$1" >/dev/null 2>"$tmp/log.$1"
  sed -n 's/^summary: //p' "$tmp/out.$1"
}
lo=10; hi=1010
a=$(count $lo); b=$(count $hi)
per=$(( (b - a) / (hi - lo) ))
echo "native, cookie open + 20 policies + decision line: $per instructions per request (callgrind: $a Ir at $lo requests, $b Ir at $hi)"
