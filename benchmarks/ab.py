"""Interleaved A/B: this checkout against another revision, on a noisy VM.

    python3 benchmarks/ab.py REV [--rounds N] [--modes cold,warm,pool,binds,threads]
    python3 benchmarks/ab.py REV --lockstep CALLS [--modes cold,warm,pool,cold-limits,warm-limits]
    python3 benchmarks/ab.py HEAD --lockstep CALLS --ballast GB [--modes ...]

Builds REV in a temporary git worktree (`setup.py build_ext --inplace`),
then measures both versions in alternating child processes, N rounds, and
prints the medians and new/old ratios.  Alternating processes cancels most
of the drift a shared VM shows from minute to minute, which separate
benchmark runs do not; within a child the rows of a mode are measured call
by call in turn (warm and subprocess.run alternate), and warm mode also
reports its ratio to subprocess.run.  The busybox rootfs of setup-anchors.sh is used when
it exists (else the rows that need it are skipped).  --lockstep goes
further: both versions stay alive in two processes and are called one call
each in turn (the busybox rootfs for cold), which also gives the median of
the pairwise ratios.  --ballast GB makes the new side's process fill GB
of memory first: with REV=HEAD, the same code in a small and a big parent,
call by call (the parent-RSS scaling, without the drift between blocks; each
side's RSS is printed: the small one, ~20 MB, is as small as a Python
process with pysandbox and a sandbox gets).
Nothing is left behind: the worktree and the bind directories are removed
at the end.
"""
import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ANCHOR_ROOTFS = "/var/tmp/pysandbox-bench-rootfs"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_us(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _interleaved_us(fns, n):
    """Medians of several calls made in turn, n times each: a drift of the
    VM's speed during the block moves them all alike."""
    times = [[] for _ in fns]
    for _ in range(n):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e6 for t in times]


def child(tree, mode, bind_dir):
    """One block of one version, as JSON on stdout."""
    sys.path.insert(0, tree)
    import pysandbox
    from pysandbox import Bind, SandboxPool
    assert os.path.abspath(pysandbox.__file__).startswith(tree), pysandbox.__file__
    rootfs = ANCHOR_ROOTFS if os.path.isdir(ANCHOR_ROOTFS) else None
    out = {}
    true = ["/bin/true"]
    if mode == "cold":
        for _ in range(10):
            pysandbox.run(true)
        fns = [lambda: pysandbox.run(true), lambda: subprocess.run(true)]
        if rootfs:
            fns.append(lambda: pysandbox.run(true, rootfs))
        res = _interleaved_us(fns, 150)
        out["cold default root"], out["subprocess.run"] = res[:2]
        if rootfs:
            out["cold busybox rootfs"] = res[2]
    elif mode == "warm":
        with pysandbox.Sandbox() as s:
            for _ in range(100):
                s.run(true)
            warm, sub = _interleaved_us([lambda: s.run(true), lambda: subprocess.run(true)], 400)
        out["warm"] = warm
        out["subprocess.run"] = sub
        out["warm / subprocess"] = warm / sub
    elif mode == "pool":
        times = []
        with SandboxPool(2, rootfs) as p:
            for _ in range(120):
                p.wait_ready(30)
                t = time.perf_counter()
                with p.sandbox() as s:
                    s.run(true)
                times.append(time.perf_counter() - t)
        out["pool checkout+run"] = statistics.median(times) * 1e6
        with pysandbox.Sandbox(rootfs) as s:
            for _ in range(100):
                s.run(true)
            out["warm (same rootfs)"] = _median_us(lambda: s.run(true), 300)
    elif mode == "threads":
        # one sandbox shared by 8 threads: a batch of 48 runs, per run
        from concurrent.futures import ThreadPoolExecutor
        with pysandbox.Sandbox() as s, ThreadPoolExecutor(8) as ex:
            def batch():
                list(ex.map(lambda _: s.run(true), range(48)))
            for _ in range(5):
                batch()
            out["8 threads, per run"] = _median_us(batch, 40) / 48
    elif mode == "binds":
        binds = [Bind(os.path.join(bind_dir, f"d{i}"), f"/mnt/b{i}") for i in range(100)]
        for _ in range(5):
            pysandbox.run(true, rootfs, mounts=binds)
        out["cold, 0 binds"] = _median_us(lambda: pysandbox.run(true, rootfs), 100)
        out["cold, 100 binds"] = _median_us(lambda: pysandbox.run(true, rootfs, mounts=binds), 100)
        out["+100 binds"] = out["cold, 100 binds"] - out["cold, 0 binds"]
    print(json.dumps(out))


# mode -> (sandbox limits, kind: a warm run, a cold one-shot, a pool checkout + run)
LOCKSTEP_CALLS = {
    "cold": ({}, "cold"),
    "warm": ({}, "warm"),
    "pool": ({}, "pool"),
    "cold-limits": ({"memory": "256M"}, "cold"),
    "warm-limits": ({"memory": "256M"}, "warm"),
}


def _vm_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) >> 10
    return -1


