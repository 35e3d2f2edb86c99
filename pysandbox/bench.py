"""pysandbox bench [--rounds N] [--png FILE] [--json]

Spawn latency of one `/bin/true`, create to teardown, measured in this
process: subprocess.run (the baseline), pysandbox warm / cold / network=host
/ pool, and the anchor runtimes that are installed (bwrap, crun, runc,
unshare, run through their CLIs as a user would).  Prints the medians and
their ratio to subprocess.run measured in the same run.

The anchors and `cold (busybox rootfs)` run on the shared busybox rootfs
that benchmarks/setup-anchors.sh builds ($PYSANDBOX_BENCH_ROOTFS, default
/var/tmp/pysandbox-bench-rootfs); without it the anchors are skipped.
--png needs matplotlib (pip install matplotlib).  The pytest-benchmark
suite in benchmarks/ measures the same rows and more, with full statistics.
"""
import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOTFS_ENV = "PYSANDBOX_BENCH_ROOTFS"
DEFAULT_ROOTFS = "/var/tmp/pysandbox-bench-rootfs"
ROOTFS_MARKER = ".pysandbox-bench-rootfs"
TRUE = "/bin/true"


# -- the shared anchor rootfs and the anchors ---------------------------------
# (also imported by benchmarks/, so both measure exactly the same commands)

def anchor_rootfs():
    """The busybox rootfs built by benchmarks/setup-anchors.sh, or None."""
    path = os.environ.get(ROOTFS_ENV) or DEFAULT_ROOTFS
    if os.path.isfile(os.path.join(path, ROOTFS_MARKER)) and \
            os.access(os.path.join(path, "bin", "true"), os.X_OK):
        return path
    return None


def oci_config(rootfs, args=(TRUE,), rootless=None):
    """A minimal OCI runtime config (the shape of `crun spec`, plus the
    cgroup namespace so that every namespace pysandbox makes is made),
    running `args` on a read-only `rootfs`."""
    if rootless is None:
        rootless = os.geteuid() != 0
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    namespaces = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    linux = {
        "namespaces": [{"type": t} for t in namespaces],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"],
    }
    if rootless:
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
         + ([] if rootless else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless:
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": os.path.abspath(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": linux,
    }


def write_oci_bundle(bundle_dir, rootfs, args=(TRUE,)):
    os.makedirs(bundle_dir, exist_ok=True)
    with open(os.path.join(bundle_dir, "config.json"), "w") as f:
        json.dump(oci_config(rootfs, args), f, indent=1)
    return bundle_dir


def crun_needs_hybrid_workaround():
    """crun refuses to run on a hybrid cgroup layout whose cgroup2 mount
    (/sys/fs/cgroup/unified) holds a controller (this VM: hugetlb)."""
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            return bool(f.read().strip())
    except OSError:
        return False


_LAUNCHER = r"""
import ctypes, json, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.umount2(b"/sys/fs/cgroup/unified", 2) != 0:      # MNT_DETACH
    print(json.dumps(["umount /sys/fs/cgroup/unified failed", ctypes.get_errno()]), flush=True)
    sys.exit(1)
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    print(json.dumps([r.returncode, r.stderr.decode(errors="replace")[-400:]]), flush=True)
"""


