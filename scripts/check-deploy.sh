#!/usr/bin/env bash
# Offline checks of the container and mesh deployment (no container engine, no cluster):
#   1. `docker-compose config` accepts docker-compose.yml (Debian's docker-compose: the same
#      schema check `up` does first);
#   2. scripts/check_deploy.py: compose invariants (health checks, start conditions, loopback-only ports,
#      the apps' network out of Envoy's reach, the tests' Envoy version, mounts) and that the
#      compose Envoy config, docker/edge.json and the services agree; the Dockerfiles' stages
#      (what each image holds, which build step makes it, the envoy image's files for its config);
#      the Kubernetes manifests against a schema of their CRDs, filter order, FAIL_CLOSE,
#      cross-references; `portcullis-edge check` on every edge.json; a self-test that each
#      kind of break is reported;
#   3. `envoy --mode validate` on envoy-configs/compose.yaml (from the repository root, as the
#      container runs it from /portcullis);
#   4. the filter configurations in envoy-configs/{istio,envoy-gateway}/ with the filters' own parsers
#      (cargo test -p portcullis-e2e --test deploy_manifests);
#   5. the shell scripts parse, and docker/healthcheck.sh works (HTTP and tunnel checks).
# Needs: docker-compose and PyYAML (scripts/setup.sh installs both), the release .wasm files
# (make build) and .tools/venv/bin/envoy. Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[check-deploy] %s\n' "$*"; }
die() { printf '[check-deploy] FAILED: %s\n' "$*" >&2; exit 1; }

command -v docker-compose >/dev/null ||
  die "docker-compose is missing (apt-get install -y docker-compose; scripts/setup.sh does it)"
python=.tools/venv/bin/python
[[ -x $python ]] || python=python3
"$python" -c 'import yaml' 2>/dev/null ||
  die "PyYAML is missing for $python (.tools/venv/bin/pip install pyyaml; scripts/setup.sh does it)"
envoy=${ENVOY_BIN:-.tools/venv/bin/envoy}
[[ -x $envoy ]] || die "no Envoy at $envoy (scripts/setup.sh installs it)"
for f in robots preauth conditional_access cookie; do
  [[ -f target/wasm32-wasip1/release/portcullis_$f.wasm ]] ||
    die "target/wasm32-wasip1/release/portcullis_$f.wasm is missing: run make build"
done

tmp=$(mktemp -d)
cleanup() {
  [[ -n ${server_pid:-} ]] && kill "$server_pid" 2>/dev/null
  [[ -n ${client_pid:-} ]] && kill "$client_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

say "1. docker-compose config"
docker-compose -f docker-compose.yml config -q || die "docker-compose.yml is invalid"
docker-compose -f docker-compose.yml config >"$tmp/compose.yml"

say "2. scripts/check_deploy.py"
edge_bin=
for d in "${PORTCULLIS_BIN_DIR:-}" target/native target/debug; do
  if [[ -n $d && -x $d/portcullis-edge ]]; then edge_bin=$d/portcullis-edge; break; fi
done
args=(--compose-config "$tmp/compose.yml" --self-test)
if [[ -n $edge_bin ]]; then
  args+=(--edge-bin "$edge_bin")
else
  say "   (no portcullis-edge binary built: edge.json files not run through \`portcullis-edge check\`)"
fi
"$python" scripts/check_deploy.py "${args[@]}" || die "scripts/check_deploy.py"

say "3. envoy --mode validate -c envoy-configs/compose.yaml"
"$envoy" --mode validate -c envoy-configs/compose.yaml >"$tmp/validate.log" 2>&1 ||
  { tail -n 20 "$tmp/validate.log" >&2; die "envoy-configs/compose.yaml does not validate"; }

say "4. filter configurations in envoy-configs/{istio,envoy-gateway}/ (the filters' own parsers)"
cargo test --quiet -p portcullis-e2e --test deploy_manifests || die "deploy_manifests"

say "5. shell scripts and docker/healthcheck.sh"
for s in scripts/verify.sh scripts/check-deploy.sh docker/healthcheck.sh; do
  bash -n "$s" || die "$s does not parse"
done
for s in docker/admin-token.sh docker/connector-register.sh docker/edge-start.sh docker/envoy-start.sh; do
  sh -n "$s" || die "$s does not parse"
done
if command -v shellcheck >/dev/null; then
  shellcheck scripts/verify.sh scripts/check-deploy.sh docker/*.sh || die "shellcheck"
fi
# A loopback HTTP server on a free port: /ok answers 200, anything else 404.
"$python" - "$tmp/port" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()
        self.wfile.write(b"portcullis_edge_tunnels_up 1\n")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
EOF
server_pid=$!
for _ in $(seq 100); do [[ -s $tmp/port ]] && break; sleep 0.05; done
port=$(cat "$tmp/port")
hc=docker/healthcheck.sh
$hc http "$port" /ok portcullis_edge_ || die "healthcheck http: a 200 with the text was not healthy"
! $hc http "$port" /missing 2>/dev/null || die "healthcheck http: a 404 was healthy"
! $hc http "$port" /ok no-such-text 2>/dev/null || die "healthcheck http: a missing text was healthy"
! $hc tunnel "$port" || die "healthcheck tunnel: healthy without a connection"
"$python" -c 'import socket, sys, time; c = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); time.sleep(30)' "$port" &
client_pid=$!
for _ in $(seq 100); do $hc tunnel "$port" && break; sleep 0.05; done
$hc tunnel "$port" || die "healthcheck tunnel: an established connection was not seen"

say "all passed"
