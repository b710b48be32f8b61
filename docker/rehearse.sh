#!/usr/bin/env bash
# Rehearses docker-compose.yml where no container engine runs: starts each service's command
# as a plain process, in the compose start order, waiting on each service's own health check
# (docker/healthcheck.sh, the provider's node probe), inside a private mount and network
# namespace (root and unshare needed; nothing leaks onto the machine's network or files):
#   - the container host names (idp, edge, app-sample, app-admin) resolve to loopback through a
#     private /etc/hosts, so docker/edge.json and envoy-configs/compose.yaml run unchanged;
#   - /var/lib is a private tmpfs, so the named volumes keep their container paths;
#   - the same entry scripts run: edge-start.sh, admin-token.sh, connector-register.sh,
#     envoy-start.sh;
#   - Envoy runs from a directory holding exactly the files the envoy stage of
#     docker/portcullis.Dockerfile puts into its image (its COPY lines, the modules from the
#     builder's cargo command), so the image's file set is shown to be enough;
# then scripts/verify.sh drives the whole-system checks against it on 127.0.0.1:10000.
#
# Not rehearsed (needs an engine): the images themselves (their build, user ids and file
# ownership), the two networks' isolation, Envoy's fixed address (the edge therefore does not
# trust Envoy's X-Forwarded-* here, which the checks do not depend on).
#
#   docker/rehearse.sh          (scripts/check-deploy.sh --rehearse runs it)
# Needs: make build (the .wasm files), portcullis-edge, portcullis-connector and sample-app
# (PORTCULLIS_BIN_DIR, else target/native or target/debug), node with tests/idp's packages,
# .tools/venv/bin/envoy, curl, redis-server (scripts/setup.sh installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ ${PORTCULLIS_REHEARSAL_NS:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "rehearse.sh needs root (for unshare)" >&2; exit 2; }
  exec unshare --mount --net env PORTCULLIS_REHEARSAL_NS=1 "$0" "$@"
fi

say() { printf '[rehearse] %s\n' "$*"; }
work=$(mktemp -d /tmp/portcullis-rehearsal.XXXXXX)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $status != 0 ]]; then
    for log in "$work"/*.log; do
      [[ -s $log ]] || continue
      printf '\n--- %s (last lines) ---\n' "$(basename "$log")"
      tail -n 15 "$log"
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

# The private network and files.
ip link set lo up
{ cat /etc/hosts; echo "127.0.0.1 idp edge app-sample app-admin envoy redis"; } >"$work/hosts"
mount --bind "$work/hosts" /etc/hosts
mount -t tmpfs tmpfs /var/lib
mkdir -p /var/lib/portcullis/{edge,edge-public,connector,token,envoy-socket,redis}

# The images' commands, from this repository.
bins=${PORTCULLIS_BIN_DIR:-}
if [[ -z $bins ]]; then
  for d in target/native target/debug; do
    if [[ -x $d/portcullis-edge && -x $d/portcullis-connector && -x $d/sample-app ]]; then bins=$d; break; fi
  done
fi
[[ -n $bins ]] || { echo "build the binaries first: make build" >&2; exit 2; }
mkdir -p "$work/bin"
for b in portcullis-edge portcullis-connector sample-app; do ln -s "$root/$bins/$b" "$work/bin/$b"; done
ln -s "$root/docker/healthcheck.sh" "$work/bin/portcullis-healthcheck"
ln -s "$root/docker/edge-start.sh" "$work/bin/portcullis-edge-start"
ln -s "$root/docker/connector-register.sh" "$work/bin/portcullis-connector-register"
ln -s "$root/docker/admin-token.sh" "$work/bin/portcullis-admin-token"
ln -s "$root/${ENVOY_BIN:-.tools/venv/bin/envoy}" "$work/bin/envoy"
export PATH="$work/bin:$PATH"

start() { # start NAME DIR COMMAND...: a long-running service, logged to $work/NAME.log
  local name=$1 dir=$2
  shift 2
  (cd "$dir" && exec "$@") >"$work/$name.log" 2>&1 &
  pids+=($!)
}
healthy() { # healthy NAME CHECK...: the service's health check, retried for 60 s
  local name=$1
  shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then say "$name is healthy"; return 0; fi
    sleep 0.2
  done
  echo "[rehearse] $name never became healthy" >&2
  return 1
}

say "idp"
start idp tests/idp node server.mjs --host 0.0.0.0 --port 9000 --issuer http://127.0.0.1:9000 \
  --config clients.demo.json
healthy idp node -e \
  "fetch('http://127.0.0.1:9000/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"

say "redis (the edge's shared store)"
start redis /var/lib/portcullis/redis redis-server --port 6379 --appendonly yes --save "" --protected-mode no
healthy redis redis-cli -h redis ping

say "edge (docker/edge.json)"
start edge . env PORTCULLIS_EDGE_CONFIG="$root/docker/edge.json" portcullis-edge-start
healthy edge portcullis-healthcheck http 9102 /metrics portcullis_edge_

say "admin-token (one-shot)"
PORTCULLIS_IDP_DIR="$root/tests/idp" portcullis-admin-token >"$work/admin-token.log" 2>&1
say "connector-register (one-shot)"
portcullis-connector-register >"$work/connector-register.log" 2>&1
grep -q '"edge:8442"' /var/lib/portcullis/connector/connector.json ||
  { echo "[rehearse] the connector was not given edge:8442" >&2; exit 1; }

say "apps"
start app-sample . sample-app 0.0.0.0:8081 "Portcullis sample app"
start app-admin . sample-app 0.0.0.0:8082 "Portcullis admin app"
healthy app-sample portcullis-healthcheck http 8081 /
healthy app-admin portcullis-healthcheck http 8082 /

say "connector"
start connector . portcullis-connector run --state-dir /var/lib/portcullis/connector
healthy connector portcullis-healthcheck tunnel 8442

say "envoy (the envoy image's files only, from the Dockerfile's stage: scripts/check_deploy.py --materialise)"
python=.tools/venv/bin/python
[[ -x $python ]] || python=python3
"$python" scripts/check_deploy.py --materialise envoy "$work/envoy-image" >"$work/envoy-image.log"
start envoy "$work/envoy-image/portcullis" ./docker/envoy-start.sh
healthy envoy portcullis-healthcheck http 9901 /ready LIVE

say "scripts/verify.sh http://127.0.0.1:10000"
scripts/verify.sh http://127.0.0.1:10000
