#!/usr/bin/env bash
# C-MOVE throughput against DCMTK storescu (issue 13): the same files, the same storescp, one
# association each, alternating runs. Usage:
#   benches/move_compare.sh GW_PORT STUDY_UID FILE_DIR [RUNS]
# GW_PORT: a running dicom-gw whose [[destinations]] has ae_title = "STORESCP" on port 11113 and
# which holds the study STUDY_UID; FILE_DIR: the same objects as Part-10 files (what storescu
# sends). Prints seconds per run and the ratio of the medians.
set -euo pipefail
# DCMTK leaves Nagle on unless told: without this every response waits ~40 ms for a delayed ACK.
export TCP_NODELAY=1
port=$1 study=$2 dir=$3 runs=${4:-3}
recv=$(mktemp -d)
storescp -aet STORESCP +B -od "$recv" 11113 &
scp=$!
trap 'kill $scp 2>/dev/null; rm -rf "$recv"' EXIT
sleep 1
n=$(ls "$dir" | wc -l)
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
a=() b=()
for i in $(seq "$runs"); do
  rm -rf "${recv:?}"/*
  a+=("$(t storescu -aec STORESCP +sd 127.0.0.1 11113 "$dir")")
  got=$(ls "$recv" | wc -l); [ "$got" = "$n" ] || { echo "storescu delivered $got of $n" >&2; exit 1; }
  rm -rf "${recv:?}"/*
  b+=("$(t movescu -S -aet BENCH -aec DICOM_GW -aem STORESCP -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$study" 127.0.0.1 "$port")")
  got=$(ls "$recv" | wc -l); [ "$got" = "$n" ] || { echo "C-MOVE delivered $got of $n" >&2; exit 1; }
done
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ma=$(med "${a[@]}") mb=$(med "${b[@]}")
echo "objects: $n"
echo "storescu seconds: ${a[*]} (median $ma, $(echo "$n / $ma" | bc) objects/s)"
echo "C-MOVE   seconds: ${b[*]} (median $mb, $(echo "$n / $mb" | bc) objects/s)"
echo "C-MOVE / storescu throughput: $(echo "scale=3; $ma / $mb" | bc)"
