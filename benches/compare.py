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
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

BASELINE = "storescp +B"
DICOMRS = "dicom-rs storescp"
# Receivers that acknowledge from memory, the "peers" of the issue-12 preset (ratio to the best).
PEERS = (BASELINE, DICOMRS)
GW_READY = "dicom-gw: store listening on"
GW_HTTP = "dicom-gw: http listening on "
# Gauges of the journaled ingest (issue 12), scraped from the daemon's /metrics.
PENDING = "dicomgw_journal_pending_objects"
LAG = "dicomgw_journal_lag_seconds"

# Every child we start, so `finally` can always stop them (by process group).
RUNNING = set()
# Notes raised deep inside a cell (printed with the run's notes).
notes_global = []


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
        size = self.args.image_size
        if size == "auto":
            # As large as the host filesystem allows with 4 GiB to spare (at most 40 GiB): a
            # sustained run fills it with up to ~20 GB of small files. The image is sparse and
            # trimmed after every cell, so the host only ever holds what one cell wrote.
            st = os.statvfs(self.work)
            free_gib = st.f_bavail * st.f_frsize / 2**30
            gib = int(min(40, free_gib - 4))
            if gib < 8:
                sys.exit(f"compare.py: only {free_gib:.1f} GiB free under {self.work}: too little for the image")
            size = f"{gib}G"
        self.size = size
        self._make()
        self.root = self.mount
        self.desc = f"fresh ext4 ({size} sparse image, loop device, defaults)"
        return self

    def _make(self):
        run(["truncate", "-s", self.size, self.image], 30)
        run(["mkfs.ext4", "-q", "-F", self.image], 300)
        run(["mount", "-o", "loop", self.image, self.mount], 60)

    def reset(self):
        """A new empty ext4 in place of the old one (after a cell that wrote ~10^6 files:
        faster than deleting them, and the host gets its space back at once)."""
        if not self.mount:
            return False
        r = subprocess.run(["umount", self.mount], timeout=120, check=False)
        if r.returncode != 0:
            return False
        run(["truncate", "-s", "0", self.image], 30)
        self._make()
        return True

    def used_gib(self):
        st = os.statvfs(self.root)
        return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**30

    def cell_dir(self, name):
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)

    def clean(self, path, reset=False):
        """Deletes a cell's directory and flushes the filesystem, so the next cell starts
        without the previous one's dirty pages or journal."""
        if reset and self.reset():
            return
        shutil.rmtree(path, ignore_errors=True)
        try:
            run(["sync", "-f", self.root], 300, check=False)
        except subprocess.TimeoutExpired:
            log("warning: sync -f timed out")
        if self.mount:
            # Give the freed blocks back to the host (the loop device punches holes in the
            # image), so the sparse image never holds more than one cell's data.
            try:
                run(["fstrim", self.mount], 300, check=False, capture_output=True)
            except (OSError, subprocess.TimeoutExpired):
                pass

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
        self.http_addr = None

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
                        for line in buf.decode(errors="replace").splitlines():
                            if line.startswith(GW_HTTP):
                                self.http_addr = line[len(GW_HTTP) :].split()[0]
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
                        # Loopback port 0: never collide with another daemon on this machine;
                        # the stdout lines tell the ports (the admin one for /metrics).
                        "--http-listen",
                        "127.0.0.1:0",
                        "--worklist-listen",
                        "127.0.0.1:0",
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
    if args.dicomrs:
        rs.append(dicomrs_spec(args))
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


def dicomrs_spec(args):
    # dicom-rs storescp (crates.io dicom-storescp): -n serves associations concurrently (one
    # tokio task each; without it, one association at a time); it parses each dataset and writes
    # it re-encoded (there is no bit-preserving mode), never syncs, and logs a line per object.
    return {
        "name": DICOMRS,
        "kind": "dicomrs",
        "cmd": lambda d, p: [args.dicomrs, "-n", "-o", d, "-p", str(p)],
    }


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
    if spec["kind"] == "dicomrs":
        r = Receiver(spec["name"], spec["cmd"](data_dir, port), {}, "port", logfile)
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


