#!/usr/bin/env bash
# Load-aware routing, side by side in one run: --balance call-id against --balance least-work.
#
# 1. A slow server: three sipload servers, one answering INVITEs 600 ms late (--answer-delay
#    600); 600 calls at 100/s over one persistent connection. Reports each mode's calls, the slow
#    server's share of the new dialogs and the setup latency (mean, p50, p90).
# 2. An overloaded pool: three servers that take 100 new INVITEs a second each (--capacity 100,
#    503 with Retry-After: 1 beyond it), offered twice the pool's capacity (600 calls/s, 3000
#    calls). Reports calls completed, refused, and BYEs that failed.
#
#   perf/loadaware.sh [--csv FILE] [--svg FILE]     (defaults: perf/loadaware.csv, perf/loadaware.svg)
source "$(dirname "$0")/../scripts/lib.sh"
CSV=$ROOT/perf/loadaware.csv SVG=$ROOT/perf/loadaware.svg
while [ $# -gt 0 ]; do
  case $1 in
    --csv) CSV=$(realpath -m "$2"); shift 2 ;;
    --svg) SVG=$(realpath -m "$2"); shift 2 ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
build
make_pki
LB_PORT=17111 B_PORT=17101

# run_mode NAME BALANCE CALLS RATE "SERVER0 FLAGS" "SERVER1 FLAGS" "SERVER2 FLAGS": servers and
# siplb started fresh, one call run, everything stopped; sets OUT (the caller's summary) and
# SEEN_i (new dialogs server i was offered).
run_mode() {
  local name=$1 balance=$2 calls=$3 rate=$4
  shift 4
  local servers=() i
  for i in 0 1 2; do
    # shellcheck disable=SC2086
    "$BIN/sipload" server --listen "127.0.0.1:$((B_PORT + i))" --name "b$i.bench" \
      --cert "$BENCH_DIR/b$i.bench.crt.pem" --key "$BENCH_DIR/b$i.bench.key.pem" --ca "$BENCH_DIR/ca.pem" \
      --report "$BENCH_DIR/$name.b$i.txt" $1 >/dev/null 2>&1 &
    servers+=($!)
    shift
  done
  for i in 0 1 2; do wait_port $((B_PORT + i)); done
  "$BIN/siplb" --listen "127.0.0.1:$LB_PORT" --workers 2 --log warn --balance "$balance" \
    --cert "$BENCH_DIR/localhost.crt.pem" --key "$BENCH_DIR/localhost.key.pem" --backend-ca "$BENCH_DIR/ca.pem" \
    --backend "b0.bench=127.0.0.1:$B_PORT" --backend "b1.bench=127.0.0.1:$((B_PORT + 1))" \
    --backend "b2.bench=127.0.0.1:$((B_PORT + 2))" >"$BENCH_DIR/$name.siplb.log" 2>&1 &
  local lb=$!
  wait_port "$LB_PORT"
  sleep 1 # the pools connect and pass their first probes
  OUT=$("$BIN/sipload" call --target "127.0.0.1:$LB_PORT" --ca "$BENCH_DIR/ca.pem" --server-name localhost \
    --calls "$calls" --rate "$rate" --concurrency 1000 --timeout 10 --quiet 2>&1 || true)
  kill -TERM "$lb" 2>/dev/null || true
  wait "$lb" 2>/dev/null || true
  kill -TERM "${servers[@]}" 2>/dev/null || true
  wait "${servers[@]}" 2>/dev/null || true
  for i in 0 1 2; do
    # Lines of the server's report: one per Call-ID it saw an INVITE for (probes aside).
    printf -v "SEEN_$i" '%s' "$(grep -v '^siplb-probe-' "$BENCH_DIR/$name.b$i.txt" 2>/dev/null | grep -c 'INVITE' || true)"
  done
}

field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" <<<"$OUT" | head -1; }
date=$(date -u +%F)
: >"$CSV.new"

echo "## slow server: b0 answers INVITEs 600 ms late; 600 calls at 100/s, one connection"
printf "| %-10s | %5s | %6s | %14s | %9s | %8s | %8s |\n" balance ok failed "b0 share" "mean ms" "p50 ms" "p90 ms"
printf "|%s|%s|%s|%s|%s|%s|%s|\n" ------------ ------- -------- ---------------- ----------- ---------- ----------
for balance in call-id least-work; do
  run_mode "slow-$balance" "$balance" 600 100 "--answer-delay 600" "" ""
  ok=$(sed -n 's/^calls: \([0-9]*\) ok.*/\1/p' <<<"$OUT")
  failed=$(sed -n 's/.* \([0-9]*\) failed in.*/\1/p' <<<"$OUT")
  total=$((SEEN_0 + SEEN_1 + SEEN_2))
  share=$(awk -v a="$SEEN_0" -v t="$total" 'BEGIN {printf "%.1f%%", t ? 100 * a / t : 0}')
  printf "| %-10s | %5s | %6s | %5s (%6s) | %9s | %8s | %8s |\n" "$balance" "$ok" "$failed" "$SEEN_0" "$share" \
    "$(field mean)" "$(field p50)" "$(field p90)"
  echo "$date,slow,$balance,$ok,$failed,$SEEN_0,$total,$(field mean),$(field p50),$(field p90)" >>"$CSV.new"
done

echo
echo "## overloaded pool: 3 servers of 100 calls/s each, offered 600 calls/s (3000 calls)"
printf "| %-10s | %9s | %7s | %11s | %8s |\n" balance completed refused "BYE failed" "p90 ms"
printf "|%s|%s|%s|%s|%s|\n" ------------ ----------- --------- ------------- ----------
for balance in call-id least-work; do
  run_mode "cap-$balance" "$balance" 3000 600 "--capacity 100" "--capacity 100" "--capacity 100"
  ok=$(sed -n 's/^calls: \([0-9]*\) ok.*/\1/p' <<<"$OUT")
  failed=$(sed -n 's/.* \([0-9]*\) failed in.*/\1/p' <<<"$OUT")
  byes=$({ grep -E 'failed: [0-9]+ × (BYE|no answer to the BYE)' <<<"$OUT" || true; } |
    sed 's/.*failed: \([0-9]*\).*/\1/' | awk '{s += $1} END {print s + 0}')
  printf "| %-10s | %9s | %7s | %11s | %8s |\n" "$balance" "$ok" "$failed" "$byes" "$(field p90)"
  echo "$date,capacity,$balance,$ok,$failed,$byes,3000,$(field mean),$(field p50),$(field p90)" >>"$CSV.new"
done
mv "$CSV.new" "$CSV"
python3 "$ROOT/perf/loadaware.py" "$CSV" "$SVG"
echo
echo "figures: $CSV, plot: $SVG"
