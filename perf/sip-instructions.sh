#!/usr/bin/env bash
# Instructions per INVITE, by callgrind: frame + parse (siplb::sip::read), and the whole forwarding
# path of the criterion bench invite_frame_parse_rewrite (read, validate, branch, rewrite). Two runs
# of different length each, so start-up cost cancels out. Stable across runs on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
cargo build --quiet --release --example read_instructions
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/read_instructions "$@" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(count 1000); b=$(count 11000)
echo "frame+parse (sip::read) of the bench INVITE: $(( (b - a) / 10000 )) instructions per message"
a=$(count 1000 forward); b=$(count 11000 forward)
echo "frame+parse+validate+rewrite (invite_frame_parse_rewrite): $(( (b - a) / 10000 )) instructions per message"
