#!/usr/bin/env bash
# bench/healthz.sh - requests/s of firebridge's GET /healthz next to a bare libevhtp hello-world
# (bench/hello_evhtp.c), measured in the same invocation with the same wrk settings, plus the
# daemon's idle RSS and open file descriptors.  Loopback, keep-alive.
#
# usage: bench/healthz.sh [FIREBRIDGE [HELLO_EVHTP]]   (defaults: build/src/firebridge,
#        build/bench/hello_evhtp).  Env: WRK_THREADS (1), WRK_CONNS (50), WRK_SECONDS (3),
#        ROUNDS (3).  The two servers are measured alternately, ROUNDS times each, and the best
#        round of each is reported, so that load from other processes skews both alike.
set -euo pipefail
cd "$(dirname "$0")/.."
fb=${1:-build/src/firebridge}
hello=${2:-build/bench/hello_evhtp}
threads=${WRK_THREADS:-1}
conns=${WRK_CONNS:-50}
secs=${WRK_SECONDS:-3}
rounds=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "healthz.sh: wrk is not installed (contrib/deps.sh)" >&2; exit 1; }

tmp=$(mktemp -d)
cleanup() {
  [ -n "${fb_pid:-}" ] && kill "$fb_pid" 2>/dev/null || true
  [ -n "${hello_pid:-}" ] && kill "$hello_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() { # file -> port
  for _ in $(seq 100); do
    p=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/.*://')
    [ -n "$p" ] && { echo "$p"; return; }
    sleep 0.05
  done
  echo "healthz.sh: server did not start; log:" >&2; cat "$1" >&2; exit 1
}

"$fb" --listen 127.0.0.1:0 --data-dir "$tmp/data" --max-connections 4096 2>"$tmp/fb.log" &
fb_pid=$!
fb_port=$(wait_port "$tmp/fb.log")
"$hello" 127.0.0.1 0 >"$tmp/hello.log" 2>&1 &
hello_pid=$!
hello_port=$(wait_port "$tmp/hello.log")

sleep 0.3
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$fb_pid/status")
idle_fds=$(ls "/proc/$fb_pid/fd" | wc -l)

run() { # port -> req/s
  wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$1/healthz" |
    awk '/Requests\/sec/ {print $2}'
}
curl -fs "http://127.0.0.1:$fb_port/healthz" >/dev/null
fb_rps=0
hello_rps=0
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }
for r in $(seq "$rounds"); do
  x=$(run "$fb_port"); echo "  round $r firebridge: $x req/s" >&2; fb_rps=$(best "$fb_rps" "$x")
  y=$(run "$hello_port"); echo "  round $r bare      : $y req/s" >&2; hello_rps=$(best "$hello_rps" "$y")
done
busy_rss=$(awk '/VmRSS/ {print $2}' "/proc/$fb_pid/status")
after_fds=$(ls "/proc/$fb_pid/fd" | wc -l)

echo "wrk -t$threads -c$conns -d${secs}s, keep-alive, GET /healthz on loopback, best of $rounds"
printf '  firebridge /healthz : %10.0f req/s\n' "$fb_rps"
printf '  bare libevhtp hello : %10.0f req/s\n' "$hello_rps"
awk -v a="$fb_rps" -v b="$hello_rps" 'BEGIN { printf "  ratio firebridge/bare: %.2f\n", a / b }'
echo "firebridge idle RSS: ${idle_rss} kB, after the run: ${busy_rss} kB"
echo "firebridge open fds: idle ${idle_fds}, after the run ${after_fds}"
