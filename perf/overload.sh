#!/usr/bin/env bash
# siplb past its own capacity: one worker, a caller placing held calls (each ends with a BYE 3 s
# after its 200), and a flood of new INVITEs from another source address over many connections
# meant to saturate the worker. What should hold: the calls already set up end (their BYEs are
# answered), while new dialogs — the flood's and the caller's — are the ones refused.
#
#   perf/overload.sh [--connections N] [--seconds S] [--server-capacity CPS] [--siplb-flags "..."]
#     (defaults: 40 connections, 4 s; servers without a capacity; no extra siplb flags)
# --server-capacity makes each server answer new INVITEs beyond CPS a second 503 (servers that
# announce their load); --siplb-flags "--rate-limit-per-ip 50", say.
source "$(dirname "$0")/../scripts/lib.sh"
CONNS=40 SECS=4 CAPACITY="" LB_FLAGS=""
while [ $# -gt 0 ]; do
  case $1 in
    --connections) CONNS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --server-capacity) CAPACITY=$2; shift 2 ;;
    --siplb-flags) LB_FLAGS=$2; shift 2 ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
build
make_pki
for i in 0 1 2; do
  "$BIN/sipload" server --listen "127.0.0.1:$((BACKEND_PORT + i))" --name "b$i.bench" \
    --cert "$BENCH_DIR/b$i.bench.crt.pem" --key "$BENCH_DIR/b$i.bench.key.pem" --ca "$BENCH_DIR/ca.pem" \
    ${CAPACITY:+--capacity "$CAPACITY"} >/dev/null 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do wait_port $((BACKEND_PORT + i)); done
LB=17181 METRICS=17190
"$BIN/siplb" --listen "127.0.0.1:$LB" --workers 1 --log warn --metrics "127.0.0.1:$METRICS" \
  --cert "$BENCH_DIR/localhost.crt.pem" --key "$BENCH_DIR/localhost.key.pem" --backend-ca "$BENCH_DIR/ca.pem" \
  --backend "b0.bench=127.0.0.1:$BACKEND_PORT" --backend "b1.bench=127.0.0.1:$((BACKEND_PORT + 1))" \
  --backend "b2.bench=127.0.0.1:$((BACKEND_PORT + 2))" --max-connections 20000 $LB_FLAGS >"$BENCH_DIR/siplb.log" 2>&1 &
SIPLB_PID=$!
PIDS+=("$SIPLB_PID")
wait_port "$LB"
sleep 1
metric() { curl -s "http://127.0.0.1:$METRICS/metrics" | awk -v n="$1" '$1 == n {print $2}'; }

"$BIN/sipload" call --target "127.0.0.1:$LB" --ca "$BENCH_DIR/ca.pem" --server-name localhost \
  --calls 400 --rate 50 --concurrency 400 --hold-ms 3000 --timeout 15 --quiet >"$BENCH_DIR/calls.txt" 2>&1 &
CALLER=$!
sleep 2
"$BIN/sipload" flood --target "127.0.0.1:$LB" --ca "$BENCH_DIR/ca.pem" --server-name localhost \
  --from 127.0.0.2 --connections "$CONNS" --seconds "$SECS" >"$BENCH_DIR/flood.txt" 2>&1 || true
wait "$CALLER" || true
echo "siplb, 1 worker, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "held calls: 400 at 50/s, 3 s each; flood: $CONNS connections for $SECS s from 127.0.0.2;" \
  "server capacity: ${CAPACITY:-none}; siplb flags: ${LB_FLAGS:-none}"
echo
echo "caller:  $(grep '^calls:' "$BENCH_DIR/calls.txt")"
grep 'failed:' "$BENCH_DIR/calls.txt" | sed 's/^/         /' || true
echo "flood:   $(head -1 "$BENCH_DIR/flood.txt")"
echo "siplb:   saturations $(metric siplb_worker_saturations_total), new dialogs shed $(metric siplb_shed_total)," \
  "503s generated $(metric 'siplb_generated_responses_total{code="503"}'), rate-limited $(metric siplb_rate_limited_total)," \
  "retries on 503 $(metric 'siplb_retries_total{reason="503"}')"
