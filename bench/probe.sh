#!/usr/bin/env bash
# bench/probe.sh - the hostile-probe figures of issue 8, measured against a firebridge binary
# (give an older build's binary to get the "before" column):
#
#   bench/probe.sh reload  BINARY [N]    start, SIGHUP, one alert: crashes out of N (default 20)
#   bench/probe.sh pipeline BINARY [MB]  pipelined GET /metrics, never read: peak RSS (default 200)
#   bench/probe.sh emfile  BINARY        1,100 idle connections with the daemon's descriptor
#                                        limit lowered to 1024: CPU % and log lines/s over 3 s
#
# Loopback only, ephemeral ports; every process it starts is stopped before it exits.
set -euo pipefail
mode=${1:?mode: reload, pipeline or emfile}
bin=${2:?path of the firebridge binary}
tmp=$(mktemp -d /tmp/fbr-probe-XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# start_daemon ARGS...: runs the binary with a fresh data dir, sets $pid and $port.
start_daemon() {
    : >"$tmp/log"
    ${WRAP:-} "$bin" -l 127.0.0.1:0 -d "$tmp/data" --api-key K "$@" >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$tmp/log" | head -1 | cut -d: -f2 || true)
        [ -n "$port" ] && return 0
        sleep 0.05
    done
    echo "daemon did not start: $(tail -3 "$tmp/log")" >&2
    exit 1
}

stop_daemon() {
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
}

case $mode in
reload)
    n=${3:-20}
    crashes=0
    for _ in $(seq "$n"); do
        start_daemon
        kill -HUP "$pid"
        sleep 0.3
        curl -s -m 2 -o /dev/null -X POST -d '{"message_type":"INFO"}' \
            "http://127.0.0.1:$port/integrations/generic/20131114/alert/K/x" || true
        sleep 0.1
        if ! kill -0 "$pid" 2>/dev/null; then
            crashes=$((crashes + 1))
            wait "$pid" 2>/dev/null || true
            pid=
        else
            stop_daemon
        fi
    done
    echo "reload: $crashes crashes out of $n (SIGHUP then one alert)"
    ;;
pipeline)
    mb=${3:-200}
    start_daemon
    rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    python3 - "$port" "$mb" "$pid" <<'EOF'
import socket, sys, time
port, mb, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return -1
req = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 4096
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.settimeout(3)
sent, peak = 0, 0
while sent < mb * 1024 * 1024:
    try:
        sent += s.send(req)
    except (socket.timeout, BrokenPipeError, ConnectionResetError):
        break
    peak = max(peak, rss())
time.sleep(1)
peak = max(peak, rss())
print(f"pipeline: sent {sent / 1048576:.1f} MB of pipelined GET /metrics without reading; "
      f"peak RSS {peak} kB")
EOF
    echo "pipeline: RSS before $rss0 kB"
    stop_daemon
    ;;
emfile)
    (
        start_daemon
        # the usual `ulimit -n 1024`, applied after the start (a daemon that refuses to start
        # under it would otherwise measure nothing)
        prlimit --pid "$pid" --nofile=1024:1024
        python3 - "$port" "$pid" "$tmp/log" <<'EOF'
import os, resource, socket, sys, time
port, pid, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
socks = []
for _ in range(1100):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
    except OSError:
        break
def cpu():
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])
def lines():
    with open(log, "rb") as f:
        return f.read().count(b"\n")
time.sleep(0.5)
c0, l0, t0 = cpu(), lines(), time.time()
time.sleep(3)
c1, l1, t1 = cpu(), lines(), time.time()
hz = os.sysconf("SC_CLK_TCK")
print(f"emfile: {len(socks)} connections open; daemon CPU {100.0 * (c1 - c0) / hz / (t1 - t0):.0f} %, "
      f"{(l1 - l0) / (t1 - t0):.0f} log lines/s")
EOF
        kill -9 "$pid" 2>/dev/null || true
    )
    ;;
*)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
esac
