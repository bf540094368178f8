#!/bin/sh
# Builds the release binaries, then runs the receiver comparison (benches/compare.py).
# Usage: benches/compare.sh [--quick] [--dir DIR] [--json FILE] ...   (compare.py --help)
# Needs root for the loop-mounted ext4 image (or --dir), DCMTK storescp, and a quiet machine.
# dicom-rs storescp is a row when found (PATH, /opt/dicom-rs/bin or --dicomrs); the issue-12
# preset needs it:  cargo install dicom-storescp --root /opt/dicom-rs
#   benches/compare.sh --issue12 [--profile]     (about 20 min; --quick for a 4-min smoke run)
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p dicom-gw -p dicom-loadgen
exec python3 benches/compare.py "$@"
