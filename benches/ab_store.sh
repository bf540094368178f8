#!/usr/bin/env bash
# Paired C-STORE throughput of two dicom-gw builds (or two configurations of one), in the same
# run, alternating A and B per repetition on a freshly formatted ext4 loop mount (a noisy
# 2-vCPU machine moves single figures by 20–50 %: the per-pair ratio B/A is the measurement).
#
#   benches/ab_store.sh A_BIN B_BIN [reps] [sizes] [assocs] [seconds]
#
# Environment: A_ARGS / B_ARGS (extra `serve` arguments, e.g. a config with tls_listen),
# A_PORT_LINE / B_PORT_LINE (stdout prefix naming the port to load; default the store line),
# LOADGEN (default target/release/dicom-loadgen), LOADGEN_A_ARGS / LOADGEN_B_ARGS (extra
# loadgen arguments, e.g. TLS options). Needs root (loop mount). Prints one line per cell and
# the median ratio per size.
set -euo pipefail

a_bin=$1
b_bin=$2
reps=${3:-3}
sizes=${4:-16k,512k}
assocs=${5:-8}
secs=${6:-5}
loadgen=${LOADGEN:-target/release/dicom-loadgen}

work=$(mktemp -d /tmp/ab-store.XXXXXX)
img=$work/disk.img
mnt=$work/mnt
mkdir "$mnt"
truncate -s 8G "$img"
mkfs.ext4 -q -F "$img"
mount -o loop "$img" "$mnt"
cleanup() {
    pkill -P $$ dicom-gw 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Runs one cell: prints instances/s.
cell() {
    local bin=$1 extra=$2 line=$3 lg_extra=$4 size=$5
    local dir=$mnt/data out=$work/out.txt
    rm -rf "$dir"
    # shellcheck disable=SC2086
    "$bin" serve --data-dir "$dir" --store-listen 127.0.0.1:0 --worklist-listen 127.0.0.1:0 \
        --http-listen 127.0.0.1:0 $extra >"$out" 2>"$work/err.txt" &
    local pid=$!
    local port=""
    for _ in $(seq 1 300); do
        port=$(grep -m1 "^$line" "$out" 2>/dev/null | sed -E 's/.*:([0-9]+).*/\1/' || true)
        [ -n "$port" ] && grep -q "^dicom-gw: store listening on" "$out" && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "no port from $bin" >&2; cat "$work/err.txt" >&2; exit 1; }
    # shellcheck disable=SC2086
    local rate
    rate=$("$loadgen" store "127.0.0.1:$port" -c "$assocs" -d "$secs" --size "$size" $lg_extra \
        | sed -nE 's/.*throughput +([0-9.]+) instances\/s.*/\1/p')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    sync -f "$mnt"
    echo "${rate:-0}"
}

echo "date: $(date -u +%FT%TZ); machine: $(nproc) vCPU, $(uname -r); reps=$reps sizes=$sizes assocs=$assocs seconds=$secs"
echo "A: $a_bin ${A_ARGS:-}"
echo "B: $b_bin ${B_ARGS:-}"
IFS=, read -ra size_list <<<"$sizes"
for size in "${size_list[@]}"; do
    ratios=()
    for r in $(seq 1 "$reps"); do
        if (( r % 2 )); then
            a=$(cell "$a_bin" "${A_ARGS:-}" "${A_PORT_LINE:-dicom-gw: store listening on}" "${LOADGEN_A_ARGS:-}" "$size")
            b=$(cell "$b_bin" "${B_ARGS:-}" "${B_PORT_LINE:-dicom-gw: store listening on}" "${LOADGEN_B_ARGS:-}" "$size")
        else
            b=$(cell "$b_bin" "${B_ARGS:-}" "${B_PORT_LINE:-dicom-gw: store listening on}" "${LOADGEN_B_ARGS:-}" "$size")
            a=$(cell "$a_bin" "${A_ARGS:-}" "${A_PORT_LINE:-dicom-gw: store listening on}" "${LOADGEN_A_ARGS:-}" "$size")
        fi
        ratio=$(python3 -c "print(round($b / $a, 3) if $a > 0 else 0)")
        ratios+=("$ratio")
        echo "size=$size rep=$r A=$a inst/s B=$b inst/s B/A=$ratio"
    done
    median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
    echo "size=$size median B/A=$median"
done
