#!/usr/bin/env bash
# Measures flakiness instead of guessing it: clones the committed HEAD into a fresh folder, runs
# the README's test command (`cargo test`) there N times, and prints for every test how often it
# passed and failed (and which runs failed). Exits 1 if any test failed in any run.
#
#   scripts/repeat-tests.sh [N]        # N defaults to 5
#
# KEEP=1 keeps the clone and the logs (printed at the end); CARGO_TARGET_DIR is honoured, so a
# target folder from an earlier run can be reused to skip the first build.
set -euo pipefail
runs=${1:-5}
case $runs in '' | *[!0-9]* | 0) echo "repeat-tests.sh: N must be a positive number, got '$runs'" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/siplb-repeat.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
git clone --quiet "$root" "$work/clone"
cd "$work/clone"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/clone; $runs runs of: cargo test"
# The browser test's JsSIP bundle, as .ci/run makes it (the test skips without it).
scripts/browser-deps.sh >/dev/null 2>&1 || echo "repeat-tests.sh: no JsSIP bundle; the browser test will skip" >&2

for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  set +e
  cargo test >"$work/run$i.log" 2>&1
  rc=$?
  set -e
  echo "run $i: exit $rc in $(($(date +%s) - start)) s"
done

# "Running tests/x.rs (...)" names the test binary; "test NAME ... ok|FAILED|ignored" each test.
awk -v runs="$runs" -v totals="$work/totals.txt" '
  FNR == 1 { run++ }
  /^ +Running / { bin = ($2 == "unittests") ? $3 : $2; next }
  /^test .* \.\.\. (ok|FAILED|ignored)$/ {
    name = bin "::" $2; res = $NF
    seen[name] = 1
    if (res == "ok") pass[name]++
    else if (res == "FAILED") { fail[name]++; which[name] = which[name] " " run }
    else skip[name]++
  }
  END {
    total = 0; bad = 0
    for (n in seen) {
      total++
      if (fail[n] > 0) bad++
      note = fail[n] > 0 ? ", failed in run(s)" which[n] : (skip[n] > 0 ? " (ignored " skip[n] ")" : "")
      printf("%-100s %d/%d passed%s\n", n, pass[n] + 0, runs, note)
    }
    printf("%d tests, %d with a failure in %d runs\n", total, bad, runs) > totals
  }' $(for i in $(seq 1 "$runs"); do echo "$work/run$i.log"; done) | sort -k1,1 > "$work/summary.txt"

cat "$work/summary.txt" "$work/totals.txt"
[ "${KEEP:-0}" = 1 ] && echo "logs: $work/run*.log"
# A run that did not finish (a build failure, a crash) also counts as a failure.
if grep -q ' failed in run' "$work/summary.txt" || grep -L 'test result' "$work"/run*.log | grep -q .; then
  exit 1
fi
grep -h '^test result' "$work"/run*.log | grep -qv ' 0 failed' && exit 1
exit 0
