# Shared by scripts/bench.sh and perf/compare.sh: build, a throwaway PKI, sipload back ends,
# and one measured load run against a proxy (its CPU read from /proc, so figures from a noisy
# shared machine stay comparable). Source it; it sets BENCH_DIR and cleans up on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release
CLK=$(getconf CLK_TCK)
BENCH_DIR=$(mktemp -d /tmp/siplb-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

build() {
  (cd "$ROOT" && cargo build --quiet --release --bins)
}

# ca.pem plus localhost (the proxy under test) and b0..b2.bench (the back ends).
make_pki() {
  "$BIN/sipload" certs --dir "$BENCH_DIR" --name localhost --name b0.bench --name b1.bench --name b2.bench >/dev/null
  cat "$BENCH_DIR/localhost.crt.pem" "$BENCH_DIR/localhost.key.pem" >"$BENCH_DIR/localhost.pem"
}

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# wait_ready METRICS_PORT N: until the siplb serving --metrics on METRICS_PORT has N workers
# ready to route (every back end up in them), as siplb_workers_ready says.
wait_ready() {
  for _ in $(seq 1 400); do
    ( exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 &&
      grep -q "^siplb_workers_ready $2\b" <&3 ) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "siplb (metrics on port $1) has not $2 workers ready" >&2
  return 1
}

# Three sipload servers on BACKEND_PORT, +1, +2 (MTLS, names b0..b2.bench).
BACKEND_PORT=${BACKEND_PORT:-17001}
start_backends() {
  for i in 0 1 2; do
    "$BIN/sipload" server --listen "127.0.0.1:$((BACKEND_PORT + i))" --name "b$i.bench" \
      --cert "$BENCH_DIR/b$i.bench.crt.pem" --key "$BENCH_DIR/b$i.bench.key.pem" --ca "$BENCH_DIR/ca.pem" \
      >/dev/null 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1 2; do wait_port $((BACKEND_PORT + i)); done
}

# CPU clock ticks (user + system) of the given processes.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# measure NAME PORT MODE CALLS RATE CONCURRENCY PID... : one load run; prints a table row and
# sets CPU_PER_1000 (CPU seconds of the PIDs per 1000 calls).
measure() {
  local name=$1 port=$2 mode=$3 calls=$4 rate=$5 conc=$6
  shift 6
  local extra=()
  [ "$mode" = per-call ] && extra=(--per-call-connection)
  [ "$mode" = wss ] && extra=(--ws)
  local before after out
  before=$(cpu_ticks "$@")
  # CALLER_ARGS: extra caller flags (a direct run names the back end and brings a certificate).
  local caller=(--server-name localhost)
  [ -n "${CALLER_ARGS:-}" ] && read -r -a caller <<<"$CALLER_ARGS"
  out=$("$BIN/sipload" call --target "127.0.0.1:$port" --ca "$BENCH_DIR/ca.pem" "${caller[@]}" \
    --calls "$calls" --rate "$rate" --concurrency "$conc" --timeout 10 --quiet "${extra[@]}" 2>&1 | grep '^calls:' || true)
  after=$(cpu_ticks "$@")
  local ok failed cps p50 p99
  ok=$(sed -n 's/^calls: \([0-9]*\) ok.*/\1/p' <<<"$out")
  failed=$(sed -n 's/.* \([0-9]*\) failed in.*/\1/p' <<<"$out")
  cps=$(sed -n 's/.*(\([0-9.]*\) calls\/s).*/\1/p' <<<"$out")
  p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99 \([0-9.]*\).*/\1/p' <<<"$out")
  CPU_PER_1000=$(awk -v d=$((after - before)) -v c="$CLK" -v n="$calls" 'BEGIN {printf "%.3f", d / c / n * 1000}')
  printf "| %-8s | %-10s | %6s | %6s | %6s | %8s | %7s | %7s | %9s |\n" \
    "$name" "$mode" "$rate" "${ok:-0}" "${failed:-?}" "${cps:-?}" "${p50:-?}" "${p99:-?}" "$CPU_PER_1000"
  if [ -n "${CSV_OUT:-}" ]; then
    echo "$(date -u +%F),$name,$mode,$rate,${ok:-0},${failed:-},${cps:-},${p50:-},${p99:-},$CPU_PER_1000" >>"$CSV_OUT"
  fi
}

table_header() {
  printf "| %-8s | %-10s | %6s | %6s | %6s | %8s | %7s | %7s | %9s |\n" \
    proxy mode rate ok failed calls/s "p50 ms" "p99 ms" "CPU s/1k"
  printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n" ---------- ------------ -------- -------- -------- ---------- --------- --------- -----------
}

# start_siplb PORT WORKERS: siplb (or $SIPLB_BIN) in front of the three back ends, with the
# flags in $SIPLB_ARGS too; sets SIPLB_PID.
start_siplb() {
  "${SIPLB_BIN:-$BIN/siplb}" --listen "127.0.0.1:$1" --workers "$2" --log warn \
    --cert "$BENCH_DIR/localhost.crt.pem" --key "$BENCH_DIR/localhost.key.pem" --backend-ca "$BENCH_DIR/ca.pem" \
    --backend "b0.bench=127.0.0.1:$BACKEND_PORT" --backend "b1.bench=127.0.0.1:$((BACKEND_PORT + 1))" \
    --backend "b2.bench=127.0.0.1:$((BACKEND_PORT + 2))" --max-connections 20000 ${SIPLB_ARGS:-} \
    >"$BENCH_DIR/siplb.log" 2>&1 &
  SIPLB_PID=$!
  PIDS+=("$SIPLB_PID")
  wait_port "$1"
  sleep 0.5
}
