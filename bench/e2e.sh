#!/usr/bin/env bash
# bench/e2e.sh - the whole data path under load: deliveries per second through the firebridge
# daemon to contrib/hipchat-server with ROOMS rooms and every limit lifted, next to the baseline
# of posting the same notifications straight to hipchat-server, in the same run; then the
# daemon's RSS with QUEUED deliveries queued while the server is down.
#
# Load: wrk with bench/e2e.lua (each request another room, each alert a new entity so that it
# triggers an incident and the seed's Multi-Room webhook fires once).  Delivered counts come from
# hipchat-server's GET /stats ("accepted"), sampled while wrk runs and until the queue drains.
#
# usage: bench/e2e.sh [FIREBRIDGE [HIPCHAT_SERVER]]  (defaults: build/src/firebridge,
#        build/contrib/hipchat-server).  Env: ROOMS (1000), WRK_CONNS (32), WRK_SECONDS (5),
#        POOL (firebridge --pool-size, 32), QUEUED (100000), SKIP_MEMORY=1, SKIP_THROUGHPUT=1
#        (SKIP_THROUGHPUT=1 runs only the RSS part).
set -euo pipefail
cd "$(dirname "$0")/.."
fb=${1:-build/src/firebridge}
hc=${2:-build/contrib/hipchat-server}
rooms=${ROOMS:-1000}
conns=${WRK_CONNS:-32}
secs=${WRK_SECONDS:-5}
pool=${POOL:-32}
queued=${QUEUED:-100000}
command -v wrk >/dev/null || { echo "e2e.sh: wrk is not installed (contrib/deps.sh)" >&2; exit 1; }
command -v curl >/dev/null || { echo "e2e.sh: curl is not installed" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() { # file regex-with-group -> port
  for _ in $(seq 200); do
    p=$(sed -n "s/.*$2.*/\\1/p" "$1" 2>/dev/null | head -1)
    [ -n "$p" ] && { echo "$p"; return; }
    sleep 0.05
  done
  echo "e2e.sh: server did not start; log:" >&2; cat "$1" >&2; exit 1
}
now() { date +%s.%N; }
accepted() { curl -s "http://127.0.0.1:$1/stats" | sed -n 's/.*"accepted":\([0-9]*\).*/\1/p'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

start_hc() { # name -> sets hc_pid hc_port
  "$hc" --listen 127.0.0.1:0 --no-limits --any-token --any-room --quiet \
    --max-messages 1000 >"$tmp/$1.out" 2>"$tmp/$1.err" &
  hc_pid=$!
  pids+=("$hc_pid")
  hc_port=$(wait_port "$tmp/$1.out" 'listening on \([0-9]*\)')
}

start_fb() { # name target-port extra-flags... -> sets fb_pid fb_port
  local name=$1 target=$2
  shift 2
  sed -e "s#https://DOMAIN.hipchat.com/#http://127.0.0.1:$target/#" -e "s/ROOM_ID/r0/" \
      -e "s/AUTH_TOKEN_HERE/bench/" contrib/examples/multi-room.json >"$tmp/$name.json"
  "$fb" -c "$tmp/$name.json" --listen 127.0.0.1:0 --data-dir "$tmp/$name-data" \
    --room-rate 1000000/1 --token-rate 1000000/1 --max-connections 4096 --drain-timeout 1 \
    "$@" >"$tmp/$name.log" 2>&1 &
  fb_pid=$!
  pids+=("$fb_pid")
  fb_port=$(wait_port "$tmp/$name.log" 'listening on 127\.0\.0\.1:\([0-9]*\)')
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  echo "== baseline: wrk -c$conns -d${secs}s straight to hipchat-server ($rooms rooms)"
  start_hc direct
  wrk -t1 -c"$conns" -d"${secs}s" -s bench/e2e.lua "http://127.0.0.1:$hc_port" -- direct \
    "$rooms" >"$tmp/direct.wrk"
  direct_n=$(accepted "$hc_port")
  direct_rate=$(awk -v n="$direct_n" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
  grep -E "Requests/sec|E2E" "$tmp/direct.wrk" | sed 's/^/  /'
  echo "  accepted by hipchat-server: $direct_n -> $direct_rate notifications/s"
  stop_pid "$hc_pid"

  echo "== through firebridge: wrk -c$conns -d${secs}s alerts -> firebridge -> hipchat-server" \
       "($rooms rooms, --pool-size $pool)"
  start_hc via
  start_fb tput "$hc_port" --max-pending 10000000 --pool-size "$pool"
  t0=$(now)
  wrk -t1 -c"$conns" -d"${secs}s" -s bench/e2e.lua "http://127.0.0.1:$fb_port" -- firebridge \
    "$rooms" >"$tmp/fb.wrk" &
  wrk_pid=$!
  # the steady-state rate while wrk runs: from 1 s in to 1 s before the end
  sleep 1
  a1=$(accepted "$hc_port"); t1=$(now)
  sleep $((secs - 2))
  a2=$(accepted "$hc_port"); t2=$(now)
  wait "$wrk_pid"
  t_end=$(now)
  grep -E "Requests/sec|E2E" "$tmp/fb.wrk" | sed 's/^/  /'
  bad=$(sed -n 's/.*non2xx=\([0-9]*\).*/\1/p' "$tmp/fb.wrk")
  want=$(metric "$fb_port" 'firebridge_deliveries_total{outcome="delivered"}')
  want=$((want + $(metric "$fb_port" firebridge_deliveries_pending)))
  # drain: everything accepted must arrive
  for _ in $(seq 600); do
    a=$(accepted "$hc_port")
    [ "$a" -ge "$want" ] && break
    sleep 0.1
  done
  t_drained=$(now)
  a=$(accepted "$hc_port")
  steady=$(awk -v a1="$a1" -v a2="$a2" -v t1="$t1" -v t2="$t2" \
    'BEGIN {printf "%.0f", (a2 - a1) / (t2 - t1)}')
  overall=$(awk -v a="$a" -v t0="$t0" -v t="$t_drained" 'BEGIN {printf "%.0f", a / (t - t0)}')
  echo "  alerts accepted: $(metric "$fb_port" firebridge_intake_alerts_total) (non-2xx $bad);" \
       "deliveries: $want; delivered: $a;" \
       "all delivered $(awk -v a="$t_drained" -v b="$t_end" 'BEGIN {printf "%.2f", a - b}') s" \
       "after the load stopped"
  echo "  deliveries/s while loaded: $steady; overall (first alert to last delivery): $overall"
  echo "  firebridge RSS after: $(rss_kb "$fb_pid") kB;" \
       "delivery attempts: $(metric "$fb_port" firebridge_delivery_attempts_total)"
  ratio=$(awk -v a="$steady" -v b="$direct_rate" 'BEGIN {printf "%.2f", a / b}')
  ratio2=$(awk -v a="$overall" -v b="$direct_rate" 'BEGIN {printf "%.2f", a / b}')
  echo "RESULT deliveries_per_s=$steady overall_per_s=$overall direct_per_s=$direct_rate" \
       "ratio=$ratio ratio_overall=$ratio2 rooms=$rooms pool=$pool conns=$conns"
  [ "$a" -ge "$want" ] || { echo "e2e.sh: lost deliveries ($a of $want)" >&2; exit 1; }
  stop_pid "$fb_pid"
  stop_pid "$hc_pid"
fi

if [ "${SKIP_MEMORY:-0}" != 1 ]; then
  echo "== memory: $queued deliveries queued while hipchat-server is down ($rooms rooms)"
  # a loopback port nobody listens on: start the server, note its port, stop it
  start_hc gone
  down_port=$hc_port
  stop_pid "$hc_pid"
  start_fb mem "$down_port" --max-pending $((queued + 1000)) --retry-initial 1000
  rss0=$(rss_kb "$fb_pid")
  t0=$(now)
  wrk -t1 -c"$conns" -d120s -s bench/e2e.lua "http://127.0.0.1:$fb_port" -- firebridge \
    "$rooms" "$queued" >"$tmp/mem.wrk" &
  wrk_pid=$!
  # until the queue stops growing for a second (or reaches the target)
  last=-1
  for _ in $(seq 1200); do
    sleep 1
    p=$(metric "$fb_port" firebridge_deliveries_pending)
    [ "${p:-0}" -ge "$queued" ] && break
    [ "${p:-0}" = "$last" ] && break
    last=${p:-0}
  done
  t1=$(now)
  kill "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  sleep 1
  p=$(metric "$fb_port" firebridge_deliveries_pending)
  rss1=$(rss_kb "$fb_pid")
  echo "  queued: $p in $(awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.1f", a - b}') s;" \
       "RSS idle $rss0 kB -> $rss1 kB with $p queued" \
       "($(awk -v a="$rss1" -v b="$rss0" -v n="$p" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')" \
       "bytes per queued delivery)"
  echo "  compacted (queued as their bytes only, no event held): $(metric "$fb_port" \
       firebridge_deliveries_compacted)"
  echo "RESULT queued=$p rss_idle_kb=$rss0 rss_queued_kb=$rss1" \
       "bytes_per_queued=$(awk -v a="$rss1" -v b="$rss0" -v n="$p" \
       'BEGIN {printf "%.0f", (a - b) * 1024 / n}')"
  stop_pid "$fb_pid"
fi
