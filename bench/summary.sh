#!/usr/bin/env bash
# bench/summary.sh - bench/README.md's summary table from one run: every benchmark under bench/,
# one after another in this one invocation, then the machine line (date UTC, nproc, load average
# at the start and at the end, commit, buildtype) and a Markdown table with one row per benchmark:
# the exact command that reproduces the row (run from the repository root) and its figures, each
# the benchmark's own number next to its ratio to the anchor measured in the same run:
#
#   template            engine ns per render vs jansson (build + json_dumps) and memcpy
#   bench_json          fbr_json_loadb vs json_loadb, parse + free
#   bench_pipeline      intake + rules + incidents + events + rendering vs json_loadb alone
#   bench_incidents     a new incident with the table full (evicting) vs with room
#   bench_delivery      deliveries/s over https vs over http (the engine has no outside
#                       baseline in-process); bytes per queued delivery vs the body's bytes
#   healthz.sh          firebridge GET /healthz vs a bare libevhtp hello-world
#   e2e.sh              deliveries/s through firebridge to hipchat-server vs posting straight to it
#   compare.sh          firebridge vs nginx proxy_pass: maximum, CPU per notification, half-load p99
#   journal.sh          intake alerts/s and CPU per alert per --fsync mode vs no journal; recovery
#                       time; disk use vs bytes written
#   intake_tail.sh      intake p99 at a fixed open-loop rate, journal default vs --journal off
#   probe.sh            the hostile probes: crashes per reload, peak RSS under an unread pipeline vs
#                       idle RSS, CPU and log lines/s out of descriptors
#
# Not run here, being A/B or profiling tools between two binaries rather than benchmarks with
# an anchor of their own: daemon_ab.sh (CPU and system calls per delivery of two daemons),
# instr_ab.sh (callgrind instructions per delivery of two daemons), loadgen_ab.sh (the measuring
# tool's own cost, two loadgens), profile.sh (perf report of one daemon).  seed_daemon.sh is
# sourced by the others; hello_evhtp.c and e2e.lua are parts of healthz.sh and e2e.sh.
#
# A row whose program is missing (wrk, nginx, curl, prlimit, taskset, python3: contrib/deps.sh)
# says "skipped: X not installed"; a benchmark that fails gives its exit status and last line.
# Progress and each benchmark's own output go to stderr; the machine line and the table to
# stdout, ready to paste whole into bench/README.md.  A full run takes about 10 minutes on a
# 2-vCPU machine, half of it journal.sh: its loadgen runs keep their whole --duration after
# --max-alerts is reached (40 s for the pending deliveries, 240 s for the disk use).
#
# usage: bench/summary.sh [BUILD_DIR]   (default: build; compiled first with meson compile)
# Env: QUICK=1 (much shorter durations and counts, to test this script; rows marked "quick",
#      figures not to be published), ONLY ("template json ...": run only these rows, by the
#      names in the list above without .sh, bench_ or build paths: template json pipeline
#      incidents delivery healthz e2e compare journal intake_tail probe), SUMMARY_LOGS (a
#      directory: keep each benchmark's full output there as NAME.log).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
quick=${QUICK:-0}
only=" ${ONLY:-template json pipeline incidents delivery healthz e2e compare journal intake_tail probe} "
logs=${SUMMARY_LOGS:-}
command -v python3 >/dev/null || { echo "summary.sh: python3 is not installed" >&2; exit 1; }
[ -d "$build" ] || { echo "summary.sh: no $build: meson setup $build" >&2; exit 1; }
meson compile -C "$build" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -n "$logs" ] && mkdir -p "$logs"
fb=$build/src/firebridge
lg=$build/tools/loadgen/firebridge-loadgen

