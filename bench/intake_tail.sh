#!/usr/bin/env bash
# bench/intake_tail.sh - the intake's latency tail of two firebridge binaries at the same fixed
# open-loop rate, alternately, in one invocation: firebridge-loadgen posts the seed recipe's alerts
# at RATE/s (latency from each request's intended send time) and reports p50, p90, p99, p99.9
# and max of the intake and the end-to-end p99.  Used for levers that move the tail rather than
# the CPU (bench/README.md, "intake tail").
#
# usage: bench/intake_tail.sh BIN_A BIN_B [ROUNDS [BUILD_DIR]]   (ROUNDS 3, BUILD_DIR build)
# Env: RATE (12000), SECONDS_RUN (5), CONNS (32), FB_FLAGS (extra daemon flags), B_FLAGS (more
# flags for B only: one binary under two settings, e.g. A=B and B_FLAGS="--fsync off"), PIN=1
# (the daemon on CPU 0, the loadgen on CPU 1).  Also prints the loadgen's own send lag p99 (its
# lateness, part of every intake latency).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-3} build=${4:-build}
lg=$build/tools/loadgen/firebridge-loadgen
rate=${RATE:-12000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
SEED_PREFIX=() lg_pin=()
if [ "${PIN:-0}" = 1 ]; then
  SEED_PREFIX=(taskset -c 0) lg_pin=(taskset -c 1)
fi
one() { # LABEL BIN [FLAGS] -> one line of figures
  local label=$1 bin=$2 more=${3:-} sink fb_pid fb_port
  sink=127.0.0.1:$(free_port)
  # shellcheck disable=SC2086
  seed_daemon_start "$bin" "$sink" "$tmp" --drain-timeout 1 ${FB_FLAGS:-} $more
  "${lg_pin[@]}" "$lg" --target "127.0.0.1:$fb_port" --sink-listen "$sink" --connections "${CONNS:-32}" \
    --duration "${SECONDS_RUN:-5}" --warmup 1 --rooms 1000 --drain 60 --quiet --json \
    --scenario seed --rate "$rate/s" >"$tmp/out.json" 2>"$tmp/err" || true
  kill "$fb_pid" 2>/dev/null || true
  wait "$fb_pid" 2>/dev/null || true
  python3 - "$tmp/out.json" "$label" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
i, e = v["intake"], v["end_to_end"]
print("  %-2s intake p50 %6.3f  p90 %6.3f  p99 %6.3f  p99.9 %7.3f  max %7.3f ms   e2e p99 %6.3f ms"
      "  send lag p99 %6.3f ms  lost %d" % (sys.argv[2], i["p50_ms"], i["p90_ms"], i["p99_ms"],
                     i["p99_9_ms"], i["max_ms"], e["p99_ms"], v["send_lag"]["p99_ms"], v["lost"]))
PY
}
echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); $rate alerts/s open loop, A=$a B=$b${B_FLAGS:+ (B with $B_FLAGS)}${PIN:+ PIN=$PIN}"
for r in $(seq "$rounds"); do
  one A "$a"
  one B "$b" "${B_FLAGS:-}"
done
