#!/usr/bin/env bash
# bench/daemon_ab.sh - two firebridge binaries under the same firebridge-loadgen load, alternately,
# in one invocation: the daemon's CPU time per delivery (user + system from /proc/<pid>/stat) and
# its system calls per delivery (perf stat on syscall tracepoints: exact counts that other work
# on the machine cannot blur), and perf's task-clock per delivery while perf is attached.  Used for the before/after of each lever in bench/README.md.
#
# usage: bench/daemon_ab.sh BIN_A BIN_B [ROUNDS [BUILD_DIR]]   (ROUNDS 3, BUILD_DIR build)
# Env: SECONDS_RUN (3), CONNS (32), RATE (0: closed loop), A_FLAGS and B_FLAGS (extra daemon
# flags for each side, e.g. B_FLAGS="--pipeline 8" with the same binary twice).  Needs perf (Debian: linux-perf) and
# permission to trace (root, or kernel.perf_event_paranoid <= -1).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-3} build=${4:-build}
lg=$build/tools/loadgen/firebridge-loadgen
command -v perf >/dev/null || { echo "daemon_ab.sh: perf is not installed (linux-perf)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
SEED_PREFIX=()
one() { # BIN FLAGS -> one line of figures
  local bin=$1 flags=$2 port fb_pid fb_port perf_pid cpu d
  port=$(free_port)
  # shellcheck disable=SC2086
  seed_daemon_start "$bin" "127.0.0.1:$port" "$tmp" $flags
  local ev=(-e task-clock)
  for s in epoll_ctl epoll_wait writev readv write read ioctl sendto recvfrom pwrite64 fdatasync clock_gettime timerfd_settime; do
    ev+=(-e "syscalls:sys_enter_$s")
  done
  perf stat -x, "${ev[@]}" -p "$fb_pid" -o "$tmp/stat" 2>/dev/null &
  perf_pid=$!
  sleep 0.3
  "$lg" --target "127.0.0.1:$fb_port" --sink-listen "127.0.0.1:$port" --duration "${SECONDS_RUN:-3}" \
    --warmup 0.5 --connections "${CONNS:-32}" --rate "${RATE:-0}" --quiet --drain 30 --json \
    >"$tmp/lg.json" 2>/dev/null || true
  cpu=$(awk '{print $14 + $15}' "/proc/$fb_pid/stat")
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  kill "$fb_pid"
  wait "$fb_pid" 2>/dev/null || true
  d=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["delivered"])' "$tmp/lg.json")
  printf '%s%s: delivered %s, cpu %s us/delivery; per delivery:' "$bin" "${flags:+ $flags}" "$d" \
    "$(awk -v c="$cpu" -v d="$d" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c * 1e6 / hz / d}')"
  awk -F, -v d="$d" '/task-clock/ {printf " task-clock %.1f us", $1 * 1000 / d}
                     /syscalls/ {split($3, a, "sys_enter_"); printf " %s %.2f", a[2], $1 / d}
                     END {print ""}' "$tmp/stat"
}
echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  one "$a" "${A_FLAGS:-}"
  one "$b" "${B_FLAGS:-}"
done
