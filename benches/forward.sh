#!/usr/bin/env bash
# Forwarding throughput: dicom-gw's forwarder sending stored objects to DCMTK storescp, compared
# in the same run (same files, same fresh ext4, same storescp) with DCMTK storescu sending the
# files straight to storescp. Results: docs/benchmarks.md, "Forwarding throughput (issue 4)".
#
# Usage: benches/forward.sh [--reps R] [--n16 N] [--n512 N] [--assoc "1 2"] [--quick]
#                           [--no-build] [--image-size 8G] [--out DIR] [--perf] [--timeout S]
#   --reps R      repetitions per configuration (default 3; the table shows medians)
#   --n16 N       objects of 16 KiB (default 2000; 0 skips the size)
#   --n512 N      objects of 512 KiB (default 300; 0 skips the size)
#   --assoc LIST  associations: 1 (storescp without --fork, max_associations = 1) and/or
#                 2 (storescp --fork, max_associations = 2, baseline = 2 storescu in parallel)
#   --quick       1 repetition, 500 and 100 objects
#   --perf        after the measured repetitions of 16k / 1 association, one extra forward run
#                 (not in the table) under `perf record -e cpu-clock -g` on dicom-gw
#   --out DIR     results (results.jsonl, summary.md, machine.txt, logs/); default a new
#                 directory under /tmp, kept after the run
# Needs root (a fresh ext4 on a loop device), DCMTK storescp and storescu, python3.
#
# Per configuration and repetition (the order of the two alternates between repetitions):
#   baseline: fresh storescp (+B, bit-preserving), `storescu +sd +r IN` (one association; with
#             2 associations, two storescu, one per half of the files), timed from start to
#             exit of storescu;
#   forward:  fresh storescp as the destination, fresh dicom-gw (--durability full) with the
#             destination paused, the same files ingested with storescu (timed separately),
#             then `queue resume` and timed until `queue stats` shows done == N.
# Both are checked: storescp's directory must hold exactly the input datasets (transfer syntax
# and dataset bytes, each once).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
REPO=$PWD
GW=$REPO/target/release/dicom-gw
LOADGEN=$REPO/target/release/dicom-loadgen
PYH=$REPO/benches/forward.py

REPS=3 N16=2000 N512=300 ASSOC="1 2" BUILD=1 IMAGE_SIZE=8G OUT="" PERF=0 TIMEOUT=300
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --n16) N16=$2; shift 2 ;;
        --n512) N512=$2; shift 2 ;;
        --assoc) ASSOC=$2; shift 2 ;;
        --quick) REPS=1 N16=500 N512=100; shift ;;
        --no-build) BUILD=0; shift ;;
        --image-size) IMAGE_SIZE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --perf) PERF=1; shift ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "forward.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for a in $ASSOC; do [[ $a == 1 || $a == 2 ]] || { echo "forward.sh: --assoc takes 1 and/or 2" >&2; exit 2; }; done

