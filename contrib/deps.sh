#!/usr/bin/env bash
# contrib/deps.sh - installs the Debian 12 packages firebridge builds, tests and benchmarks with,
# only those that are missing (linux-perf: bench/daemon_ab.sh counts system calls and CPU with
# perf stat).  Sourced or run by contrib/run.sh and contrib/test.sh.
set -euo pipefail

pkgs=(meson ninja-build pkg-config gcc libc6-dev libevent-dev libevhtp-dev libonig-dev
      libjansson-dev libssl-dev check curl openssl valgrind wrk python3 ca-certificates
      prometheus-alertmanager haproxy libsystemd-dev systemd groff-base man-db nginx
      libjemalloc-dev linux-perf)
if [ "${FBR_WITH_CLANG:-1}" = 1 ]; then
  pkgs+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "firebridge: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
