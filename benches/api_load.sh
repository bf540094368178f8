#!/usr/bin/env bash
# Admin API load during ingest (issue 5): does loading the HTTP API (Prometheus /metrics scrapes,
# the study search of /api/v1) while objects stream in slow the ingest down? Each measurement
# ingests into a fresh dicom-gw (durability full) on a fresh ext4 (or, with --interleave, into
# one daemon in short windows), alone or with `oha` loading the API for the whole ingest window;
# alone and loaded alternate within each repetition and the ratio loaded / alone is taken per
# repetition. Results: docs/benchmarks.md, "Admin API load during ingest (issue 5)".
#
# Usage: benches/api_load.sh [--reps R] [--duration S] [--concurrency C] [--n-scu N]
#                            [--http-conns K] [--rate Q] [--prefill N] [--senders "loadgen storescu"]
#                            [--loads "none metrics search metrics-q search-q ticker"]
#                            [--quick] [--no-build] [--out DIR] [--image-size 8G]
#        benches/api_load.sh --interleave CYCLES [--window S] [options above]
#   --reps R          repetitions (default 3; the summary shows medians and per-repetition ratios)
#   --duration S      seconds of `dicom-loadgen store` per measurement (default 12)
#   --concurrency C   associations of dicom-loadgen (default 4)
#   --n-scu N         16 KiB files sent by `storescu +sd +r` (one association) (default 1500)
#   --http-conns K    oha connections for the saturating API load (default 4)
#   --rate Q          requests/s of the fixed-rate API load (oha -q Q, default 200)
#   --prefill N       objects ingested (5 per study, so N / 5 studies) before each measurement, so
#                     the study search returns a full page from the start (default 500)
#   --senders LIST    ingest senders: loadgen and/or storescu (default both)
#   --loads LIST      loads of the fresh-daemon measurements, among those below (default
#                     "none metrics search metrics-q search-q"; must contain none)
#   --quick           1 repetition, 6 s, 600 files
#   --interleave N    instead of the fresh-daemon measurements: ONE daemon (prefilled), then N
#                     cycles of six dicom-loadgen windows of S seconds (--window, default 2),
#                     one per load below (ticker included), order rotated per cycle; the ratio
#                     loaded / alone is taken per cycle. Finer than fresh daemons on a noisy
#                     machine (neighbouring windows are seconds apart), but the index grows
#                     during the run (equally for all loads)
#   --out DIR         results (results.jsonl, summary.md, machine.txt, logs/); default a new
#                     directory under /tmp, kept after the run
# Needs root (a fresh ext4 on a loop device), oha (`cargo install oha --locked`), DCMTK storescu,
# curl, python3, /usr/bin/time. Takes ~7-8.5 min with the defaults (a busy 2-vCPU machine), ~6 min
# with --interleave 25.
#
# Loads (oha, started 0.3 s before the ingest and stopped with SIGINT right after it, so it
# covers the whole ingest window; K = --http-conns, Q = --rate):
#   none       ingest alone
#   metrics    oha -c K            GET /metrics                                    (saturating)
#   search     oha -c K            GET /api/v1/studies?modality=CT&limit=100 (Bearer, viewer)
#   metrics-q  oha -c K -q Q       GET /metrics                                    (fixed rate)
#   search-q   oha -c K -q Q       GET /api/v1/studies?...                          (fixed rate)
#   ticker     control without HTTP: a python3 loop sleeping 5 ms (200 idle wake-ups/s)
# Senders, each with every load of --loads: dicom-loadgen (closed loop, -c C, -d S, 16 KiB:
# inst/s and latency percentiles) and storescu (`storescu +sd +r`, one association, N files of
# 16 KiB, timed from start to exit). The order of the loads rotates each repetition (and is reversed in even
# ones). Every measurement: fresh data directory and daemon, a viewer token, the prefill, one
# probe of the study search, `sync -f`, then the load; afterwards the stored objects are counted
# and dicom-gw's exit status and WARN/ERROR log lines checked.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
REPO=$PWD
GW=$REPO/target/release/dicom-gw
LOADGEN=$REPO/target/release/dicom-loadgen
PYH=$REPO/benches/api_load.py

