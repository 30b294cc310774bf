#!/usr/bin/env bash
# Load against a running siplb with sipload's caller. Knobs by environment:
#   CALLS (1000)  RATE (200 calls/s)  CONCURRENCY (50)  MODE (persistent | per-call)
#   SERVER_NAME (localhost: the name in siplb's certificate)  HOLD_MS (0)
# Usage: scripts/load.sh TARGET_ADDR CA.pem        e.g. scripts/load.sh 127.0.0.1:5061 ca.pem
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
target=$1 ca=$2
cd "$(dirname "$0")/.."
cargo build --quiet --release --bin sipload
args=(call --target "$target" --ca "$ca" --server-name "${SERVER_NAME:-localhost}"
      --calls "${CALLS:-1000}" --rate "${RATE:-200}" --concurrency "${CONCURRENCY:-50}"
      --hold-ms "${HOLD_MS:-0}")
[ "${MODE:-persistent}" = per-call ] && args+=(--per-call-connection)
exec target/release/sipload "${args[@]}"
