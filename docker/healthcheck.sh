#!/bin/bash
# Container health checks without curl (the runtime images stay slim):
#   healthcheck.sh http PORT [PATH] [TEXT]  exit 0 when an HTTP/1.1 GET http://127.0.0.1:PORT/PATH answers 200
#                                           (and, with TEXT, the answer contains TEXT)
#   healthcheck.sh tunnel PORT              exit 0 when this container has an ESTABLISHED TCP
#                                           connection to a remote port PORT (the connector's
#                                           outbound tunnel: the connector itself never listens)
set -euo pipefail

http_check() {
  local port=$1 path=${2:-/} text=${3:-} reply
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
  reply=$(timeout 5 cat <&3)
  exec 3<&-
  [[ $reply =~ ^HTTP/1\.[01]\ 200 ]] || return 1
  [[ -z $text || $reply == *"$text"* ]]
}

tunnel_check() {
  local port hex table
  port=$1
  printf -v hex '%04X' "$port"
  # /proc/net/tcp{,6}: "sl local_address rem_address st ..."; st 01 = ESTABLISHED.
  for table in /proc/net/tcp /proc/net/tcp6; do
    [[ -r $table ]] || continue
    while read -r _ _ rem st _; do
      if [[ $st == 01 && ${rem##*:} == "$hex" ]]; then
        return 0
      fi
    done < <(tail -n +2 "$table")
  done
  return 1
}

case "${1:-}" in
  http) shift; http_check "$@" ;;
  tunnel) shift; tunnel_check "$@" ;;
  *) echo "usage: $0 http PORT [PATH] [TEXT] | tunnel PORT" >&2; exit 2 ;;
esac
