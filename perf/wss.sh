#!/usr/bin/env bash
# CPU per call over a WebSocket (SIP over WSS) against plain TLS, side by side in one run: one
# siplb with both listeners, one persistent connection each, the same rate, rounds alternating
# TLS / WSS so a noisy machine weighs on both alike. Prints every round and the medians of
# siplb's CPU seconds per 1000 calls, and their ratio.
#
#   perf/wss.sh [--calls N] [--rate R] [--rounds K] [--workers W]
# Defaults: 10000 calls at 1000/s, 3 rounds each, 2 workers.
source "$(dirname "$0")/../scripts/lib.sh"
CALLS=10000 RATE=1000 ROUNDS=3 WORKERS=2
while [ $# -gt 0 ]; do
  case $1 in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
build
make_pki
start_backends
SIPLB_ARGS="--listen-wss 127.0.0.1:17063" start_siplb 17061 "$WORKERS"
wait_port 17063
echo "siplb with $WORKERS workers; machine: $(nproc) CPUs, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo)"
table_header
tls=() wss=()
for _ in $(seq 1 "$ROUNDS"); do
  measure siplb 17061 persistent "$CALLS" "$RATE" 200 "$SIPLB_PID"
  tls+=("$CPU_PER_1000")
  measure siplb 17063 wss "$CALLS" "$RATE" 200 "$SIPLB_PID"
  wss+=("$CPU_PER_1000")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
mt=$(median "${tls[@]}") mw=$(median "${wss[@]}")
echo
echo "median CPU s per 1000 calls: TLS $mt, WSS $mw; WSS/TLS $(awk -v a="$mw" -v b="$mt" 'BEGIN {printf "%.2f", a / b}')"