# Per benchmark, its command with the defaults (full) and with QUICK=1.
declare -A full short
full[template]="$build/bench/template"
short[template]="$build/bench/template 1"
full[json]="$build/bench/bench_json 100000"
short[json]="$build/bench/bench_json 5000"
full[pipeline]="$build/bench/bench_pipeline 200000"
short[pipeline]="$build/bench/bench_pipeline 10000"
full[incidents]="$build/bench/bench_incidents"
short[incidents]="$build/bench/bench_incidents 4000"
full[delivery]="$build/bench/bench_delivery"
short[delivery]="$build/bench/bench_delivery 10000"
full[healthz]="ROUNDS=3 bench/healthz.sh $fb $build/bench/hello_evhtp"
short[healthz]="ROUNDS=1 WRK_SECONDS=1 bench/healthz.sh $fb $build/bench/hello_evhtp"
full[e2e]="bench/e2e.sh $fb $build/contrib/hipchat-server"
short[e2e]="WRK_SECONDS=3 QUEUED=5000 bench/e2e.sh $fb $build/contrib/hipchat-server"
# the loadgen busy-polls on its own CPU: on this kind of VM a wake-up of a sleeping loop costs it
# about as much as an alert (bench/README.md, "Eleventh pass"), which the open loop pays per alert
full[compare]="PIN=1 ROUNDS=3 BUSY_POLL=1 bench/compare.sh $build"
short[compare]="PIN=1 ROUNDS=1 BUSY_POLL=1 HALF_ROUNDS=1 SECONDS_MAX=1 SECONDS_HALF=1 WARMUP=0.5"
short[compare]+=" bench/compare.sh $build"
full[journal]="PIN=1 ROUNDS=3 RECOVERY_ROUNDS=3 bench/journal.sh $fb $lg"
short[journal]="PIN=1 ROUNDS=1 SECONDS_RUN=1 PENDING=5000 PENDING_SECONDS=10 RECOVERY_ROUNDS=1"
short[journal]+=" DELIVERED=20000 DELIVERED_SECONDS=20 bench/journal.sh $fb $lg"
full[intake_tail]="PIN=1 B_FLAGS=\"--journal off\" bench/intake_tail.sh $fb $fb 3 $build"
short[intake_tail]="PIN=1 RATE=2000 SECONDS_RUN=1 B_FLAGS=\"--journal off\""
short[intake_tail]+=" bench/intake_tail.sh $fb $fb 1 $build"
full[probe]="bench/probe.sh reload $fb 20 && bench/probe.sh pipeline $fb 200 &&"
full[probe]+=" bench/probe.sh emfile $fb"
short[probe]="bench/probe.sh reload $fb 2 && bench/probe.sh pipeline $fb 20 &&"
short[probe]+=" bench/probe.sh emfile $fb"

# What each needs besides the build: programs on PATH (or /usr/sbin), then files in the build.
declare -A progs files
progs[healthz]="wrk curl"
progs[e2e]="wrk curl"
progs[compare]="nginx taskset"
progs[journal]="curl taskset"
progs[intake_tail]="taskset"
progs[probe]="curl prlimit"
files[template]="$build/bench/template"
files[json]="$build/bench/bench_json"
files[pipeline]="$build/bench/bench_pipeline"
files[incidents]="$build/bench/bench_incidents"
files[delivery]="$build/bench/bench_delivery"
files[healthz]="$fb $build/bench/hello_evhtp"
files[e2e]="$fb $build/contrib/hipchat-server"
files[compare]="$fb $lg"
files[journal]="$fb $lg"
files[intake_tail]="$fb $lg"
files[probe]="$fb"

