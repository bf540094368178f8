#!/usr/bin/env bash
# CPU per stored object, machine-wide, of dicom-gw and DCMTK storescp +B in the same run,
# alternating per repetition, each cell on a freshly formatted ext4 loop mount.
#
#   benches/machine_cpu.sh [reps] [seconds] [size]
#
# Why machine-wide: a receiver's own process CPU leaves out the work the kernel does for it
# in other threads — writeback of its files by the flusher, the loop device's worker, the
# ext4 journal. storescp never syncs, so most of its files' writeback is done after the load
# by those threads; dicom-gw starts each file's writeback itself and syncs before its
# checkpoint. Here each cell counts every busy CPU tick of the machine (/proc/stat: user,
# nice, system, irq, softirq, steal) from the load's start until its data is on the disk
# (`sync` after the load, for both), minus the load generator's own CPU, per object. The
# receiver's own process CPU is printed beside it.
#
# Environment: GW (default target/release/dicom-gw), LOADGEN (target/release/dicom-loadgen),
# DURABILITY (full), CONFIG (a dicom-gw config file, optional), IMG_DIR (where the loop image
# lives; default a directory under /tmp: a tmpfs there gives a device whose flushes cost
# nothing, a model of a disk with power-loss protection, not stable storage). Needs root
# (loop mount), storescp and curl.
set -euo pipefail

reps=${1:-3}
secs=${2:-8}
size=${3:-16k}
gw=${GW:-target/release/dicom-gw}
loadgen=${LOADGEN:-target/release/dicom-loadgen}
durability=${DURABILITY:-full}
hz=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/machine-cpu.XXXXXX)
img=${IMG_DIR:-$work}/machine-cpu-disk.img
mnt=$work/mnt
mkdir "$mnt"
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
    rm -rf "$work" "$img"
    [ -n "${cg:-}" ] && rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# The receiver's own CPU, in nanoseconds, from a cgroup it is moved into (its children
# follow): storescp --fork reaps a finished child only when the next association arrives, so
# the children's CPU is not in its /proc cutime after the load. Without cgroups, /proc.
cg=
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg=/sys/fs/cgroup/machine-cpu.$$
elif [ -d /sys/fs/cgroup/cpuacct ]; then
    cg=/sys/fs/cgroup/cpuacct/machine-cpu.$$
fi
[ -n "$cg" ] && ! mkdir -p "$cg" 2>/dev/null && cg=
own_ns() {
    if [ -z "$cg" ]; then
        awk -v hz="$hz" '{print ($14+$15+$16+$17) / hz * 1e9}' "/proc/$1/stat"
    elif [ -f "$cg/cpu.stat" ]; then
        awk '/^usage_usec/{print $2 * 1000}' "$cg/cpu.stat"
    else
        cat "$cg/cpuacct.usage"
    fi
}

# One cell: prints "receiver inst/s own_ms machine_ms".
cell() {
    local who=$1 port
    truncate -s 8G "$img"
    mkfs.ext4 -q -F "$img"
    mount -o loop "$img" "$mnt"
    mkdir -p "$mnt/sc"
    port=$((20000 + RANDOM % 20000))
    http=$((port + 1))
    if [ "$who" = dicom-gw ]; then
        "$gw" serve ${CONFIG:+--config "$CONFIG"} --data-dir "$mnt/gw" \
            --store-listen "127.0.0.1:$port" --io epoll \
            --durability "$durability" --http-listen "127.0.0.1:$http" \
            --worklist-listen 127.0.0.1:0 > "$work/receiver.log" 2>&1 &
    else
        TCP_NODELAY=1 storescp --fork +B -od "$mnt/sc" "$port" > "$work/receiver.log" 2>&1 &
    fi
    pid=$!
    [ -n "$cg" ] && echo "$pid" > "$cg/cgroup.procs"
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    # Warm-up, then a quiet disk.
    "$loadgen" store "127.0.0.1:$port" -c 8 -d 2 --size "$size" > /dev/null 2>&1
    sync
    sleep 1
    local b0 t0 b1 t1
    b0=$(busy)
    t0=$(own_ns "$pid")
    /usr/bin/time -f "%U %S" -o "$work/time.txt" \
        "$loadgen" store "127.0.0.1:$port" -c 8 -d "$secs" --size "$size" \
        --json "$work/load.json" > /dev/null 2>&1
    # dicom-gw answers before its files are written (they follow at its checkpoints): wait
    # until every acknowledged object is materialized, or its catch-up is not counted.
    if [ "$who" = dicom-gw ]; then
        for _ in $(seq 600); do
            pending=$(curl -s "127.0.0.1:$http/metrics" |
                awk '/^dicomgw_journal_pending_objects /{print $2}')
            [ "${pending:-1}" = 0 ] && break
            sleep 0.1
        done
    fi
    sleep 1
    sync
    sleep 1
    b1=$(busy)
    t1=$(own_ns "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    umount "$mnt"
    rm -f "$img"
    python3 - "$who" "$b0" "$b1" "$t0" "$t1" "$hz" "$work/load.json" "$work/time.txt" <<'PY'
import json, sys
who = sys.argv[1]
b0, b1, t0, t1, hz = map(float, sys.argv[2:7])
load = json.load(open(sys.argv[7]))
user, system = map(float, open(sys.argv[8]).read().split()[-2:])
n = load["ok"]
own = (t1 - t0) / 1e6 / n
machine = ((b1 - b0) / hz - user - system) * 1000 / n
print(f"{who:9} {load['requests_per_s']:9.0f} inst/s  own {own:.3f} ms/obj  machine {machine:.3f} ms/obj")
PY
}

echo "# $(date -u +%FT%TZ) $size, -c 8, ${secs}s, durability $durability, image in ${IMG_DIR:-/tmp}; CPU per object: the receiver's process, and the machine minus the generator"
for r in $(seq "$reps"); do
    if [ $((r % 2)) = 1 ]; then order="storescp dicom-gw"; else order="dicom-gw storescp"; fi
    for who in $order; do
        cell "$who"
    done
done
