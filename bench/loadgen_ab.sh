#!/usr/bin/env bash
# bench/loadgen_ab.sh - the measuring tool's own cost: two firebridge-loadgen binaries, alternately,
# in one invocation, each driving the same firebridge (the seed recipe, bench/seed_daemon.sh)
# closed loop: the loadgen's system calls per alert (perf stat on its syscall tracepoints: exact
# counts, whatever else runs) and its CPU time per alert (getrusage, sender and sink together).
# The loadgen is the ceiling of bench/compare.sh's nginx figure, and its own lateness is part of
# every open-loop latency (its report's "send lag"): what it costs matters.
#
# usage: bench/loadgen_ab.sh LOADGEN_A LOADGEN_B [ROUNDS [FIREBRIDGE]]   (ROUNDS 2, build's daemon)
# Env: SECONDS_RUN (3), CONNS (32), RATE (0: closed loop).  Needs perf (Debian: linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-2} fb=${4:-build/src/firebridge}
command -v perf >/dev/null || { echo "loadgen_ab.sh: perf is not installed (linux-perf)" >&2; exit 1; }
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
seed_scratch
SEED_PREFIX=()
one() { # LOADGEN -> one line of figures
  local lg=$1 sink rate=()
  sink=127.0.0.1:$(free_port)
  seed_daemon_start "$fb" "$sink" "$tmp" --drain-timeout 1
  [ "${RATE:-0}" = 0 ] || rate=(--rate "$RATE/s")
  local ev=()
  for s in epoll_ctl epoll_wait ioctl readv writev read write sendto timerfd_settime; do
    ev+=(-e "syscalls:sys_enter_$s")
  done
  perf stat -x, -e raw_syscalls:sys_enter "${ev[@]}" -o "$tmp/stat" \
    "$lg" --target "127.0.0.1:$fb_port" --sink-listen "$sink" --connections "${CONNS:-32}" \
    --duration "${SECONDS_RUN:-3}" --warmup 0 --rooms 1000 --drain 30 --quiet --scenario seed \
    --json --no-metrics "${rate[@]}" >"$tmp/out.json" 2>/dev/null || true
  kill "$fb_pid"; wait "$fb_pid" 2>/dev/null || true
  fb_pid=
  python3 - "$tmp/out.json" "$tmp/stat" "$lg" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
st = {}
for line in open(sys.argv[2]):
    f = line.strip().split(',')
    if len(f) > 3 and f[0] and f[0][0].isdigit():
        st[f[2].replace('syscalls:sys_enter_', '').replace('raw_syscalls:sys_enter', 'all')] = float(f[0])
n = v['sent']
calls = ' '.join('%s %.2f' % (k, st[k] / n) for k in sorted(st) if k != 'all' and st[k])
print('%s: %d alerts at %.0f/s delivered; loadgen cpu %.1f us/alert; system calls per alert %.2f (%s)'
      % (sys.argv[3], n, v['delivered_per_s'], v['loadgen_cpu_ms'] * 1000 / n, st['all'] / n, calls))
PY
}
echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); daemon $fb"
for _ in $(seq "$rounds"); do
  one "$a"
  one "$b"
done
