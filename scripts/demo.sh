#!/usr/bin/env bash
# Runs the local demo in the foreground; Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh

ENVOY_CONFIG=${ENVOY_CONFIG:-envoy-configs/robots.yaml}
mkdir -p .demo
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "[demo] stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

target/release/sample-app 127.0.0.1:8081 "Portcullis sample app" > .demo/sample-app.log 2>&1 &
pids+=($!)
.tools/venv/bin/envoy -c "$ENVOY_CONFIG" --concurrency 2 --disable-hot-restart --base-id 4242 \
  --log-level info > .demo/envoy.log 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "[demo] Envoy failed to start; see .demo/envoy.log"; tail -20 .demo/envoy.log; exit 1; fi
  sleep 0.1
done

cat <<MSG

Portcullis demo is running (logs in .demo/):
  App through Envoy:   http://127.0.0.1:10000/          (the sample app; /headers shows what it receives)
  robots.txt:          http://127.0.0.1:10000/robots.txt (answered by the robots filter, never the app)
  Envoy admin:         http://127.0.0.1:9901/
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "[demo] a process exited; see .demo/*.log"