# The figures of one benchmark's output, as one table cell: parse NAME LOG.
parse() {
  python3 - "$1" "$2" <<'PY'
import re, statistics, sys

name, text = sys.argv[1], open(sys.argv[2], errors="replace").read()


def one(pattern, flags=0):
    m = re.search(pattern, text, flags | re.M)
    if not m:
        raise LookupError(pattern)
    return m


def n(x, d=0):  # a number with thousands separators
    return f"{float(x):,.{d}f}"


def r(a, b, d=2):  # ratio a / b
    return f"{float(a) / float(b):.{d}f}"


def ms(x):  # milliseconds, two decimals
    return f"{float(x):.2f}"


def template():
    out = []
    for case in ("seed_url", "seed_payload", "large_payload"):
        ns = {k: one(rf"^{case}\s+{k}\s+([\d.]+)").group(1)
              for k in ("engine", "jansson", "memcpy")}
        allocs = one(rf"^case={case} .*allocs_per_render=([-\d.]+)").group(1)
        out.append(f"`{case}` {ns['engine']} ns per render vs jansson {n(ns['jansson'], 1)} ns "
                   f"(**{r(ns['engine'], ns['jansson'])}**) and memcpy {ns['memcpy']} ns "
                   f"({r(ns['engine'], ns['memcpy'], 1)}x); {float(allocs):g} allocations")
    return "; ".join(out)


def json_():
    out = []
    for m in re.finditer(r"^case=(\S+) bytes=(\d+) jansson_ns=(\d+) fbr_ns=(\d+) ratio=([\d.]+)",
                         text, re.M):
        out.append(f"`{m[1]}` ({m[2]} bytes) {n(m[4])} vs {n(m[3])} ns "
                   f"(**{r(m[4], m[3])}**)")
    if not out:
        raise LookupError("case=")
    return ("`fbr_json_loadb` vs `json_loadb(JSON_REJECT_DUPLICATES)`, parse + free, median of 5 "
            "alternating rounds: " + ", ".join(out))


def pipeline():
    parse = one(r"^json_loadb only:\s+(\d+) ns").group(1)
    pipe = one(r"\(full pipeline\):\s+(\d+) ns").group(1)
    dl = one(r"^deliveries: ([\d.]+) per alert").group(1)
    s = (f"intake + rules + incidents + events + rendering {n(pipe)} ns per alert ({dl} "
         f"deliveries) vs {n(parse)} ns for `json_loadb` of the same body alone: "
         f"**{r(pipe, parse)}**")
    m = re.search(r"journal \(fsync off\): (\d+) ns", text)
    if m:
        s += f"; with the incident journal on (fsync off) {n(m[1])} ns ({r(m[1], parse)})"
    return s


def incidents():
    off = one(r"^off\s+(\d+)\s+(\d+)\s+[\d.]+\s+(\d+)")
    on = one(r"^on\s+(\d+)\s+(\d+)\s+[\d.]+\s+(\d+)")
    ck = one(r"^on\s+(\d+)\s+[\d.]+\s+\d+\s+longest alert [\d.]+ ms \((\d+) alerts")
    return (f"a new incident with the table full (evicting) {n(off[2])} ns vs {n(off[1])} ns with "
            f"room: **{r(off[2], off[1])}**; journal on {n(on[2])} vs {n(on[1])} ns "
            f"({r(on[2], on[1])}); {n(ck[2])} alerts with journal checkpoints {n(ck[1])} ns "
            f"({r(ck[1], on[1])} of journal on with room)")


def delivery():
    tp = {m[1]: m for m in re.finditer(
        r"^throughput (https?): (\d+) deliveries to (\d+) rooms over (\d+) pooled connections"
        r".* = (\d+) deliveries/s", text, re.M)}
    h, s = tp["http"], tp["https"]
    mem = one(r"^memory: (\d+) deliveries queued \((\d+)-byte bodies.*?, (\d+) bytes per queued")
    return (f"delivery engine alone, {n(h[3])} rooms, {h[4]} pooled connections: https "
            f"{n(s[5])} deliveries/s vs http {n(h[5])}: **{r(s[5], h[5])}**; {mem[3]} bytes per "
            f"queued delivery with {n(mem[1])} queued, {r(mem[3], mem[2])}x its {mem[2]}-byte "
            f"body")


def healthz():
    fbr = one(r"firebridge /healthz :\s+(\d+) req/s").group(1)
    bare = one(r"bare libevhtp hello :\s+(\d+) req/s").group(1)
    rss = one(r"idle RSS: (\d+) kB, after the run: (\d+) kB")
    fds = one(r"open fds: idle (\d+), after the run (\d+)")
    return (f"`/healthz` {n(fbr)} req/s vs bare libevhtp hello-world {n(bare)} req/s: "
            f"**{r(fbr, bare)}**; RSS idle {n(rss[1])} kB, {n(rss[2])} kB after; open fds "
            f"{fds[1]} idle, {fds[2]} after")


def e2e():
    m = one(r"^RESULT deliveries_per_s=(\d+) overall_per_s=(\d+) direct_per_s=(\d+)")
    mem = one(r"^RESULT queued=(\d+) rss_idle_kb=(\d+) rss_queued_kb=(\d+) bytes_per_queued=(\d+)")
    return (f"through the daemon to `hipchat-server`, limits lifted: {n(m[1])} deliveries/s while "
            f"loaded ({n(m[2])} first alert to last delivery) vs {n(m[3])} notifications/s "
            f"posted straight to the server: **{r(m[1], m[3])}** ({r(m[2], m[3])}); RSS "
            f"{n(mem[2])} kB idle -> {n(mem[3])} kB with {n(mem[1])} deliveries queued while the "
            f"server is down ({mem[4]} bytes each)")


def compare():
    kv = lambda line: dict(x.split("=", 1) for x in line.split()[2:])
    mx = kv(one(r"^RESULT max .*$")[0])
    s = (f"closed loop, best of the rounds: nginx `proxy_pass` {n(mx['nginx_per_s'])} "
         f"notifications/s, firebridge `--pipeline {mx.get('pipeline', '1')}` "
         f"{n(mx['firebridge_per_s'])}: **{mx['ratio']}**; CPU per "
         f"notification nginx {mx['nginx_cpu_us']} us, firebridge {mx['firebridge_cpu_us']} us "
         f"({mx['cpu_ratio']})")
    d = re.search(r"^RESULT default .*$", text, re.M)
    if d:
        d = kv(d[0])
        s += (f"; firebridge with the default `--pipeline 1` {n(d['firebridge_pipeline1_per_s'])}"
              f"/s (**{d['ratio']}**), {d['cpu_us']} us per notification")
    s += f"; the loadgen's own ceiling {n(mx['direct_per_s'])}/s"
    h = re.search(r"^RESULT half .*$", text, re.M)
    if h:
        h = kv(h[0])
        ni, fi = h["nginx_intake_p99_ms"], h["fb_intake_p99_ms"]
        ne, fe = h["nginx_e2e_p99_ms"], h["fb_e2e_p99_ms"]
        s += (f"; half of each maximum, open loop, median of {h.get('rounds', '1')} rounds: "
              f"intake p99 nginx {ms(ni)} ms at "
              f"{n(h['nginx_rate'])}/s, firebridge {ms(fi)} ms at {n(h['firebridge_rate'])}/s "
              f"({r(fi, ni)}), end-to-end p99 {ms(ne)} / {ms(fe)} ms ({r(fe, ne)})")
        if "fb_send_lag_p99_ms" in h:
            s += (f", of which the loadgen's own send lag p99 {ms(h['nginx_send_lag_p99_ms'])} / "
                  f"{ms(h['fb_send_lag_p99_ms'])} ms")
        if "fb_from_send_p99_ms" in h:
            s += (f"; intake p99 from when each request went out (the target's own share, not "
                  f"corrected for coordinated omission) {ms(h['nginx_from_send_p99_ms'])} / "
                  f"{ms(h['fb_from_send_p99_ms'])} ms")
    h1 = re.search(r"^RESULT half_default .*$", text, re.M)
    if h1:
        h1 = kv(h1[0])
        s += (f"; the default `--pipeline 1` at half of its own maximum ({n(h1['firebridge_rate'])}"
              f"/s): intake p99 {ms(h1['fb_intake_p99_ms'])} ms, end-to-end "
              f"{ms(h1['fb_e2e_p99_ms'])} ms, send lag {ms(h1['fb_send_lag_p99_ms'])} ms, from "
              f"send {ms(h1['fb_from_send_p99_ms'])} ms")
    return s + (f"; firebridge peak RSS {n(mx['firebridge_peak_rss_kb'])} kB; lost "
                f"{mx['lost']}")


def journal():
    modes = {}
    for m in re.finditer(r"^  (no journal|--fsync \w+)\s+best\s+(\d+) alerts/s\s+ratio ([\d.]+)"
                         r"\s+median\s+(\d+) alerts/s\s+ratio ([\d.]+)", text, re.M):
        modes[m[1]] = m
    cpu = {m[1]: m for m in re.finditer(
        r"^  (no journal|--fsync \w+)\s+([\d.]+) us/alert\s+ratio ([\d.]+)", text, re.M)}
    base = modes["no journal"]
    s = (f"intake alerts/s (closed loop) as a ratio to no journal ({n(base[2])}/s best, "
         f"{n(base[4])} median), best / median round: " +
         ", ".join(f"`{k[8:]}` {m[3]} / {m[5]}" for k, m in modes.items() if k != "no journal"))
    oth = [(k[8:], m) for k, m in cpu.items() if k != "no journal"]
    s += (f"; daemon CPU per alert, median round: no journal {cpu['no journal'][2]} us; " +
          ", ".join(f"{k} {m[2]}" for k, m in oth) + " us (no journal's / theirs: " +
          ", ".join(m[3] for k, m in oth) + ")")
    rec = one(r"^recovery: (\d+) alerts answered, (\d+) deliveries pending at kill -9 \(journal "
              r"([\d.]+) MB\);\n\s+after the restart (\d+) pending, recovered in (\d+) ms "
              r"\((\d+) records\)")
    s += (f"; recovery of {n(rec[2])} pending deliveries ({rec[3]} MB, {n(rec[6])} records) "
          f"after kill -9: {n(rec[5])} ms, {n(rec[4])} restored")
    more = re.search(r"more restores of copies: ([\d ]+) ms; median (\d+) ms", text)
    if more:
        s += f" (more restores: {more[1].strip()} ms; median {more[2]} ms)"
    du = one(r"^disk use: (\d+) delivered \(lost (\d+)\): journal (\d+) bytes on disk in (\d+) "
             r"segment\(s\), (\d+) live; du (\d+) bytes; (\d+) bytes written in all")
    return s + (f"; after {n(du[1])} delivered (lost {du[2]}): {n(du[3])} bytes on disk in {du[4]} "
                f"segment(s), {n(du[5])} live, of {n(du[7])} written in all "
                f"({float(du[3]) / float(du[7]):.3f})")


def intake_tail():
    rows = {"A": [], "B": []}
    for m in re.finditer(r"^  (A|B)\s+intake p50\s+([\d.]+)\s+p90\s+([\d.]+)\s+p99\s+([\d.]+)\s+"
                         r"p99\.9\s+([\d.]+)\s+max\s+([\d.]+) ms\s+e2e p99\s+([\d.]+) ms\s+"
                         r"send lag p99\s+([\d.]+) ms\s+lost (\d+)", text, re.M):
        rows[m[1]].append(m)
    head = one(r"^== .*; (\d+) alerts/s open loop")
    med = lambda k, i: statistics.median(float(m[i]) for m in rows[k])
    a, b = med("A", 4), med("B", 4)
    lost = sum(int(m[9]) for k in rows for m in rows[k])
    return (f"{n(head[1])} alerts/s open loop, seed recipe, median of {len(rows['A'])} alternating "
            f"rounds: intake p99 journal default {a:.2f} ms vs `--journal off` {b:.2f} ms: "
            f"**{a / b:.2f}**; p99.9 {med('A', 5):.2f} vs {med('B', 5):.2f} ms "
            f"({med('A', 5) / med('B', 5):.2f}); p50 {med('A', 2):.2f} vs {med('B', 2):.2f} ms; "
            f"end-to-end p99 {med('A', 7):.2f} vs {med('B', 7):.2f} ms; the loadgen's own send "
            f"lag p99 {med('A', 8):.2f} / {med('B', 8):.2f} ms; lost {lost}")


def probe():
    rl = one(r"^reload: (\d+) crashes out of (\d+)")
    pl = one(r"^pipeline: sent ([\d.]+) MB .*; peak RSS (\d+) kB")
    p0 = one(r"^pipeline: RSS before (\d+) kB").group(1)
    em = one(r"^emfile: (\d+) connections open; daemon CPU (\d+) %, (\d+) log lines/s")
    return (f"SIGHUP then one alert: {rl[1]} crashes out of {rl[2]}; {pl[1]} MB of pipelined "
            f"`GET /metrics` never read: peak RSS {n(pl[2])} kB vs {n(p0)} kB before "
            f"(**{r(pl[2], p0)}**); {em[1]} idle connections with the descriptor limit at 1024: "
            f"daemon CPU {em[2]} %, {em[3]} log lines/s (no anchor: 0 is the goal)")


fns = {"template": template, "json": json_, "pipeline": pipeline, "incidents": incidents,
       "delivery": delivery, "healthz": healthz, "e2e": e2e, "compare": compare,
       "journal": journal, "intake_tail": intake_tail, "probe": probe}
try:
    print(fns[name]())
except (LookupError, ValueError, ZeroDivisionError, statistics.StatisticsError) as e:
    print(f"failed: its output did not have the expected figures ({type(e).__name__}: {e})")
PY
}