REPS=3 DUR=12 CONC=4 NSCU=1500 HCONNS=4 RATE=200 PREFILL=500 SENDERS="loadgen storescu"
BUILD=1 IMAGE_SIZE=8G OUT="" CYCLES=0 WINDOW=2 LOADS="none metrics search metrics-q search-q"
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --concurrency) CONC=$2; shift 2 ;;
        --n-scu) NSCU=$2; shift 2 ;;
        --http-conns) HCONNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --prefill) PREFILL=$2; shift 2 ;;
        --senders) SENDERS=$2; shift 2 ;;
        --loads) LOADS=$2; shift 2 ;;
        --quick) REPS=1 DUR=6 NSCU=600; shift ;;
        --interleave) CYCLES=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --image-size) IMAGE_SIZE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "api_load.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for s in $SENDERS; do [[ $s == loadgen || $s == storescu ]] || { echo "api_load.sh: --senders takes loadgen and/or storescu" >&2; exit 2; }; done
for s in $LOADS; do [[ $s =~ ^(none|metrics|search|metrics-q|search-q|ticker)$ ]] || { echo "api_load.sh: unknown load $s" >&2; exit 2; }; done
[[ " $LOADS " == *" none "* ]] || { echo "api_load.sh: --loads must contain none (the reference)" >&2; exit 2; }

log() { printf '%s api_load.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (loop-mounted ext4)"
OHA=$(command -v oha || true)
[[ -z $OHA && -x $HOME/.cargo/bin/oha ]] && OHA=$HOME/.cargo/bin/oha
[[ -n $OHA ]] || die "oha not found (cargo install oha --locked)"
for t in storescu python3 mkfs.ext4 curl setsid /usr/bin/time; do
    command -v "$t" >/dev/null || die "$t not found"
done
if ((BUILD)); then cargo build --release -p dicom-gw -p dicom-loadgen; fi

CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/api-load-bench.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
MNT=$WORK/mnt
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PIDS=()      # process-group leaders we started and have not stopped yet
T_START=$EPOCHREALTIME
SEARCH_PATH='/api/v1/studies?modality=CT&limit=100'

forget() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# Stops a process we started (its own process group): SIGTERM, SIGKILL after 15 s. Sets STOP_RC.
stop_pid() {
    local pid=$1 i
    STOP_RC=0
    if kill -TERM -- "-$pid" 2>/dev/null; then
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM for 15 s: SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || true; }
    fi
    wait "$pid" 2>/dev/null || STOP_RC=$?
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

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# utime + stime (clock ticks) of a process (all its threads, live and exited).
ticks() {
    local s rest f
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
    rest=${s##*) }
    read -ra f <<<"$rest"
    echo $((f[11] + f[12]))
}
# One line per live thread: "tid comm utime+stime"; first line "total TICKS" for the process.
thread_ticks() {
    local pid=$1 t s rest f comm
    echo "total $(ticks "$pid")"
    for t in /proc/"$pid"/task/*; do
        { read -r s <"$t/stat"; } 2>/dev/null || continue   # (threads come and go)
        comm=${s#*(}; comm=${comm%%)*}
        rest=${s##*) }
        read -ra f <<<"$rest"
        echo "${t##*/} ${comm// /_} $((f[11] + f[12]))"
    done
}

# oha against the daemon's HTTP address: start_oha KIND HTTPPORT TOKEN OUTFILE; sets OHA_PID.
start_oha() {
    local kind=$1 hport=$2 tok=$3 outf=$4 args=(--no-tui --output-format json -z 600s -c "$HCONNS")
    [[ $kind == *-q ]] && args+=(-q "$RATE")
    case $kind in
        metrics*) args+=("http://127.0.0.1:$hport/metrics") ;;
        search*) args+=(-H "Authorization: Bearer $tok" "http://127.0.0.1:$hport$SEARCH_PATH") ;;
    esac
    echo "oha ${args[*]}" | sed 's/Bearer [^ ]*/Bearer TOKEN/' >"$outf.cmd"
    setsid "$OHA" "${args[@]}" >"$outf" 2>"$outf.err" &
    OHA_PID=$!
    PIDS+=("$OHA_PID")
}

