#!/usr/bin/env bash
# contrib/run.sh - the README's first command: installs what is missing, builds, then runs the
# whole data path on loopback in both of the seed's modes side by side: contrib/hipchat-server (a
# HipChat-compatible server, default limits, two rooms) and firebridge with the seed's
# Multi-Room recipe (contrib/examples/multi-room.json) for the first room, plus Single Room mode:
# the HipChat add-on for routing key devops, installed into the second room from its Add-on
# Capabilities URL, as the seed's steps do.  A Multi-Room webhook on All-Chats makes the
# timeline's chats visible in the first room.  It prints a curl that posts a devops CRITICAL
# alert (it appears in both rooms) and a curl that "says" something in the second room (it
# reaches firebridge's timeline and shows up in the first room), then shows every message the
# rooms receive.  Ctrl-C (or any exit) stops both.  Extra arguments are passed to firebridge.
#
# Environment: FBR_LISTEN (firebridge's address, default 127.0.0.1:8080), FBR_BUILD_DIR (default
# build), FBR_SKIP_BUILD=1 (use the binaries already built there), FBR_RUN_SELFTEST=1 (no
# interaction: post one alert and say one message, wait up to 5 s for each where it must land,
# print them, exit 0 or 1; the meson test `quickstart` runs this so the quick start stays true).
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
room2=5678                      # the Single Room mode room: the add-on is installed here
token2=quickstart-room2-token
key=CHANGE-ME-integration-key   # the seed's API key, kept as it is

if [ "$selftest" = 1 ]; then
  work=$(mktemp -d "$build/quickstart-selftest.XXXXXX")
  # the add-on's descriptor names firebridge's public URL, so the port is picked up front
  listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
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

# 1. the HipChat-compatible server: two rooms, a token each, HipChat's default limits
"$hc" --listen 127.0.0.1:0 --room "$room:$token" --room "$room2:$token2" \
  >"$work/hipchat.out" 2>"$work/hipchat.err" &
pids+=($!)
hport=$(wait_port "$work/hipchat.out" 'listening on \([0-9]*\)')

# 2. the seed's Multi-Room config pointed at it (plain http on loopback), plus Single Room mode
#    (contrib/examples/single-room.json's `hipchat` section, allowing this HipChat's host) and
#    one webhook that forwards every timeline chat to the first room
sed -e "s#https://DOMAIN.hipchat.com/#http://127.0.0.1:$hport/#" -e "s/ROOM_ID/$room/" \
    -e "s/AUTH_TOKEN_HERE/$token/" contrib/examples/multi-room.json >"$work/multi-room.json"
python3 - "$work/multi-room.json" "$work/both-modes.json" "http://$listen" "$hport" "$room" \
  "$token" <<'PY'
import json, sys
src, dst, public, hport, room, token = sys.argv[1:]
cfg = json.load(open(src))
single = json.load(open("contrib/examples/single-room.json"))
cfg["public_url"] = public
cfg["hipchat"] = dict(single["hipchat"], capabilities_hosts=["127.0.0.1"])
cfg["webhooks"].append({
    "name": "timeline chats, shown in the Multi-Room room", "event": "All-Chats",
    "url": "http://127.0.0.1:%s/v2/room/%s/notification" % (hport, room),
    "headers": {"Authorization": "Bearer " + token},
    "payload": {"message": "timeline chat from ${{CHAT.USER_NAME}}: ${{CHAT.TEXT}}",
                "message_format": "text", "color": "purple"}})
json.dump(cfg, open(dst, "w"), indent=2)
PY

# 3. firebridge with it
"$fb" -c "$work/both-modes.json" --listen "$listen" --data-dir "$work/data" "$@" \
  >"$work/firebridge.log" 2>&1 &
fbpid=$!
pids+=("$fbpid")
fport=$(wait_port "$work/firebridge.log" 'listening on 127\.0\.0\.1:\([0-9]*\)')
url=http://127.0.0.1:$fport
alert="$url/integrations/generic/20131114/alert/$key/devops"
body='{"message_type":"CRITICAL","entity_id":"disk-db1","entity_display_name":"db1: disk 95% full"}'

