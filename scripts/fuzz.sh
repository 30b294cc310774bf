#!/usr/bin/env bash
# Runs the cargo-fuzz target(s) for a while. cargo-fuzz needs nightly compiler flags; on the stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks them. Usage: scripts/fuzz.sh [SECONDS] [TARGET]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-300}
target=${2:-sip_stream}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "corpus/$target"
# Seeds are committed; the corpus the fuzzer grows is kept locally (see fuzz/README.md).
cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$secs" -max_len=4096 -print_final_stats=1
