#!/usr/bin/env bash
# bench/compare.sh - firebridge next to nginx doing comparable work, in one run on one machine,
# both measured by firebridge-loadgen against its own sink:
#   (a) nginx, one worker, proxy_pass to a keep-alive upstream that is the loadgen's sink; the
#       loadgen posts HipChat notifications to nginx (--format notification);
#   (b) firebridge with the seed Multi-Room recipe (contrib/examples/multi-room.json) delivering
#       to the same sink; the loadgen posts alerts (--scenario seed: a new incident per alert);
#       with --pipeline PIPELINE (8): up to 8 deliveries in flight per pooled connection, those
#       started in one loop iteration written with one send (the sink, libevhtp, answers them);
#   (c) the same firebridge with --pipeline 1, the default: one delivery per connection at a
#       time, as nginx proxy_pass does upstream (its maximum, and its p99 at half of that).
# First each one's maximum, closed loop (notifications per second reaching the sink while
# loaded), then each one at half of its own maximum, open loop (intake and end-to-end p99).
# Prints both, their ratio (firebridge / nginx) and RESULT lines; exits non-zero when a
# notification is lost.
#
# usage: bench/compare.sh [BUILD_DIR]   (default: build)
# Env: CONNS (loadgen connections, 32), SECONDS_MAX (5), SECONDS_HALF (5), WARMUP (1), ROOMS
#      (1000), POOL (firebridge --pool-size and nginx upstream keepalive, 32), ROUNDS (1: the
#      maximum runs alternate ROUNDS times and each side keeps its best), FB_FLAGS (extra daemon
#      flags for both firebridge daemons, e.g. "--fsync off"), PIPELINE (8: (b)'s --pipeline),
#      SKIP_DEFAULT=1 (no (c)), HALF_ROUNDS (3: alternating half-load rounds, each p99 the median
#      over them), SKIP_HALF=1, PIN=1 (the servers on CPU 0, the loadgen on CPU 1:
#      whether the loadgen, which is both the sender and the sink, is the ceiling), BUSY_POLL=1
#      (with PIN=1: the loadgen runs with --busy-poll on its CPU; its own CPU figure is then its
#      wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
fb=$build/src/firebridge
lg=$build/tools/loadgen/firebridge-loadgen
conns=${CONNS:-32}
secs_max=${SECONDS_MAX:-5}
secs_half=${SECONDS_HALF:-5}
half_rounds=${HALF_ROUNDS:-3}
warmup=${WARMUP:-1}
rooms=${ROOMS:-1000}
pool=${POOL:-32}
rounds=${ROUNDS:-1}
pipeline=${PIPELINE:-8}
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || {
  echo "compare.sh: nginx is not installed (contrib/deps.sh)" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
for f in "$fb" "$lg"; do
  [ -x "$f" ] || { echo "compare.sh: $f missing: meson compile -C $build" >&2; exit 1; }
done

srv_pin=() lg_pin=()
lg_busy=()
if [ "${PIN:-0}" = 1 ]; then
  srv_pin=(taskset -c 0) lg_pin=(taskset -c 1)
  if [ "${BUSY_POLL:-0}" = 1 ]; then lg_busy=(--busy-poll); fi
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
wait_port() { # host:port
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "compare.sh: nothing listens on $1" >&2; exit 1
}
jnum() { # file key.path -> number
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$1" "$2"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

sink_port=$(free_port)
sink=127.0.0.1:$sink_port

# ---- nginx: one worker, proxy_pass to the sink over keep-alive connections
ng_port=$(free_port)
mkdir -p "$tmp/nginx/logs"
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    upstream sink {
        server $sink;
        keepalive $pool;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$ng_port;
        location / {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"${srv_pin[@]}" "$nginx_bin" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx/stderr" &
ng_pid=$!
pids+=("$ng_pid")
wait_port "127.0.0.1:$ng_port"

# ---- firebridge: the seed recipe pointed at the sink, limits lifted
SEED_PREFIX=("${srv_pin[@]}")
# shellcheck disable=SC2086
if [ "${SKIP_DEFAULT:-0}" != 1 ]; then # (c) first: fb_pid and fb_port end up (b)'s
  mkdir -p "$tmp/default"
  POOL=$pool seed_daemon_start "$fb" "$sink" "$tmp/default" --drain-timeout 1 ${FB_FLAGS:-}
  pids+=("$fb_pid")
  fb1_pid=$fb_pid fb1_port=$fb_port
fi
# shellcheck disable=SC2086
POOL=$pool seed_daemon_start "$fb" "$sink" "$tmp" --drain-timeout 1 --pipeline "$pipeline" \
  ${FB_FLAGS:-}
pids+=("$fb_pid")

ng_worker=
for _ in $(seq 100); do
  ng_worker=$(pgrep -P "$ng_pid" | head -1 || true)
  [ -n "$ng_worker" ] && break
  sleep 0.05
done
[ -n "$ng_worker" ] || { echo "compare.sh: no nginx worker" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run NAME TARGET_PORT SECONDS CPU_PID LOADGEN-FLAGS... -> $tmp/NAME.json, its summary on stdout,
# CPU_PID's CPU time (user + system) per delivered notification in $tmp/NAME.cpu (microseconds;
# less sensitive to other processes on the machine than the rate)
lost_total=0
run() {
  local name=$1 port=$2 secs=$3 cpu_pid=$4
  shift 4
  local rc=0 c0=0
  [ "$cpu_pid" = - ] || c0=$(cpu_ticks "$cpu_pid")
  "${lg_pin[@]}" "$lg" --target "127.0.0.1:$port" --sink-listen "$sink" --connections "$conns" \
    --duration "$secs" --warmup "$warmup" --rooms "$rooms" --drain 60 --quiet --json "${lg_busy[@]}" "$@" \
    >"$tmp/$name.json" 2>"$tmp/$name.err" || rc=$?
  if [ "$rc" -gt 1 ] || [ ! -s "$tmp/$name.json" ]; then
    echo "compare.sh: loadgen $name failed ($rc):" >&2; cat "$tmp/$name.err" >&2; exit 1
  fi
  lost_total=$((lost_total + $(jnum "$tmp/$name.json" lost)))
  local cpu=-
  [ "$cpu_pid" = - ] || cpu=$(awk -v a="$c0" -v b="$(cpu_ticks "$cpu_pid")" -v hz="$hz" \
    -v n="$(jnum "$tmp/$name.json" delivered)" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
  echo "$cpu" >"$tmp/$name.cpu"
  local lgcpu
  lgcpu=$(awk -v ms="$(jnum "$tmp/$name.json" loadgen_cpu_ms)" \
    -v n="$(jnum "$tmp/$name.json" delivered)" 'BEGIN {printf "%.1f", ms * 1e3 / n}')
  printf '  %-14s delivered/s %8.0f  intake/s %8.0f  intake p99 %8.3f ms  e2e p99 %9.3f ms  lost %s  cpu %s us/notification (loadgen %s)\n' \
    "$name" "$(jnum "$tmp/$name.json" delivered_per_s)" "$(jnum "$tmp/$name.json" intake_per_s)" \
    "$(jnum "$tmp/$name.json" intake.p99_ms)" "$(jnum "$tmp/$name.json" end_to_end.p99_ms)" \
    "$(jnum "$tmp/$name.json" lost)" "$cpu" "$lgcpu"
}
best() { awk -v a="$1" -v b="$2" 'BEGIN {print (a > b ? a : b)}'; }

echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); nginx $("$nginx_bin" -v 2>&1 | sed 's/.*\///'), firebridge $("$fb" --version 2>/dev/null | head -1)"
echo "== maximum, closed loop: $conns connections, ${secs_max} s after ${warmup} s warm-up, $rooms rooms, $rounds round(s)"
# the measuring tool's own ceiling: notifications straight to its sink, no proxy in between
run "direct-max" "$sink_port" "$secs_max" - --format notification
direct_max=$(jnum "$tmp/direct-max.json" delivered_per_s)
ng_max=0 fb_max=0 fb1_max=0
for r in $(seq "$rounds"); do
  run "nginx-max-$r" "$ng_port" "$secs_max" "$ng_worker" --format notification
  ng_max=$(best "$ng_max" "$(jnum "$tmp/nginx-max-$r.json" delivered_per_s)")
  run "fb-max-$r" "$fb_port" "$secs_max" "$fb_pid" --scenario seed --pid "$fb_pid"
  fb_max=$(best "$fb_max" "$(jnum "$tmp/fb-max-$r.json" delivered_per_s)")
  if [ -n "${fb1_pid:-}" ]; then
    run "fb1-max-$r" "$fb1_port" "$secs_max" "$fb1_pid" --scenario seed --pid "$fb1_pid"
    fb1_max=$(best "$fb1_max" "$(jnum "$tmp/fb1-max-$r.json" delivered_per_s)")
  fi
done
ratio=$(awk -v a="$fb_max" -v b="$ng_max" 'BEGIN {printf "%.2f", a / b}')
ng_cpu=$(sort -n "$tmp"/nginx-max-*.cpu | head -1)
fb_cpu=$(sort -n "$tmp"/fb-max-*.cpu | head -1)
cpu_ratio=$(awk -v a="$ng_cpu" -v b="$fb_cpu" 'BEGIN {printf "%.2f", a / b}')
echo "  nginx proxy_pass: $(printf %.0f "$ng_max") notifications/s; firebridge --pipeline $pipeline: $(printf %.0f "$fb_max") notifications/s; ratio $ratio"
echo "  CPU per notification (best round): nginx $ng_cpu us, firebridge $fb_cpu us; ratio nginx/firebridge $cpu_ratio"
if [ -n "${fb1_pid:-}" ]; then
  ratio1=$(awk -v a="$fb1_max" -v b="$ng_max" 'BEGIN {printf "%.2f", a / b}')
  fb1_cpu=$(sort -n "$tmp"/fb1-max-*.cpu | head -1)
  echo "  firebridge --pipeline 1 (the default): $(printf %.0f "$fb1_max") notifications/s; ratio $ratio1; CPU $fb1_cpu us per notification"
  echo "RESULT default firebridge_pipeline1_per_s=$(printf %.0f "$fb1_max") ratio=$ratio1 cpu_us=$fb1_cpu"
fi

if [ "${SKIP_HALF:-0}" != 1 ]; then
  ng_half=$(awk -v a="$ng_max" 'BEGIN {printf "%.0f", a / 2}')
  fb_half=$(awk -v a="$fb_max" 'BEGIN {printf "%.0f", a / 2}')
  echo "== half of each one's maximum, open loop, ${secs_half} s, $half_rounds round(s): nginx at $ng_half/s, firebridge at $fb_half/s"
  # HALF_ROUNDS alternating rounds; each figure is the median over them (one stall of the shared
  # machine, or of the loadgen, which is near its own limit in open loop here, spoils one round)
  [ -z "${fb1_pid:-}" ] || fb1_half=$(awk -v a="$fb1_max" 'BEGIN {printf "%.0f", a / 2}')
  for r in $(seq "$half_rounds"); do
    run "nginx-half-$r" "$ng_port" "$secs_half" "$ng_worker" --format notification --rate "$ng_half/s"
    run "fb-half-$r" "$fb_port" "$secs_half" "$fb_pid" --scenario seed --rate "$fb_half/s" --pid "$fb_pid"
    if [ -n "${fb1_pid:-}" ]; then
      run "fb1-half-$r" "$fb1_port" "$secs_half" "$fb1_pid" --scenario seed --rate "$fb1_half/s" --pid "$fb1_pid"
    fi
  done
  med() { # SIDE KEY -> the median of KEY over SIDE's half-load rounds
    for f in "$tmp/$1"-half-*.json; do jnum "$f" "$2"; done | sort -g |
      awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
  }
  echo "RESULT half nginx_rate=$ng_half nginx_intake_p99_ms=$(med nginx intake.p99_ms)" \
       "nginx_e2e_p99_ms=$(med nginx end_to_end.p99_ms)" \
       "firebridge_rate=$fb_half fb_intake_p99_ms=$(med fb intake.p99_ms)" \
       "fb_e2e_p99_ms=$(med fb end_to_end.p99_ms)" \
       "nginx_send_lag_p99_ms=$(med nginx send_lag.p99_ms)" \
       "fb_send_lag_p99_ms=$(med fb send_lag.p99_ms)" \
       "nginx_from_send_p99_ms=$(med nginx intake_from_send.p99_ms)" \
       "fb_from_send_p99_ms=$(med fb intake_from_send.p99_ms) rounds=$half_rounds"
  if [ -n "${fb1_pid:-}" ]; then
    echo "RESULT half_default firebridge_rate=$fb1_half fb_intake_p99_ms=$(med fb1 intake.p99_ms)" \
         "fb_e2e_p99_ms=$(med fb1 end_to_end.p99_ms) fb_send_lag_p99_ms=$(med fb1 send_lag.p99_ms)" \
         "fb_from_send_p99_ms=$(med fb1 intake_from_send.p99_ms)"
  fi
fi
peak=$(awk '/VmHWM/ {print $2}' "/proc/$fb_pid/status")
echo "RESULT max direct_per_s=$(printf %.0f "$direct_max") nginx_per_s=$(printf %.0f "$ng_max")" \
     "firebridge_per_s=$(printf %.0f "$fb_max")" \
     "ratio=$ratio nginx_cpu_us=$ng_cpu firebridge_cpu_us=$fb_cpu cpu_ratio=$cpu_ratio" \
     "firebridge_peak_rss_kb=$peak conns=$conns rooms=$rooms pool=$pool pipeline=$pipeline lost=$lost_total"
[ "$lost_total" -eq 0 ] || { echo "compare.sh: $lost_total notification(s) lost" >&2; exit 1; }
