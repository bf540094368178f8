#!/usr/bin/env python3
"""Helpers of benches/api_load.sh (Python 3 standard library only).

  api_load.py brief LOGS RECORD      one line about one measurement (RECORD: its JSON line)
  api_load.py cell LOGS RECORD       the measurement as one flat JSON object (ingest, HTTP, CPU)
  api_load.py summary LOGS RESULTS   markdown tables (medians over repetitions or cycles,
                                     ratios loaded / alone of the same repetition or cycle) of the
                                     JSON lines api_load.sh wrote; also writes LOGS/../windows.jsonl
                                     (one flat object per window)

Inputs per measurement TAG in LOGS: TAG.loadgen.json (dicom-loadgen --json), TAG.oha.json (oha
--output-format json), TAG.ticks0 / TAG.ticks1 (dicom-gw's threads: "tid comm ticks", first line
"total ticks"), TAG.sender.time (the sender's user and system seconds).
"""

import json
import os
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")
APIS = ["none", "metrics", "search", "metrics-q", "search-q", "ticker"]
GROUPS = ["core", "http", "blocking", "committer", "iou-wrk", "other"]
# oha reports the requests in flight when it is stopped (SIGINT) as this error: not a failure
STOPPED = "aborted due to deadline"


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_ticks(path):
    total, threads = 0, {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts[0] == "total":
                total = int(parts[1])
            elif len(parts) == 3:
                threads[parts[0]] = (parts[1], int(parts[2]))
    return total, threads


def group_of(comm):
    if comm.startswith("core-"):
        return "core"
    if comm.startswith("iou-wrk"):
        return "iou-wrk"
    if comm.startswith("tokio-rt-work"):
        return "blocking"
    if comm in ("http", "committer"):
        return comm
    return "other"


def cpu_split(logs, tag):
    """Seconds of CPU of dicom-gw during the ingest window, by thread group; "other" holds the
    remaining threads and those that exited during the window (their time stays in the total)."""
    try:
        t0, th0 = read_ticks(os.path.join(logs, tag + ".ticks0"))
        t1, th1 = read_ticks(os.path.join(logs, tag + ".ticks1"))
    except OSError:
        return None
    split = dict.fromkeys(GROUPS, 0)
    for tid, (comm, ticks) in th1.items():
        before = th0.get(tid, (comm, 0))[1]
        split[group_of(comm)] += ticks - before
    split["other"] += (t1 - t0) - sum(split.values())
    split["total"] = t1 - t0
    return {k: v / CLK_TCK for k, v in split.items()}


def cell(logs, rec):
    tag = rec["tag"]
    out = dict(rec)
    wall = rec["wall_s"]
    if rec["sender"] == "loadgen":
        lg = load_json(os.path.join(logs, tag + ".loadgen.json")) or {}
        lat = lg.get("latency_ms") or {}
        out.update(
            inst_s=lg.get("requests_per_s"),
            ok=lg.get("ok"),
            errors=lg.get("errors"),
            p50_ms=lat.get("p50"),
            p99_ms=lat.get("p99"),
            fatal=lg.get("fatal"),
        )
    else:
        out.update(inst_s=rec["n_scu"] / wall if rec["sender_rc"] == 0 else None,
                   ok=rec["n_scu"] if rec["sender_rc"] == 0 else None,
                   errors=0 if rec["sender_rc"] == 0 else None, p50_ms=None, p99_ms=None)
    try:
        with open(os.path.join(logs, tag + ".sender.time")) as f:
            u, s = f.read().split()[-2:]
        out["sender_cpu_s"] = float(u) + float(s)
    except (OSError, ValueError):
        out["sender_cpu_s"] = None
    oha = load_json(os.path.join(logs, tag + ".oha.json")) if rec["api"] not in ("none", "ticker") else None
    if oha:
        m = oha["metrics"]
        out.update(
            http_rps=m["requests_per_sec"],
            http_p50_ms=m["latency_ms"]["p50"],
            http_p99_ms=m["latency_ms"]["p99"],
            http_success=m["success_rate"],
            http_s=oha["summary"]["total"],
            http_status=oha.get("statusCodeDistribution"),
            http_errors=oha.get("errorDistribution"),
            http_bytes_per_req=oha["summary"].get("sizePerRequest"),
        )
    elif rec["api"] not in ("none", "ticker"):
        out["http_missing"] = True
    out["gw_cpu_s"] = cpu_split(logs, tag)
    return out


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:.{digits}f}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def spread(vals):
    vals = [v for v in vals if v is not None]
    return f"{fmt(med(vals))} ({fmt(min(vals))}–{fmt(max(vals))})" if vals else "–"