# Starts a fresh dicom-gw for measurement(s) TAG: start_gw TAG. Creates a viewer token, waits
# for readiness, ingests the prefill, probes the study search. Sets GWP, SPORT, HPORT, TOK, GDIR,
# PROBE (HTTP status of the probe).
start_gw() {
    local tag=$1 i
    GDIR=$MNT/$tag-gw
    SPORT=$(free_port)
    HPORT=$(free_port)
    TOK=$("$GW" token create --data-dir "$GDIR" --role viewer --name bench 2>>"$OUT/logs/$tag.gw.err" | tail -n1 | awk '{ print $NF }')
    [[ $TOK == dgw_* ]] || die "$tag: token create printed no token"
    NO_COLOR=1 setsid "$GW" serve --data-dir "$GDIR" --store-listen "127.0.0.1:$SPORT" \
        --http-listen "127.0.0.1:$HPORT" --io auto --durability full \
        >"$OUT/logs/$tag.gw.out" 2>>"$OUT/logs/$tag.gw.err" &
    GWP=$!
    PIDS+=("$GWP")
    for ((i = 0; i < 600; i++)); do
        grep -q 'dicom-gw: store listening on' "$OUT/logs/$tag.gw.out" 2>/dev/null && break
        kill -0 "$GWP" 2>/dev/null || die "$tag: dicom-gw exited at start-up (log $OUT/logs/$tag.gw.err)"
        sleep 0.05
    done
    ((i < 600)) || die "$tag: dicom-gw not ready after 30 s"
    grep -q "dicom-gw: http listening on 127.0.0.1:$HPORT" "$OUT/logs/$tag.gw.out" || die "$tag: no http listening line"
    # Prefill: PREFILL / 5 studies of 5 CT objects, so the study search returns full pages.
    if ((PREFILL > 0)); then
        "$LOADGEN" store "127.0.0.1:$SPORT" -c 4 -n "$PREFILL" --series-size 5 --size 16k \
            --json "$OUT/logs/$tag.prefill.json" >/dev/null 2>"$OUT/logs/$tag.prefill.err" \
            || die "$tag: prefill failed (log $OUT/logs/$tag.prefill.err)"
    fi
    # One search by hand: its status is recorded (and any other answer than 200 logged).
    PROBE=$(curl -s -o "$OUT/logs/$tag.search.json" -w '%{http_code}' -H "Authorization: Bearer $TOK" \
        "http://127.0.0.1:$HPORT$SEARCH_PATH")
    [[ $PROBE == 200 ]] || log "$tag: GET $SEARCH_PATH answered $PROBE: $(head -c 300 "$OUT/logs/$tag.search.json")"
}

# Stops the daemon of start_gw and records it: stop_gw TAG. One JSON line (kind "daemon"): exit
# status after SIGTERM, WARN/ERROR lines in its log, objects found in its data directory.
stop_gw() {
    local tag=$1 gw_rc errs stored
    kill -0 "$GWP" 2>/dev/null || log "$tag: dicom-gw DIED during the measurement (log $OUT/logs/$tag.gw.err)"
    stop_pid "$GWP"
    gw_rc=$STOP_RC
    ((gw_rc == 0)) || log "$tag: dicom-gw exit status $gw_rc after SIGTERM"
    stored=$(find "$GDIR/objects" -type f -name '*.dcm' 2>/dev/null | wc -l)
    errs=$(grep -cE ' (WARN|ERROR) ' "$OUT/logs/$tag.gw.err" || true)
    if ((errs > 0)); then
        log "$tag: $errs WARN/ERROR line(s) in $OUT/logs/$tag.gw.err, first ones:"
        grep -E ' (WARN|ERROR) ' "$OUT/logs/$tag.gw.err" | head -5 >&2
    fi
    printf '{"kind":"daemon","daemon":"%s","gw_exit":%d,"gw_warn_error_lines":%d,"stored":%d,"search_probe_status":%s}\n' \
        "$tag" "$gw_rc" "$errs" "$stored" "$PROBE" >>"$RESULTS"
    rm -rf "$GDIR"
    sync -f "$MNT"
}

