#!/usr/bin/env bash
# Instructions per INVITE for frame + parse (siplb::sip::read), by callgrind: two runs of
# different length, so start-up cost cancels out. Stable across runs on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
cargo build --quiet --release --example read_instructions
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/read_instructions "$1" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(count 1000); b=$(count 11000)
echo "frame+parse (sip::read) of the bench INVITE: $(( (b - a) / 10000 )) instructions per message"