def lockstep_child(tree, mode, ballast_gb="0"):
    """One version's end of a lockstep A/B: a call per byte read on stdin,
    its time (us) written back as a line."""
    sys.path.insert(0, tree)
    import pysandbox
    assert os.path.abspath(pysandbox.__file__).startswith(tree), pysandbox.__file__
    ballast = bytearray(int(float(ballast_gb) * (1 << 30)))
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1                    # resident, not just reserved
    rootfs = ANCHOR_ROOTFS if os.path.isdir(ANCHOR_ROOTFS) else None
    limits, kind = LOCKSTEP_CALLS[mode]
    true = ["/bin/true"]
    ready = None                          # untimed, before each timed call
    if kind == "warm":
        s = pysandbox.Sandbox(rootfs, **limits)
        call = lambda: s.run(true)     # noqa: E731
    elif kind == "pool":
        s = pysandbox.SandboxPool(2, rootfs, **limits)
        ready = s.wait_ready

        def call():
            with s.sandbox() as sb:
                sb.run(true)
    else:
        s = None
        call = lambda: pysandbox.run(true, rootfs, **limits)   # noqa: E731
    for _ in range(20):
        if ready:
            ready()
        call()
    out = sys.stdout
    out.write(f"{_vm_rss_mb()}\n")        # the parent's size, as measured
    out.flush()
    while sys.stdin.buffer.read(1):
        if ready:
            ready()
        t = time.perf_counter()
        call()
        out.write(f"{(time.perf_counter() - t) * 1e6:.1f}\n")
        out.flush()
    if s is not None:
        s.close()


def lockstep(old, new, rev, mode, calls, ballast_gb=0.0):
    """Both versions live at once, called in turn one call at a time: a
    drift of the VM moves both alike, down to single calls."""
    procs = {}
    for name, tree in (("old", old), ("new", new)):
        gb = ballast_gb if name == "new" else 0.0
        procs[name] = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), rev, "--lockstep-child", tree, mode,
             str(gb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    times = {"old": [], "new": []}
    rss = {name: int(p.stdout.readline()) for name, p in procs.items()}
    try:
        for i in range(calls):
            for name in (("old", "new") if i % 2 else ("new", "old")):
                p = procs[name]
                p.stdin.write("g")
                p.stdin.flush()
                times[name].append(float(p.stdout.readline()))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    o, n = statistics.median(times["old"]), statistics.median(times["new"])
    ratios = sorted(b / a for a, b in zip(times["old"], times["new"]))
    q = statistics.quantiles(ratios, n=4)
    big = f" (new: {ballast_gb:g} GB parent)" if ballast_gb else ""
    big += f" [RSS old {rss['old']} MB, new {rss['new']} MB]"
    print(f"lockstep {mode:5s} old {o:9.1f} us   new {n:9.1f} us   new/old {n / o:.3f}   "
          f"pairwise new/old median {q[1]:.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}), {calls} pairs"
          f"{big}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the revision to compare this checkout against")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--modes", default="cold,warm,pool,binds")
    ap.add_argument("--child", nargs=3, metavar=("TREE", "MODE", "BIND_DIR"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--lockstep", type=int, metavar="CALLS", default=0,
                    help="modes cold, warm, pool, cold-limits, warm-limits (memory=256M): "
                         "both versions alive, one call each in turn")
    ap.add_argument("--ballast", type=float, metavar="GB", default=0.0,
                    help="with --lockstep: the new side's process first fills GB of memory "
                         "(REV=HEAD: the parent-RSS scaling of this checkout)")
    ap.add_argument("--lockstep-child", nargs=3, metavar=("TREE", "MODE", "GB"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.lockstep_child:
        return lockstep_child(*args.lockstep_child)

    work = tempfile.mkdtemp(prefix="pysandbox-ab.")
    old = os.path.join(work, "old")
    bind_dir = os.path.join(work, "binds")
    try:
        for i in range(100):
            os.makedirs(os.path.join(bind_dir, f"d{i}"))
        subprocess.run(["git", "-C", HERE, "worktree", "add", "-q", "--detach", old, args.rev],
                       check=True)
        for tree in (old, HERE):
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tree, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        for mode in args.modes.split(","):
            if args.lockstep:
                lockstep(old, HERE, args.rev, mode, args.lockstep, args.ballast)
                continue
            res = collections.defaultdict(lambda: collections.defaultdict(list))
            for _ in range(args.rounds):
                for name, tree in (("old", old), ("new", HERE)):
                    r = subprocess.run([sys.executable, os.path.abspath(__file__), args.rev,
                                        "--child", tree, mode, bind_dir],
                                       capture_output=True, text=True, check=True)
                    for k, v in json.loads(r.stdout).items():
                        res[k][name].append(v)
            for k, d in res.items():
                o, n = statistics.median(d["old"]), statistics.median(d["new"])
                unit = "x " if "/" in k else "us"
                print(f"{mode:5s} {k:22s} old {o:9.3f} {unit}   new {n:9.3f} {unit}   "
                      f"new/old {n / o:.3f}" if o else f"{mode:5s} {k:22s} new {n:9.1f} us")
    finally:
        subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", old],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
