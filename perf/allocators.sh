#!/usr/bin/env bash
# siplb built with the system allocator, mimalloc and jemalloc (cargo features), one after the
# other in one run, behind the same sipload caller and servers (built with the system one): CPU
# per call (persistent TLS at RATE calls/s; a new TLS connection per call at PC_RATE), RSS per
# idle TLS connection with IDLE connections open, and RSS a few seconds after they closed
# (memory given back).
#
#   perf/allocators.sh [--calls N] [--rate R] [--idle N] [--variants "system mimalloc jemalloc"]
source "$(dirname "$0")/../scripts/lib.sh"
CALLS=10000 RATE=1000 PC_CALLS=1500 PC_RATE=150 IDLE=10000 VARIANTS="system mimalloc jemalloc"
while [ $# -gt 0 ]; do
  case $1 in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
build
for v in $VARIANTS; do
  feature=(--no-default-features)
  [ "$v" = system ] || feature+=(--features "$v")
  (cd "$ROOT" && cargo build --quiet --release --bin siplb "${feature[@]}")
  cp "$BIN/siplb" "$BENCH_DIR/siplb-$v"
done
(cd "$ROOT" && cargo build --quiet --release --bins)
make_pki
start_backends
echo "$(date -u +%F) on $(nproc) CPUs ($(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo)), 2 workers"
summary=()
port=17081
for v in $VARIANTS; do
  SIPLB_BIN="$BENCH_DIR/siplb-$v" start_siplb "$port" 2
  echo "## $v"
  table_header
  measure "$v" "$port" persistent "$CALLS" "$RATE" 200 "$SIPLB_PID"
  persistent=$CPU_PER_1000
  measure "$v" "$port" per-call "$PC_CALLS" "$PC_RATE" 100 "$SIPLB_PID"
  percall=$CPU_PER_1000
  before=$(rss_kib "$SIPLB_PID")
  "$BIN/sipload" idle --target "127.0.0.1:$port" --ca "$BENCH_DIR/ca.pem" --connections "$IDLE" --hold 4 \
    >"$BENCH_DIR/idle-$v.out" 2>&1 &
  idle=$!
  for _ in $(seq 1 240); do grep -q "connections open" "$BENCH_DIR/idle-$v.out" && break; sleep 0.5; done
  sleep 1
  during=$(rss_kib "$SIPLB_PID")
  open=$(sed -n 's/^\([0-9]*\) connections open.*/\1/p' "$BENCH_DIR/idle-$v.out")
  wait "$idle" || true
  sleep 12
  after=$(rss_kib "$SIPLB_PID")
  per=$(awk -v a="$before" -v b="$during" -v n="${open:-1}" 'BEGIN {printf "%.1f", (b - a) / (n > 0 ? n : 1)}')
  echo "idle: ${open:-0} connections; RSS $before -> $during KiB ($per KiB each); 12 s after they closed: $after KiB"
  summary+=("$(printf "| %-8s | %9s | %9s | %8s | %8s | %8s | %8s |" "$v" "$persistent" "$percall" "$per" "$before" "$during" "$after")")
  kill "$SIPLB_PID"
  wait "$SIPLB_PID" 2>/dev/null || true
  port=$((port + 1))
done
echo
echo "| allocator | persistent CPU s/1k | per-call CPU s/1k | KiB per idle conn | RSS before KiB | RSS with idle KiB | RSS after close KiB |"
echo "|---|---|---|---|---|---|---|"
printf "%s\n" "${summary[@]}"
