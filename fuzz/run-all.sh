#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60) with AddressSanitizer on a stable
# toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only -Z flags).
# Exits non-zero if any target crashed; crashing inputs are left in fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh [seconds]
#
# Environment: CARGO_TARGET_DIR (default /tmp/fuzz-target, keeps the main target dir alone),
# FUZZ_TARGETS (space-separated subset), FUZZ_SANITIZER (address | none; default address).
# The acceptance runs of issue 11 were `FUZZ_SANITIZER=none fuzz/run-all.sh 630` (fuzz/README.md).
set -uo pipefail

secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/fuzz-target}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"

if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

cargo fuzz build -s "$sanitizer" || exit 2

# Seeds (sample datasets, an A-ASSOCIATE-RQ, a DICOM JSON item) into the git-ignored corpora.
if command -v python3 >/dev/null; then
    python3 fuzz/seed.py >/dev/null || echo "fuzz/seed.py failed: starting from empty corpora" >&2
fi

failed=()
for t in $targets; do
    echo "=== $t: ${secs}s ==="
    mkdir -p "fuzz/corpus/$t"
    if ! cargo fuzz run -s "$sanitizer" "$t" -- -max_total_time="$secs" -print_final_stats=1; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${secs}s without a crash"
