#!/usr/bin/env bash
# Runs the README's loopback recipe (the block between <!-- recipe:start --> and
# <!-- recipe:end -->) exactly as written, from the top of the clone, and checks what it promises:
# every call ok, the metrics lines, and "siplb stopped" as the log's last line. Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "needs curl (apt-get install curl)" >&2; exit 1; }
recipe=$(sed -n '/<!-- recipe:start -->/,/<!-- recipe:end -->/p' README.md | sed '1,2d;$d' | sed '$d')
[ -n "$recipe" ] || { echo "no recipe found in README.md" >&2; exit 1; }
out=$(bash -euo pipefail -c "$recipe" 2>&1) || { echo "$out"; echo "the README recipe failed" >&2; exit 1; }
echo "$out"
grep -q '^calls: 200 ok, 0 failed' <<<"$out" || { echo "recipe: not every call went through" >&2; exit 1; }
grep -q '^siplb_setup_seconds_count 200' <<<"$out" || { echo "recipe: setup histogram missing" >&2; exit 1; }
[ "$(grep -c '^siplb_backend_dialogs_total' <<<"$out")" = 2 ] || { echo "recipe: dialogs per back end missing" >&2; exit 1; }
grep -q 'siplb stopped' <<<"$out" || { echo "recipe: no final 'siplb stopped' line" >&2; exit 1; }
echo "README recipe: OK"