class _Launcher:
    """A small long-lived helper in its own mount namespace, without the
    hybrid cgroup2 mount, that runs command lines for us (crun's workaround).
    What it adds to a round is one pipe round trip (tens of microseconds)."""

    def __init__(self):
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("unshare (util-linux) is needed to run crun here")
        self.proc = subprocess.Popen(
            [unshare, "--mount", "--propagation", "private", sys.executable, "-c", _LAUNCHER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(self.proc.stdout.readline() or "null")
        if first != "ready":
            self.close()
            raise RuntimeError(f"the crun launcher could not start: {first}")

    def run(self, argv):
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the crun launcher died")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class Anchor:
    """Another runtime's CLI spawning /bin/true on `rootfs`.  `argv()` gives
    one round's command line (crun and runc need a new container id each
    time); `cleanup()` removes whatever state the runtime left."""

    def __init__(self, name, label, tool, argv_fn, state_dir=None, runtime=None,
                 launcher=False, note=None):
        self.name, self.label, self.tool, self.note = name, label, tool, note
        self._argv_fn = argv_fn
        self._state_dir = state_dir
        self._runtime = runtime
        self.launcher = _Launcher() if launcher else None

    def argv(self):
        return self._argv_fn()

    def _run(self, argv):
        if self.launcher is not None:
            return tuple(self.launcher.run(argv))
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        return r.returncode, r.stderr.decode(errors="replace")[-400:]

    def run_once(self):
        """One round: the anchor's CLI to completion.  Raises on failure."""
        rc, err = self._run(self.argv())
        if rc != 0:
            raise RuntimeError(f"{self.name} exited {rc}: {err.strip()}")
        return rc

    def cleanup(self):
        try:
            if self._runtime and self._state_dir and os.path.isdir(self._state_dir):
                # containers `run` left behind (an interrupted round): delete them
                r = subprocess.run([self._runtime, "--root", self._state_dir, "list", "-q"],
                                   capture_output=True, text=True, timeout=30)
                for cid in r.stdout.split():
                    self._run([self._runtime, "--root", self._state_dir, "delete",
                               "--force", cid])
                shutil.rmtree(self._state_dir, ignore_errors=True)
        finally:
            if self.launcher is not None:
                self.launcher.close()
                self.launcher = None


def anchors(rootfs, workdir, only=None):
    """The installed anchors, as Anchor objects, running on `rootfs`; and
    {name: reason} for those skipped.  `workdir` holds OCI bundles and
    runtime state (the caller removes it)."""
    found, skipped = [], {}
    want = (lambda n: True) if only is None else (lambda n: n in only)

    bwrap = shutil.which("bwrap")
    if want("bwrap"):
        if bwrap:
            argv = [bwrap, "--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc",
                    "--dev", "/dev", "--hostname", "sandbox", TRUE]
            found.append(Anchor("bwrap", "bwrap --unshare-all", bwrap, lambda a=argv: a))
        else:
            skipped["bwrap"] = "bwrap not installed (apt-get install bubblewrap)"

    unshare = shutil.which("unshare")
    if want("unshare"):
        if unshare:
            argv = [unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork",
                    "--uts", "--ipc", "--net", "--cgroup", "--mount-proc",
                    f"--root={rootfs}", TRUE]
            found.append(Anchor("unshare", "unshare (7 namespaces) --root", unshare,
                                lambda a=argv: a))
        else:
            skipped["unshare"] = "unshare not installed (apt-get install util-linux)"

    for name in ("crun", "runc"):
        if not want(name):
            continue
        tool = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if tool is None:
            skipped[name] = f"{name} not installed (apt-get install {name})"
            continue
        if os.geteuid() != 0:
            # rootless crun/runc need a delegated cgroup and a runtime dir:
            # compare as root, where they run the way they usually do
            skipped[name] = f"{name}: measured as root only"
            continue
        bundle = write_oci_bundle(os.path.join(workdir, f"{name}-bundle"), rootfs)
        state = os.path.join(workdir, f"{name}-state")
        os.makedirs(state, exist_ok=True)
        counter = itertools.count()
        prefix = f"psbx-bench-{os.getpid()}-{name}"

        def argv_fn(tool=tool, state=state, bundle=bundle, counter=counter, prefix=prefix):
            return [tool, "--root", state, "run", "--bundle", bundle,
                    f"{prefix}-{next(counter)}"]
        hybrid = name == "crun" and crun_needs_hybrid_workaround()
        note = None
        if hybrid:
            note = ("crun refuses this host's hybrid cgroups (a controller in the cgroup2 "
                    "mount): it runs from a helper in a mount namespace without that "
                    "mount, which adds one pipe round trip")
        try:
            found.append(Anchor(name, f"{name} run (OCI bundle)", tool, argv_fn,
                                state_dir=state, runtime=tool, launcher=hybrid, note=note))
        except (OSError, RuntimeError) as exc:
            skipped[name] = str(exc)
    return found, skipped


# -- measuring ------------------------------------------------------------------

def _measure(fn, rounds, warmup, setup=None):
    return _measure_in_turn([(fn, setup)], rounds, warmup)[0]


def _measure_in_turn(fns, rounds, warmup):
    """[(fn, setup), ...] timed call by call in turn: a drift of the VM's
    speed moves them alike."""
    times = [[] for _ in fns]
    for i in range(warmup + rounds):
        for k, (fn, setup) in enumerate(fns):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            if i >= warmup:
                times[k].append(t)
    return times


def _cases(rounds, rootfs, workdir, stack):
    """(name, label, fn, rounds, warmup, setup) for every row; resources
    opened here are closed by `stack`."""
    import pysandbox
    from pysandbox import Sandbox, SandboxPool

    def ok(r):
        if r.returncode != 0:
            raise RuntimeError(f"exit status {r.returncode}")

    cold_rounds = max(1, rounds // 2)
    cases = [
        ("subprocess", "subprocess.run(['/bin/true'])",
         lambda: ok(subprocess.run([TRUE])), rounds, max(1, rounds // 10), None),
    ]
    warm = stack.enter_context(Sandbox())
    cases.append(("warm", "pysandbox warm s.run(['/bin/true'])",
                  lambda: ok(warm.run([TRUE])), rounds, max(1, rounds // 10), None))

    def echo_ok(r):
        ok(r)
        if r.stdout != b"hi\n":
            raise RuntimeError(f"echo gave {r.stdout!r}")
    cases.append(("subprocess-echo", "subprocess.run(['echo','hi'], capture_output=True)",
                  lambda: echo_ok(subprocess.run(["echo", "hi"], capture_output=True)),
                  rounds, max(1, rounds // 10), None))
    cases.append(("warm-echo", "pysandbox warm s.run(['echo','hi'], capture_output=True)",
                  lambda: echo_ok(warm.run(["echo", "hi"], capture_output=True)), rounds,
                  max(1, rounds // 10), None))
    cases.append(("cold", "pysandbox cold pysandbox.run(['/bin/true'])",
                  lambda: ok(pysandbox.run([TRUE])), cold_rounds, max(1, cold_rounds // 10),
                  None))
    cases.append(("cold-net-host", "pysandbox cold, network='host'",
                  lambda: ok(pysandbox.run([TRUE], network="host")), cold_rounds,
                  max(1, cold_rounds // 10), None))
    pool = stack.enter_context(SandboxPool(2))

    def pool_run():
        with pool.sandbox() as s:
            ok(s.run([TRUE]))
    cases.append(("pool", "pysandbox pool checkout + run (pool ready)", pool_run,
                  cold_rounds, max(1, cold_rounds // 10), pool.wait_ready))

    def refilled():
        # the state the pool row is timed in: the pool has just rebuilt a
        # sandbox (on a VM, a run right after other work or a pause is
        # slower than one in a tight loop, subprocess.run's too)
        with pool.sandbox():
            pass
        pool.wait_ready()
    cases.append(("warm-after-refill", "pysandbox warm s.run, timed as the pool row",
                  lambda: ok(warm.run([TRUE])), cold_rounds, max(1, cold_rounds // 10),
                  refilled))
    if rootfs is not None:
        cases.append(("cold-busybox", "pysandbox cold, busybox rootfs (as anchors)",
                      lambda: ok(pysandbox.run([TRUE], rootfs)), cold_rounds,
                      max(1, cold_rounds // 10), None))
    skipped = {}
    if rootfs is not None:
        found, skipped = anchors(rootfs, workdir)
        for a in found:
            stack.callback(a.cleanup)
            n = cold_rounds if a.name != "runc" else max(1, cold_rounds // 2)
            cases.append((a.name, f"anchor: {a.label}", a.run_once, n, max(1, n // 10),
                          None))
            if a.note:
                NOTES[a.name] = a.note
    else:
        skipped["anchors"] = (f"no busybox rootfs at {os.environ.get(ROOTFS_ENV) or DEFAULT_ROOTFS}"
                              " (run benchmarks/setup-anchors.sh)")
    return cases, skipped


NOTES = {}

# rows measured call by call in turn with what they are compared to: a VM's
# speed drifts by 10-20 % from one block of calls to the next, and a ratio of
# two blocks measures that drift as much as the two rows
IN_TURN = {"subprocess": "warm", "subprocess-echo": "warm-echo", "pool": "warm-after-refill",
           "cold-busybox": "bwrap"}

# the rows that time pysandbox itself (the others: the baseline and anchors)
SANDBOX_ROWS = frozenset({"warm", "warm-echo", "cold", "cold-net-host", "pool",
                          "warm-after-refill", "cold-busybox"})


def _kind(name):
    if name.startswith("subprocess"):
        return "baseline"
    return "pysandbox" if name in SANDBOX_ROWS else "anchor"


class _RowFailed(Exception):
    def __init__(self, name, error):
        super().__init__(name, error)
        self.name, self.error = name, error


def _tagged(name, fn):
    """fn, whose failure names its row (rows measured in turn)."""
    if fn is None:
        return None

    def call():
        try:
            fn()
        except Exception as exc:   # noqa: BLE001
            raise _RowFailed(name, exc) from exc
    return call


def run_bench(rounds, progress=None):
    """Measure every row; returns (rows, skipped) where each row is a dict
    with name, kind (baseline, pysandbox or anchor), label, rounds, median,
    min, p90 (seconds) and ratio (to the subprocess.run median)."""
    import contextlib
    NOTES.clear()          # (this run's: the anchors' and the rows timed alone)
    rootfs = anchor_rootfs()
    rows = []
    with contextlib.ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="pysandbox-bench-")
        stack.callback(shutil.rmtree, workdir, True)
        cases, skipped = _cases(rounds, rootfs, workdir, stack)
        by_name = {c[0]: c for c in cases}
        done = set()
        for name, label, fn, n, warmup, setup in cases:
            if name in done:
                continue
            # a row and its baseline are measured in turn (IN_TURN)
            group = [by_name[x] for x in (name, IN_TURN.get(name)) if x in by_name]
            if progress:
                progress(label)
            all_times = None
            while group and all_times is None:
                try:
                    all_times = _measure_in_turn([(_tagged(c[0], c[2]), _tagged(c[0], c[5]))
                                                  for c in group], n, warmup)
                except _RowFailed as exc:   # that row fails, not its pair nor the table
                    skipped[exc.name] = f"failed: {exc.error}"
                    done.add(exc.name)
                    group = [c for c in group if c[0] != exc.name]
                    for c in group:
                        NOTES[c[0]] = f"timed alone: {exc.name}, timed in turn with it, failed"
            if all_times is None:
                continue
            for c, times in zip(group, all_times):
                done.add(c[0])
                times.sort()
                rows.append({"name": c[0], "kind": _kind(c[0]), "label": c[1], "rounds": n,
                             "median": statistics.median(times), "min": times[0],
                             "p90": times[min(len(times) - 1, int(len(times) * 0.9))]})
    base = next((r["median"] for r in rows if r["name"] == "subprocess"), None)
    for r in rows:
        r["ratio"] = r["median"] / base if base else None
    by_name = {r["name"]: r for r in rows}
    if "warm-echo" in by_name and "subprocess-echo" in by_name:
        NOTES["warm-echo"] = (f"{by_name['warm-echo']['median'] / by_name['subprocess-echo']['median']:.2f}x"
                              " subprocess.run(['echo','hi'], capture_output=True), timed in"
                              " turn with it")
    return rows, skipped


# -- output ---------------------------------------------------------------------

def _host_line():
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return (f"{os.cpu_count()} CPUs, load {load:.2f}, Linux {os.uname().release}, "
            f"Python {sys.version.split()[0]}, uid {os.geteuid()}")


def format_table(rows, skipped):
    w = max([len(r["label"]) for r in rows] + [20])
    out = [f"{'':<{w}}  {'median':>9}  {'min':>9}  {'p90':>9}  {'vs subprocess':>13}"]
    for r in sorted(rows, key=lambda r: r["median"]):
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        out.append(f"{r['label']:<{w}}  {r['median'] * 1e3:6.2f} ms  {r['min'] * 1e3:6.2f} ms"
                   f"  {r['p90'] * 1e3:6.2f} ms  {ratio:>13}")
    for name, why in skipped.items():
        out.append(f"(skipped {name}: {why})")
    for name, note in NOTES.items():
        if any(r["name"] == name for r in rows):
            out.append(f"({name}: {note})")
    return "\n".join(out)


CHART_COLORS = {"pysandbox": "#2b7bba", "baseline": "#999999", "anchor": "#e07b39"}


def write_png(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["median"], reverse=True)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    ms = [r["median"] * 1e3 for r in rows]
    colors = [CHART_COLORS[r["kind"]] for r in rows]
    bars = ax.barh([r["label"] for r in rows], ms, color=colors)
    for bar, r in zip(bars, rows):
        ratio = f"  {r['median'] * 1e3:.2f} ms" + (
            f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, ratio,
                va="center", fontsize=8)
    ax.set_xlabel("median latency of one /bin/true, create to teardown (ms)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(ms) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_anchors():
    """One smoke run of each installed anchor (benchmarks/setup-anchors.sh)."""
    rootfs = anchor_rootfs()
    if rootfs is None:
        print(f"pysandbox bench: no busybox rootfs at "
              f"{os.environ.get(ROOTFS_ENV) or DEFAULT_ROOTFS}", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="pysandbox-bench-")
    failed = 0
    try:
        found, skipped = anchors(rootfs, workdir)
        for a in found:
            try:
                a.run_once()
                print(f"ok       {a.name:<8} {' '.join(a.argv()[:3])} ...")
            except Exception as exc:   # noqa: BLE001
                failed += 1
                print(f"FAILED   {a.name:<8} {exc}")
            finally:
                a.cleanup()
        for name, why in skipped.items():
            print(f"skipped  {name:<8} {why}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="pysandbox bench", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200, metavar="N",
                   help="measured rounds of the fast rows (cold rows, pool and anchors "
                        "get N/2, runc N/4); default 200: about 5-10 s")
    p.add_argument("--png", metavar="FILE", help="also write a bar chart (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    p.add_argument("--check-anchors", action="store_true",
                   help="run each installed anchor once and exit")
    return p


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.check_anchors:
        return check_anchors()
    if args.rounds < 1:
        print("pysandbox bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.png and not _have_matplotlib():
        print("pysandbox bench: --png needs matplotlib, which is not installed "
              "(pip install matplotlib); nothing was measured", file=sys.stderr)
        return 2
    host = _host_line()
    if not args.json:
        print(f"pysandbox bench: one {TRUE}, create to teardown ({host})", flush=True)

    def progress(label):
        if not args.json and sys.stderr.isatty():
            print(f"  measuring {label} ...", end="\r", file=sys.stderr, flush=True)
            print(" " * (len(label) + 16), end="\r", file=sys.stderr, flush=True)

    rows, skipped = run_bench(args.rounds, progress)
    if args.json:
        print(json.dumps({"host": host, "rows": rows, "skipped": skipped, "notes": NOTES},
                         indent=1))
    else:
        print(format_table(rows, skipped))
    if args.png:
        write_png(rows, args.png, f"pysandbox bench ({host})")
        if not args.json:
            print(f"chart: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
