# bench/seed_daemon.sh - sourced by the scripts that load a real daemon (compare.sh,
# daemon_ab.sh, profile.sh): the one place that starts firebridge the way the load benchmarks
# measure it.  The seed Multi-Room recipe (contrib/examples/multi-room.json) with its URL pointed
# at a sink, room and token limits lifted, the delivery queue unbounded for the run, journal in
# its default mode.
#
#   seed_scratch                               -> tmp, a new scratch directory, and an EXIT trap
#       that stops the daemon started last (fb_pid) and removes tmp
#   free_port                                  -> a free loopback TCP port on stdout
#   seed_daemon_start BIN SINK_ADDR DIR [FLAG...]
#       starts BIN (prefixed by the array SEED_PREFIX, e.g. (taskset -c 0)) with its config,
#       data directory and log in DIR, extra FLAGs after the fixed ones (POOL: --pool-size, 32);
#       sets fb_pid and fb_port (its listening port), or exits non-zero with the log.
#       SEED_DATA (a data directory kept as it is, e.g. for a restart; default DIR/fb-data,
#       emptied first) and SEED_LOG (default DIR/fb.log) override where those go.

seed_scratch() {
  tmp=$(mktemp -d)
  fb_pid=
  trap seed_cleanup EXIT
}

seed_cleanup() {
  [ -n "${fb_pid:-}" ] && kill "$fb_pid" 2>/dev/null && wait "$fb_pid" 2>/dev/null
  rm -rf "$tmp"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

seed_daemon_start() {
  local bin=$1 sink=$2 dir=$3
  shift 3
  sed -e "s#https://DOMAIN.hipchat.com/#http://$sink/#" -e "s/ROOM_ID/r0/" \
      -e "s/AUTH_TOKEN_HERE/loadgen/" contrib/examples/multi-room.json >"$dir/fb.json"
  local data=${SEED_DATA:-$dir/fb-data} log=${SEED_LOG:-$dir/fb.log}
  [ -n "${SEED_DATA:-}" ] || rm -rf "$data"
  "${SEED_PREFIX[@]}" "$bin" -c "$dir/fb.json" --listen 127.0.0.1:0 --data-dir "$data" \
    --room-rate 1000000/1 --token-rate 1000000/1 --max-pending 10000000 \
    --max-connections 8192 --pool-size "${POOL:-32}" "$@" >"$log" 2>&1 &
  fb_pid=$!
  fb_port=
  for _ in $(seq 600); do # a restart may replay a large journal first
    fb_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$fb_port" ] && return 0
    sleep 0.05
  done
  echo "seed_daemon_start: $bin did not start:" >&2
  cat "$log" >&2
  exit 1
}
