#!/usr/bin/env bash
# test_man.sh - the man pages: doc/firebridge.8 is exactly what firebridge-man generates from the
# configuration table (so it can never drift from --help and the README reference), every flag
# of `hipchat-server --help` is in contrib/man/hipchat-server.1, and both render with groff
# -ww and man -l without a single warning.  groff-base and man-db come from contrib/deps.sh.
set -euo pipefail
: "${FBR_SOURCE_ROOT:?}" "${FBR_MAN_GEN:?}" "${HIPCHAT_SERVER:?}"
fb="$FBR_SOURCE_ROOT/doc/firebridge.8"
hc="$FBR_SOURCE_ROOT/contrib/man/hipchat-server.1"
for tool in groff man; do
  command -v $tool >/dev/null || { echo "$tool missing: run contrib/deps.sh"; exit 1; }
done
if ! diff -u "$fb" <("$FBR_MAN_GEN"); then
  echo "doc/firebridge.8 is stale: regenerate with build/doc/firebridge-man > doc/firebridge.8"
  exit 1
fi
# every flag of --help starts an entry (a line of its own after .TP), not just a mention
for flag in $("$HIPCHAT_SERVER" --help 2>&1 | grep -o -- '--[a-z][a-z-]*' | sort -u); do
  entry="\\fB$(printf '%s' "$flag" | sed 's/-/\\-/g')\\fR"
  E="$entry" awk 'prev == ".TP" && index($0, ENVIRON["E"]) == 1 { found = 1 } { prev = $0 }
                  END { exit !found }' "$hc" || { echo "hipchat-server.1 lacks $flag"; exit 1; }
done
for page in "$fb" "$hc"; do
  warn=$(groff -man -ww -z -Tutf8 "$page" 2>&1)
  [ -z "$warn" ] || { echo "groff warns on $page:"; echo "$warn"; exit 1; }
  warn=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
  [ -z "$warn" ] || { echo "man -l warns on $page:"; echo "$warn"; exit 1; }
  lines=$(MANWIDTH=80 man -l "$page" 2>/dev/null | wc -l)
  [ "$lines" -gt 40 ] || { echo "$page renders to only $lines lines"; exit 1; }
done
echo "ok: firebridge.8 up to date, both pages render without warnings"