have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
start_date=$(date -u '+%Y-%m-%d %H:%M UTC')
start_load=$(load)
t_start=$(date +%s)
rows=()
for name in template json pipeline incidents delivery healthz e2e compare journal intake_tail \
            probe; do
  case $only in *" $name "*) ;; *) continue ;; esac
  cmd=${full[$name]}
  [ "$quick" = 1 ] && cmd=${short[$name]}
  cell=
  for p in ${progs[$name]:-}; do
    have "$p" || { cell="skipped: $p not installed (contrib/deps.sh)"; break; }
  done
  if [ -z "$cell" ]; then
    for f in ${files[$name]}; do
      [ -x "$f" ] || { cell="skipped: $f not built (meson setup $build -Dbench=true)"; break; }
    done
  fi
  if [ -z "$cell" ]; then
    echo "== $name: $cmd" >&2
    t0=$(date +%s)
    rc=0
    bash -c "$cmd" >"$tmp/$name.log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || tail -n 20 "$tmp/$name.log" >&2
    echo "== $name: exit $rc, $(( $(date +%s) - t0 )) s" >&2
    [ -z "$logs" ] || cp "$tmp/$name.log" "$logs/$name.log"
    cell=$(parse "$name" "$tmp/$name.log")
    if [ "$rc" != 0 ]; then
      cell="failed (exit $rc: $(grep -v '^\s*$' "$tmp/$name.log" | tail -n 1 | tr '|' '/')); $cell"
    fi
  fi
  [ "$quick" = 1 ] && cell="quick: $cell"
  rows+=("| \`$cmd\` | $cell |")
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
buildtype=$(python3 -c 'import json, sys
print(next(o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "buildtype"))' \
  "$build/meson-info/intro-buildoptions.json" 2>/dev/null || echo unknown)
echo
echo "$start_date, $(nproc) vCPU, load average $start_load at the start and $(load) at the end," \
     "commit \`$commit\`, buildtype $buildtype$([ "$quick" = 1 ] && echo ', QUICK=1'):" \
     "\`${QUICK:+QUICK=$QUICK }${ONLY:+ONLY=\"$ONLY\" }bench/summary.sh${1:+ $1}\`, $(( $(date +%s) - t_start )) s in all"
echo
echo "| Benchmark (command) | Figure (ratio to its anchor, same run) |"
echo "|---|---|"
printf '%s\n' "${rows[@]}"