# 4. Single Room, the seed's steps: "Enable Integration" gives the Add-on Capabilities URL for a
#    routing key; HipChat installs it into a room from that descriptor URL
capurl=$("$fb" -c "$work/both-modes.json" --print-addon-url devops)
install=$(curl -sS --max-time 10 -X POST "http://127.0.0.1:$hport/addons/install" \
  -d "{\"room\":\"$room2\",\"descriptor_url\":\"$capurl\"}")
case "$install" in
  *'"callback_status":200'*) ;;
  *) echo "quickstart: installing the add-on from $capurl failed: $install" >&2
     cat "$work/firebridge.log" >&2; exit 1 ;;
esac
say="http://127.0.0.1:$hport/rooms/$room2/say"
saybody='{"message":"looking at db1 now","from":"Ann Operator"}'

# Waits up to 5 s for a line of hipchat-server's output matching both regexes.
wait_line() {
  for _ in $(seq 50); do
    if grep "$1" "$work/hipchat.out" | grep -q "$2"; then return 0; fi
    sleep 0.1
  done
  return 1
}

if [ "$selftest" = 1 ]; then
  curl -sS --max-time 5 -X POST -H 'Content-Type: application/json' -d "$body" "$alert"
  echo
  if ! wait_line "\"room\":\"$room\"" '"message":"db1: disk 95% full"'; then
    echo "quickstart: the alert did not reach room $room (Multi-Room) within 5 s" >&2
    cat "$work/firebridge.log" "$work/hipchat.err" >&2
    exit 1
  fi
  echo "quickstart: Multi-Room: the alert landed in room $room"
  if ! wait_line "\"room\":\"$room2\"" 'db1: disk 95% full'; then
    echo "quickstart: the alert did not reach room $room2 (Single Room) within 5 s" >&2
    cat "$work/firebridge.log" "$work/hipchat.err" >&2
    exit 1
  fi
  echo "quickstart: Single Room: the alert landed in room $room2 through the add-on"
  curl -sS --max-time 5 -X POST -d "$saybody" "$say" >/dev/null
  if ! wait_line "\"room\":\"$room\"" 'timeline chat from Ann Operator: looking at db1 now'; then
    echo "quickstart: what was said in room $room2 did not reach the timeline within 5 s" >&2
    cat "$work/firebridge.log" "$work/hipchat.err" >&2
    exit 1
  fi
  echo "quickstart: Single Room: what was said in room $room2 reached the timeline:"
  tail -n +2 "$work/hipchat.out"
  exit 0
fi

cat <<TRY
firebridge: $url (log: $work/firebridge.log), delivering to the HipChat-compatible server
http://127.0.0.1:$hport in both modes ($work/both-modes.json):
  Multi-Room:  the seed's recipe posts devops incidents to room $room.
  Single Room: the add-on for routing key devops, installed into room $room2 from
               $capurl
Ctrl-C stops both.  In another terminal, post a devops CRITICAL alert:

  curl -s -X POST -H 'Content-Type: application/json' \\
    -d '$body' \\
    $alert

It appears below within a second in room $room (Multi-Room) and in room $room2 (Single Room:
the alert and the incident it opened).  Then type something in room $room2:

  curl -s -X POST -d '$saybody' $say

It reaches firebridge's timeline (log line "chat from Ann Operator went to the timeline"), which
the All-Chats webhook shows in room $room.  Try the commands too: '{"message":"/incidents"}',
'{"message":"/ack 1 on it"}', '{"message":"/resolve 1"}' (the answer is posted in room $room2).
Rooms: http://127.0.0.1:$hport/rooms/$room/messages  http://127.0.0.1:$hport/rooms/$room2/messages
Also: curl -s $url/metrics   ./$fb --help
Messages received by the rooms:
TRY
tail -n +2 -f "$work/hipchat.out" &
pids+=($!)
wait "$fbpid"
