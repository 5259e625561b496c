#!/usr/bin/env bash
# bench/journal.sh - the write-ahead journal (issue 11), everything in one invocation on this
# machine: (1) intake alerts/s of the real daemon under firebridge-loadgen (closed loop, 32
# keep-alive connections, seed scenario: a new incident and one delivery per alert, delivered to
# the loadgen's own sink) with --journal off, then --fsync off, batch and always, each as a ratio
# to the run without the journal (rounds alternate the modes; the best round of each counts);
# (2) the recovery time of 100,000 pending deliveries (sink down, kill -9, restart: the daemon's
# firebridge_journal_recovery_milliseconds and the deliveries it restored); (3) the journal's disk
# use after 1,000,000 alerts delivered.
#
# usage: bench/journal.sh FIREBRIDGE LOADGEN
# Env: SECONDS_RUN (3), ROUNDS (2), PENDING (100000) posted within PENDING_SECONDS (40),
# RECOVERY_ROUNDS (0) further restores of copies of that journal for a median, PIN=1 (daemon on
# CPU 0 and loadgen on CPU 1 in the throughput rounds), MODES ("none off batch always"),
# DELIVERED (1000000) within DELIVERED_SECONDS (240): the loadgen sends until the count or the
# time is reached, whichever comes first; the figures say how many it was.
set -euo pipefail
fb=$1 lg=$2
pin_fb= pin_lg=
if [ -n "${PIN:-}" ]; then # daemon on CPU 0, loadgen on CPU 1: less scheduler noise
  pin_fb="taskset -c 0" pin_lg="taskset -c 1"
fi
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
fb_pid=
trap '[ -n "$fb_pid" ] && kill -9 "$fb_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
# shellcheck source=bench/seed_daemon.sh
. bench/seed_daemon.sh
SEED_PREFIX=($pin_fb)
start() { # SINK_PORT LOG FLAGS... -> fb_pid, fb_port; data in $DATA (default $tmp/data)
  local sink=$1 log=$2
  shift 2
  SEED_DATA=${DATA:-$tmp/data} SEED_LOG=$log seed_daemon_start "$fb" "127.0.0.1:$sink" "$tmp" "$@"
}
stop() {
  kill "$fb_pid" 2>/dev/null || true
  wait "$fb_pid" 2>/dev/null || true
  fb_pid=
}
metric() { # NAME -> value from /metrics
  # awk reads to the end: an early exit would SIGPIPE curl and fail the pipeline under pipefail
  curl -s "http://127.0.0.1:$fb_port/metrics" | awk -v n="$1" '$1 == n && !f {print $2; f = 1}'
}
json() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A best all cpu
read -r -a modes <<<"${MODES:-none off batch always}" # "none" must be among them
for r in $(seq "${ROUNDS:-2}"); do
  for m in "${modes[@]}"; do
    rm -rf "$tmp/data"
    port=$(free_port)
    if [ "$m" = none ]; then start "$port" "$tmp/fb.log" --journal off
    else start "$port" "$tmp/fb.log" --fsync "$m"; fi
    $pin_lg "$lg" --target "127.0.0.1:$fb_port" --sink-listen "127.0.0.1:$port" \
      --duration "${SECONDS_RUN:-3}" --warmup 0.5 --connections 32 --quiet --drain 30 --json \
      >"$tmp/lg.json" 2>/dev/null || true
    ticks=$(awk '{print $14 + $15}' "/proc/$fb_pid/stat") # the daemon's user + system time
    stop
    rate=$(json "$tmp/lg.json" intake_per_s)
    lost=$(json "$tmp/lg.json" lost)
    us=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$(json "$tmp/lg.json" answered)" \
      'BEGIN {printf "%.1f", n ? t / hz * 1e6 / n : 0}')
    printf 'round %s  %-7s %8.0f alerts/s (lost %s), daemon CPU %s us/alert\n' "$r" "$m" "$rate" \
      "$lost" "$us"
    cpu[$m]="${cpu[$m]:-} $us"
    if [ -z "${best[$m]:-}" ] || awk -v a="$rate" -v b="${best[$m]}" 'BEGIN {exit !(a > b)}'; then
      best[$m]=$rate
    fi
    all[$m]="${all[$m]:-} $rate"
  done
done
median() { printf '%s\n' $1 | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "intake alerts/s over ${ROUNDS:-2} rounds as a ratio to no journal, best round and median round"
echo "(on a shared machine the median is the steadier figure: one lucky baseline round moves the best):"
for m in "${modes[@]}"; do
  awk -v m="$m" -v a="${best[$m]}" -v b="${best[none]}" -v c="$(median "${all[$m]}")" \
    -v d="$(median "${all[none]}")" \
    'BEGIN {printf "  %-14s best %8.0f alerts/s  ratio %.2f   median %8.0f alerts/s  ratio %.2f\n",
            (m == "none" ? "no journal" : "--fsync " m), a, a / b, c, c / d}'
