#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for a while each.
#
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target...]
# Needs cargo-fuzz (cargo install cargo-fuzz); works on stable Rust through
# RUSTC_BOOTSTRAP=1. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir target/fuzz "$t" -- \
    -max_total_time="$secs" -max_len=4096
done
