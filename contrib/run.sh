#!/usr/bin/env bash
# contrib/run.sh - the README's first command: installs what is missing, builds, and starts
# firebridge on its built-in default configuration so that a newcomer sees it work.
set -euo pipefail
cd "$(dirname "$0")/.."

FBR_WITH_CLANG=0 bash contrib/deps.sh
[ -d build ] || meson setup build
meson compile -C build >/dev/null

port=${FBR_PORT:-8080}
echo "firebridge: starting on 127.0.0.1:$port (Ctrl-C stops it)"
echo "  try:  curl -s http://127.0.0.1:$port/healthz"
exec ./build/src/firebridge "127.0.0.1:$port"