# One ingest window against the running daemon, alone or with an API load:
# window MODE SENDER API REP ORDER DAEMONTAG TAG SECONDS
window() {
    local mode=$1 sender=$2 api=$3 rep=$4 order=$5 dtag=$6 tag=$7 secs=$8 t0 t1 rc=0 oha_pid="" o0=0 o1=0 load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [[ $api == ticker ]]; then
        # control: no HTTP at all, a process that only wakes up 200 times a second
        setsid python3 -c 'import time
while True: time.sleep(0.005)' &
        oha_pid=$!
        PIDS+=("$oha_pid")
        sleep 0.3
        o0=$(ticks "$oha_pid")
    elif [[ $api != none ]]; then
        start_oha "$api" "$HPORT" "$TOK" "$OUT/logs/$tag.oha.json"
        oha_pid=$OHA_PID
        sleep 0.3
        kill -0 "$oha_pid" 2>/dev/null || die "$tag: oha exited at once: $(head -c 500 "$OUT/logs/$tag.oha.json.err")"
        o0=$(ticks "$oha_pid")
    fi
    thread_ticks "$GWP" >"$OUT/logs/$tag.ticks0"
    t0=$EPOCHREALTIME
    if [[ $sender == loadgen ]]; then
        /usr/bin/time -f '%U %S' -o "$OUT/logs/$tag.sender.time" \
            "$LOADGEN" store "127.0.0.1:$SPORT" -c "$CONC" -d "$secs" --size 16k \
            --json "$OUT/logs/$tag.loadgen.json" >"$OUT/logs/$tag.sender.log" 2>&1 || rc=$?
    else
        TCP_NODELAY=1 /usr/bin/time -f '%U %S' -o "$OUT/logs/$tag.sender.time" \
            storescu +sd +r -aec DICOM_GW 127.0.0.1 "$SPORT" "$MNT/in" >"$OUT/logs/$tag.sender.log" 2>&1 || rc=$?
    fi
    t1=$EPOCHREALTIME
    thread_ticks "$GWP" >"$OUT/logs/$tag.ticks1"
    if [[ $api == ticker ]]; then
        o1=$(ticks "$oha_pid")
        kill -KILL "$oha_pid" 2>/dev/null || true
        wait "$oha_pid" 2>/dev/null || true
        forget "$oha_pid"
    elif [[ -n $oha_pid ]]; then
        o1=$(ticks "$oha_pid")
        kill -INT "$oha_pid" 2>/dev/null || true
        wait "$oha_pid" || log "$tag: oha exit status $? ($(head -c 300 "$OUT/logs/$tag.oha.json.err"))"
        forget "$oha_pid"
    fi
    ((rc == 0)) || log "$tag: $sender exit status $rc (log $OUT/logs/$tag.sender.log)"
    printf '{"kind":"window","mode":"%s","sender":"%s","api":"%s","rep":%d,"order":%d,"daemon":"%s","tag":"%s","wall_s":%s,"sender_rc":%d,"n_scu":%d,"oha_cpu_s":%s,"loadavg_1m":%s}\n' \
        "$mode" "$sender" "$api" "$rep" "$order" "$dtag" "$tag" "$(elapsed "$t0" "$t1")" "$rc" "$NSCU" \
        "$(awk -v t=$((o1 - o0)) -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }')" "$load" >>"$RESULTS"
    [[ $mode == cells ]] && log "$tag: $(python3 "$PYH" brief "$OUT/logs" "$(tail -n1 "$RESULTS")")"
    return 0
}

# One measurement with its own fresh daemon: cell SENDER API REP ORDER
cell() {
    local tag="$1-$2-r$3"
    start_gw "$tag"
    sync -f "$MNT"
    sleep 0.5
    window cells "$1" "$2" "$3" "$4" "$tag" "$tag" "$DUR"
    stop_gw "$tag"
}