log() { printf '%s forward.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (loop-mounted ext4)"
for t in storescp storescu python3 mkfs.ext4 ss /usr/bin/time; do
    command -v "$t" >/dev/null || die "$t not found"
done
if ((BUILD)); then cargo build --release -p dicom-gw -p dicom-loadgen; fi

CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/forward-bench.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
MNT=$WORK/mnt
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PIDS=()      # process-group leaders we started and have not stopped yet
T_START=$EPOCHREALTIME

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

wait_listen() {
    local port=$1 i
    for ((i = 0; i < 200; i++)); do
        [[ -n $(ss -Hltn "sport = :$port") ]] && return 0
        sleep 0.05
    done
    return 1
}

# CPU clock ticks of pid: utime + stime; with "tree" also cutime + cstime and the ticks of its
# live or not yet reaped children (storescp --fork reaps a child when the next one arrives).
ticks() {
    local s rest f total c
    s=$(<"/proc/$1/stat") 2>/dev/null || { echo 0; return; }
    rest=${s##*) }
    read -ra f <<<"$rest"
    total=$((f[11] + f[12]))
    if [[ ${2:-} == tree ]]; then
        total=$((total + f[13] + f[14]))
        for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do total=$((total + $(ticks "$c"))); done
    fi
    echo "$total"
}
secs() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }'; }

# storescp as the archive: start_storescp OUTDIR PORT ASSOC LOG; sets SCP_PID.
start_storescp() {
    local out=$1 port=$2 assoc=$3 logf=$4 fork=()
    mkdir -p "$out"
    ((assoc > 1)) && fork=(--fork)
    TCP_NODELAY=1 setsid storescp "${fork[@]}" +B -aet ARCHIVE -od "$out" "$port" >"$logf" 2>&1 &
    SCP_PID=$!
    PIDS+=("$SCP_PID")
    wait_listen "$port" || die "storescp did not listen on $port (log $logf)"
}

# storescu from IN into 127.0.0.1:PORT with ASSOC associations (one storescu per half of the
# files when 2). run_storescu CALLED PORT IN ASSOC LOGPREFIX; sets SCU_CPU (s), returns its rc.
run_storescu() {
    local called=$1 port=$2 in=$3 assoc=$4 lp=$5 rc=0 p pids=() cpu=0 h u s
    if ((assoc == 1)); then
        TCP_NODELAY=1 /usr/bin/time -f '%U %S' -o "$lp.time" \
            storescu +sd +r -aec "$called" 127.0.0.1 "$port" "$in" >"$lp.log" 2>&1 || rc=$?
        read -r u s <"$lp.time"
        SCU_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')
        return $rc
    fi
    for h in a b; do
        TCP_NODELAY=1 /usr/bin/time -f '%U %S' -o "$lp.$h.time" \
            storescu +sd -aec "$called" 127.0.0.1 "$port" "$in/$h" >"$lp.$h.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    for h in a b; do
        read -r u s <"$lp.$h.time" || true
        cpu=$(awk -v c="$cpu" -v u="${u:-0}" -v s="${s:-0}" 'BEGIN { print c + u + s }')
    done
    SCU_CPU=$cpu
    return $rc
}

stats_field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<<"$2"; }
gw_stats() { "$GW" queue stats --data-dir "$1" 2>&1 | grep '"destination":"archive"' || true; }
json_bool() { [[ $1 == 0 ]] && echo true || echo false; }

# One baseline measurement: baseline SIZE N ASSOC REP
baseline() {
    local size=$1 n=$2 assoc=$3 rep=$4 tag="base-$1-c$3-r$4" port out t0 t1 r0 r1 rc=0 v ok
    port=$(free_port)
    out=$MNT/$tag
    sync -f "$MNT"
    start_storescp "$out" "$port" "$assoc" "$OUT/logs/$tag.storescp.log"
    r0=$(ticks "$SCP_PID" tree)
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    t0=$EPOCHREALTIME
    run_storescu ARCHIVE "$port" "$MNT/in-$size" "$assoc" "$OUT/logs/$tag.storescu" || rc=$?
    t1=$EPOCHREALTIME
    sleep 0.3
    r1=$(ticks "$SCP_PID" tree)
    v=$(python3 "$PYH" verify "$OUT/digest-$size.json" "$out") && ok=0 || ok=1
    stop_pid "$SCP_PID"
    ((rc == 0)) || { ok=1; log "$tag: storescu exit $rc (log $OUT/logs/$tag.storescu*.log)"; }
    printf '{"mode":"baseline","size":"%s","n":%d,"assoc":%d,"rep":%d,"bytes":%d,"wall_s":%s,"span_s":%s,"sender_cpu_s":%s,"recv_cpu_s":%s,"storescu_rc":%d,"loadavg_1m":%s,"verify":%s,"ok":%s}\n' \
        "$size" "$n" "$assoc" "$rep" "${BYTES[$size]}" "$(elapsed "$t0" "$t1")" \
        "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["span_s"])' "$v")" \
        "$SCU_CPU" "$(secs $((r1 - r0)))" "$rc" "$LOAD" "$v" "$(json_bool $ok)" >>"$RESULTS"
    log "$tag: $(tail -n1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f inst/s, ok=%s" % (r["n"] / r["wall_s"], r["ok"]))')"
    rm -rf "$out"
}

