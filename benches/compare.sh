#!/bin/sh
# Builds the release binaries, then runs the receiver comparison (benches/compare.py).
# Usage: benches/compare.sh [--quick] [--dir DIR] [--json FILE] ...   (compare.py --help)
# Needs root for the loop-mounted ext4 image (or --dir), DCMTK storescp, and a quiet machine.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p dicom-gw -p dicom-loadgen
exec python3 benches/compare.py "$@"
