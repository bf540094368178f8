#!/usr/bin/env python3
"""Helpers of benches/forward.sh (Python 3 standard library only).

  forward.py digest IN DIGEST      hash the dataset of every Part-10 file under IN (recursive):
                                   writes DIGEST (JSON) and prints {"files": n, "bytes": b}
  forward.py verify DIGEST OUT     checks that OUT holds exactly the datasets of DIGEST (same
                                   transfer syntax, same dataset bytes, each once); prints
                                   {"ok": .., "files": .., "missing": .., "unexpected": ..,
                                   "span_s": last - first file mtime}; exit 1 if not ok
  forward.py summary RESULTS       markdown table (medians over repetitions) of the JSON lines
                                   forward.sh wrote
"""

import collections
import hashlib
import json
import os
import statistics
import struct
import sys


def split_part10(data):
    """(transfer syntax UID, dataset bytes) of a Part-10 file: 128-byte preamble, "DICM", File
    Meta elements (group 0002, explicit VR little endian), then the dataset."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ValueError("not a Part-10 file")
    pos, ts = 132, None
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value = pos + 8
        if elem == 0x0010:
            ts = data[value : value + length].rstrip(b"\0 ").decode("ascii")
        pos = value + length
    return ts, data[pos:]


def files_under(root):
    for d, _, names in os.walk(root):
        for n in names:
            yield os.path.join(d, n)


def digest(root, out):
    entries, total = [], 0
    for path in sorted(files_under(root)):
        with open(path, "rb") as f:
            ts, ds = split_part10(f.read())
        entries.append([ts, hashlib.blake2b(ds, digest_size=16).hexdigest()])
        total += len(ds)
    with open(out, "w") as f:
        json.dump({"files": len(entries), "bytes": total, "entries": entries}, f)
    print(json.dumps({"files": len(entries), "bytes": total}))


def verify(digest_file, root):
    with open(digest_file) as f:
        want = collections.Counter(tuple(e) for e in json.load(f)["entries"])
    got, mtimes, unreadable = collections.Counter(), [], 0
    for path in files_under(root):
        try:
            mtimes.append(os.stat(path).st_mtime)
            with open(path, "rb") as f:
                ts, ds = split_part10(f.read())
        except (OSError, ValueError):
            unreadable += 1
            continue
        got[(ts, hashlib.blake2b(ds, digest_size=16).hexdigest())] += 1
    missing = sum((want - got).values())
    unexpected = sum((got - want).values()) + unreadable
    span = (max(mtimes) - min(mtimes)) if mtimes else 0.0
    ok = missing == 0 and unexpected == 0
    print(json.dumps({"ok": ok, "files": len(mtimes), "missing": missing,
                      "unexpected": unexpected, "span_s": round(span, 6)}))
    return 0 if ok else 1


def fmt(x):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return f"{fmt(min(xs))}–{fmt(max(xs))}" if xs else "–"


def summary(results):
    rows = [json.loads(l) for l in open(results) if l.strip()]
    configs = []
    for r in rows:
        key = (r["size"], r["assoc"])
        if key not in configs:
            configs.append(key)
    out = []
    out.append("| size | N | assoc. | storescu → storescp inst/s (min–max) | MB/s "
               "| dicom-gw → storescp inst/s (min–max) | MB/s | × baseline (min–max) "
               "| receiver-side inst/s: baseline / forward | gw CPU ms/inst "
               "| storescu CPU ms/inst | storescp CPU ms/inst: baseline / forward "
               "| ingest into gw inst/s |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, assoc in configs:
        sel = [r for r in rows if r["size"] == size and r["assoc"] == assoc and r.get("ok")]
        base = {r["rep"]: r for r in sel if r["mode"] == "baseline"}
        fwd = {r["rep"]: r for r in sel if r["mode"] == "forward"}
        if not base or not fwd:
            continue
        n = next(iter(base.values()))["n"]
        nbytes = next(iter(base.values()))["bytes"]

        def rate(r):
            return r["n"] / r["wall_s"]

        def span_rate(r):
            return (r["n"] - 1) / r["span_s"] if r.get("span_s") else None

        def per_inst(r, k):
            return r[k] * 1000 / r["n"] if r.get(k) is not None else None

        b_rates = [rate(r) for r in base.values()]
        f_rates = [rate(r) for r in fwd.values()]
        ratios = [rate(fwd[k]) / rate(base[k]) for k in sorted(base) if k in fwd]
        mb = lambda x: x * nbytes / n / 1e6 if x is not None else None
        out.append(
            f"| {size} | {n} | {assoc} "
            f"| {fmt(med(b_rates))} ({rng(b_rates)}) | {fmt(mb(med(b_rates)))} "
            f"| {fmt(med(f_rates))} ({rng(f_rates)}) | {fmt(mb(med(f_rates)))} "
            f"| **{med(ratios):.2f}** ({rng(ratios)}) "
            f"| {fmt(med([span_rate(r) for r in base.values()]))} / "
            f"{fmt(med([span_rate(r) for r in fwd.values()]))} "
            f"| {fmt(med([per_inst(r, 'gw_cpu_s') for r in fwd.values()]))} "
            f"| {fmt(med([per_inst(r, 'sender_cpu_s') for r in base.values()]))} "
            f"| {fmt(med([per_inst(r, 'recv_cpu_s') for r in base.values()]))} / "
            f"{fmt(med([per_inst(r, 'recv_cpu_s') for r in fwd.values()]))} "
            f"| {fmt(med([r['n'] / r['ingest_s'] for r in fwd.values() if r.get('ingest_s')]))} |"
        )
    failed = [r for r in rows if not r.get("ok")]
    print("\n".join(out))
    if failed:
        print(f"\n{len(failed)} measurement(s) FAILED verification and are not in the table:")
        for r in failed:
            print("  " + json.dumps(r))
    # Per-repetition detail.
    print("\nPer repetition (inst/s, wall clock) [1-min load average at its start]:")
    for size, assoc in configs:
        sel = [r for r in rows if r["size"] == size and r["assoc"] == assoc]
        for mode in ("baseline", "forward"):
            vals = [f"{r['n'] / r['wall_s']:.0f}" + ("" if r.get("ok") else " (FAILED)")
                    + (f" [load {r['loadavg_1m']}]" if "loadavg_1m" in r else "")
                    for r in sorted(sel, key=lambda r: r["rep"]) if r["mode"] == mode]
            print(f"  {size} assoc {assoc} {mode}: {' / '.join(vals)}")


def main(argv):
    if len(argv) == 4 and argv[1] == "digest":
        digest(argv[2], argv[3])
        return 0
    if len(argv) == 4 and argv[1] == "verify":
        return verify(argv[2], argv[3])
    if len(argv) == 3 and argv[1] == "summary":
        summary(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
