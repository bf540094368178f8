#!/usr/bin/env bash
# Modality Worklist C-FIND throughput and latency with 10,000 items, alone and concurrent with a
# C-STORE load on the store service; the C-STORE throughput alone and with the worklist load; and
# DCMTK wlmscpfs serving the same items to the same queries as the peer. Results:
# docs/benchmarks.md, "Modality Worklist C-FIND with 10,000 items" (issue 6).
#
# Usage: benches/worklist.sh [--reps R] [-d S] [--peer-d S] [--mwl-c C] [--store-c C]
#                            [--mwl-rate R] [--items N] [--no-peer] [--no-build] [--image-size 4G]
#                            [--out DIR]
#   --reps R      repetitions (default 3; tables show medians and the per-repetition values)
#   -d S          seconds per dicom-gw measurement (default 20)
#   --peer-d S    seconds per wlmscpfs measurement (default 30: it answers ~1 query/s)
#   --mwl-c C     worklist associations, each a modality polling in a closed loop (default 4)
#   --store-c C   C-STORE associations, 16 KiB objects, closed loop (default 4)
#   --mwl-rate R  also the phase rate+store: the MWL load open loop at R queries/s over the
#                 MWL_C associations (modalities polling at a realistic rate) with the C-STORE
#                 load (default 20; 0 leaves the phase out)
#   --items N     worklist items (default 10000; 40 stations, 20 dates around today)
#   --out DIR     results (results.jsonl, summary.md, machine.txt, json/, logs/); default a new
#                 directory under /tmp, kept after the run
# Needs root (a fresh ext4 on a loop device), python3, DCMTK wlmscpfs (unless --no-peer).
#
# Set-up: `dicom-loadgen mwl-items` writes the items once as a DICOM JSON array (imported with
# `dicom-gw worklist import` into the fresh data directory, daemon not running) and as Part-10
# .wl files for wlmscpfs (fresh ext4 too). One dicom-gw (`serve`, default settings, io auto)
# runs for the whole benchmark; the store phases add objects to it as they go.
# Per repetition, the order alternating (odd: as listed, even: reversed):
#   mwl        dicom-loadgen mwl -c MWL_C -d S --expect against dicom-gw's worklist port
#   mwl+store  the same, and at the same time dicom-loadgen store -c STORE_C -d S --size 16k
#              against dicom-gw's store port
#   store      dicom-loadgen store alone
#   rate+store dicom-loadgen mwl --rate R (open loop) with dicom-loadgen store, as mwl+store
#   peer       dicom-loadgen mwl -c MWL_C -d PEER_S --expect against wlmscpfs (fresh process)
# Every query must succeed with exactly the number of matches the layout says (--expect), on
# both servers, or the script fails.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
REPO=$PWD
GW=$REPO/target/release/dicom-gw
LOADGEN=$REPO/target/release/dicom-loadgen

REPS=3 DUR=20 PEER_DUR=30 MWL_C=4 STORE_C=4 MWL_RATE=20 ITEMS=10000 PEER=1 BUILD=1 IMAGE_SIZE=4G OUT=""
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        -d) DUR=$2; shift 2 ;;
        --peer-d) PEER_DUR=$2; shift 2 ;;
        --mwl-c) MWL_C=$2; shift 2 ;;
        --store-c) STORE_C=$2; shift 2 ;;
        --mwl-rate) MWL_RATE=$2; shift 2 ;;
        --items) ITEMS=$2; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --image-size) IMAGE_SIZE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "worklist.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '%s worklist.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (loop-mounted ext4)"
for t in python3 mkfs.ext4 setsid; do command -v "$t" >/dev/null || die "$t not found"; done
((PEER)) && { command -v wlmscpfs >/dev/null || die "wlmscpfs not found (apt-get install dcmtk, or --no-peer)"; }
if ((BUILD)); then cargo build --release -p dicom-gw -p dicom-loadgen; fi

