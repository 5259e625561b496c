#!/usr/bin/env bash
# contrib/test.sh - the README's test command: installs what is missing, builds, runs every test,
# then rebuilds with AddressSanitizer + UndefinedBehaviorSanitizer and runs every test again (the
# kill -9 crash test, suite crash, only in the gcc build), and
# finally runs the fuzz targets for a bounded time when clang is present.
set -euo pipefail
cd "$(dirname "$0")/.."

bash contrib/deps.sh

echo "== build (release-like, gcc)"
[ -d build ] || meson setup build -Dwerror=true
meson compile -C build
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
meson test -C build --print-errorlogs --num-processes 2 | tee "$log"

echo "== build with ASan + UBSan"
[ -d build-asan ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
  -Dbuildtype=debug -Dbench=false
meson compile -C build-asan
echo "== tests under sanitizers"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes 2 --timeout-multiplier 3 \
  --no-suite crash | tee -a "$log"

if command -v clang >/dev/null 2>&1 && [ -f tests/fuzz/meson.build ]; then
  echo "== fuzzing (bounded)"
  [ -d build-fuzz ] || CC=clang meson setup build-fuzz -Dfuzzing=true -Dtests=false -Dbench=false \
    -Db_sanitize=address,undefined -Db_lundef=false
  meson compile -C build-fuzz
  for f in build-fuzz/tests/fuzz/fuzz_*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    corpus="tests/fuzz/corpus/$(basename "$f")"
    mkdir -p "build-fuzz/corpus-$(basename "$f")"
    "$f" -max_total_time="${FBR_FUZZ_SECONDS:-30}" -timeout=5 \
      "build-fuzz/corpus-$(basename "$f")" $( [ -d "$corpus" ] && echo "$corpus" ) 2>&1 | tail -3
  done
fi
passed=$(awk '/^Ok:/ {n += $2} END {print n + 0}' "$log")
failed=$(awk '/^Fail:/ {n += $2} /^Timeout:/ {n += $2} END {print n + 0}' "$log")
echo "== all tests passed (gcc build and ASan+UBSan build)"
echo "tests: $passed passed, $failed failed"
