#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for FUZZ_SECONDS each,
# one at a time, on one core. Each starts from its committed corpus
# (fuzz/corpus/<target>) and keeps what it finds in target/fuzz/corpus/<target>;
# a crash input lands in target/fuzz/artifacts/<target>/ and the run fails: copy
# it to fuzz/regressions/<target>/ with the fix. The table of executions and
# coverage is written to target/fuzz/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-fuzz.sh
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}"
out=target/fuzz
mkdir -p "$out"
report="$out/report.md"
printf '| target | seconds | executions | exec/s | cov | ft | corpus | result |\n|---|---|---|---|---|---|---|---|\n' > "$report"
(cd fuzz && cargo +nightly fuzz build --release)
failed=0
for t in $targets; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  log="$out/$t.log"
  echo "[fuzz] $t for ${seconds}s"
  result=ok
  # -rss_limit_mb: a parser that grows memory without bound fails here too.
  if ! (cd fuzz && cargo +nightly fuzz run --release "$t" "../$out/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="../$out/artifacts/$t/" -print_final_stats=1) >"$log" 2>&1; then
    result=FAILED
    failed=1
  fi
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" || echo "?")
  rate=$(grep -oP 'stat::average_exec_per_sec:\s*\K[0-9]+' "$log" || echo "?")
  cov=$(grep -oP 'cov: \K[0-9]+' <<<"$last" || echo "?")
  ft=$(grep -oP 'ft: \K[0-9]+' <<<"$last" || echo "?")
  corp=$(grep -oP 'corp: \K[0-9]+' <<<"$last" || echo "?")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "$execs" "$rate" "$cov" "$ft" "$corp" "$result" >> "$report"
  echo "[fuzz] $t: $execs executions, cov $cov, ft $ft, $result"
done
cat "$report"
exit "$failed"