class MetricsSampler:
    """Scrapes the daemon's /metrics every `interval` s in a thread and keeps the journal
    gauges (issue 12): pending = acknowledged objects not yet checkpointed into the index
    (summed over series, e.g. one per core), lag = age of the oldest of them (max over series).
    Either is None in a sample when the daemon does not export it (a build before issue 12)."""

    def __init__(self, http_addr, interval=1.0):
        self.url = f"http://{http_addr}/metrics" if http_addr else None
        self.interval = interval
        self.samples = []  # (monotonic t, pending, lag)
        self.scrape_errors = 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def parse(text):
        pending = lag = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if "{" in line:
                name = line[: line.index("{")]
                rest = line[line.rindex("}") + 1 :].split()
            else:
                name, *rest = line.split()
            if name not in (PENDING, LAG) or not rest:
                continue
            try:
                v = float(rest[0])
            except ValueError:
                continue
            if name == PENDING:
                pending = (pending or 0.0) + v
            else:
                lag = v if lag is None else max(lag, v)
        return pending, lag

    def scrape(self):
        t = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=2) as rsp:
                text = rsp.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            self.scrape_errors += 1
            return None
        pending, lag = self.parse(text)
        self.samples.append((t, pending, lag))
        return pending, lag

    HISTOGRAMS = {
        "dicomgw_commit_batch_objects": "group_objects",
        "dicomgw_commit_duration_seconds": "group_s",
        "dicomgw_checkpoint_objects": "checkpoint_objects",
        "dicomgw_checkpoint_duration_seconds": "checkpoint_s",
        "dicomgw_cstore_duration_seconds": "cstore_s",
    }

    def histograms(self):
        """One scrape: count and mean of the journal group / checkpoint histograms (the daemon
        starts fresh per cell, so these cover the cell). {} if absent or unreachable."""
        if not self.url:
            return {}
        try:
            with urllib.request.urlopen(self.url, timeout=2) as rsp:
                text = rsp.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return {}
        acc = {}
        for line in text.splitlines():
            if line.startswith("#") or "{" in line:
                continue
            parts = line.split()
            if len(parts) < 2:
                continue
            for suffix in ("_sum", "_count"):
                base = parts[0][: -len(suffix)]
                if parts[0].endswith(suffix) and base in self.HISTOGRAMS:
                    acc.setdefault(base, {})[suffix[1:]] = float(parts[1])
        out = {}
        for base, v in acc.items():
            key = self.HISTOGRAMS[base]
            n, total = v.get("count"), v.get("sum")
            if n:
                out[key + "_n"] = n
                out[key + "_mean"] = total / n
                out[key + "_total"] = total
        return out

    def _loop(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.scrape()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def start(self):
        if self.url:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def available(self):
        """Whether the daemon exports the pending gauge (None: not known yet)."""
        if any(p is not None for _, p, _ in self.samples):
            return True
        return False if self.samples else None

    def wait_drained(self, since, timeout):
        """Seconds from `since` (monotonic, the end of the load) until a scrape shows
        pending = 0; None if the gauge is absent; ("timeout", pending) if it never drains.
        Scrapes every 0.2 s while waiting (the 1-s sampler keeps running)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.scrape() if self.url else None
            avail = self.available()
            if not avail:
                if avail is False or not self.url or time.monotonic() > since + 5:
                    return None
            elif got is not None and got[0] is not None and got[0] <= 0:
                return max(0.0, self.samples[-1][0] - since)
            if time.monotonic() > deadline:
                last = next((p for _, p, _ in reversed(self.samples) if p is not None), None)
                return ("timeout", last)
            time.sleep(0.2)

    def stats(self, t0, t_end):
        """max pending and lag over the whole sampling, and during the load [t0, t_end]."""
        vals = [(t, p, l) for t, p, l in self.samples]
        load = [(t, p, l) for t, p, l in vals if t0 <= t <= t_end]

        def mx(xs, i):
            xs = [x[i] for x in xs if x[i] is not None]
            return max(xs) if xs else None

        return {
            "max_pending": mx(vals, 1),
            "max_lag_s": mx(vals, 2),
            "pending_at_load_end": next(
                (p for t, p, _ in reversed(vals) if t <= t_end + 1.0 and p is not None), None
            ),
            "series": [[round(t - t0, 2), p, l] for t, p, l in vals],
        }


class HostDiskGuard:
    """Kills a receiver (its process group) when the filesystem holding the sparse image gets
    below `min_free_gib`: a sustained run writes ~20 GB and the host disk is shared."""

    def __init__(self, path, receiver, min_free_gib):
        self.path, self.receiver, self.min_free = path, receiver, min_free_gib
        self.tripped = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.5):
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize / 2**30
            if free < self.min_free:
                self.tripped = free
                log(f"host disk guard: {free:.1f} GiB free under {self.path}: killing {self.receiver.name}")
                try:
                    os.killpg(self.receiver.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


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


def measure(args, fs, spec, size, conc, rep, dur=None, drain_timeout=None, keep_series=False,
            time_sync=False):
    """One cell: one receiver, one size, one concurrency, one repetition. With `drain_timeout`
    (dicom-gw only), the daemon's journal gauges are sampled every second and, after the load,
    the cell waits until nothing is pending and reads the CPU again: `cpu_ms_drained` is the
    CPU per object including the deferred materialization."""
    dur = dur or cell_duration(args, size)
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
    sampler = None
    try:
        r = start_receiver(spec, d, port, fs.work)
        if drain_timeout is not None and spec["kind"] == "gw":
            sampler = MetricsSampler(r.http_addr).start()
        t0 = cpu_ticks(r.pid)
        w0 = time.monotonic()
        with HostDiskGuard(fs.work, r, args.min_host_free) as guard:
            s = loadgen_store(args, port, size, conc, dur, fs.work)
        if guard.tripped is not None:
            row["aborted"] = f"host disk below {args.min_host_free:g} GiB free ({guard.tripped:.1f}): receiver killed"
            notes_global.append(f"{spec['name']} {size} -c {conc} rep {rep}: {row['aborted']}")
        w1 = time.monotonic()
        row["fs_used_gib"] = fs.used_gib()
        time.sleep(0.3)  # let storescp's children finish their release
        t1 = cpu_ticks(r.pid)
        hwm = vm_hwm_kb(r.pid)
        ok = s["ok"]
        if sampler:
            hist_load = sampler.histograms()
            drained = sampler.wait_drained(w1, drain_timeout)
            t2 = cpu_ticks(r.pid)
            hist = sampler.histograms()
            if hist_load:
                # Journal groups at the end of the load; checkpoints once drained.
                row["journal"] = {k: v for k, v in hist_load.items() if not k.startswith("checkpoint")}
                row["journal"].update({k: v for k, v in hist.items() if k.startswith("checkpoint")})
            sampler.stop()
            st = sampler.stats(w0, w1)
            if not keep_series:
                st.pop("series")
            row.update(st)
            row["metrics"] = bool(sampler.available())
            if isinstance(drained, tuple):
                row["drain_s"] = None
                row["drain_timeout"] = {"after_s": drain_timeout, "pending": drained[1]}
                log(f"warning: {spec['name']}: {drained[1]} objects still pending {drain_timeout} s after the load")
            else:
                row["drain_s"] = drained
            if drained is not None and ok:
                row["cpu_ms_drained"] = 1000.0 * (t2 - t0) / CLK_TCK / ok
                row["elapsed_drained_s"] = time.monotonic() - w0
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
        if time_sync:
            # How long the receiver's unsynced data takes to reach the disk after the load
            # (a peer's page cache; dicom-gw's materialized files once drained).
            y0 = time.monotonic()
            run(["sync", "-f", fs.root], 600, check=False)
            row["sync_after_s"] = time.monotonic() - y0
        if spec["kind"] in ("gw", "storescp", "orthanc", "dicomrs"):
            row["receiver_cmd"] = " ".join(spec_cmd_str(spec, d, port))
        if ok < 10:
            log(f"warning: {spec['name']} {size} -c {conc}: only {ok} objects acknowledged")
    finally:
        if sampler:
            sampler.stop()
        if r:
            r.stop()
        fs.clean(d, reset=dur >= 30)
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
    # Issue 12: the best of the peers (storescp +B, dicom-rs) and the disk ceiling, per repetition.
    best, ceil = {}, {}
    for r in rows:
        if not r["inst_s"]:
            continue
        k = (r["size"], r["c"], r["rep"])
        if r["receiver"] in PEERS:
            best[k] = max(best.get(k, 0), r["inst_s"])
        if r["receiver"].startswith("disk ceiling"):
            ceil[k] = r["inst_s"]
    for r in rows:
        k = (r["size"], r["c"], r["rep"])
        b = base.get(k)
        r["ratio"] = (r["inst_s"] / b) if b and r["inst_s"] is not None else None
        if best:
            b = best.get(k)
            r["ratio_best"] = (r["inst_s"] / b) if b and r["inst_s"] is not None else None
        if ceil:
            b = ceil.get(k)
            r["ratio_ceiling"] = (r["inst_s"] / b) if b and r["inst_s"] is not None else None
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
                extra = {
                    "ratio_best": med([r.get("ratio_best") for r in rs]),
                    "ratio_ceiling": med([r.get("ratio_ceiling") for r in rs]),
                    "cpu_ms_drained": med([r.get("cpu_ms_drained") for r in rs]),
                    "drain_s": med([r.get("drain_s") for r in rs]),
                    "max_pending": max((r.get("max_pending") or 0 for r in rs), default=None)
                    if any(r.get("max_pending") is not None for r in rs) else None,
                    "max_lag_s": max((r.get("max_lag_s") or 0 for r in rs), default=None)
                    if any(r.get("max_lag_s") is not None for r in rs) else None,
                }
                out[-1].update({k: v for k, v in extra.items() if v is not None})
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
# Issue 12 preset: journaled ingest against the best peer, the disk ceiling and the CPU budget

I12_C = 8
I12_FULL = ("dicom-gw uring full", "dicom-gw epoll full")
I12_RELAXED = ("dicom-gw uring relaxed", "dicom-gw epoll relaxed")
GENERATOR = "generator (storescp --ignore)"


def log_cell(i, n, started, size, c, rep, spec, row):
    extra = ""
    if row.get("cpu_ms_drained") is not None:
        extra += f" (incl. materialization {fmt_cpu(row['cpu_ms_drained'])})"
    if row.get("max_pending") is not None:
        extra += f" pending max {row['max_pending']:.0f} lag max {fmt(row.get('max_lag_s'), 2)} s"
    if row.get("drain_s") is not None:
        extra += f" drained {row['drain_s']:.1f} s after"
    if row.get("sync_after_s") is not None:
        extra += f" sync after {row['sync_after_s']:.1f} s"
    log(
        f"[{i}/{n} {time.time() - started:5.0f}s] {size:>5} -c {c} rep {rep} "
        f"{spec['name']:<32} {row['inst_s']:9.1f}/s {row['mb_s']:8.1f} MB/s "
        f"p99 {fmt_ms(row.get('p99')):>6} ms cpu {fmt_cpu(row.get('cpu_ms'))} ms/inst{extra}"
        + (f" errors {row['errors']}" if row.get("errors") else "")
    )


def safe_measure(args, fs, spec, size, c, rep, notes, **kw):
    try:
        return measure(args, fs, spec, size, c, rep, **kw)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"cell failed: {spec['name']} {size} -c {c} rep {rep}: {e}")
        notes.append(f"failed cell {spec['name']} {size} -c {c} rep {rep}: {e}")
        return {"receiver": spec["name"], "size": size, "c": c, "rep": rep, "failed": str(e),
                "inst_s": None, "mb_s": None}


def profile_gw(args, fs, spec, out_txt):
    """`perf record -g -e cpu-clock` of the daemon for args.profile_seconds in the middle of a
    16 KiB, -c 8 closed-loop run; the flat reports (by symbol, by thread) go to out_txt."""
    if not shutil.which("perf"):
        return {"skipped": "perf not installed"}
    d = fs.cell_dir("gw-perf")
    port = free_port()
    r = None
    lg = None
    data = os.path.join(fs.work, "perf.data")
    secs = args.profile_seconds
    try:
        r = start_receiver(spec, d, port, fs.work)
        out = os.path.join(fs.work, "loadgen-perf.json")
        cmd = [os.path.join(args.bindir, "dicom-loadgen"), "store", f"127.0.0.1:{port}", "-c", str(I12_C),
               "-d", f"{secs + 6:g}", "--size", "16k", "--json", out]
        lg = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        RUNNING.add(lg)
        time.sleep(3)
        perf_cmd = ["perf", "record", "-g", "-e", "cpu-clock", "-o", data, "-p", str(r.pid), "--", "sleep", f"{secs:g}"]
        run(perf_cmd, secs + 60, check=False, capture_output=True)
        lg.wait(timeout=secs + 120)
        RUNNING.discard(lg)
        with open(out) as f:
            s = json.load(f)
    finally:
        if lg and lg.poll() is None:
            os.killpg(lg.pid, signal.SIGKILL)
            lg.wait()
            RUNNING.discard(lg)
        if r:
            r.stop()
        fs.clean(d)
    reports = []
    for sort in ("dso,symbol", "comm", "dso"):
        rep = run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                   "--percent-limit", "0.5", "--sort", sort], 300, check=False, capture_output=True, text=True)
        # perf pads every line to the terminal width and appends empty columns ("-  -").
        lines = [re.sub(r"(\s+-)+$", "", " ".join(x.split())) for x in rep.stdout.splitlines()
                 if x.strip() and not x.startswith("#")]
        if sort == "dso,symbol":
            ev = next((x for x in rep.stdout.splitlines() if x.startswith("# Event count")), "")
            # cpu-clock counts nanoseconds on CPU: event count / wall time = cores busy.
            busy = int(ev.rsplit(":", 1)[1]) / 1e9 / secs if ":" in ev else None
            samples = next((" ".join(x.lstrip("# ").split()) for x in rep.stdout.splitlines()
                            if x.startswith("# Samples")), None)
        reports.append((sort, lines[:40]))
    # Call chains of the heaviest entries, for where the time goes.
    chains = run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "caller,0.5,callee,function,percent",
                  "--percent-limit", "2", "--sort", "symbol"], 300, check=False, capture_output=True, text=True)
    with open(out_txt, "w") as f:
        f.write(f"# {' '.join(perf_cmd)}\n# during: {' '.join(cmd)}\n# receiver: {' '.join(spec_cmd_str(spec, d, port))}\n")
        f.write(f"# load during the profile: {s['requests_per_s']:.0f} inst/s, p99 {s['latency_ms']['p99']:.2f} ms\n")
        f.write(f"# {samples} in {secs:g} s: the daemon kept {fmt(busy, 2)} cores busy\n\n")
        for sort, lines in reports:
            f.write(f"## perf report --no-children --sort {sort}\n" + "\n".join(lines) + "\n\n")
        f.write("## call chains (entries >= 2 %)\n")
        f.write("\n".join(re.sub(r"(\s+-)+$", "", x.rstrip()) for x in chains.stdout.splitlines()
                          if x.strip() and not x.startswith("#"))[:60000] + "\n")
    try:
        keep = os.path.join(REPO, "target", "bench", "issue12-perf.data")
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        shutil.copy(data, keep)
    except OSError:
        keep = None
    return {
        "receiver": spec["name"],
        "seconds": secs,
        "inst_s_under_perf": s["requests_per_s"],
        "samples": samples,
        "cores_busy": busy,
        "top_symbols": reports[0][1][:15],
        "by_thread": reports[1][1][:10],
        "by_dso": reports[2][1][:10],
        "report_file": os.path.relpath(out_txt, REPO),
        "perf_data": keep,
    }


def ge_verdict(value, target):
    if value is None:
        return "n/a"
    if value >= target:
        return "**met**"
    return f"**missed** by {100 * (target - value) / target:.0f} % (needs ×{target / value:.2f})"


def le_verdict(value, limit):
    if value is None:
        return "n/a"
    if value <= limit:
        return "**met**"
    return f"**missed**: {value / limit:.1f}× the limit"


def issue12_run(args, fs, notes, started):
    specs = {s["name"]: s for s in receivers(args, None)}
    ceiling = next(n for n in specs if n.startswith("disk ceiling"))
    plan = [
        ("16k", list(I12_FULL) + list(I12_RELAXED) + [BASELINE, DICOMRS, ceiling, GENERATOR]),
        ("512k", list(I12_FULL) + [BASELINE, DICOMRS, ceiling]),
    ]
    rows = []
    n = sum(len(names) for _, names in plan) * args.reps
    i = 0
    for size, names in plan:
        # Unrecorded cells first: in the fifth and sixth runs every receiver's 512 KiB
        # repetition 0 was its slowest (the disk ceiling's too: 701, 745, 773/s), and the
        # rotation puts dicom-gw first, at the coldest moment of the phase.
        for _ in range(args.warmup_cells):
            row = safe_measure(args, fs, specs[ceiling], size, I12_C, "warm-up", notes)
            if not row.get("failed"):
                log(f"warm-up, not recorded: {size} -c {I12_C} {ceiling} {row['inst_s']:.1f}/s")
        for rep in range(args.reps):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                spec = specs[name]
                i += 1
                kw = {"drain_timeout": args.drain_timeout_short} if spec["kind"] == "gw" else {}
                row = safe_measure(args, fs, spec, size, I12_C, rep, notes, **kw)
                rows.append(row)
                if not row.get("failed"):
                    log_cell(i, n, started, size, I12_C, rep, spec, row)
    all_names = []
    for _, names in plan:
        all_names += [x for x in names if x not in all_names]
    summary = summarise(rows, all_names, [p[0] for p in plan], [I12_C])

    def srow(name, size):
        return next((s for s in summary if s["receiver"] == name and s["size"] == size), None)

    # (b) sustained: dicom-gw full (the faster io backend of the short cells, or as asked) and
    # the best peer of the short cells, one after the other on the same filesystem.
    gw_full = [srow(x, "16k") for x in I12_FULL]
    gw_full = [x for x in gw_full if x]
    if args.sustained_gw == "both":
        gw_pick = list(I12_FULL)
    elif args.sustained_gw in ("uring", "epoll"):
        gw_pick = [f"dicom-gw {args.sustained_gw} full"]
    else:
        gw_pick = [max(gw_full, key=lambda x: x["inst_s"])["receiver"]] if gw_full else [I12_FULL[0]]
    peers = [srow(x, "16k") for x in PEERS]
    peers = [x for x in peers if x]
    peer_pick = max(peers, key=lambda x: x["inst_s"])["receiver"] if peers else BASELINE
    sustained = []
    if args.sustained_duration > 0:
        order = [peer_pick] + gw_pick
        for j, name in enumerate(order):
            spec = specs[name]
            log(f"sustained {args.sustained_duration:g} s: {name}")
            kw = {"drain_timeout": args.drain_timeout} if spec["kind"] == "gw" else {}
            row = safe_measure(args, fs, spec, "16k", I12_C, 0, notes, dur=args.sustained_duration,
                               keep_series=True, time_sync=True, **kw)
            sustained.append(row)
            if not row.get("failed"):
                log_cell(j + 1, len(order), started, "16k", I12_C, 0, spec, row)
        peer_row = next((x for x in sustained if x["receiver"] == peer_pick and x.get("inst_s")), None)
        for x in sustained:
            if x["receiver"] != peer_pick and peer_row and x.get("inst_s"):
                x["ratio_best"] = x["inst_s"] / peer_row["inst_s"]
    # (e) open loop at half the closed-loop maximum of each dicom-gw full variant.
    open_loop = half_rate_latency(args, fs, summary, [specs[x] for x in I12_FULL]) if not args.no_extras else []
    # Profile of the 16 KiB run (optional).
    profile = None
    if args.profile:
        name = gw_pick[0]
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        out_txt = args.profile_out or os.path.join(REPO, "docs", "bench-results", f"{stamp}-issue12-perf.txt")
        log(f"profile: perf record {args.profile_seconds:g} s of {name} (16k -c {I12_C})")
        try:
            profile = profile_gw(args, fs, specs[name], out_txt)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            notes.append(f"profile failed: {e}")
            profile = {"failed": str(e)}
    targets = issue12_targets(summary, sustained, open_loop, peer_pick, ceiling)
    return {
        "summary": summary,
        "sustained": sustained,
        "sustained_choice": {"gw": gw_pick, "peer": peer_pick},
        "open_loop": open_loop,
        "profile": profile,
        "targets": targets,
        "cells": rows,
    }


def issue12_targets(summary, sustained, open_loop, peer, ceiling):
    def srow(name, size):
        return next((s for s in summary if s["receiver"] == name and s["size"] == size), None)

    t = []
    peers16 = {x: srow(x, "16k") for x in PEERS}
    best_peer = max((v for v in peers16.values() if v), key=lambda v: v["inst_s"], default=None)
    for name in I12_FULL:
        r = srow(name, "16k")
        if not r:
            continue
        t.append({
            "target": "16 KiB × 8, short run: full ≥ 1.0× the best peer",
            "receiver": name,
            "measured": f"{r['inst_s']:.0f}/s = {fmt(r.get('ratio_best'), 2)}× (median of per-repetition ratios; "
                        f"best peer {best_peer['receiver']} {best_peer['inst_s']:.0f}/s)" if best_peer else f"{r['inst_s']:.0f}/s",
            "value": r.get("ratio_best"),
            "verdict": ge_verdict(r.get("ratio_best"), 1.0),
        })
    peer_row = next((x for x in sustained if x["receiver"] == peer and x.get("inst_s")), None)
    for x in sustained:
        if x["receiver"] == peer or not x.get("inst_s"):
            continue
        lag = "materialization lag: n/a (the daemon exports no journal gauges)"
        if x.get("max_pending") is not None:
            drain = f"{x['drain_s']:.1f} s" if x.get("drain_s") is not None else (
                f"not drained after {x['drain_timeout']['after_s']:g} s" if x.get("drain_timeout") else "n/a")
            lag = (f"max {x['max_pending']:.0f} objects pending, oldest {fmt(x.get('max_lag_s'), 1)} s; "
                   f"pending = 0 {drain} after the load")
        t.append({
            "target": f"16 KiB × 8, sustained {x['duration_s']:g} s: full ≥ 0.8× the best peer",
            "receiver": x["receiver"],
            "measured": f"{x['inst_s']:.0f}/s vs {peer} {peer_row['inst_s']:.0f}/s = {x['ratio_best']:.2f}×; {lag}"
            if peer_row else f"{x['inst_s']:.0f}/s; {lag}",
            "value": x.get("ratio_best"),
            "verdict": ge_verdict(x.get("ratio_best"), 0.8),
        })
    c = srow(ceiling, "512k")
    for name in I12_FULL:
        r = srow(name, "512k")
        if not r:
            continue
        t.append({
            "target": "512 KiB × 8: full ≥ 85 % of the durable disk ceiling (same run)",
            "receiver": name,
            "measured": f"{r['inst_s']:.0f}/s vs ceiling {c['inst_s']:.0f}/s = {100 * r['ratio_ceiling']:.0f} %"
            if c and r.get("ratio_ceiling") is not None else f"{r['inst_s']:.0f}/s",
            "value": r.get("ratio_ceiling"),
            "verdict": ge_verdict(r.get("ratio_ceiling"), 0.85),
        })
    for name in I12_FULL:
        r = srow(name, "16k")
        if not r:
            continue
        v = r.get("cpu_ms_drained")
        basis = "incl. materialization" if v is not None else "during the load only (no journal gauges: nothing deferred is known)"
        v = v if v is not None else r.get("cpu_ms")
        sus = next((x for x in sustained if x["receiver"] == name and x.get("cpu_ms") is not None), None)
        m = f"{fmt_cpu(r.get('cpu_ms'))} ms during the load, {fmt_cpu(r.get('cpu_ms_drained'))} incl. materialization"
        if sus:
            m += f"; sustained: {fmt_cpu(sus.get('cpu_ms'))} / {fmt_cpu(sus.get('cpu_ms_drained'))}"
        t.append({
            "target": "daemon CPU ≤ 0.08 ms per 16 KiB object",
            "receiver": name,
            "measured": m + f" (verdict on: {basis})",
            "value": v,
            "verdict": le_verdict(v, 0.08),
        })
    for x in open_loop:
        t.append({
            "target": "open loop at half the max rate: p99 ≤ 5 ms",
            "receiver": x["receiver"],
            "measured": f"{x['rate']:.0f}/s offered, {x['achieved_inst_s']:.0f}/s achieved: p50 {fmt_ms(x['p50'])}, "
                        f"p99 {fmt_ms(x['p99'])} ms",
            "value": x["p99"],
            "verdict": le_verdict(x["p99"], 5.0),
        })
    return t


def issue12_markdown(res, args):
    L = []
    na = "n/a"

    def opt(x, f):
        return f(x) if x is not None else na

    L.append(f"### (a) 16 KiB, {I12_C} associations, short cells ({args.duration:g} s, medians of {args.reps})\n")
    L.append("| receiver | inst/s (min–max) | MB/s | p50 ms | p99 ms | errors | CPU ms/inst (load) | CPU ms/inst incl. materialization | × best peer | × storescp +B | max pending | max lag s | drained after s |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in res["summary"]:
        if s["size"] != "16k":
            continue
        gw = s["receiver"].startswith("dicom-gw")
        L.append(
            f"| {s['receiver']} | {s['inst_s']:.0f} ({s['inst_s_min']:.0f}–{s['inst_s_max']:.0f}) | {fmt(s['mb_s'], 0)} | "
            f"{fmt_ms(s['p50'])} | {fmt_ms(s['p99'])} | {s['errors']} | {fmt_cpu(s['cpu_ms'])} | "
            f"{opt(s.get('cpu_ms_drained'), fmt_cpu) if gw else '–'} | {fmt(s.get('ratio_best'), 2)} | {fmt(s['ratio'], 2)} | "
            f"{opt(s.get('max_pending'), lambda v: f'{v:.0f}') if gw else '–'} | "
            f"{opt(s.get('max_lag_s'), lambda v: f'{v:.2f}') if gw else '–'} | "
            f"{opt(s.get('drain_s'), lambda v: f'{v:.1f}') if gw else '–'} |"
        )
    ch = res["sustained_choice"]
    L.append(f"\n### (b) 16 KiB, {I12_C} associations, sustained ({args.sustained_duration:g} s, one run each; "
             f"dicom-gw: {', '.join(ch['gw'])}; best peer of (a): {ch['peer']})\n")
    L.append("| receiver | inst/s | MB/s | p50 ms | p99 ms | errors | CPU ms/inst (load) | CPU ms/inst incl. materialization | × best peer | max pending | max lag s | pending at load end | drained after s | sync -f after s |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in res["sustained"]:
        if not x.get("inst_s"):
            L.append(f"| {x['receiver']} | failed: {x.get('failed')} |")
            continue
        gw = x["receiver"].startswith("dicom-gw")
        drain = na
        if x.get("drain_s") is not None:
            drain = f"{x['drain_s']:.1f}"
        elif x.get("drain_timeout"):
            drain = f"> {x['drain_timeout']['after_s']:g} ({x['drain_timeout']['pending']:.0f} left)"
        L.append(
            f"| {x['receiver']} | {x['inst_s']:.0f} | {fmt(x['mb_s'], 0)} | {fmt_ms(x['p50'])} | {fmt_ms(x['p99'])} | "
            f"{x['errors']} | {fmt_cpu(x['cpu_ms'])} | {opt(x.get('cpu_ms_drained'), fmt_cpu) if gw else '–'} | "
            f"{fmt(x.get('ratio_best'), 2) if gw else '1.00'} | "
            f"{opt(x.get('max_pending'), lambda v: f'{v:.0f}') if gw else '–'} | "
            f"{opt(x.get('max_lag_s'), lambda v: f'{v:.2f}') if gw else '–'} | "
            f"{opt(x.get('pending_at_load_end'), lambda v: f'{v:.0f}') if gw else '–'} | "
            f"{drain if gw else '–'} | {fmt(x.get('sync_after_s'), 1)} |"
        )
    for x in res["sustained"]:
        ser = [p for p in (x.get("series") or []) if p[1] is not None]
        if ser:
            step = max(1, len(ser) // 16)
            pts = ", ".join(f"{max(0.0, t):.0f} s: {p:.0f} ({fmt(l, 1)} s)" for t, p, l in ser[::step])
            L.append(f"\n{x['receiver']}: pending objects (oldest age) over time, from the start of the load: {pts}")
    L.append(f"\n### (c) 512 KiB, {I12_C} associations ({args.duration:g} s, medians of {args.reps})\n")
    L.append("| receiver | inst/s (min–max) | MB/s | p50 ms | p99 ms | errors | CPU ms/inst (load) | CPU incl. materialization | × disk ceiling | × best peer |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in res["summary"]:
        if s["size"] != "512k":
            continue
        gw = s["receiver"].startswith("dicom-gw")
        L.append(
            f"| {s['receiver']} | {s['inst_s']:.0f} ({s['inst_s_min']:.0f}–{s['inst_s_max']:.0f}) | {fmt(s['mb_s'], 0)} | "
            f"{fmt_ms(s['p50'])} | {fmt_ms(s['p99'])} | {s['errors']} | {fmt_cpu(s['cpu_ms'])} | "
            f"{opt(s.get('cpu_ms_drained'), fmt_cpu) if gw else '–'} | {fmt(s.get('ratio_ceiling'), 2)} | {fmt(s.get('ratio_best'), 2)} |"
        )
    jrows = []
    for size in ("16k", "512k"):
        for name in I12_FULL + I12_RELAXED:
            cs = [c for c in res["cells"] if c["receiver"] == name and c["size"] == size and c.get("journal")]
            if not cs:
                continue

            def m(key, scale=1.0):
                v = med([c["journal"].get(key) for c in cs])
                return v * scale if v is not None else None

            rate = med([c["journal"]["group_objects_n"] / c["duration_s"] for c in cs
                        if c["journal"].get("group_objects_n")])
            jrows.append(f"| {name} | {size} | {fmt(rate, 0)} | {fmt(m('group_objects_mean'), 1)} | "
                         f"{fmt_ms(m('group_s_mean', 1000))} | {fmt_ms(m('cstore_s_mean', 1000))} | "
                         f"{fmt(m('checkpoint_objects_n'), 0)} | {fmt(m('checkpoint_objects_mean'), 0)} | "
                         f"{fmt_ms(m('checkpoint_s_mean', 1000))} |")
    for x in res["sustained"]:
        j = x.get("journal")
        if j:
            jrows.append(f"| {x['receiver']} (sustained) | {x['size']} | {fmt(j.get('group_objects_n', 0) / x['duration_s'], 0)} | "
                         f"{fmt(j.get('group_objects_mean'), 1)} | {fmt_ms((j.get('group_s_mean') or 0) * 1000)} | "
                         f"{fmt_ms((j.get('cstore_s_mean') or 0) * 1000)} | {fmt(j.get('checkpoint_objects_n'), 0)} | "
                         f"{fmt(j.get('checkpoint_objects_mean'), 0)} | {fmt_ms((j.get('checkpoint_s_mean') or 0) * 1000)} |")
    if jrows:
        L.append("\n### Journal groups and checkpoints (the daemon's histograms; medians over repetitions)\n")
        L.append("| receiver | size | groups/s | objects/group | ms/group (decisions, write, flush) | C-STORE mean ms | checkpoints | objects/checkpoint | ms/checkpoint |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        L += jrows
    if res["open_loop"]:
        L.append(f"\n### (e) Open loop at half the closed-loop maximum (16k, -c {I12_C}, {args.extra_duration:g} s, medians of {args.reps})\n")
        L.append("| receiver | closed-loop max/s | rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for x in res["open_loop"]:
            L.append(
                f"| {x['receiver']} | {x['closed_loop_max_inst_s']:.0f} | {x['rate']:.0f} | {x['achieved_inst_s']:.0f} | "
                f"{fmt_ms(x['p50'])} | {fmt_ms(x['p99'])} | {fmt_ms(x['p999'])} | {x['errors']} |"
            )
    if res.get("profile") and res["profile"].get("top_symbols"):
        p = res["profile"]
        L.append(f"\n### Profile: {p['receiver']}, 16k -c {I12_C}, perf record -g -e cpu-clock, {p['seconds']:g} s "
                 f"({p['inst_s_under_perf']:.0f} inst/s under perf; {p.get('samples')}, {fmt(p.get('cores_busy'), 2)} cores busy; full report {p['report_file']})\n")
        L.append("```\n" + "\n".join(p["top_symbols"]) + "\n\n" + "\n".join(p["by_thread"]) + "\n```")
    L.append("\n### Targets\n")
    L.append("| target | receiver | measured | verdict |")
    L.append("|---|---|---|---|")
    for x in res["targets"]:
        L.append(f"| {x['target']} | {x['receiver']} | {x['measured']} | {x['verdict']} |")
    return "\n".join(L)


def main_issue12(args):
    """`--issue12`: the benchmark issue 12 asks for, in one run on one fresh filesystem."""
    if not args.dicomrs:
        sys.exit("compare.py --issue12: dicom-rs storescp not found (cargo install dicom-storescp "
                 "--root /opt/dicom-rs, or --dicomrs PATH)")
    notes = []
    started = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:4] + "-" + stamp[4:6] + "-" + stamp[6:8]
    json_path = args.json or os.path.join(REPO, "docs", "bench-results", f"{day}-issue12.json")
    res = None
    try:
        with Filesystem(args) as fs:
            log(f"filesystem: {fs.desc} at {fs.root}")
            if args.dir:
                notes.append(f"WARNING: measured in --dir {fs.root}, not on a fresh loop-mounted ext4")
            res = issue12_run(args, fs, notes, started)
            fs_desc = fs.desc
    finally:
        for p in list(RUNNING):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    elapsed = time.time() - started
    notes += notes_global
    if not any(x.get("metrics") for x in res["cells"] + res["sustained"]):
        notes.append(f"the daemon exports no {PENDING} / {LAG}: materialization lag n/a")
    print(f"## Journaled ingest (issue 12): {len(res['cells'])} cells, {elapsed / 60:.1f} min\n")
    print(issue12_markdown(res, args))
    for n in notes:
        print(f"\nNote: {n}")
    print(f"\nRun took {elapsed / 60:.1f} min; results in {json_path}")
    commands = {}
    for r in res["cells"] + res["sustained"]:
        cmd, rcmd = r.pop("cmd", None), r.pop("receiver_cmd", None)
        key = r["receiver"] + (" (sustained)" if r in res["sustained"] else "")
        if cmd and key not in commands:
            commands[key] = {"load": cmd, "receiver": rcmd}
    for x in res["open_loop"]:
        commands.setdefault(x["receiver"] + " (open loop)", {"load": x["reps"][0]["cmd"] if x["reps"] else None})
    result = {
        "date": day,
        "started_utc": stamp,
        "elapsed_s": round(elapsed, 1),
        "preset": "issue12",
        "machine": machine_info(),
        "filesystem": fs_desc,
        "versions": {
            "storescp": tool_version(["storescp", "--version"]),
            "dicom-storescp": tool_version([args.dicomrs, "--version"]),
            "dicom-gw": tool_version([os.path.join(args.bindir, "dicom-gw"), "--version"]),
            "git": tool_version(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        },
        "settings": {
            "concurrency": I12_C,
            "reps": args.reps,
            "duration_s": args.duration,
            "sustained_duration_s": args.sustained_duration,
            "ceiling_batch": args.batch,
            "extra_duration_s": args.extra_duration,
            "drain_timeout_s": args.drain_timeout,
            "drain_timeout_short_s": args.drain_timeout_short,
            "quick": args.quick,
        },
        "notes": notes,
        "commands": commands,
        "targets": res["targets"],
        "summary": res["summary"],
        "sustained": res["sustained"],
        "sustained_choice": res["sustained_choice"],
        "open_loop": res["open_loop"],
        "profile": res["profile"],
        "cells": res["cells"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        f.write(compact_json(result))


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
    ap.add_argument("--min-host-free", type=float, default=2.0,
                    help="kill the receiver of a cell when the image's host filesystem gets below this "
                    "many GiB free (default %(default)s)")
    ap.add_argument("--image-size", help="sparse image size, or auto: the host's free space less 4 GiB, "
                    "at most 40G (default 16G; with --issue12 auto)")
    ap.add_argument("--work-dir", default="/var/tmp", help="where the image and logs go (default %(default)s)")
    ap.add_argument("--bindir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--json", help="write results here (default target/bench/compare-<UTC time>.json; "
                    "with --issue12 docs/bench-results/<date>-issue12.json)")
    default_rs = shutil.which("dicom-storescp") or "/opt/dicom-rs/bin/dicom-storescp"
    ap.add_argument("--dicomrs", default=default_rs if os.access(default_rs, os.X_OK) else None,
                    help="dicom-rs storescp binary (crates.io dicom-storescp; default %(default)s); "
                    "a row of its own when present")
    g = ap.add_argument_group(
        "issue 12 preset",
        "--issue12 runs, with -c 8 throughout: (a) 16k short cells for dicom-gw full (uring, epoll) and "
        "relaxed, storescp +B, dicom-rs storescp, the disk ceiling and the generator, ratio to the best "
        "peer; (b) a sustained 16k run of dicom-gw full and the best peer of (a), sampling the daemon's "
        f"{PENDING} and {LAG} every second until nothing is pending; (c) 512k cells against the disk "
        "ceiling; (d) CPU per object during the load and including the deferred materialization; "
        "(e) open loop at half the closed-loop maximum; the targets of issue 12 with verdicts.",
    )
    g.add_argument("--issue12", action="store_true", help="run the issue 12 preset instead of the matrix")
    g.add_argument("--warmup-cells", type=int, default=1,
                   help="unrecorded disk-ceiling cells before each size's first repetition "
                   "(default %(default)s)")
    g.add_argument("--sustained-duration", type=float, default=60.0,
                   help="seconds of the sustained run, 0 to skip (default %(default)s)")
    g.add_argument("--sustained-gw", choices=["best", "uring", "epoll", "both"], default="best",
                   help="which dicom-gw full runs sustained (default: the faster io of the short cells)")
    g.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds to wait for pending = 0 after the sustained load (default %(default)s)")
    g.add_argument("--drain-timeout-short", type=float, default=60.0,
                   help="the same after a short cell (default %(default)s)")
    g.add_argument("--profile", action="store_true",
                   help="perf record -g -e cpu-clock the dicom-gw full daemon during an extra 16k run")
    g.add_argument("--profile-seconds", type=float, default=10.0, help="(default %(default)s)")
    g.add_argument("--profile-out", help="perf report text (default docs/bench-results/<date>-issue12-perf.txt)")
    args = ap.parse_args()
    if args.image_size is None:
        args.image_size = "auto" if args.issue12 else "16G"
    if args.quick:
        args.reps, args.duration = 1, 2.0
        args.extra_duration, args.rss_duration = 3.0, 3.0
        args.sustained_duration = min(args.sustained_duration, 8.0)
        args.drain_timeout, args.drain_timeout_short = 30.0, 10.0
        args.profile_seconds = min(args.profile_seconds, 3.0)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    for b in ("dicom-gw", "dicom-loadgen"):
        if not os.access(os.path.join(args.bindir, b), os.X_OK):
            sys.exit(f"compare.py: {args.bindir}/{b} missing: run benches/compare.sh (it builds)")
    if not shutil.which("storescp"):
        sys.exit("compare.py: DCMTK storescp not found (apt-get install dcmtk)")
    if args.issue12:
        signal.signal(signal.SIGTERM, on_sigterm)
        return main_issue12(args)
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
    notes += notes_global
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