# The loads in the order of repetition (or cycle) REP: rotated by REP, reversed when even.
# order_of REP LOAD...; sets ORDER.
order_of() {
    local rep=$1 apis=("${@:2}") n k i rev=()
    n=${#apis[@]}
    k=$(((rep - 1) % n))
    ORDER=()
    for ((i = 0; i < n; i++)); do ORDER+=("${apis[$(((i + k) % n))]}"); done
    if ((rep % 2 == 0)); then
        for ((i = n - 1; i >= 0; i--)); do rev+=("${ORDER[$i]}"); done
        ORDER=("${rev[@]}")
    fi
}

# --------------------------------------------------------------------------------------------

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
    echo "kernel: $(uname -r)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "oha: $("$OHA" --version 2>&1 | head -n1)"
    echo "storescu: $(storescu --version 2>&1 | head -n1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null) ($(git status --porcelain 2>/dev/null | wc -l) changed/untracked paths)"
    echo "rustc: $(rustc --version 2>/dev/null)"
    echo "binaries: dicom-gw $(sha256sum "$GW" | cut -c1-12) built $(date -u -r "$GW" '+%Y-%m-%d %H:%M:%S UTC'), dicom-loadgen $(sha256sum "$LOADGEN" | cut -c1-12)"
    echo "args: interleave=$CYCLES window=${WINDOW}s loads=\"$LOADS\" reps=$REPS duration=${DUR}s loadgen_c=$CONC n_scu=$NSCU http_conns=$HCONNS rate=$RATE prefill=$PREFILL senders=\"$SENDERS\" image=$IMAGE_SIZE"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

mkdir -p "$MNT"
truncate -s "$IMAGE_SIZE" "$WORK/fs.img"
mkfs.ext4 -q -F "$WORK/fs.img"
mount -o loop "$WORK/fs.img" "$MNT"
log "fresh ext4 on $(findmnt -no SOURCE "$MNT") at $MNT"
if ((CYCLES == 0)) && [[ " $SENDERS " == *" storescu "* ]]; then
    "$LOADGEN" synth --out "$MNT/in" -n "$NSCU" --size 16k >/dev/null
    log "storescu input: $NSCU files of 16 KiB in $MNT/in"
fi

# Does the study search answer? (It was being finished while this script was written.)
probe=$MNT/probe-gw
ptok=$("$GW" token create --data-dir "$probe" --role viewer --name bench 2>/dev/null | tail -n1 | awk '{ print $NF }')
pport=$(free_port) phport=$(free_port)
NO_COLOR=1 setsid "$GW" serve --data-dir "$probe" --store-listen "127.0.0.1:$pport" \
    --http-listen "127.0.0.1:$phport" --io auto >"$OUT/logs/probe.gw.out" 2>"$OUT/logs/probe.gw.err" &
ppid=$!
PIDS+=("$ppid")
for ((i = 0; i < 600; i++)); do grep -q 'store listening' "$OUT/logs/probe.gw.out" 2>/dev/null && break; sleep 0.05; done
pcode=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ptok" "http://127.0.0.1:$phport$SEARCH_PATH")
if [[ $pcode != 200 ]]; then
    log "GET $SEARCH_PATH answered $pcode: falling back to GET /api/v1/studies"
    SEARCH_PATH=/api/v1/studies
fi
mcode=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$phport/metrics")
[[ $mcode == 200 ]] || die "GET /metrics answered $mcode"
stop_pid "$ppid"
rm -rf "$probe"
echo "search: $SEARCH_PATH (probe answered $pcode)" >>"$OUT/machine.txt"

if ((CYCLES == 0)); then
    for ((rep = 1; rep <= REPS; rep++)); do
        for sender in $SENDERS; do
            # shellcheck disable=SC2086
            order_of "$rep" $LOADS
            log "repetition $rep, $sender: ${ORDER[*]}"
            for ((i = 0; i < ${#ORDER[@]}; i++)); do cell "$sender" "${ORDER[$i]}" "$rep" "$i"; done
        done
    done
else
    # Interleaved: one daemon, CYCLES cycles of six short loadgen windows (one per load).
    start_gw il
    log "interleaved: $CYCLES cycles of 6 windows of $WINDOW s on one daemon (dicom-loadgen -c $CONC)"
    for ((cyc = 1; cyc <= CYCLES; cyc++)); do
        order_of "$cyc" none metrics search metrics-q search-q ticker
        for ((i = 0; i < ${#ORDER[@]}; i++)); do
            window interleave loadgen "${ORDER[$i]}" "$cyc" "$i" il "il-c$cyc-${ORDER[$i]}" "$WINDOW"
        done
        ((cyc % 5)) || log "cycle $cyc done"
    done
    stop_gw il
fi

python3 "$PYH" summary "$OUT/logs" "$RESULTS" | tee "$OUT/summary.md"
log "total $(elapsed "$T_START" "$EPOCHREALTIME") s"