# One forwarding measurement: forward SIZE N ASSOC REP [perf]
forward() {
    local size=$1 n=$2 assoc=$3 rep=$4 perf=${5:-} tag="fwd-$1-c$3-r$4" dport gport dout gdir cfg
    local t0 t1 i0 i1 g0 g1 r0 r1 rc=0 v ok=0 st done_n cnt i files gw_rc errs perf_pid=""
    [[ -n $perf ]] && tag="perf-$1-c$3"
    dport=$(free_port)
    gport=$(free_port)
    dout=$MNT/$tag-archive
    gdir=$MNT/$tag-gw
    cfg=$OUT/logs/$tag.toml
    cat >"$cfg" <<EOF
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = $dport
max_associations = $assoc
retry_initial_seconds = 1
retry_max_seconds = 5

[[routes]]
name = "all"
destinations = ["archive"]
EOF
    sync -f "$MNT"
    start_storescp "$dout" "$dport" "$assoc" "$OUT/logs/$tag.storescp.log"
    local SCP=$SCP_PID
    NO_COLOR=1 setsid "$GW" serve --config "$cfg" --data-dir "$gdir" --store-listen "127.0.0.1:$gport" \
        --io auto --durability full >"$OUT/logs/$tag.gw.out" 2>"$OUT/logs/$tag.gw.err" &
    local GWP=$!
    PIDS+=("$GWP")
    for ((i = 0; i < 600; i++)); do
        grep -q 'dicom-gw: store listening on' "$OUT/logs/$tag.gw.out" 2>/dev/null && break
        kill -0 "$GWP" 2>/dev/null || die "$tag: dicom-gw exited at start-up (log $OUT/logs/$tag.gw.err)"
        sleep 0.05
    done
    ((i < 600)) || die "$tag: dicom-gw not ready after 30 s"
    "$GW" queue pause --data-dir "$gdir" --destination archive >/dev/null
    i0=$EPOCHREALTIME
    run_storescu DICOM_GW "$gport" "$MNT/in-$size" 1 "$OUT/logs/$tag.ingest" || die "$tag: ingest failed (log $OUT/logs/$tag.ingest.log)"
    i1=$EPOCHREALTIME
    st=$(gw_stats "$gdir")
    [[ $(stats_field pending "$st") == "$n" && $(stats_field done "$st") == 0 ]] \
        || die "$tag: after ingest expected pending=$n done=0, got $st"
    sync -f "$MNT"
    if [[ -n $perf ]]; then
        perf record -e cpu-clock -F 999 -g -p "$GWP" -o "$OUT/$tag.perf.data" 2>"$OUT/logs/$tag.perf.log" &
        perf_pid=$!
        sleep 1
    fi
    g0=$(ticks "$GWP")
    r0=$(ticks "$SCP" tree)
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    t0=$EPOCHREALTIME
    "$GW" queue resume --data-dir "$gdir" --destination archive >/dev/null
    # Cheap wait (no process spawned) until storescp has created N files, then `queue stats`
    # until the forwarder has recorded all N as done; `queue stats` also every ~1 s meanwhile,
    # to stop early on dead letters.
    shopt -s nullglob
    t1=""
    for ((i = 0; ; i++)); do
        files=("$dout"/*)
        cnt=${#files[@]}
        if ((cnt >= n || i % 50 == 49)); then
            kill -0 "$GWP" 2>/dev/null || { log "$tag: dicom-gw exited during forwarding (log $OUT/logs/$tag.gw.err)"; break; }
            st=$(gw_stats "$gdir")
            done_n=$(stats_field done "$st")
            if [[ $done_n == "$n" ]]; then t1=$EPOCHREALTIME; break; fi
            if [[ -n $st && $(stats_field dead "$st") != 0 ]]; then log "$tag: dead letters: $st"; break; fi
        fi
        if (($(awk -v a="$t0" -v b="$EPOCHREALTIME" -v t="$TIMEOUT" 'BEGIN { print (b - a > t) }'))); then
            log "$tag: TIMEOUT after $TIMEOUT s: storescp has $cnt files; stats $st"
            break
        fi
        sleep 0.02
    done
    shopt -u nullglob
    g1=$(ticks "$GWP")
    sleep 0.3
    r1=$(ticks "$SCP" tree)
    if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    st=$(gw_stats "$gdir")
    v=$(python3 "$PYH" verify "$OUT/digest-$size.json" "$dout") || ok=1
    [[ -n $t1 ]] || { ok=1; t1=$EPOCHREALTIME; }
    stop_pid "$GWP"
    gw_rc=$STOP_RC
    stop_pid "$SCP"
    ((gw_rc == 0)) || { ok=1; log "$tag: dicom-gw exit status $gw_rc after SIGTERM"; }
    errs=$(grep -cE ' (WARN|ERROR) ' "$OUT/logs/$tag.gw.err" || true)
    if ((errs > 0)); then
        log "$tag: $errs WARN/ERROR line(s) in $OUT/logs/$tag.gw.err, first ones:"
        grep -E ' (WARN|ERROR) ' "$OUT/logs/$tag.gw.err" | head -5 >&2
    fi
    ((ok == 0)) || log "$tag: FAILED: final stats $st; verify $v"
    if [[ -z $perf ]]; then
        printf '{"mode":"forward","size":"%s","n":%d,"assoc":%d,"rep":%d,"bytes":%d,"wall_s":%s,"span_s":%s,"ingest_s":%s,"gw_cpu_s":%s,"recv_cpu_s":%s,"final_stats":%s,"gw_warn_error_lines":%d,"gw_exit":%d,"loadavg_1m":%s,"verify":%s,"ok":%s}\n' \
            "$size" "$n" "$assoc" "$rep" "${BYTES[$size]}" "$(elapsed "$t0" "$t1")" \
            "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["span_s"])' "$v")" \
            "$(elapsed "$i0" "$i1")" "$(secs $((g1 - g0)))" "$(secs $((r1 - r0)))" \
            "${st:-null}" "$errs" "$gw_rc" "$LOAD" "$v" "$(json_bool $ok)" >>"$RESULTS"
        log "$tag: $(tail -n1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f inst/s (ingest %.0f/s), ok=%s" % (r["n"] / r["wall_s"], r["n"] / r["ingest_s"], r["ok"]))')"
    else
        log "$tag: perf run: $(elapsed "$t0" "$t1") s for $n objects; report in $OUT/$tag.perf.txt"
        {
            perf report -i "$OUT/$tag.perf.data" --no-children --sort comm --stdio -g none 2>/dev/null
            perf report -i "$OUT/$tag.perf.data" --no-children --sort dso --stdio -g none 2>/dev/null
        } | grep -E -v '^#([^S]|$)' | grep -v '^$' >"$OUT/$tag.perf.txt" || true
        perf report -i "$OUT/$tag.perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
            | head -n 80 >>"$OUT/$tag.perf.txt" || true
    fi
    rm -rf "$dout" "$gdir"
}

# --------------------------------------------------------------------------------------------

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
    echo "kernel: $(uname -r)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "storescp: $(storescp --version 2>&1 | head -n1)"
    echo "storescu: $(storescu --version 2>&1 | head -n1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null) ($(git status --porcelain 2>/dev/null | wc -l) changed/untracked paths)"
    echo "rustc: $(rustc --version 2>/dev/null)"
    echo "binaries: dicom-gw $(sha256sum "$GW" | cut -c1-12) built $(date -u -r "$GW" '+%H:%M:%S UTC'), dicom-loadgen $(sha256sum "$LOADGEN" | cut -c1-12)"
    echo "args: reps=$REPS n16=$N16 n512=$N512 assoc=\"$ASSOC\" image=$IMAGE_SIZE"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

mkdir -p "$MNT"
truncate -s "$IMAGE_SIZE" "$WORK/fs.img"
mkfs.ext4 -q -F "$WORK/fs.img"
mount -o loop "$WORK/fs.img" "$MNT"
log "fresh ext4 on $(findmnt -no SOURCE "$MNT") at $MNT"

declare -A BYTES
SIZES=()
((N16 > 0)) && SIZES+=("16k:$N16")
((N512 > 0)) && SIZES+=("512k:$N512")
for sn in "${SIZES[@]}"; do
    size=${sn%%:*} n=${sn##*:}
    "$LOADGEN" synth --out "$MNT/in-$size/a" -n $((n / 2)) --size "$size" >/dev/null
    "$LOADGEN" synth --out "$MNT/in-$size/b" -n $((n - n / 2)) --size "$size" >/dev/null
    d=$(python3 "$PYH" digest "$MNT/in-$size" "$OUT/digest-$size.json")
    BYTES[$size]=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"])' "$d")
    log "input $size: $d"
    for assoc in $ASSOC; do
        for ((rep = 1; rep <= REPS; rep++)); do
            if ((rep % 2)); then
                baseline "$size" "$n" "$assoc" "$rep"
                forward "$size" "$n" "$assoc" "$rep"
            else
                forward "$size" "$n" "$assoc" "$rep"
                baseline "$size" "$n" "$assoc" "$rep"
            fi
        done
        if ((PERF)) && [[ $size == 16k && $assoc == 1 ]]; then
            forward "$size" "$n" "$assoc" 0 perf
        fi
    done
done

python3 "$PYH" summary "$RESULTS" | tee "$OUT/summary.md"
log "total $(elapsed "$T_START" "$EPOCHREALTIME") s"
