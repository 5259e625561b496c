#!/usr/bin/env bash
# contrib/run.sh - the README's first command: installs what is missing, builds, and starts
# firebridge on its built-in default configuration (127.0.0.1:8080, data in ./firebridge-data)
# so that a newcomer sees it work.  Extra arguments are passed to firebridge (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

FBR_WITH_CLANG=0 bash contrib/deps.sh
[ -d build ] || meson setup build >/dev/null
meson compile -C build >/dev/null

url=http://127.0.0.1:8080
cat <<TRY
firebridge: starting on the built-in default configuration ($url); Ctrl-C drains and stops it.
  try, in another terminal:
    curl -s $url/healthz                 # liveness: {"status":"ok"}
    curl -s $url/readyz                  # readiness: 503 while draining or data dir unwritable
    curl -s $url/metrics                 # Prometheus metrics
    curl -si $url/nope                   # 404 with a JSON error body
    ./build/src/firebridge --help        # every flag and its default
    ./build/src/firebridge --check-config -c my.json
TRY
exec ./build/src/firebridge "$@"