def quartiles(vals):
    vals = sorted(v for v in vals if v is not None)
    if len(vals) < 4:
        return None, None
    q = statistics.quantiles(vals, n=4)
    return q[0], q[2]


def table(cs, interleave):
    """Markdown rows, one per API load, for the windows CS of one sender (and mode)."""
    alone = {c["rep"]: c["inst_s"] for c in cs if c["api"] == "none"}
    lines = []
    if interleave:
        lines.append(
            "| API load | windows | ingest inst/s (median) | ingest p50 ms | ingest p99 ms | × alone, median of cycles (quartiles) | cycles < 1 "
            "| HTTP req/s | HTTP p50 ms | HTTP p99 ms | HTTP non-2xx / errors | dicom-gw CPU (cores): core / http / blocking / committer / iou-wrk / other | load generator CPU (cores) |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    else:
        lines.append(
            "| API load | ingest inst/s (min–max) | ingest p50 ms | ingest p99 ms | × alone, per repetition | × alone (median) "
            "| HTTP req/s | HTTP p50 ms | HTTP p99 ms | HTTP non-2xx / errors | dicom-gw CPU (cores): core / http / blocking / committer / iou-wrk / other | load generator CPU (cores) |"
        )
        lines.append("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for api in APIS:
        rows = sorted((c for c in cs if c["api"] == api), key=lambda c: c["rep"])
        if not rows:
            continue
        ratios = [c["inst_s"] / alone[c["rep"]] if c["inst_s"] and alone.get(c["rep"]) else None for c in rows]
        bad = 0
        for c in rows:
            bad += sum(n for code, n in (c.get("http_status") or {}).items() if not str(code).startswith("2"))
            bad += sum(n for e, n in (c.get("http_errors") or {}).items() if e != STOPPED)
        cpu = " / ".join(
            fmt(med([c["gw_cpu_s"][g] / c["wall_s"] if c["gw_cpu_s"] else None for c in rows]), 2) for g in GROUPS)
        http = api not in ("none", "ticker")
        hcols = [
            fmt(med([c.get("http_rps") for c in rows])) if http else "–",
            fmt(med([c.get("http_p50_ms") for c in rows])) if http else "–",
            fmt(med([c.get("http_p99_ms") for c in rows])) if http else "–",
            str(bad) if http else "–",
            cpu,
            fmt(med([c["oha_cpu_s"] / c["wall_s"] for c in rows]), 2) if api != "none" else "–",
        ]
        if interleave:
            q1, q3 = quartiles(ratios)
            below = sum(1 for r in ratios if r is not None and r < 1)
            cols = [
                api, str(len(rows)), fmt(med([c["inst_s"] for c in rows])),
                fmt(med([c["p50_ms"] for c in rows])), fmt(med([c["p99_ms"] for c in rows])),
                f"**{fmt(med(ratios), 2)}** ({fmt(q1, 2)}–{fmt(q3, 2)})" if api != "none" else "1",
                f"{below} of {len([r for r in ratios if r is not None])}" if api != "none" else "–",
            ]
        else:
            cols = [
                api, spread([c["inst_s"] for c in rows]),
                fmt(med([c["p50_ms"] for c in rows])), fmt(med([c["p99_ms"] for c in rows])),
                ", ".join(fmt(r, 2) for r in ratios), f"**{fmt(med(ratios), 2)}**",
            ]
        lines.append("| " + " | ".join(cols + hcols) + " |")
    return lines


def summary(logs, results):
    with open(results) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    cells = [cell(logs, r) for r in recs if r.get("kind") == "window"]
    daemons = [r for r in recs if r.get("kind") == "daemon"]
    with open(os.path.join(logs, "..", "windows.jsonl"), "w") as f:
        for c in cells:
            f.write(json.dumps(c) + "\n")
    lines = []
    for mode in ("cells", "interleave"):
        for sender in ("loadgen", "storescu"):
            cs = [c for c in cells if c["sender"] == sender and c["mode"] == mode]
            if not cs:
                continue
            n = len({c["rep"] for c in cs})
            if mode == "cells":
                lines.append(f"### {sender}, a fresh daemon per measurement: {n} repetition(s)\n")
            else:
                lines.append(f"### {sender}, interleaved windows on one daemon: {n} cycle(s)\n")
            lines += table(cs, mode == "interleave")
            lines.append("")
    problems = []
    for c in cells:
        what = []
        if c.get("errors"):
            what.append(f"{c['errors']} ingest errors")
        if c.get("fatal"):
            what.append(f"loadgen fatal: {c['fatal']}")
        if c["sender_rc"] != 0:
            what.append(f"sender exit {c['sender_rc']}")
        if c.get("http_missing"):
            what.append("no oha result")
        real = {e: n for e, n in (c.get("http_errors") or {}).items() if e != STOPPED}
        non2xx = {k: n for k, n in (c.get("http_status") or {}).items() if not str(k).startswith("2")}
        if real or non2xx:
            what.append(f"HTTP status {c['http_status']}, errors {c['http_errors']}")
        if what:
            problems.append(f"- {c['tag']}: " + "; ".join(what))
    for d in daemons:
        what = []
        pre = load_json(os.path.join(logs, d["daemon"] + ".prefill.json")) or {}
        expected = pre.get("ok", 0) + sum(c["ok"] or 0 for c in cells if c["daemon"] == d["daemon"])
        if d["stored"] != expected:
            what.append(f"stored {d['stored']} objects, acknowledged {expected}")
        if d["gw_exit"] != 0:
            what.append(f"dicom-gw exit {d['gw_exit']}")
        if d["gw_warn_error_lines"]:
            what.append(f"{d['gw_warn_error_lines']} WARN/ERROR log lines")
        if d["search_probe_status"] != 200:
            what.append(f"study search answered {d['search_probe_status']}")
        if what:
            problems.append(f"- daemon {d['daemon']}: " + "; ".join(what))
    lines.append(f"Checks: {len(daemons)} daemon(s), {len(cells)} window(s); problems: "
                 + ("none" if not problems else "\n" + "\n".join(problems)))
    loads = [c["loadavg_1m"] for c in cells]
    lines.append(f"\n1-minute load average at the start of the windows: {min(loads)}–{max(loads)}")
    print("\n".join(lines))


def brief(logs, rec):
    c = cell(logs, json.loads(rec))
    s = f"ingest {fmt(c['inst_s'])} inst/s"
    if c["p99_ms"] is not None:
        s += f" p50 {fmt(c['p50_ms'])} p99 {fmt(c['p99_ms'])} ms"
    if c.get("errors"):
        s += f" ({c['errors']} errors)"
    if c.get("http_rps") is not None:
        s += (f"; HTTP {fmt(c['http_rps'])} req/s p50 {fmt(c['http_p50_ms'])} p99 {fmt(c['http_p99_ms'])} ms"
              f" status {c['http_status']}")
        real = {e: n for e, n in c["http_errors"].items() if e != STOPPED}
        if real:
            s += f" ERRORS {real}"
    if c["gw_cpu_s"]:
        s += "; gw CPU " + " ".join(f"{g} {c['gw_cpu_s'][g] / c['wall_s']:.2f}" for g in GROUPS)
        if c["api"] != "none":
            s += f"; oha/ticker CPU {c['oha_cpu_s'] / c['wall_s']:.2f}"
    return s


def main(argv):
    if len(argv) == 4 and argv[1] == "brief":
        print(brief(argv[2], argv[3]))
    elif len(argv) == 4 and argv[1] == "cell":
        print(json.dumps(cell(argv[2], json.loads(argv[3]))))
    elif len(argv) == 4 and argv[1] == "summary":
        summary(argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
