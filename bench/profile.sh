#!/usr/bin/env bash
# bench/profile.sh - where one firebridge binary spends its CPU under load: the daemon as
# bench/daemon_ab.sh and bench/compare.sh start it (seed Multi-Room recipe, limits lifted,
# journal default) under a closed-loop firebridge-loadgen run, `perf record -g` attached for
# SECONDS_PROF seconds of it, then the flat top of `perf report --no-children` (self time per
# symbol, share of the daemon's samples).  Used for the before/after profiles in bench/README.md.
#
# usage: bench/profile.sh BINARY [TOP [BUILD_DIR]]   (TOP 10, BUILD_DIR build)
# Env: SECONDS_PROF (5), CONNS (32), FREQ (999), KEEP (a path: keep perf.data there), CALLGRAPH
# (perf record's call-graph flags, -g; "--call-graph dwarf,32768" sees through code built without
# frame pointers), FB_FLAGS (extra daemon flags, e.g. "--pipeline 8").  Also prints the kernel's
# share by system call (perf report --children: the sys_* entry points).
# Needs perf (Debian: linux-perf) and permission to trace (root, or perf_event_paranoid <= -1).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 top=${2:-10} build=${3:-build}
lg=$build/tools/loadgen/firebridge-loadgen
secs=${SECONDS_PROF:-5}
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (linux-perf)" >&2; exit 1; }
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
seed_scratch
SEED_PREFIX=()
port=$(free_port)
# shellcheck disable=SC2086
seed_daemon_start "$bin" "127.0.0.1:$port" "$tmp" ${FB_FLAGS:-}
"$lg" --target "127.0.0.1:$fb_port" --sink-listen "127.0.0.1:$port" --duration $((secs + 2)) \
  --warmup 1 --connections "${CONNS:-32}" --quiet --drain 30 --json >"$tmp/lg.json" 2>/dev/null &
lg_pid=$!
sleep 1.5
perf record -F "${FREQ:-999}" ${CALLGRAPH:--g} -p "$fb_pid" -o "$tmp/perf.data" -- sleep "$secs" 2>/dev/null >/dev/null
wait "$lg_pid" || true
python3 - "$tmp/lg.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("delivered %s, lost %s" % (r.get("delivered"), r.get("lost")))
EOF
if [ -n "${KEEP:-}" ]; then cp "$tmp/perf.data" "$KEEP"; fi
report() { # SORT LINES
  perf report -i "$tmp/perf.data" --no-children --stdio --sort "$1" -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -n "$2" | sed 's/ *- *- *$//' || true
}
echo "== $bin: perf report --no-children (load: $(cut -d' ' -f1-3 /proc/loadavg)); by object:"
report dso 8
echo "== top $top symbols:"
report dso,symbol "$top"
echo "== system calls, share of the daemon's samples with what the kernel does under them:"
perf report -i "$tmp/perf.data" --children --stdio --sort symbol -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%.*\] (__x64_sys_|ksys_read)' | head -n 8 | awk '{print "    " $1 "  " $4}' || true