done
# What the other engineers' load cannot move much: the daemon's CPU time per alert answered
# (every thread, user + system, startup and drain included).  A daemon that has a core to itself
# answers at most 1 / that: its inverse ratio is the intake ratio such a core would give.
echo "daemon CPU per alert, median round, and no journal's as a ratio to it (a dedicated core's intake ratio):"
for m in "${modes[@]}"; do
  awk -v m="$m" -v a="$(median "${cpu[$m]}")" -v b="$(median "${cpu[none]}")" \
    'BEGIN {printf "  %-14s %7.1f us/alert  ratio %.2f\n", (m == "none" ? "no journal" : "--fsync " m),
            a, a ? b / a : 0}'
done

# (2) PENDING deliveries queued with the sink down, kill -9, restart.
rm -rf "$tmp/data"
dead=$(free_port) # nothing listens there: every attempt is refused and backs off
start "$dead" "$tmp/fb.log" --fsync batch --retry-initial 600000 --retry-max-interval 600000
"$lg" --target "127.0.0.1:$fb_port" --no-sink --no-metrics --max-alerts "${PENDING:-100000}" \
  --duration "${PENDING_SECONDS:-40}" --warmup 0 --connections 32 --quiet --json \
  >"$tmp/lg.json" 2>/dev/null || true
answered=$(json "$tmp/lg.json" answered)
sleep 0.5
pending=$(metric firebridge_deliveries_pending)
kill -9 "$fb_pid"
wait "$fb_pid" 2>/dev/null || true
bytes=$(du -sb "$tmp/data/journal" | cut -f1)
start "$dead" "$tmp/fb2.log" --fsync batch --retry-initial 600000 --retry-max-interval 600000
printf 'recovery: %s alerts answered, %s deliveries pending at kill -9 (journal %s MB);\n' \
  "$answered" "$pending" "$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')"
printf '  after the restart %s pending, recovered in %s ms (%s records)\n' \
  "$(metric firebridge_deliveries_pending)" "$(metric firebridge_journal_recovery_milliseconds)" \
  "$(metric firebridge_journal_recovered_records)"
kill -9 "$fb_pid"
wait "$fb_pid" 2>/dev/null || true
fb_pid=
# The same journal restored RECOVERY_ROUNDS more times, each from a fresh copy (a shared machine's
# load moves single figures by half): each round's time, then the median of all.
times=()
for _ in $(seq "${RECOVERY_ROUNDS:-0}"); do
  rm -rf "$tmp/copy"
  cp -a "$tmp/data" "$tmp/copy"
  sync
  DATA=$tmp/copy start "$dead" "$tmp/fb3.log" --fsync batch --retry-initial 600000 \
    --retry-max-interval 600000
  times+=("$(metric firebridge_journal_recovery_milliseconds)")
  kill -9 "$fb_pid"
  wait "$fb_pid" 2>/dev/null || true
  fb_pid=
done
if [ "${#times[@]}" -gt 0 ]; then
  printf '  %s more restores of copies: %s ms; median %s ms\n' "${#times[@]}" "${times[*]}" \
    "$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
fi
rm -rf "$tmp/copy"

# (3) disk use after DELIVERED alerts delivered.
rm -rf "$tmp/data"
port=$(free_port)
start "$port" "$tmp/fb.log" --fsync batch
"$lg" --target "127.0.0.1:$fb_port" --sink-listen "127.0.0.1:$port" \
  --max-alerts "${DELIVERED:-1000000}" --duration "${DELIVERED_SECONDS:-240}" --warmup 0 \
  --connections 32 --quiet \
  --drain 60 --json >"$tmp/lg.json" 2>/dev/null || true
printf 'disk use: %s delivered (lost %s): journal %s bytes on disk in %s segment(s), %s live;' \
  "$(json "$tmp/lg.json" delivered)" "$(json "$tmp/lg.json" lost)" \
  "$(metric firebridge_journal_bytes)" "$(metric firebridge_journal_segments)" \
  "$(metric firebridge_journal_live_bytes)"
printf ' du %s bytes; %s bytes written in all, %s checkpoints\n' \
  "$(du -sb "$tmp/data/journal" | cut -f1)" "$(metric firebridge_journal_written_bytes_total)" \
  "$(metric firebridge_journal_checkpoints_total)"
stop
