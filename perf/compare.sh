#!/usr/bin/env bash
# siplb, HAProxy (TLS relay, mode tcp) and Kamailio (dispatcher + tls) in the same run, behind the
# same sipload caller and in front of the same three sipload servers; prints the table and the
# CPU-per-call ratios against siplb. Needs Debian's haproxy, kamailio and kamailio-tls-modules
# (installed here when missing and run as root).
#
#   perf/compare.sh [--calls N] [--rate R] [--per-call-calls N] [--per-call-rate R] [--threads T]
#                   [--sweep "R1 R2 ..."] [--csv FILE]
# --sweep also runs every proxy over one persistent connection at each rate (for the plot);
# --csv appends every row to FILE (date,proxy,mode,rate,ok,failed,calls/s,p50,p99,cpu_s_per_1000).
source "$(dirname "$0")/../scripts/lib.sh"
CALLS=10000 RATE=1000 PC_CALLS=1500 PC_RATE=150 THREADS=2 SWEEP=""
while [ $# -gt 0 ]; do
  case $1 in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --per-call-calls) PC_CALLS=$2; shift 2 ;;
    --per-call-rate) PC_RATE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --sweep) SWEEP=$2; shift 2 ;;
    --csv) CSV_OUT=$(realpath -m "$2"); export CSV_OUT; shift 2 ;;
    *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
if ! command -v haproxy >/dev/null || ! command -v kamailio >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq haproxy kamailio kamailio-tls-modules >/dev/null
  else
    echo "needs haproxy, kamailio and kamailio-tls-modules (apt-get install ...)" >&2
    exit 1
  fi
fi
build
make_pki
start_backends
render() {
  sed -e "s|@DIR@|$BENCH_DIR|g" -e "s|@PORT@|$2|g" -e "s|@THREADS@|$THREADS|g" -e "s|@B0@|$BACKEND_PORT|g" \
    -e "s|@B1@|$((BACKEND_PORT + 1))|g" -e "s|@B2@|$((BACKEND_PORT + 2))|g" "$ROOT/perf/conf/$1.in" >"$BENCH_DIR/$1"
}
# Every process of a server (Kamailio forks its workers).
family() { echo "$1" $(pgrep -P "$1" 2>/dev/null || true); }

start_siplb 17061 "$THREADS"
render haproxy.cfg 17062
haproxy -f "$BENCH_DIR/haproxy.cfg" -db >"$BENCH_DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
render kamailio.cfg 17063
render kamailio-tls.cfg 17063
render dispatcher.list 17063
kamailio -f "$BENCH_DIR/kamailio.cfg" -DD -E -m 256 -M 16 >"$BENCH_DIR/kamailio.log" 2>&1 &
KAMAILIO_PID=$!
PIDS+=("$KAMAILIO_PID")
wait_port 17062
wait_port 17063 || { tail -20 "$BENCH_DIR/kamailio.log" >&2; exit 1; }
sleep 1

echo "$(date -u +%F) on $(nproc) CPUs ($(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo)), $THREADS workers/threads each"
table_header
declare -A CPU
# A caller straight to one back end (MTLS, no proxy): the latency siplb adds is measured against it.
CALLER_ARGS="--server-name b0.bench --cert $BENCH_DIR/localhost.crt.pem --key $BENCH_DIR/localhost.key.pem" \
  measure direct "$BACKEND_PORT" persistent "$CALLS" "$RATE" 200 "$$"
for mode in persistent per-call; do
  if [ "$mode" = persistent ]; then n=$CALLS r=$RATE c=200; else n=$PC_CALLS r=$PC_RATE c=100; fi
  measure siplb 17061 "$mode" "$n" "$r" "$c" "$SIPLB_PID"; CPU[siplb-$mode]=$CPU_PER_1000
  measure haproxy 17062 "$mode" "$n" "$r" "$c" "$HAPROXY_PID"; CPU[haproxy-$mode]=$CPU_PER_1000
  measure kamailio 17063 "$mode" "$n" "$r" "$c" $(family "$KAMAILIO_PID"); CPU[kamailio-$mode]=$CPU_PER_1000
done
for r in $SWEEP; do
  n=$((r * 4))
  measure siplb 17061 sweep "$n" "$r" 200 "$SIPLB_PID"
  measure haproxy 17062 sweep "$n" "$r" 200 "$HAPROXY_PID"
  measure kamailio 17063 sweep "$n" "$r" 200 $(family "$KAMAILIO_PID")
done
echo
for mode in persistent per-call; do
  for other in haproxy kamailio; do
    awk -v s="${CPU[siplb-$mode]}" -v o="${CPU[$other-$mode]}" -v m="$mode" -v n="$other" \
      'BEGIN {if (o > 0) printf "%-10s siplb CPU per call = %.2f x %s\n", m, s / o, n; else printf "%-10s %s: no figure\n", m, n}'
  done
done