WORK=$(mktemp -d /tmp/worklist-bench.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT/logs" "$OUT/json"
OUT=$(cd "$OUT" && pwd)
MNT=$WORK/mnt
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PIDS=()

forget() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop_pid() {
    local pid=$1 i
    if kill -TERM -- "-$pid" 2>/dev/null; then
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM for 15 s: SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || true; }
    fi
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}
cleanup() {
    local rc=$? p i
    set +e
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if mountpoint -q "$MNT" 2>/dev/null; then
        for ((i = 0; i < 5; i++)); do umount "$MNT" && break; sleep 1; done
        mountpoint -q "$MNT" && umount -l "$MNT"
    fi
    rm -rf "$MNT" "$WORK/fs.img"
    rmdir "$WORK" 2>/dev/null
    log "results and logs kept in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

TODAY=$(date -u +%Y%m%d)
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
    echo "kernel: $(uname -r)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "wlmscpfs: $(wlmscpfs --version 2>&1 | head -n1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null) ($(git status --porcelain 2>/dev/null | wc -l) changed/untracked paths)"
    echo "binaries: dicom-gw $(sha256sum "$GW" | cut -c1-12) built $(date -u -r "$GW" '+%Y-%m-%d %H:%M:%S UTC'), dicom-loadgen $(sha256sum "$LOADGEN" | cut -c1-12)"
    echo "args: reps=$REPS d=${DUR}s peer_d=${PEER_DUR}s mwl_c=$MWL_C store_c=$STORE_C mwl_rate=$MWL_RATE items=$ITEMS today=$TODAY peer=$PEER image=$IMAGE_SIZE"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

mkdir -p "$MNT"
truncate -s "$IMAGE_SIZE" "$WORK/fs.img"
mkfs.ext4 -q -F "$WORK/fs.img"
mount -o loop "$WORK/fs.img" "$MNT"
log "fresh ext4 on $(findmnt -no SOURCE "$MNT") at $MNT"

LAYOUT=(--items "$ITEMS" --today "$TODAY")
"$LOADGEN" mwl-items "${LAYOUT[@]}" --json "$MNT/items.json" --wl-dir "$MNT/wl/WLSCP" >&2
GDIR=$MNT/gw
t0=$EPOCHREALTIME
"$GW" worklist import --data-dir "$GDIR" "$MNT/items.json" >"$OUT/logs/import.out" 2>"$OUT/logs/import.err" \
    || die "worklist import failed (see $OUT/logs/import.err)"
log "imported $ITEMS items in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

SPORT=$(free_port) WPORT=$(free_port) HPORT=$(free_port)
NO_COLOR=1 setsid "$GW" serve --data-dir "$GDIR" --store-listen "127.0.0.1:$SPORT" \
    --worklist-listen "127.0.0.1:$WPORT" --http-listen "127.0.0.1:$HPORT" \
    >"$OUT/logs/gw.out" 2>"$OUT/logs/gw.err" &
GWP=$!
PIDS+=("$GWP")
for ((i = 0; i < 600; i++)); do
    grep -q 'dicom-gw: store listening on' "$OUT/logs/gw.out" 2>/dev/null && break
    kill -0 "$GWP" 2>/dev/null || die "dicom-gw exited at start-up (log $OUT/logs/gw.err)"
    sleep 0.05
done
((i < 600)) || die "dicom-gw not ready after 30 s"
grep -q "worklist listening on 127.0.0.1:$WPORT" "$OUT/logs/gw.out" || die "no worklist service"
log "dicom-gw: $(tr '\n' ' ' <"$OUT/logs/gw.out")"

record() { # record REP PHASE ROLE JSONFILE RC
    python3 -c 'import json, sys; d = json.load(open(sys.argv[4])); print(json.dumps({"rep": int(sys.argv[1]), "phase": sys.argv[2], "role": sys.argv[3], "rc": int(sys.argv[5]), "summary": d}))' \
        "$@" >>"$RESULTS"
}
mwl_run() { # mwl_run ADDR AEC SECONDS OUTJSON [ARGS...]
    local addr=$1 aec=$2 secs=$3 json=$4
    shift 4
    "$LOADGEN" mwl "$addr" --aec "$aec" -c "$MWL_C" -d "$secs" "${LAYOUT[@]}" --expect --json "$json" "$@" >"$json.txt" 2>&1
}
store_run() { # store_run SECONDS OUTJSON
    "$LOADGEN" store "127.0.0.1:$SPORT" -c "$STORE_C" -d "$1" --size 16k --json "$2" >"$2.txt" 2>&1
}

phase() { # phase REP NAME
    local rep=$1 name=$2 j=$OUT/json/r$1-$2 rc rc2 sp wp
    log "rep $rep: $name (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    case $name in
        mwl)
            rc=0; mwl_run "127.0.0.1:$WPORT" DICOM_GW "$DUR" "$j-mwl.json" || rc=$?
            record "$rep" "$name" mwl "$j-mwl.json" "$rc"
            ((rc == 0)) || die "mwl failed ($rc): $(cat "$j-mwl.json.txt")" ;;
        mwl+store|rate+store)
            local extra=()
            [[ $name == rate+store ]] && extra=(--rate "$MWL_RATE")
            rc=0 rc2=0
            store_run "$DUR" "$j-store.json" & sp=$!
            mwl_run "127.0.0.1:$WPORT" DICOM_GW "$DUR" "$j-mwl.json" "${extra[@]}" & wp=$!
            wait "$wp" || rc=$?
            wait "$sp" || rc2=$?
            record "$rep" "$name" mwl "$j-mwl.json" "$rc"
            record "$rep" "$name" store "$j-store.json" "$rc2"
            ((rc == 0 && rc2 == 0)) || die "$name failed ($rc, $rc2)" ;;
        store)
            rc=0; store_run "$DUR" "$j-store.json" || rc=$?
            record "$rep" "$name" store "$j-store.json" "$rc"
            ((rc == 0)) || die "store failed ($rc): $(cat "$j-store.json.txt")" ;;
        peer)
            local port pp
            port=$(free_port)
            setsid wlmscpfs -dfp "$MNT/wl" "$port" >"$OUT/logs/wlmscpfs-r$rep.log" 2>&1 & pp=$!
            PIDS+=("$pp")
            for ((i = 0; i < 200; i++)); do
                python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$port" 2>/dev/null && break
                sleep 0.05
            done
            rc=0; mwl_run "127.0.0.1:$port" WLSCP "$PEER_DUR" "$j-mwl.json" || rc=$?
            stop_pid "$pp"
            record "$rep" "$name" mwl "$j-mwl.json" "$rc"
            ((rc == 0)) || die "peer mwl failed ($rc): $(cat "$j-mwl.json.txt")" ;;
    esac
}

