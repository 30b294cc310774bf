#!/usr/bin/env bash
# Rolling restart with the bundled tools: two siplb instances on one port (--reuse-port, one
# --token-key-file) in front of three sipload servers; while sipload places calls (one TLS
# connection each, retrying once as an RFC 3263 client does), each instance is replaced in turn:
# start the new one, SIGTERM the old one (it drains). Prints calls ok/failed.
# Knobs: CALLS (600), RATE (50 calls/s), PORT (17061).
# Usage: scripts/rolling-restart.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
build
make_pki
start_backends
PORT=${PORT:-17061}
"$BIN/siplb" keygen "$BENCH_DIR/token.key"

# start_instance: one siplb on PORT sharing it and the key, its metrics on a port of its own;
# returns once it can route; sets NEW_PID.
INSTANCES=0
start_instance() {
  INSTANCES=$((INSTANCES + 1))
  local metrics=$((PORT + 100 + INSTANCES))
  "$BIN/siplb" --listen "127.0.0.1:$PORT" --reuse-port --token-key-file "$BENCH_DIR/token.key" \
    --workers 1 --log warn --metrics "127.0.0.1:$metrics" \
    --cert "$BENCH_DIR/localhost.crt.pem" --key "$BENCH_DIR/localhost.key.pem" --backend-ca "$BENCH_DIR/ca.pem" \
    --backend "b0.bench=127.0.0.1:$BACKEND_PORT" --backend "b1.bench=127.0.0.1:$((BACKEND_PORT + 1))" \
    --backend "b2.bench=127.0.0.1:$((BACKEND_PORT + 2))" >>"$BENCH_DIR/siplb.log" 2>&1 &
  NEW_PID=$!
  PIDS+=("$NEW_PID")
  wait_ready "$metrics" 1
}

# replace OLD_PID: start a new instance, then SIGTERM the old one and wait for it to drain.
replace() {
  start_instance
  kill -TERM "$1"
  if wait "$1"; then
    echo "instance $1 drained and exited 0; $NEW_PID took over"
  else
    echo "instance $1 exited with an error" >&2
  fi
}

start_instance; a=$NEW_PID
start_instance; b=$NEW_PID
"$BIN/sipload" call --target "127.0.0.1:$PORT" --ca "$BENCH_DIR/ca.pem" --server-name localhost \
  --calls "${CALLS:-600}" --rate "${RATE:-50}" --concurrency 20 --per-call-connection --retry --quiet \
  >"$BENCH_DIR/calls.txt" 2>&1 &
caller=$!
sleep 2
replace "$a"
sleep 2
replace "$b"
wait "$caller" || true
grep '^calls:' "$BENCH_DIR/calls.txt"
grep -q ' 0 failed' "$BENCH_DIR/calls.txt"
