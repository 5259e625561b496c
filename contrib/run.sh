#!/usr/bin/env bash
# contrib/run.sh - the README's first command: installs what is missing, builds, then runs the
# whole data path on loopback: contrib/hipchat-server (a HipChat-compatible server, default
# limits, one room and its token) and firebridge with the seed's Multi-Room recipe
# (contrib/examples/multi-room.json) pointed at it.  It prints a curl that posts a devops
# CRITICAL alert and shows every message the room receives.  Ctrl-C (or any exit) stops both.
# Extra arguments are passed to firebridge (try --help).
#
# Environment: FBR_LISTEN (firebridge's address, default 127.0.0.1:8080), FBR_BUILD_DIR (default
# build), FBR_SKIP_BUILD=1 (use the binaries already built there), FBR_RUN_SELFTEST=1 (no
# interaction: post one alert, wait up to 5 s for it in the room, print it, exit 0 or 1; the
# meson test `quickstart` runs this so the quick start stays true).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${FBR_BUILD_DIR:-build}
selftest=${FBR_RUN_SELFTEST:-0}
if [ "${FBR_SKIP_BUILD:-0}" != 1 ]; then
  FBR_WITH_CLANG=0 bash contrib/deps.sh
  [ -d "$build" ] || meson setup "$build" >/dev/null
  meson compile -C "$build" >/dev/null
fi
fb=$build/src/firebridge
hc=$build/contrib/hipchat-server
room=1234
token=quickstart-room-token
key=CHANGE-ME-integration-key   # the seed's API key, kept as it is

if [ "$selftest" = 1 ]; then
  work=$(mktemp -d "$build/quickstart-selftest.XXXXXX")
  listen=127.0.0.1:0
else
  work=$build/quickstart
  rm -rf "$work"
  mkdir -p "$work"
  listen=${FBR_LISTEN:-127.0.0.1:8080}
fi

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$selftest" = 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to 5 s for "$2" (a regex with one group: the port) in file $1; prints the port.
wait_port() {
  for _ in $(seq 100); do
    port=$(sed -n "s/.*$2.*/\\1/p" "$1" | head -1)
    if [ -n "$port" ]; then echo "$port"; return 0; fi
    sleep 0.05
  done
  echo "no port in $1:" >&2; cat "$1" >&2
  return 1
}

# 1. the HipChat-compatible server: one room, one token, HipChat's default limits
"$hc" --listen 127.0.0.1:0 --room "$room:$token" >"$work/hipchat.out" 2>"$work/hipchat.err" &
pids+=($!)
hport=$(wait_port "$work/hipchat.out" 'listening on \([0-9]*\)')

# 2. the seed's Multi-Room config pointed at it (plain http on loopback)
sed -e "s#https://DOMAIN.hipchat.com/#http://127.0.0.1:$hport/#" -e "s/ROOM_ID/$room/" \
    -e "s/AUTH_TOKEN_HERE/$token/" contrib/examples/multi-room.json >"$work/multi-room.json"

# 3. firebridge with it
"$fb" -c "$work/multi-room.json" --listen "$listen" --data-dir "$work/data" "$@" \
  >"$work/firebridge.log" 2>&1 &
fbpid=$!
pids+=("$fbpid")
fport=$(wait_port "$work/firebridge.log" 'listening on 127\.0\.0\.1:\([0-9]*\)')
url=http://127.0.0.1:$fport
alert="$url/integrations/generic/20131114/alert/$key/devops"
body='{"message_type":"CRITICAL","entity_id":"disk-db1","entity_display_name":"db1: disk 95% full"}'

if [ "$selftest" = 1 ]; then
  curl -sS --max-time 5 -X POST -H 'Content-Type: application/json' -d "$body" "$alert"
  echo
  for _ in $(seq 50); do
    if grep -q '"message":"db1: disk 95% full"' "$work/hipchat.out"; then
      echo "quickstart: the alert landed in room $room:"
      tail -n +2 "$work/hipchat.out"
      exit 0
    fi
    sleep 0.1
  done
  echo "quickstart: the alert did not reach room $room within 5 s" >&2
  cat "$work/firebridge.log" "$work/hipchat.err" >&2
  exit 1
fi

cat <<TRY
firebridge: $url (log: $work/firebridge.log), delivering to the HipChat-compatible server
http://127.0.0.1:$hport (room $room) with the seed's Multi-Room recipe: $work/multi-room.json.
Ctrl-C stops both.  In another terminal, post a devops CRITICAL alert:

  curl -s -X POST -H 'Content-Type: application/json' \\
    -d '$body' \\
    $alert

It appears below within a second (and at http://127.0.0.1:$hport/rooms/$room/messages).
An alert with another routing key (…/alert/$key/webapp) matches no rule and is not posted.
Also: curl -s $url/metrics   ./$fb --help
Messages received by room $room:
TRY
tail -n +2 -f "$work/hipchat.out" &
pids+=($!)
wait "$fbpid"