PHASES=(mwl mwl+store store)
[[ $MWL_RATE != 0 ]] && PHASES+=(rate+store)
((PEER)) && PHASES+=(peer)
for ((rep = 1; rep <= REPS; rep++)); do
    order=("${PHASES[@]}")
    if ((rep % 2 == 0)); then
        order=(); for ((k = ${#PHASES[@]} - 1; k >= 0; k--)); do order+=("${PHASES[$k]}"); done
    fi
    for p in "${order[@]}"; do phase "$rep" "$p"; done
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "objects stored during the run: $(find "$GDIR/objects" -type f 2>/dev/null | wc -l)" >>"$OUT/machine.txt"
stop_pid "$GWP"

python3 - "$RESULTS" >"$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
def pick(phase, role):
    return [r["summary"] for r in rows if r["phase"] == phase and r["role"] == role]
def fmt(v, d=1):
    return f"{v:.{d}f}"
out = []
out.append("| server, load | queries/s | responses/s | p50 ms | p90 ms | p99 ms | max ms | queries | errors |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
mwl = {}
for phase, label in [("mwl", "dicom-gw, MWL alone"), ("mwl+store", "dicom-gw, MWL + C-STORE load"), ("rate+store", "dicom-gw, MWL open loop at --mwl-rate + C-STORE load"), ("peer", "wlmscpfs, MWL alone")]:
    s = pick(phase, "mwl")
    if not s:
        continue
    q = [x["queries_per_s"] for x in s]
    m = {k: med([x["latency_ms"][k] for x in s]) for k in ("p50", "p90", "p99", "max")}
    mwl[phase] = (med(q), m["p99"], q, [x["latency_ms"]["p99"] for x in s])
    out.append(f"| {label} | {fmt(med(q))} ({', '.join(fmt(v) for v in q)}) | {fmt(med([x['responses_per_s'] for x in s]))} | "
               f"{fmt(m['p50'], 2)} | {fmt(m['p90'], 2)} | {fmt(m['p99'], 2)} ({', '.join(fmt(x['latency_ms']['p99'], 1) for x in s)}) | {fmt(m['max'], 1)} | "
               f"{sum(x['queries'] for x in s)} | {sum(x['errors'] for x in s)} |")
out.append("")
out.append("| C-STORE (16 KiB) | instances/s | p50 ms | p99 ms | errors |")
out.append("|---|---:|---:|---:|---:|")
st = {}
for phase, label in [("store", "alone"), ("mwl+store", "with the closed-loop MWL load"), ("rate+store", "with the MWL load at --mwl-rate")]:
    s = pick(phase, "store")
    if not s:
        continue
    r = [x["requests_per_s"] for x in s]
    st[phase] = med(r)
    out.append(f"| {label} | {fmt(med(r))} ({', '.join(fmt(v) for v in r)}) | {fmt(med([x['latency_ms']['p50'] for x in s]), 2)} | "
               f"{fmt(med([x['latency_ms']['p99'] for x in s]), 2)} | {sum(x['errors'] for x in s)} |")
out.append("")
if "mwl" in mwl and "peer" in mwl:
    g, p = mwl["mwl"], mwl["peer"]
    out.append(f"- dicom-gw / wlmscpfs queries/s (medians, MWL alone): {g[0] / p[0]:.0f}x; "
               f"p99 wlmscpfs / dicom-gw: {p[1] / g[1]:.0f}x")
    per = [a / b for a, b in zip(g[2], p[2]) if b > 0]
    if per:
        out.append(f"- per repetition queries/s ratio: {', '.join(f'{x:.0f}x' for x in per)}")
if "mwl" in mwl and "mwl+store" in mwl:
    out.append(f"- MWL queries/s with the C-STORE load / alone: {mwl['mwl+store'][0] / mwl['mwl'][0]:.2f}; "
               f"p99 with / alone: {mwl['mwl+store'][1] / mwl['mwl'][1]:.2f}")
if "store" in st and "mwl+store" in st:
    out.append(f"- C-STORE instances/s with the closed-loop MWL load / alone: {st['mwl+store'] / st['store']:.2f}")
if "store" in st and "rate+store" in st:
    out.append(f"- C-STORE instances/s with the MWL load at --mwl-rate / alone: {st['rate+store'] / st['store']:.2f}")
kinds = {}
for s in pick("mwl", "mwl"):
    for k, v in s["kinds"].items():
        kinds.setdefault(k, []).append(v)
if kinds:
    out.append("")
    out.append("| dicom-gw MWL alone, by query kind | share | matches/query | p50 ms | p99 ms |")
    out.append("|---|---:|---:|---:|---:|")
    total = sum(v["queries"] for vs in kinds.values() for v in vs)
    for k, vs in sorted(kinds.items()):
        out.append(f"| {k} | {100 * sum(v['queries'] for v in vs) / total:.0f} % | {med([v['mean_matches'] for v in vs]):.1f} | "
                   f"{med([v['latency_ms']['p50'] for v in vs]):.2f} | {med([v['latency_ms']['p99'] for v in vs]):.2f} |")
print("\n".join(out))
PY
cat "$OUT/machine.txt"
cat "$OUT/summary.md"
