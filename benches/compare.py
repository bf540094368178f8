#!/usr/bin/env python3
"""Compare dicom-gw with DCMTK storescp (and Orthanc, if installed) as C-STORE receivers.

Every receiver gets the same `dicom-loadgen store` load, a fresh empty directory on a freshly
formatted ext4 filesystem (a sparse image over a loop device), and a free 127.0.0.1 port; two
reference rows bound the picture: the durable disk ceiling (`dicom-loadgen disk-ceiling`) and
the generator ceiling (loadgen against `storescp --fork --ignore`, which stores nothing).

Per cell: instances/s, MB/s, latency p50/p99, errors, receiver CPU per instance (utime + stime
+ children's, from /proc/PID/stat) and the ratio to `storescp +B` in the same repetition; the
table shows medians across repetitions. Extra experiments on dicom-gw (durability full, uring
and epoll): open-loop latency at half the closed-loop maximum rate (16k, -c 8) and peak RSS at
64 associations of 512 KiB objects.

Python 3 standard library only. Run through benches/compare.sh (builds first). Needs root for
the loop mount; `--dir DIR` measures in DIR instead (numbers then depend on that filesystem).
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

BASELINE = "storescp +B"
GW_READY = "dicom-gw: store listening on"

# Every child we start, so `finally` can always stop them (by process group).
RUNNING = set()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, timeout, check=True, **kw):
    """subprocess.run with a mandatory timeout."""
    return subprocess.run(cmd, timeout=timeout, check=check, **kw)


# --------------------------------------------------------------------------------------------
# /proc helpers


def proc_stat_ticks(pid):
    """utime + stime + cutime + cstime of pid, in clock ticks (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces) start at field 3 (state).
    rest = data[data.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return utime + stime + cutime + cstime


def children_of(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def cpu_ticks(pid):
    """CPU of pid plus its live or not-yet-reaped children (storescp --fork reaps its children
    only when the next association arrives: until then they are zombies whose times still
    show in their own stat; once reaped they are in the parent's cutime/cstime)."""
    total = proc_stat_ticks(pid) or 0
    for k in children_of(pid):
        total += proc_stat_ticks(k) or 0
    return total


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def listening(port):
    """Whether something listens on TCP port `port` (IPv4 or IPv6), from /proc/net/tcp*."""
    want = f"{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].rsplit(":", 1)[1] == want and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
    }


def tool_version(cmd):
    try:
        out = run(cmd, 10, check=False, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


# --------------------------------------------------------------------------------------------
# Filesystem


class Filesystem:
    """A fresh ext4 on a sparse image over a loop device, or a user-supplied directory."""

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="dgw-compare-", dir=args.work_dir)
        self.image = None
        self.mount = None
        self.desc = None

    def __enter__(self):
        if self.args.dir:
            os.makedirs(self.args.dir, exist_ok=True)
            self.root = os.path.abspath(self.args.dir)
            self.desc = f"user directory {self.root} (NOT a fresh ext4; --dir)"
            log(
                f"WARNING: --dir {self.root}: measuring on whatever filesystem holds it, not on a "
                "fresh ext4 image; file creation cost differs wildly between filesystems here, "
                "so these numbers are not comparable with the published ones"
            )
            return self
        if os.geteuid() != 0:
            sys.exit("compare.py: needs root to mount the ext4 image (or pass --dir DIR)")
        self.image = os.path.join(self.work, "fs.img")
        self.mount = os.path.join(self.work, "mnt")
        os.mkdir(self.mount)
        run(["truncate", "-s", self.args.image_size, self.image], 30)
        run(["mkfs.ext4", "-q", "-F", self.image], 300)
        run(["mount", "-o", "loop", self.image, self.mount], 60)
        self.root = self.mount
        self.desc = f"fresh ext4 ({self.args.image_size} sparse image, loop device, defaults)"
        return self

    def cell_dir(self, name):
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)

    def clean(self, path):
        """Deletes a cell's directory and flushes the filesystem, so the next cell starts
        without the previous one's dirty pages or journal."""
        shutil.rmtree(path, ignore_errors=True)
        try:
            run(["sync", "-f", self.root], 300, check=False)
        except subprocess.TimeoutExpired:
            log("warning: sync -f timed out")

    def __exit__(self, *exc):
        if self.mount:
            for attempt in range(5):
                r = subprocess.run(["umount", self.mount], timeout=120, check=False)
                if r.returncode == 0:
                    break
                time.sleep(1)
            else:
                subprocess.run(["umount", "-l", self.mount], timeout=120, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        return False


# --------------------------------------------------------------------------------------------
# Receivers


class Receiver:
    """A started receiver process. `stop()` always ends its whole process group."""

    def __init__(self, name, cmd, env, ready, logfile, cwd="/"):
        self.name = name
        self.log_path = logfile
        self.logf = open(logfile, "wb")
        full_env = dict(os.environ)
        full_env.update(env)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready == "stdout" else self.logf,
            stderr=self.logf,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        RUNNING.add(self.proc)
        self.pid = self.proc.pid

    def wait_ready(self, port, timeout=20.0, stdout_line=None):
        deadline = time.monotonic() + timeout
        if stdout_line:
            buf = b""
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
                if r:
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buf += chunk
                    if stdout_line.encode() in buf:
                        return
            raise RuntimeError(f"{self.name}: no ready line ({buf!r}); log {self.log_path}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: exited {self.proc.returncode}; log {self.log_path}")
            if listening(port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: not listening on {port} after {timeout} s")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        else:
            # The leader is gone; its forked children may still be around.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        RUNNING.discard(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.logf.close()


def gw_variants(bindir):
    out = []
    for io in ("uring", "epoll"):
        for dur in ("full", "relaxed"):
            out.append(
                {
                    "name": f"dicom-gw {io} {dur}",
                    "kind": "gw",
                    "io": io,
                    "durability": dur,
                    "cmd": lambda d, p, io=io, dur=dur: [
                        os.path.join(bindir, "dicom-gw"),
                        "serve",
                        "--data-dir",
                        d,
                        "--store-listen",
                        f"127.0.0.1:{p}",
                        "--io",
                        io,
                        "--durability",
                        dur,
                    ],
                }
            )
    return out


def receivers(args, orthanc):
    rs = gw_variants(args.bindir)
    rs.append(
        {
            "name": BASELINE,
            "kind": "storescp",
            "cmd": lambda d, p: ["storescp", "--fork", "+B", "-od", d, str(p)],
        }
    )
    rs.append(
        {
            "name": "storescp",
            "kind": "storescp",
            "cmd": lambda d, p: ["storescp", "--fork", "-od", d, str(p)],
        }
    )
    if orthanc:
        rs.append({"name": "Orthanc", "kind": "orthanc", "cmd": None})
    rs.append({"name": f"disk ceiling (batch {args.batch})", "kind": "ceiling", "cmd": None})
    rs.append(
        {
            "name": "generator (storescp --ignore)",
            "kind": "storescp",
            "cmd": lambda d, p: ["storescp", "--fork", "--ignore", str(p)],
        }
    )
    if args.receivers:
        keep = [s.strip() for s in args.receivers.split(",")]
        rs = [r for r in rs if any(k in r["name"] for k in keep) or r["name"] == BASELINE]
    return rs


def start_receiver(spec, data_dir, port, workdir, env_extra=None):
    logfile = os.path.join(workdir, f"{spec['name'].replace(' ', '_').replace('/', '_')}.log")
    if spec["kind"] == "gw":
        env = {}
        if env_extra:
            env.update(env_extra)
        r = Receiver(spec["name"], spec["cmd"](data_dir, port), env, "stdout", logfile)
        r.wait_ready(port, stdout_line=GW_READY)
        return r
    if spec["kind"] == "storescp":
        r = Receiver(spec["name"], spec["cmd"](data_dir, port), {"TCP_NODELAY": "1"}, "port", logfile)
        r.wait_ready(port)
        return r
    if spec["kind"] == "orthanc":
        cfg = {
            "Name": "bench",
            "StorageDirectory": os.path.join(data_dir, "storage"),
            "IndexDirectory": os.path.join(data_dir, "index"),
            "DicomServerEnabled": True,
            "DicomAet": "DICOM_GW",
            "DicomPort": port,
            "DicomCheckCalledAet": False,
            "HttpServerEnabled": False,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
        }
        cfg_path = os.path.join(workdir, "orthanc.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        r = Receiver(spec["name"], ["Orthanc", cfg_path], {"TCP_NODELAY": "1"}, "port", logfile)
        r.wait_ready(port, timeout=60)
        return r
    raise ValueError(spec["kind"])


# --------------------------------------------------------------------------------------------
# Load


def children_cpu_s():
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def loadgen_store(args, port, size, conc, duration, workdir, rate=None):
    out = os.path.join(workdir, "loadgen.json")
    if os.path.exists(out):
        os.unlink(out)
    cmd = [
        os.path.join(args.bindir, "dicom-loadgen"),
        "store",
        f"127.0.0.1:{port}",
        "-c",
        str(conc),
        "-d",
        f"{duration:g}",
        "--size",
        size,
        "--json",
        out,
    ]
    if rate is not None:
        cmd += ["--rate", f"{rate:.1f}"]
    c0 = children_cpu_s()
    r = run(cmd, duration + 180, check=False, capture_output=True, text=True)
    gen_cpu = children_cpu_s() - c0
    if not os.path.exists(out):
        raise RuntimeError(f"loadgen failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    with open(out) as f:
        s = json.load(f)
    s["_exit"] = r.returncode
    s["_gen_cpu_s"] = gen_cpu
    s["_cmd"] = " ".join(cmd)
    return s


def disk_ceiling(args, root, size, conc, duration, workdir):
    d = tempfile.mkdtemp(prefix="ceiling-", dir=root)
    out = os.path.join(workdir, "ceiling.json")
    cmd = [
        os.path.join(args.bindir, "dicom-loadgen"),
        "disk-ceiling",
        "--dir",
        d,
        "--size",
        size,
        "-c",
        str(conc),
        "-d",
        f"{duration:g}",
        "--batch",
        str(args.batch),
        "--json",
        out,
    ]
    c0 = children_cpu_s()
    run(cmd, duration + 300, capture_output=True, text=True)
    cpu = children_cpu_s() - c0
    with open(out) as f:
        rep = json.load(f)
    return d, rep, cpu, " ".join(cmd)


def cell_duration(args, size):
    # 50 MB objects: at a few hundred MB/s, make sure at least ~10 objects are sent.
    if size.lower().endswith("m"):
        return max(args.duration, args.min_duration_large)
    return args.duration


def measure(args, fs, spec, size, conc, rep):
    """One cell: one receiver, one size, one concurrency, one repetition."""
    dur = cell_duration(args, size)
    row = {"receiver": spec["name"], "size": size, "c": conc, "rep": rep, "duration_s": dur}
    if spec["kind"] == "ceiling":
        d, c, cpu, cmd = disk_ceiling(args, fs.root, size, conc, dur, fs.work)
        row.update(
            inst_s=c["files_per_s"],
            mb_s=c["mb_per_s"],
            p50=None,
            p99=None,
            errors=0,
            objects=c["files"],
            syncs=c["syncs"],
            cpu_ms=1000.0 * cpu / c["files"] if c["files"] else None,
            cmd=cmd,
        )
        fs.clean(d)
        return row
    d = fs.cell_dir(spec["kind"])
    port = free_port()
    r = None
    try:
        r = start_receiver(spec, d, port, fs.work)
        t0 = cpu_ticks(r.pid)
        s = loadgen_store(args, port, size, conc, dur, fs.work)
        time.sleep(0.3)  # let storescp's children finish their release
        t1 = cpu_ticks(r.pid)
        hwm = vm_hwm_kb(r.pid)
        ok = s["ok"]
        row.update(
            inst_s=s["requests_per_s"],
            mb_s=s["mb_per_s"],
            p50=s["latency_ms"]["p50"],
            p99=s["latency_ms"]["p99"],
            p999=s["latency_ms"]["p999"],
            errors=s["errors"],
            fatal=s.get("fatal"),
            objects=ok,
            cpu_ms=(1000.0 * (t1 - t0) / CLK_TCK / ok) if ok else None,
            gen_cpu_ms=(1000.0 * s["_gen_cpu_s"] / ok) if ok else None,
            vm_hwm_kb=hwm,
            cmd=s["_cmd"],
        )
        if spec["kind"] in ("gw", "storescp", "orthanc"):
            row["receiver_cmd"] = " ".join(spec_cmd_str(spec, d, port))
        if ok < 10:
            log(f"warning: {spec['name']} {size} -c {conc}: only {ok} objects acknowledged")
    finally:
        if r:
            r.stop()
        fs.clean(d)
    return row


def spec_cmd_str(spec, d, port):
    if spec["cmd"] is None:
        return [spec["name"]]
    pre = ["TCP_NODELAY=1"] if spec["kind"] == "storescp" else []
    return pre + spec["cmd"](d, port)


# --------------------------------------------------------------------------------------------
# Summaries


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(rows, names, sizes, concs):
    base = {}
    for r in rows:
        if r["receiver"] == BASELINE and r["inst_s"]:
            base[(r["size"], r["c"], r["rep"])] = r["inst_s"]
    for r in rows:
        b = base.get((r["size"], r["c"], r["rep"]))
        r["ratio"] = (r["inst_s"] / b) if b and r["inst_s"] is not None else None
    out = []
    for size in sizes:
        for c in concs:
            for n in names:
                rs = [r for r in rows if r["receiver"] == n and r["size"] == size and r["c"] == c
                      and r["inst_s"] is not None]
                if not rs:
                    continue
                inst = [r["inst_s"] for r in rs]
                out.append(
                    {
                        "receiver": n,
                        "size": size,
                        "c": c,
                        "reps": len(rs),
                        "inst_s": med(inst),
                        "inst_s_min": min(inst),
                        "inst_s_max": max(inst),
                        "mb_s": med([r["mb_s"] for r in rs]),
                        "p50": med([r.get("p50") for r in rs]),
                        "p99": med([r.get("p99") for r in rs]),
                        "errors": sum(r.get("errors") or 0 for r in rs),
                        "cpu_ms": med([r.get("cpu_ms") for r in rs]),
                        "ratio": med([r.get("ratio") for r in rs]),
                        "vm_hwm_kb": max((r.get("vm_hwm_kb") or 0) for r in rs) or None,
                    }
                )
    return out


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        if nd == 0:
            return f"{x:.0f}"
        return f"{x:.{nd}f}"
    return str(x)


def fmt_ms(x):
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_cpu(x):
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def table(summary):
    lines = [
        "| receiver | size | c | inst/s (min–max) | MB/s | p50 ms | p99 ms | errors | CPU ms/inst | × storescp +B |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        rng = f"{fmt(s['inst_s'], 0 if s['inst_s'] >= 100 else 1)} ({fmt(s['inst_s_min'], 0 if s['inst_s_min'] >= 100 else 1)}–{fmt(s['inst_s_max'], 0 if s['inst_s_max'] >= 100 else 1)})"
        lines.append(
            f"| {s['receiver']} | {s['size']} | {s['c']} | {rng} | {fmt(s['mb_s'], 0)} | "
            f"{fmt_ms(s['p50'])} | {fmt_ms(s['p99'])} | {s['errors']} | {fmt_cpu(s['cpu_ms'])} | "
            f"{fmt(s['ratio'], 2)} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Extra experiments


def half_rate_latency(args, fs, summary, variants):
    """Open loop at 0.5 × the closed-loop median (16k, -c 8), durability full."""
    results = []
    for spec in variants:
        m = next(
            (s for s in summary if s["receiver"] == spec["name"] and s["size"] == "16k" and s["c"] == 8),
            None,
        )
        if m is None:
            log(f"{spec['name']}: calibrating the closed-loop rate (16k -c 8 not in the matrix)")
            row = measure(args, fs, spec, "16k", 8, 0)
            max_rate = row["inst_s"]
        else:
            max_rate = m["inst_s"]
        rate = 0.5 * max_rate
        reps = []
        for rep in range(args.reps):
            d = fs.cell_dir("gw")
            port = free_port()
            r = None
            try:
                r = start_receiver(spec, d, port, fs.work)
                s = loadgen_store(args, port, "16k", 8, args.extra_duration, fs.work, rate=rate)
            finally:
                if r:
                    r.stop()
                fs.clean(d)
            reps.append(
                {
                    "achieved_inst_s": s["requests_per_s"],
                    "p50": s["latency_ms"]["p50"],
                    "p99": s["latency_ms"]["p99"],
                    "p999": s["latency_ms"]["p999"],
                    "max": s["latency_ms"]["max"],
                    "service_p99": s["service_time_ms"]["p99"],
                    "errors": s["errors"],
                    "cmd": s["_cmd"],
                }
            )
            log(
                f"  half-rate {spec['name']} rep {rep}: {rate:.0f}/s → p50 {s['latency_ms']['p50']:.2f} "
                f"p99 {s['latency_ms']['p99']:.2f} p99.9 {s['latency_ms']['p999']:.2f} ms"
            )
        results.append(
            {
                "receiver": spec["name"],
                "closed_loop_max_inst_s": max_rate,
                "rate": rate,
                "reps": reps,
                "achieved_inst_s": med([x["achieved_inst_s"] for x in reps]),
                "p50": med([x["p50"] for x in reps]),
                "p99": med([x["p99"] for x in reps]),
                "p999": med([x["p999"] for x in reps]),
                "errors": sum(x["errors"] for x in reps),
            }
        )
    return results


def peak_rss(args, fs, variants):
    """512 KiB objects over 64 associations; VmHWM of the daemon before it stops."""
    results = []
    for spec in variants:
        d = fs.cell_dir("gw")
        port = free_port()
        r = None
        try:
            r = start_receiver(spec, d, port, fs.work)
            start_kb = vm_hwm_kb(r.pid)
            s = loadgen_store(args, port, "512k", 64, args.rss_duration, fs.work)
            hwm = vm_hwm_kb(r.pid)
        finally:
            if r:
                r.stop()
            fs.clean(d)
        results.append(
            {
                "receiver": spec["name"],
                "vm_hwm_kb": hwm,
                "vm_hwm_at_start_kb": start_kb,
                "inst_s": s["requests_per_s"],
                "mb_s": s["mb_per_s"],
                "p99": s["latency_ms"]["p99"],
                "errors": s["errors"],
                "associations": s["associations_opened"],
                "cmd": s["_cmd"],
            }
        )
        log(f"  peak RSS {spec['name']}: {hwm / 1024:.1f} MiB at {s['requests_per_s']:.0f}/s")
    return results


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16k,512k,50m", help="object sizes (default %(default)s)")
    ap.add_argument("--concurrency", default="1,8", help="associations (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default %(default)s)")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per cell (default %(default)s)")
    ap.add_argument("--min-duration-large", type=float, default=4.0,
                    help="at least this many seconds for sizes in MB (default %(default)s)")
    ap.add_argument("--batch", type=int, default=64, help="disk-ceiling --batch (default %(default)s)")
    ap.add_argument("--extra-duration", type=float, default=10.0,
                    help="seconds per half-rate latency run (default %(default)s)")
    ap.add_argument("--rss-duration", type=float, default=10.0,
                    help="seconds of the peak-RSS run (default %(default)s)")
    ap.add_argument("--no-extras", action="store_true", help="skip the half-rate and RSS experiments")
    ap.add_argument("--quick", action="store_true", help="1 repetition, 2 s per cell, short extras")
    ap.add_argument("--receivers", help="comma-separated name substrings to run (storescp +B always runs)")
    ap.add_argument("--dir", help="measure in DIR instead of a fresh loop-mounted ext4 (no root needed)")
    ap.add_argument("--image-size", default="16G", help="sparse image size (default %(default)s)")
    ap.add_argument("--work-dir", default="/var/tmp", help="where the image and logs go (default %(default)s)")
    ap.add_argument("--bindir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--json", help="write results here (default target/bench/compare-<UTC time>.json)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.duration = 1, 2.0
        args.extra_duration, args.rss_duration = 3.0, 3.0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    for b in ("dicom-gw", "dicom-loadgen"):
        if not os.access(os.path.join(args.bindir, b), os.X_OK):
            sys.exit(f"compare.py: {args.bindir}/{b} missing: run benches/compare.sh (it builds)")
    if not shutil.which("storescp"):
        sys.exit("compare.py: DCMTK storescp not found (apt-get install dcmtk)")
    orthanc = shutil.which("Orthanc")
    notes = []
    if not orthanc:
        notes.append("Orthanc not installed: skipped")
        log("Orthanc not installed: skipped")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or os.path.join(REPO, "target", "bench", f"compare-{stamp}.json")
    specs = receivers(args, orthanc)
    names = [s["name"] for s in specs]
    rows = []
    extras = {}
    try:
        with Filesystem(args) as fs:
            log(f"filesystem: {fs.desc} at {fs.root}")
            if args.dir:
                notes.append(
                    f"WARNING: measured in --dir {fs.root}, not on a fresh loop-mounted ext4: "
                    "not comparable with docs/benchmarks.md"
                )
            n_cells = len(sizes) * len(concs) * args.reps * len(specs)
            i = 0
            for size in sizes:
                for c in concs:
                    for rep in range(args.reps):
                        # Rotate the order so no receiver always runs first (or last).
                        k = rep % len(specs)
                        for spec in specs[k:] + specs[:k]:
                            i += 1
                            try:
                                row = measure(args, fs, spec, size, c, rep)
                            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                                log(f"cell failed: {spec['name']} {size} -c {c} rep {rep}: {e}")
                                notes.append(f"failed cell {spec['name']} {size} -c {c} rep {rep}: {e}")
                                row = {"receiver": spec["name"], "size": size, "c": c, "rep": rep,
                                       "failed": str(e), "inst_s": None, "mb_s": None}
                            rows.append(row)
                            if row.get("failed"):
                                continue
                            log(
                                f"[{i}/{n_cells} {time.time() - started:5.0f}s] {size:>5} -c {c} rep {rep} "
                                f"{spec['name']:<32} {row['inst_s']:9.1f}/s {row['mb_s']:8.1f} MB/s "
                                f"p99 {fmt_ms(row.get('p99')):>6} ms cpu {fmt_cpu(row.get('cpu_ms'))} ms/inst"
                                + (f" errors {row['errors']}" if row.get("errors") else "")
                            )
            summary = summarise(rows, names, sizes, concs)
            if not args.no_extras:
                full = [s for s in specs if s["kind"] == "gw" and s["durability"] == "full"]
                extras["half_rate_latency"] = half_rate_latency(args, fs, summary, full)
                extras["peak_rss"] = peak_rss(args, fs, full)
            fs_desc = fs.desc
    finally:
        for p in list(RUNNING):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    elapsed = time.time() - started
    md = table(summary)
    print("## Receivers (medians of %d repetition(s), %g s per cell)\n" % (args.reps, args.duration))
    print(md)
    if extras:
        print("\n## Open-loop latency at half the closed-loop maximum (16k, -c 8, durability full)\n")
        print("| receiver | closed-loop max/s | rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for x in extras["half_rate_latency"]:
            print(
                f"| {x['receiver']} | {x['closed_loop_max_inst_s']:.0f} | {x['rate']:.0f} | "
                f"{x['achieved_inst_s']:.0f} | {fmt_ms(x['p50'])} | {fmt_ms(x['p99'])} | "
                f"{fmt_ms(x['p999'])} | {x['errors']} |"
            )
        print("\n## Peak RSS (512k, -c 64, %g s)\n" % args.rss_duration)
        print("| receiver | VmHWM MiB | inst/s | MB/s | p99 ms | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for x in extras["peak_rss"]:
            print(
                f"| {x['receiver']} | {x['vm_hwm_kb'] / 1024:.1f} | {x['inst_s']:.0f} | {x['mb_s']:.0f} | "
                f"{fmt_ms(x['p99'])} | {x['errors']} |"
            )
    for n in notes:
        print(f"\nNote: {n}")
    print(f"\nRun took {elapsed / 60:.1f} min; results in {json_path}")
    # One example of each exact command line (the first cell of each receiver), not per cell.
    commands = {}
    for r in rows:
        cmd, rcmd = r.pop("cmd", None), r.pop("receiver_cmd", None)
        if cmd and r["receiver"] not in commands:
            commands[r["receiver"]] = {"load": cmd, "receiver": rcmd}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": stamp,
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(),
        "filesystem": fs_desc,
        "versions": {
            "storescp": tool_version(["storescp", "--version"]),
            "dicom-gw": tool_version([os.path.join(args.bindir, "dicom-gw"), "--version"]),
            "git": tool_version(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        },
        "settings": {
            "sizes": sizes,
            "concurrency": concs,
            "reps": args.reps,
            "duration_s": args.duration,
            "min_duration_large_s": args.min_duration_large,
            "ceiling_batch": args.batch,
            "extra_duration_s": args.extra_duration,
            "rss_duration_s": args.rss_duration,
            "quick": args.quick,
        },
        "notes": notes,
        "commands": commands,
        "summary": summary,
        "extras": extras,
        "cells": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        f.write(compact_json(result))


def _round(x):
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def compact_json(result):
    """Pretty at the top level, one line per table row (cell, summary row, experiment)."""
    out = []
    for k, v in _round(result).items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            body = ",\n".join("  " + json.dumps(x) for x in v)
            out.append(f" {json.dumps(k)}: [\n{body}\n ]")
        elif isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
            parts = []
            for kk, vv in v.items():
                body = ",\n".join("   " + json.dumps(x) for x in vv)
                parts.append(f"  {json.dumps(kk)}: [\n{body}\n  ]")
            out.append(f" {json.dumps(k)}: {{\n" + ",\n".join(parts) + "\n }")
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            body = ",\n".join(f"  {json.dumps(kk)}: {json.dumps(vv)}" for kk, vv in v.items())
            out.append(f" {json.dumps(k)}: {{\n{body}\n }}")
        else:
            out.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(out) + "\n}\n"


if __name__ == "__main__":
    main()
