#!/usr/bin/env bash
# System benchmark of siplb alone: sipload caller -> siplb -> three sipload servers, on loopback.
# Two modes (one persistent TLS connection; a new TLS connection per call), then memory: peak RSS
# and RSS per idle TLS client connection. siplb's CPU comes from /proc (seconds per 1000 calls).
#
#   scripts/bench.sh [--calls N] [--rate R] [--per-call-calls N] [--per-call-rate R]
#                    [--concurrency L] [--workers W] [--idle N]
# Defaults: 10000 calls at 1000/s persistent, 1500 at 150/s per call, 2 workers, 10000 idle.
source "$(dirname "$0")/lib.sh"
CALLS=10000 RATE=1000 PC_CALLS=1500 PC_RATE=150 CONC=200 WORKERS=2 IDLE=10000
while [ $# -gt 0 ]; do
  case $1 in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --per-call-calls) PC_CALLS=$2; shift 2 ;;
    --per-call-rate) PC_RATE=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
build
make_pki
start_backends
start_siplb 17061 "$WORKERS"
echo "siplb with $WORKERS workers; machine: $(nproc) CPUs, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo)"
table_header
measure siplb 17061 persistent "$CALLS" "$RATE" "$CONC" "$SIPLB_PID"
measure siplb 17061 per-call "$PC_CALLS" "$PC_RATE" 100 "$SIPLB_PID"
echo
echo "peak RSS after the calls: $(hwm_kib "$SIPLB_PID") KiB"
before=$(rss_kib "$SIPLB_PID")
"$BIN/sipload" idle --target 127.0.0.1:17061 --ca "$BENCH_DIR/ca.pem" --connections "$IDLE" --hold 6 >"$BENCH_DIR/idle.out" 2>&1 &
idle=$!
for _ in $(seq 1 240); do grep -q "connections open" "$BENCH_DIR/idle.out" && break; sleep 0.5; done
sleep 1
during=$(rss_kib "$SIPLB_PID")
open=$(sed -n 's/^\([0-9]*\) connections open.*/\1/p' "$BENCH_DIR/idle.out")
wait "$idle" || true
echo "idle TLS connections held: ${open:-0} of $IDLE; siplb RSS $before -> $during KiB;" \
  "$(awk -v a="$before" -v b="$during" -v n="${open:-1}" 'BEGIN {printf "%.1f KiB per idle connection", (b - a) / (n > 0 ? n : 1)}')"
