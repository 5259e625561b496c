#!/usr/bin/env bash
# bench/instr_ab.sh - instructions per delivery of two firebridge binaries, counted by valgrind's
# callgrind: a figure other work on a shared machine cannot blur, for levers worth a few per cent
# of the daemon's user-space CPU that bench/daemon_ab.sh (time) cannot resolve under load.  Each
# binary runs the seed recipe (bench/seed_daemon.sh) under callgrind; after a warm-up of WARM
# alerts its counters are zeroed (callgrind_control -z), firebridge-loadgen posts ALERTS alerts
# at RATE/s, the counters are dumped (callgrind_control -d) and divided by the deliveries.
# Instructions are not time: cache misses and system calls are not in them (daemon_ab.sh counts
# the calls).  With TOP=N, the N functions with the most instructions (self) of the last B run.
#
# usage: bench/instr_ab.sh BIN_A BIN_B [ROUNDS [BUILD_DIR]]   (ROUNDS 1, BUILD_DIR build)
# Env: ALERTS (3000), WARM (1000), RATE (1000), TOP (0), KEEP (a path: keep the last dump there),
# DUMP_LINE (yes: per source line, for callgrind_annotate --auto=yes).  Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-1} build=${4:-build}
lg=$build/tools/loadgen/firebridge-loadgen
alerts=${ALERTS:-3000} warm=${WARM:-1000} rate=${RATE:-1000}
command -v valgrind >/dev/null || { echo "instr_ab.sh: valgrind is not installed" >&2; exit 1; }
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
seed_scratch
send() { # SINK_PORT N -> deliveries counted by the loadgen
  "$lg" --target "127.0.0.1:$fb_port" --sink-listen "127.0.0.1:$1" --rate "$rate/s" \
    --duration $(( $2 / rate + 2 )) --warmup 0 --max-alerts "$2" --connections 8 --drain 30 \
    --no-metrics --quiet --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["delivered"])'
}
one() { # BIN -> one line of figures
  local bin=$1 port out
  port=$(free_port)
  out=$tmp/cg.out
  rm -f "$out"*
  SEED_PREFIX=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-line=${DUMP_LINE:-no})
  seed_daemon_start "$bin" "127.0.0.1:$port" "$tmp"
  send "$port" "$warm" >/dev/null
  callgrind_control -z "$fb_pid" >/dev/null 2>&1
  local n
  n=$(send "$port" "$alerts")
  callgrind_control -d "$fb_pid" >/dev/null 2>&1
  kill "$fb_pid"; wait "$fb_pid" 2>/dev/null || true
  fb_pid=
  local dump
  dump=$(ls -t "$out".* 2>/dev/null | grep -v '\.0*$' | head -1 || true)
  [ -n "$dump" ] || dump=$(ls -t "$out"* | head -1)
  local ir
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  printf '%s: delivered %s, %.0f instructions per delivery\n' "$bin" "$n" \
    "$(awk -v i="$ir" -v n="$n" 'BEGIN {print i / n}')"
  last_dump=$dump
  cp "$dump" "$tmp/last.cg"
  [ -z "${KEEP:-}" ] || cp "$dump" "$KEEP"
}
echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); $alerts alerts at $rate/s after $warm, under callgrind"
for _ in $(seq "$rounds"); do
  one "$a"
  one "$b"
done
if [ "${TOP:-0}" -gt 0 ]; then
  callgrind_annotate --inclusive=no --auto=no --threshold=100 "$tmp/last.cg" 2>/dev/null |
    grep -E "^ *[0-9,]+ +\([ 0-9.]+%\) +[^ ]" | grep -v "PROGRAM TOTALS" | head -n "$TOP"
fi
