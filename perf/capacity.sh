#!/usr/bin/env bash
# Capacity per core: siplb with one worker pinned to CPU 0 (taskset), HAProxy with nbthread 1 on
# the same CPU, the sipload caller and the three sipload servers on the other CPUs; the call rate
# goes up step by step (one persistent TLS connection, calls in flight up to --concurrency) until
# calls fail, p99 setup latency passes 50 ms, or fewer than 95% of the calls asked for are carried.
# For each proxy it prints the calls/s carried, the share of its core it used there, and so which
# side was the limit: the proxy (90% of its core or more) or the load on the other CPUs; the
# ratio of calls/s per core is a measurement only when both proxies were the limit, otherwise it
# is projected from CPU per call (1 / CPU seconds per call). Appends every step to
# perf/capacity.csv and draws perf/capacity.svg. Needs haproxy and util-linux's taskset
# (installed when missing and run as root).
#
#   perf/capacity.sh [--start R] [--step R] [--max R] [--seconds S] [--concurrency N]
source "$(dirname "$0")/../scripts/lib.sh"
START=2000 STEP=2000 MAX=40000 SECS=4 CONC=400 P99_LIMIT=50
while [ $# -gt 0 ]; do
  case $1 in
    --start) START=$2; shift 2 ;;
    --step) STEP=$2; shift 2 ;;
    --max) MAX=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
if ! command -v haproxy >/dev/null || ! command -v taskset >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq haproxy util-linux >/dev/null
  else
    echo "needs haproxy and taskset (apt-get install haproxy util-linux)" >&2
    exit 1
  fi
fi
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || { echo "needs at least 2 CPUs (one for the proxy, the rest for the load)" >&2; exit 1; }
LOAD_CPUS="1-$((NCPU - 1))"
CSV_OUT=${CSV_OUT:-$ROOT/perf/capacity.csv}
export CSV_OUT
build
make_pki
# The load (servers now, the caller in measure) runs on every CPU but the proxy's.
taskset -pc "$LOAD_CPUS" $$ >/dev/null
start_backends
taskset -c 0 "$BIN/siplb" --listen 127.0.0.1:17091 --workers 1 --log warn \
  --cert "$BENCH_DIR/localhost.crt.pem" --key "$BENCH_DIR/localhost.key.pem" --backend-ca "$BENCH_DIR/ca.pem" \
  --backend "b0.bench=127.0.0.1:$BACKEND_PORT" --backend "b1.bench=127.0.0.1:$((BACKEND_PORT + 1))" \
  --backend "b2.bench=127.0.0.1:$((BACKEND_PORT + 2))" >"$BENCH_DIR/siplb.log" 2>&1 &
SIPLB_PID=$!
PIDS+=("$SIPLB_PID")
sed -e "s|@DIR@|$BENCH_DIR|g" -e "s|@PORT@|17092|g" -e "s|@THREADS@|1|g" -e "s|@B0@|$BACKEND_PORT|g" \
  -e "s|@B1@|$((BACKEND_PORT + 1))|g" -e "s|@B2@|$((BACKEND_PORT + 2))|g" "$ROOT/perf/conf/haproxy.cfg.in" \
  >"$BENCH_DIR/haproxy.cfg"
taskset -c 0 haproxy -f "$BENCH_DIR/haproxy.cfg" -db >"$BENCH_DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_port 17091
wait_port 17092
sleep 0.5
echo "$(date -u +%F) on $NCPU CPUs ($(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo));" \
  "proxy on CPU 0, load on CPUs $LOAD_CPUS; a step fails on any failed call or p99 > $P99_LIMIT ms"
declare -A BEST CPU1K USE
for proxy in siplb haproxy; do
  [ "$proxy" = siplb ] && port=17091 pid=$SIPLB_PID || port=17092 pid=$HAPROXY_PID
  echo "## $proxy"
  table_header
  BEST[$proxy]=0 CPU1K[$proxy]=0 USE[$proxy]=0
  for ((r = START; r <= MAX; r += STEP)); do
    row=$(measure "$proxy" "$port" capacity $((r * SECS)) "$r" "$CONC" "$pid")
    echo "$row"
    failed=$(awk -F'|' '{gsub(/ /, "", $6); print $6}' <<<"$row")
    cps=$(awk -F'|' '{gsub(/ /, "", $7); print $7}' <<<"$row")
    p99=$(awk -F'|' '{gsub(/ /, "", $9); print $9}' <<<"$row")
    cpu=$(awk -F'|' '{gsub(/ /, "", $10); print $10}' <<<"$row")
    # Whatever stopped it, this step shows what the proxy used of its core at the most it carried.
    USE[$proxy]=$(awk -v c="$cps" -v k="$cpu" 'BEGIN {printf "%.2f", c * k / 1000}')
    if [ "$failed" != 0 ] || awk -v p="$p99" -v l="$P99_LIMIT" -v c="$cps" -v r="$r" \
      'BEGIN {exit !(p == "?" || p > l || c < 0.95 * r)}'; then
      break
    fi
    BEST[$proxy]=$cps CPU1K[$proxy]=$cpu
  done
done
echo
for proxy in siplb haproxy; do
  awk -v n="$proxy" -v b="${BEST[$proxy]}" -v u="${USE[$proxy]}" -v k="${CPU1K[$proxy]}" 'BEGIN {
    printf "%-8s carried %s calls/s; used %.0f%% of its core at its last step -> limited by %s; projected %.0f calls/s per core\n",
      n, b, u * 100, (u >= 0.9 ? "the proxy" : "the load generator"), (k > 0 ? 1000 / k : 0) }'
done
awk -v sb="${BEST[siplb]}" -v hb="${BEST[haproxy]}" -v su="${USE[siplb]}" -v hu="${USE[haproxy]}" \
  -v sk="${CPU1K[siplb]}" -v hk="${CPU1K[haproxy]}" 'BEGIN {
    if (su >= 0.9 && hu >= 0.9 && hb > 0) printf "siplb = %.2f x haproxy calls/s per core (measured)\n", sb / hb
    else if (sk > 0) printf "siplb = %.2f x haproxy calls/s per core (projected from CPU per call: the load generator was the limit)\n", hk / sk }'
python3 "$ROOT/perf/plot.py" "$CSV_OUT" "$ROOT/perf/capacity.svg" capacity || true
