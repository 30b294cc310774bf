#!/usr/bin/env bash
# Syscalls per call in siplb: strace -f -c attached to siplb (2 workers) while a sipload caller
# runs CALLS calls over one persistent TLS connection at RATE calls/s through it to three sipload
# servers. Prints every syscall per call, the reads per call and the reads that returned EAGAIN
# per call (a read known to find nothing is a wasted syscall and wake-up).
#
#   perf/syscalls.sh [--calls N] [--rate R] [--workers W]
source "$(dirname "$0")/../scripts/lib.sh"
CALLS=2000 RATE=200 WORKERS=2
while [ $# -gt 0 ]; do
  case $1 in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
if ! command -v strace >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq strace >/dev/null; else echo "needs strace" >&2; exit 1; fi
fi
build
make_pki
start_backends
start_siplb 17071 "$WORKERS"
# One call first, so the pool connections and the caller's handshake are not counted.
"$BIN/sipload" call --target 127.0.0.1:17071 --ca "$BENCH_DIR/ca.pem" --server-name localhost \
  --calls 1 --quiet >/dev/null 2>&1 || true
strace -f -c -o "$BENCH_DIR/strace.txt" -p "$SIPLB_PID" &
STRACE=$!
sleep 1
out=$("$BIN/sipload" call --target 127.0.0.1:17071 --ca "$BENCH_DIR/ca.pem" --server-name localhost \
  --calls "$CALLS" --rate "$RATE" --concurrency 64 --timeout 10 --quiet 2>&1 | grep '^calls:' || true)
sleep 0.5
kill -INT "$STRACE"
wait "$STRACE" 2>/dev/null || true
echo "$(date -u +%F) on $(nproc) CPUs, siplb with $WORKERS workers, $CALLS calls at $RATE calls/s over one TLS connection"
echo "$out"
echo
awk -v n="$CALLS" '
  $NF ~ /^[a-z_0-9]+$/ && $1 ~ /^[0-9.]+$/ && $NF != "total" {
    calls = $4; errors = ($5 ~ /^[0-9]+$/) ? $5 : 0
    printf "%-16s %8.2f per call (%d errors)\n", $NF, calls / n, errors
    total += calls
    if ($NF == "read" || $NF == "recvfrom") { reads += calls; eagain += errors }
  }
  END {
    printf "\nsyscalls per call: %.2f\nreads per call: %.2f, of which returned EAGAIN: %.2f\n", total / n, reads / n, eagain / n
  }' "$BENCH_DIR/strace.txt"
