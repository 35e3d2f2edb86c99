"""The cgroup driver (pysandbox._cgroup) on real cgroups.

Workloads run under a small reaper that stays OUTSIDE the cgroups (a child
subreaper, like the sandbox's per-run supervisor): its child writes "0" to
the run's cgroup.procs fds and execs the workload, exactly as a sandboxed
command will.  Killing the run must kill the workload tree and never the
reaper.  Tests that need a writable cgroup skip (with the driver's own
reason) where there is none, e.g. as uid 65534; the rootless test checks
the SetupError there instead.
"""
import errno
import functools
import json
import os
import select
import subprocess
import sys
import threading
import time

import pytest

from sbxutil import IS_ROOT, fds_under
from pysandbox import _cgroup as cgd
from pysandbox._errors import SetupError

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20

REAPER = r'''
import ctypes, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
argv = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us
pid = os.fork()
if pid == 0:
    try:
        for fd in os.environ.get("PSBX_FIRST", "").split(","):
            if fd:                      # first join the sandbox's own cgroup, as the init does
                os.write(int(fd), b"0")
                os.close(int(fd))
        flags = int(os.environ.get("PSBX_UNSHARE", "0"))
        if flags and libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        for fd in fds:
            os.write(fd, b"0")          # join the run cgroup, as a sandboxed command does
            os.close(fd)
        os.execvp(argv[0], argv)
    except BaseException as e:
        os.write(2, ("worker setup failed: %r\n" % (e,)).encode())
        os._exit(121)
for fd in fds:
    os.close(fd)
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    if p == pid:
        print("STATUS %d" % os.waitstatus_to_exitcode(st), flush=True)
'''

MEMHOG = r'''
chunks = []
for i in range(32):
    chunks.append(b"\x01" * (8 << 20))   # 256 MiB in all, every page written
print("SURVIVED", flush=True)
'''

FORKBOMB = r'''
import os, time
n, err = 0, None
while n < 1000:
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print("FORKS %d %s" % (n, err), flush=True)
time.sleep(60)
'''

BUSY = r'''
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
print("DONE", flush=True)
'''

BURN = r'''
import sys, time
while time.process_time() < float(sys.argv[1]):   # CPU seconds, whatever the load
    pass
'''

ALLOC = r'''
import sys, time
b = b"\x01" * (int(sys.argv[1]) << 20)
print("DONE", flush=True)
'''

TREE = r'''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(1, b"GRANDCHILD %d\n" % os.getpid())   # one write: no interleaving
        time.sleep(60)
        os._exit(0)
    os._exit(0)          # double fork: the grandchild is orphaned
c = os.fork()
if c == 0:
    time.sleep(60)
    os._exit(0)
os.write(1, b"CHILD %d\nPARENT %d\n" % (c, os.getpid()))
time.sleep(60)
'''


class Worker:
    """A reaper (outside the cgroups) whose child joins the cgroups through
    `fds` and execs `argv`."""

    def __init__(self, fds, argv, env=None, extra_fds=()):
        self.lines = []
        self._partial = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REAPER, ",".join(map(str, fds)), *argv],
            pass_fds=list(fds) + list(extra_fds), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True, env=env)
        self.returncode = None

    def expect(self, prefix, timeout=15):
        """The first stdout line starting with prefix (its words).  Reads the
        pipe with os.read (a buffered readline would hide lines from select)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line.split()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._partial += chunk.decode()
            *done, self._partial = self._partial.split("\n")
            self.lines += [x.strip() for x in done]
        raise AssertionError(f"no {prefix!r} line from worker; got {self.lines}, "
                             f"stderr {self._stderr()!r}")

    def _stderr(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def finish(self, timeout=15):
        """Wait for the reaper (it exits once every descendant is gone);
        -> the workload's exit status (negative: signal)."""
        out, err = self.proc.communicate(timeout=timeout)
        self.lines += [x.strip() for x in (self._partial + out).splitlines()]
        self._partial = ""
        assert self.proc.returncode == 0, f"reaper failed: {err}"
        status = [int(x.split()[1]) for x in self.lines if x.startswith("STATUS")]
        assert status, f"no status; stderr: {err}"
        self.returncode = status[0]
        return status[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except Exception:
            pass


@functools.lru_cache(maxsize=None)
def _available(memory=False, pids=False, cpus=False, versions=None):
    if versions is None:
        return cgd.available(memory, pids, cpus)
    try:
        cg = cgd.open_sandbox_cgroup(_versions=versions)
    except SetupError as e:
        return False, str(e)
    try:
        labels = set(cg.paths)
    finally:
        cg.remove()
    return True, " ".join(sorted(labels))


def need(memory=False, pids=False, cpus=False, versions=None):
    ok, why = _available(memory, pids, cpus, versions)
    if not ok:
        pytest.skip(f"no usable cgroup here: {why}")


def _mine():
    """Every directory named pysandbox-<this pid>-* in the hierarchies."""
    prefix = f"pysandbox-{os.getpid()}-"
    out = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if d.startswith(prefix):
                out.append(os.path.join(root, d))
        dirs[:] = [d for d in dirs if not d.startswith("pysandbox-")]
    return out


@pytest.fixture
def env(no_leaks):
    """Opens sandbox cgroups and starts workers; removes and reaps them all,
    then checks that no cgroup directory of ours is left anywhere."""
    class Env:
        cgs, workers = [], []

        def open(self, **kw):
            cg = cgd.open_sandbox_cgroup(**kw)
            self.cgs.append(cg)
            return cg

        def worker(self, fds, code, *args, env=None, extra_fds=()):
            w = Worker(fds, [sys.executable, "-c", code, *map(str, args)], env=env,
                       extra_fds=extra_fds)
            self.workers.append(w)
            return w

    e = Env()
    e.cgs, e.workers = [], []
    yield e
    for cg in e.cgs:
        cg.remove()
    for w in e.workers:
        w.stop()
    assert _mine() == [], "cgroup directories left behind"


def in_cgroup(pid, group):
    """Is pid in `group` (a SandboxCgroup or RunCgroup) in every hierarchy?"""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for h, d in group._dirs.items():
        cg = h.cg_of(d)
        mine = [ln.split(":", 2)[2] for ln in lines
                if (h.version == 2 and ln.startswith("0::")) or
                (h.version == 1 and ln.split(":", 2)[1] == h.label)]
        if not mine or not (mine[0] == cg or mine[0].startswith(cg + "/")):
            return False
    return True


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------


def test_limits_are_written(env):
    need(memory=True, pids=True, cpus=True)
    cg = env.open(memory=64 * MiB, pids=32, cpus=0.5)
    assert cg.limits == {"memory": 64 * MiB, "pids": 32, "cpus": 0.5}
    assert set(cg.drivers) == {"memory", "pids", "cpus"}
    assert cg.name.startswith(f"pysandbox-{os.getpid()}-")
    # read back every file the version tables say carries each limit
    vals = {"bytes": 64 * MiB, "pids": 32, "quota": 50000, "period": 100000}
    checked = 0
    for h, d in cg._dirs.items():
        assert os.path.dirname(d) == h.base, "created below the caller's own cgroup"
        for lim, writes in h.table.limits.items():
            for w in writes:
                if not h.offers(w.controller):
                    continue
                p = os.path.join(d, w.file)
                if not os.path.exists(p):
                    assert w.need == "if_swap", f"{p} missing"
                    continue
                with open(p) as f:
                    assert f.read().strip() == w.fmt.format(**vals), p
                checked += 1
    assert checked >= 3
    # and by name, for the v1 controllers this machine has
    paths = cg.paths
    if "memory" in paths:
        with open(paths["memory"] + "/memory.limit_in_bytes") as f:
            assert int(f.read()) == 64 * MiB
        if os.path.exists(paths["memory"] + "/memory.memsw.limit_in_bytes"):
            with open(paths["memory"] + "/memory.memsw.limit_in_bytes") as f:
                assert int(f.read()) == 64 * MiB, "swap must not extend the limit"
        with open(paths["memory"] + "/memory.use_hierarchy") as f:
            assert f.read().strip() == "1"
    if "pids" in paths:
        with open(paths["pids"] + "/pids.max") as f:
            assert f.read().strip() == "32"
    cpu = next((d for label, d in paths.items() if "cpu" in label.split(",")), None)
    if cpu is not None:
        with open(cpu + "/cpu.cfs_quota_us") as f:
            assert f.read().strip() == "50000"
        with open(cpu + "/cpu.cfs_period_us") as f:
            assert f.read().strip() == "100000"


def test_memory_hog_is_oom_killed(env):
    need(memory=True)
    cg = env.open(memory=64 * MiB)
    run = cg.new_run()
    w = env.worker(run.procs_fds, MEMHOG)
    run.close_fds()
    assert w.finish() == -9, w.lines
    assert "SURVIVED" not in w.lines
    st = run.stats()
    assert st["oom_killed"] is True and st["oom_kills"] >= 1, st
    assert st["max_memory"] is not None and 32 * MiB < st["max_memory"] <= 64 * MiB + MiB, st
    whole = cg.stats()
    assert whole["oom_killed"] is True and whole["oom_kills"] >= 1, whole
    # a second run in the same sandbox starts with a clean record
    assert cg.new_run().stats()["oom_kills"] == 0


def test_fork_bomb_hits_pids_limit(env):
    need(pids=True)
    cg = env.open(pids=32)
    run = cg.new_run()
    w = env.worker(run.procs_fds, FORKBOMB)
    run.close_fds()
    _, n, err = w.expect("FORKS")
    assert err == str(errno.EAGAIN), w.lines
    assert 20 <= int(n) <= 31, "the worker and its children share 32 pids"
    st = run.stats()
    assert st["pids_current"] == int(n) + 1, st
    whole = cg.stats()
    assert whole["pids_current"] == int(n) + 1
    if st["pids_peak"] is not None:
        # the limit lives on the sandbox cgroup, whose peak is exactly it; the
        # kernel raises the run's watermark before the parent refuses the
        # charge, so the run's peak may show the refused fork (33)
        assert whole["pids_peak"] == 32, whole
        assert int(n) + 1 <= st["pids_peak"] <= 33, st
    assert run.kill() is True
    assert w.finish() == -9
    assert run.stats()["pids_current"] == 0


def test_cpu_quota_limits_cpu_time(env):
    need(cpus=True)
    cg = env.open(cpus=0.5)
    run = cg.new_run()
    # as a command does: a descendant of the init (in the sandbox cgroup in
    # every hierarchy, the cpu limit's included), then in its run cgroup
    w = env.worker(cg.procs_fds + run.procs_fds, BUSY, 2.0)
    run.close_fds()
    assert w.finish(timeout=20) == 0
    cpu = run.stats()["cpu_time"]
    # unlimited, 2 s of busy loop would be ~2 s of CPU
    assert cpu is not None and 0.3 <= cpu <= 1.5, cpu
    assert cg.stats()["cpu_time"] >= cpu
    # each driver's own CPU counter, where this machine has both
    for versions in ((1,), (2,)):
        other = run._stat("cpu_time", versions)
        if other is not None:
            assert 0.3 <= other <= 1.5 and abs(other - cpu) < 0.25, (versions, other, cpu)


def _driver_params():
    return [pytest.param((2, 1), id="auto"), pytest.param((1,), id="v1-freezer"),
            pytest.param((2,), id="v2-cgroup.kill")]


@pytest.mark.parametrize("versions", _driver_params())
def test_run_kill_kills_setsid_double_forked_tree(env, versions):
    need(versions=versions)
    cg = env.open(_versions=versions)
    assert {h.version for h in cg._dirs} <= set(versions)
    run = cg.new_run()
    keep = cg.new_run()            # another run that must be left alone
    bystander = env.worker(keep.procs_fds, BUSY, 60)
    keep.close_fds()
    w = env.worker(run.procs_fds, TREE)
    run.close_fds()
    pids = [int(w.expect(k)[1]) for k in ("GRANDCHILD", "CHILD", "PARENT")]
    for pid in pids:
        assert in_cgroup(pid, run), pid
    assert not in_cgroup(w.proc.pid, run), "the reaper stays outside"
    assert run.kill() is True
    assert w.finish() == -9          # returns only once every descendant is gone
    for pid in pids:
        assert not alive(pid)
    assert bystander.proc.poll() is None, "the other run was touched"
    assert keep.stats()["pids_current"] in (None, 1)
    run.remove()
    for d in run.paths.values():
        assert not os.path.exists(d)
    assert cg.kill() is True
    assert bystander.finish() == -9


@pytest.mark.parametrize("versions", _driver_params())
def test_remove_kills_and_leaves_no_directory(env, versions):
    need(versions=versions)
    cg = env.open(_versions=versions)
    init = subprocess.Popen(["sleep", "60"])     # stands in for the sandbox init
    try:
        cg.add_pid(init.pid)
        assert in_cgroup(init.pid, cg)
        for h, d in cg._dirs.items():            # v2: in the init leaf
            leaf = h.table.init_leaf
            with open(os.path.join(d, leaf or "", "cgroup.procs")) as f:
                assert str(init.pid) in f.read().split()
        run = cg.new_run()
        w = env.worker(run.procs_fds, TREE)
        pids = [int(w.expect(k)[1]) for k in ("GRANDCHILD", "CHILD", "PARENT")]
        run.remove()                             # busy: left for the sandbox
        assert all(os.path.isdir(d) for d in run.paths.values())
        dirs = list(cg.paths.values()) + list(run.paths.values())
        cg.remove()
        for d in dirs:
            assert not os.path.exists(d), d
        assert init.wait(timeout=10) == -9
        assert w.finish() == -9
        for pid in pids:
            assert not alive(pid)
        assert cg.procs_fds == [] and run.procs_fds == []
        cg.remove()                              # idempotent
    finally:
        if init.poll() is None:
            init.kill()
        init.wait()


def test_command_joins_run_from_user_namespace(env):
    """As in the sandbox: the process first joins the sandbox cgroup (the
    init's place), enters new user and cgroup namespaces there (so the run
    cgroup is OUTSIDE its cgroup namespace), and then joins the run cgroup
    through the fds the parent opened.  The kernel checks the opener's
    credentials and cgroup namespace, so it works."""
    if not IS_ROOT:
        pytest.skip("needs root (a writable cgroup and unshare(CLONE_NEWCGROUP))")
    need()
    cg = env.open()
    run = cg.new_run()
    flags = 0x10000000 | 0x02000000          # CLONE_NEWUSER | CLONE_NEWCGROUP
    w = env.worker(run.procs_fds, "import os,time; print('PID %d' % os.getpid(), flush=True);"
                   " print('CG ' + open('/proc/self/cgroup').read().replace(chr(10), ' '),"
                   " flush=True); time.sleep(60)",
                   env={**os.environ, "PSBX_UNSHARE": str(flags),
                        "PSBX_FIRST": ",".join(map(str, cg.procs_fds))},
                   extra_fds=cg.procs_fds)
    run.close_fds()
    pid = int(w.expect("PID")[1])
    assert in_cgroup(pid, run)
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().strip() == "", "the worker is in a new (unmapped) user namespace"
    # seen from inside, the run cgroup is outside the namespace's root
    assert any("/.." in x for x in w.expect("CG")), w.lines
    assert run.kill()
    assert w.finish() == -9


def test_two_sandboxes_account_separately(env):
    need()
    a, b = env.open(), env.open()
    assert a.name != b.name
    ra, rb = a.new_run(), b.new_run()
    wa = env.worker(ra.procs_fds, BURN, 0.5)
    wb = env.worker(rb.procs_fds, ALLOC, 48)
    ra.close_fds()
    rb.close_fds()
    assert wa.finish() == 0 and wb.finish() == 0
    sa, sb = a.stats(), b.stats()
    assert sa["cpu_time"] is not None and sb["cpu_time"] is not None, (sa, sb)
    assert sa["cpu_time"] >= 0.4 and sb["cpu_time"] < 0.4, (sa, sb)
    if sa["max_memory"] is not None:
        assert sb["max_memory"] >= 40 * MiB and sa["max_memory"] < 30 * MiB, (sa, sb)
    assert ra.stats()["cpu_time"] >= 0.4 and rb.stats()["cpu_time"] < 0.4


def test_sweep_orphans_removes_dead_owners_only(env):
    need()
    holder = env.open()                   # a private parent, so other sessions are not swept
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan_name = f"pysandbox-{dead.pid}-0"
    live_name = f"pysandbox-{os.getpid()}-999999"
    orphans, lives = [], []
    for h, d in holder._dirs.items():
        for name, lst in ((orphan_name, orphans), (live_name, lives)):
            p = os.path.join(d, name)
            os.mkdir(p)
            lst.append(p)
    inside = subprocess.Popen(["sleep", "60"])
    try:
        for p in orphans:
            with open(os.path.join(p, "cgroup.procs"), "w") as f:
                f.write(str(inside.pid))
        assert cgd.sweep_orphans(parent=holder.name) == 1
        for p in orphans:
            assert not os.path.exists(p)
        for p in lives:
            assert os.path.isdir(p), "a live owner's cgroup was swept"
        assert inside.wait(timeout=10) == -9, "what was inside was killed"
        assert cgd.sweep_orphans(parent=holder.name) == 0
    finally:
        if inside.poll() is None:
            inside.kill()
        inside.wait()


def test_no_controller_is_a_setup_error(env):
    """A limit the chosen hierarchy cannot enforce raises; it is never
    silently dropped.  Here: the v2 tree alone (hugetlb only on the CI VM).
    The refusal comes before anything is created, so it holds for any user."""
    hs = [h for h in cgd._hierarchies() if h.version == 2]
    if not hs:
        pytest.skip("no cgroup2 hierarchy mounted")
    tested = 0
    for kw, ctrl in (({"memory": 64 * MiB}, "memory"), ({"pids": 10}, "pids"),
                     ({"cpus": 0.5}, "cpu")):
        if ctrl in hs[0].controllers:
            continue
        with pytest.raises(SetupError) as ei:
            cgd.open_sandbox_cgroup(_versions=(2,), **kw)
        e = ei.value
        assert e.errno == errno.ENOTSUP
        assert e.step == f"cgroup {ctrl} limit"
        msg = str(e)
        assert f"{ctrl} controller" in msg and "enable" in msg and "mount" in msg, msg
        tested += 1
    assert _mine() == []
    if not tested:
        pytest.skip("the v2 tree here has memory, pids and cpu")


PROBE = r'''
import json, os, sys, types
if "pysandbox" not in sys.modules:
    # load the driver without the package's __init__ (no compiled engine needed)
    pkg = types.ModuleType("pysandbox")
    pkg.__path__ = [sys.argv[1]]
    sys.modules["pysandbox"] = pkg
from pysandbox import _cgroup as cgd
from pysandbox._errors import SetupError

def probe():
    out = {}
    for label, kw in (("memory", {"memory": 64 << 20}), ("none", {})):
        try:
            cg = cgd.open_sandbox_cgroup(**kw)
        except SetupError as e:
            out[label] = {"errno": e.errno, "msg": str(e), "step": e.step}
        else:
            cg.remove()
            out[label] = None
    out["available"] = list(cgd.available(memory=True))
    prefix = "pysandbox-%d-" % os.getpid()
    out["left"] = [os.path.join(r, d) for r, ds, _ in os.walk("/sys/fs/cgroup")
                   for d in ds if d.startswith(prefix)]
    return out

if __name__ == "__main__":
    print(json.dumps(probe()))
'''


def test_rootless_is_a_setup_error_with_advice():
    """As an ordinary user (no delegated cgroup) a limit cannot be enforced:
    SetupError with the errno and what to do.  As root, checked in a child
    that drops to uid 65534."""
    pkgdir = os.path.dirname(os.path.abspath(cgd.__file__))
    if IS_ROOT:
        # the system python: root's interpreter may not be readable by 65534
        py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        r = subprocess.run([py, "-c", PROBE, pkgdir],
                           user=65534, group=65534, extra_groups=[], cwd="/",
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
    else:
        ns = {"__name__": "probe"}
        exec(PROBE, ns)
        out = ns["probe"]()
        if out["memory"] is None:
            pytest.skip("this user has a writable (delegated) memory cgroup")
    for label in ("memory", "none"):
        e = out[label]
        assert e is not None, f"{label}: a cgroup was created without privilege"
        assert e["errno"] in (errno.EACCES, errno.EPERM, errno.EROFS), e
        assert e["step"] == ("cgroup memory limit" if label == "memory" else "cgroup create")
        assert "delegat" in e["msg"] and "root" in e["msg"], e
    assert out["available"][0] is False and "delegat" in out["available"][1]
    assert out["left"] == []


DELEGATED = PROBE.replace("print(json.dumps(probe()))", r'''
    sys.stdin.readline()       # wait until root has put us where we belong
    out = {}
    cg = cgd.open_sandbox_cgroup(memory=int(sys.argv[4]) or None, pids=int(sys.argv[5]) or None,
                                 parent=sys.argv[2], _versions=tuple(json.loads(sys.argv[3])))
    out["paths"] = cg.paths
    out["limits"] = {}
    for label, d in cg.paths.items():
        for f in ("memory.limit_in_bytes", "pids.max", "memory.max"):
            if os.path.exists(os.path.join(d, f)):
                out["limits"][f] = open(os.path.join(d, f)).read().strip()
    run = cg.new_run()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            for fd in run.procs_fds:
                os.write(fd, b"0")
        except OSError as e:
            os.write(2, ("join failed: %r\\n" % e).encode())
            os._exit(1)
        os.write(w, b"x")
        os.execv("/bin/sleep", ["sleep", "60"])
    run.close_fds()
    os.close(w)
    os.read(r, 1)
    out["member"] = open("/proc/%d/cgroup" % pid).read()
    out["killed"] = run.kill()
    os.waitpid(pid, 0)
    cg.remove()
    out["left"] = [d for d in cg.paths.values() if os.path.exists(d)]
    print(json.dumps(out))
''')


@pytest.mark.parametrize("version", [1, 2])
def test_delegated_parent_works_without_root(env, version):
    """A cgroup chowned to an ordinary user, given as the parent: that user
    can open a sandbox cgroup below it, apply limits, run, kill and remove.
    v1 only checks the uid; v2 also wants the mover to live inside the
    delegated subtree already (its common-ancestor rule), so root first puts
    the user's process into the holder's init leaf, and the parent is given
    as a directory under the cgroup2 mount."""
    if not IS_ROOT:
        pytest.skip("needs root to delegate a cgroup to uid 65534")
    need(versions=(version,))
    holder = env.open(_versions=(version,))
    for h, d in holder._dirs.items():
        for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            if os.path.exists(os.path.join(d, f)):
                os.chown(os.path.join(d, f), 65534, 65534)
    ctrls = set().union(*(h.controllers for h in holder._dirs))
    limit_memory = "memory" in ctrls
    limit_pids = "pids" in ctrls
    pkgdir = os.path.dirname(os.path.abspath(cgd.__file__))
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    parent = holder.name if version == 1 else next(iter(holder.paths.values()))
    p = subprocess.Popen([py, "-c", DELEGATED, pkgdir, parent, json.dumps([version]),
                          str(64 * MiB if limit_memory else 0), str(16 if limit_pids else 0)],
                         user=65534, group=65534, extra_groups=[], cwd="/",
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        if version == 2:
            holder.add_pid(p.pid)
        out_s, err_s = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err_s
    out = json.loads(out_s)
    assert set(out["paths"]) == set(holder.paths)
    for label, sub in out["paths"].items():
        assert os.path.dirname(sub) == holder.paths[label]
    if limit_memory:
        assert out["limits"]["memory.limit_in_bytes"] == str(64 * MiB)
    if limit_pids:
        assert out["limits"]["pids.max"] == "16"
    assert "/run-1" in out["member"] and holder.name in out["member"], err_s
    assert out["killed"] is True and out["left"] == []


def test_stats_shape_and_v2_core(env):
    need()
    cg = env.open()
    run = cg.new_run()
    for st in (cg.stats(), run.stats()):
        assert set(st) == {"cpu_time", "max_memory", "oom_killed", "oom_kills",
                           "pids_peak", "pids_current"}
        assert isinstance(st["oom_killed"], bool) and isinstance(st["oom_kills"], int)
    v2 = [(h, d) for h, d in run._dirs.items() if h.version == 2]
    if v2:
        # the v2 core files this kernel gives even with no controller
        h, d = v2[0]
        w = env.worker(run.procs_fds, "import sys, time; print('READY', flush=True);"
                       " sys.stdin.readline(); sys.argv = sys.argv[1:]; exec(sys.argv[0])",
                       BURN, 0.3)
        w.expect("READY")
        with open(os.path.join(d, "cgroup.events")) as f:
            assert "populated 1" in f.read()
        w.proc.stdin.write("go\n")
        w.proc.stdin.flush()
        assert w.finish() == 0
        assert run._stat("cpu_time", (2,)) >= 0.2
        with open(os.path.join(d, "cgroup.events")) as f:
            assert "populated 0" in f.read()


def test_no_cgroup_in_a_hierarchy_that_adds_nothing(env):
    """Where a cgroup2 tree gives the CPU time (cpu.stat) and the tree kill
    (cgroup.kill), the v1 cpuacct and freezer hierarchies add nothing and
    get no cgroup, nor v1 cpu without a cpus limit (each would cost a mkdir,
    a join and an rmdir per sandbox); the figures and the kill still work."""
    need(memory=True)
    hiers = cgd._hierarchies()
    v2 = [h for h in hiers if h.version == 2 and cgd._can_kill(h)]
    v1 = {h.label for h in hiers if h.version == 1}
    if not v2 or not v1 & {"cpuacct", "freezer"}:
        pytest.skip(f"no cgroup2 tree with cgroup.kill beside v1 cpuacct/freezer: {hiers}")
    cg = env.open(memory=64 * MiB)
    labels = set(cg.paths)
    assert not labels & {"cpuacct", "freezer", "cpu", "cpu,cpuacct"}, labels
    assert "memory" in labels and any(h.version == 2 for h in cg._dirs), labels
    run = cg.new_run()
    w = env.worker(run.procs_fds, BURN, 0.3)
    assert w.finish() == 0
    assert run.stats()["cpu_time"] >= 0.2
    w = env.worker(run.procs_fds, "import time; print('READY', flush=True); time.sleep(60)")
    run.close_fds()
    w.expect("READY")
    assert run.kill() is True
    assert w.finish() == -9
    # with the cpus limit, the cpu hierarchy is back (it holds the limit)
    if any(h.version == 1 and "cpu" in h.controllers for h in hiers):
        assert any("cpu" in h.controllers for h in env.open(cpus=0.5)._dirs if h.version == 1)


def test_nothing_made_ahead_once_the_sandbox_cgroup_goes(env):
    """The janitor thread (it makes the next run's cgroup while a command
    runs) must not make one while, or after, the sandbox's cgroup is being
    removed: it would leave its cgroup.procs fds open for good."""
    need()
    prefix = f"pysandbox-{os.getpid()}-"

    def our_fds():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if prefix in os.readlink(f"/proc/self/fd/{fd}"):
                    out.append(fd)
            except OSError:
                pass
        return out
    cgs = []
    for _ in range(150):
        cg = env.open()
        cg.new_run().close_fds()
        cg.housekeeping()
        cg.remove()
        cgs.append(cg)
    deadline = time.monotonic() + 10
    while our_fds() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [cg for cg in cgs if cg._ahead is not None] == []
    assert our_fds() == []


MOVE_SELF = r'''
import json, os, sys
from pysandbox import _cgroup as cgd
before = {h.label: h.base for h in cgd._hierarchies()}
pids = [h for h in cgd._hierarchies() if h.version == 1 and "pids" in h.controllers][0]
child = os.path.join(pids.base, sys.argv[1])
os.mkdir(child)
try:
    with open(os.path.join(child, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    try:
        moved = {h.label: h.base for h in cgd._hierarchies()}
    finally:
        with open(os.path.join(pids.base, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    back = {h.label: h.base for h in cgd._hierarchies()}
finally:
    os.rmdir(child)
print(json.dumps([before, moved, back, child]))
'''


def test_hierarchies_follow_a_move_of_the_process(env):
    """The hierarchies (parsed from mountinfo) are kept a few seconds, but a
    move of the process to another cgroup is seen at once: sandboxes go
    below the cgroup the caller is in now.  (A child process we start
    moves itself, and back.)"""
    need(pids=True)
    if not any(h.version == 1 and "pids" in h.controllers for h in cgd._hierarchies()):
        pytest.skip("no v1 pids hierarchy to move within")
    r = subprocess.run([sys.executable, "-c", MOVE_SELF, f"pysandbox-test-move-{os.getpid()}"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    before, moved, back, child = json.loads(r.stdout)
    assert moved["pids"] == child != before["pids"]
    assert back == before
    assert {k: v for k, v in moved.items() if k != "pids"} == \
        {k: v for k, v in before.items() if k != "pids"}


def test_a_leftover_oom_killed_after_the_exit_figures_still_counts(env):
    """An ended run's cgroup hands its per-cgroup counters (v1 oom_kill) to
    the sandbox when it goes.  Figures read at the command's exit while a
    leftover process still ran are not final: the leftover may be
    OOM-killed before the directory goes, and that kill must not be lost."""
    need(memory=True)
    cg = env.open(memory=48 * MiB)
    run = cg.new_run()
    w = env.worker(run.procs_fds, "import sys; print('READY', flush=True); "
                   "sys.stdin.readline(); b = b'\\x01' * (200 << 20); print('SURVIVED')")
    run.close_fds()
    w.expect("READY")
    at_exit = run.stats()                   # (the command's exit: a leftover still runs)
    assert at_exit["pids_current"] == 1 and at_exit["oom_kills"] == 0
    w.proc.stdin.write("go\n")
    w.proc.stdin.flush()
    assert w.finish() == -9                 # OOM-killed after those figures
    assert cg.stats()["oom_kills"] == 1
    assert run.remove(at_exit, later=True) is True
    assert not any(os.path.exists(d) for d in run.paths.values())
    assert cg.stats()["oom_kills"] == 1     # handed over, not lost


def test_exit_figures_through_files_opened_ahead(env):
    """open_stats() opens the files of a run's figures (the janitor does it
    while the command runs); exit_stats() reads the figures through them
    and closes them: the same figures as stats() reads by path.  Opened
    after the figures were taken, or never read, they are closed: no fd is
    left either way."""
    need(memory=True, pids=True)
    cg = env.open(memory=256 * MiB, pids=32)
    run = cg.new_run()
    dirs = list(run.paths.values())
    w = env.worker(run.procs_fds, "import sys; b = b'\\x01' * (40 << 20); "
                   "print('READY', flush=True); sys.stdin.readline()")
    run.close_fds()
    w.expect("READY")
    files = sorted(os.path.join(d, spec.file) for spec, d in
                   (run._stat_source(k) for k in cgd._STAT_KEYS) if spec is not None)
    assert len(files) == len(cgd._STAT_KEYS)
    run.open_stats()
    assert fds_under(dirs) == files
    w.proc.stdin.write("go\n")
    w.proc.stdin.flush()
    assert w.finish() == 0
    by_path = run.stats()
    real_read = cgd._read

    def no_path_read(path):
        # the run's own files are read through the fds (only a subtree's
        # child cgroups, none here, would be read by path)
        assert not any(path.startswith(d + "/") for d in dirs), path
        return real_read(path)
    cgd._read = no_path_read
    try:
        ahead = run.exit_stats()
    finally:
        cgd._read = real_read
    assert fds_under(dirs) == []
    assert ahead["max_memory"] >= 40 * MiB and ahead["pids_peak"] >= 1
    assert ahead["pids_current"] == 0 and ahead["cpu_time"] > 0
    for key in cgd._STAT_KEYS:
        if key == "cpu_time":   # (a counter: the same, the first reading first)
            assert 0 < by_path[key] <= ahead[key]
        else:
            assert ahead[key] == by_path[key], key
    # taken first (by path: nothing was opened), opened after: closed at once
    late = cg.new_run()
    late.close_fds()
    assert late.exit_stats()["pids_current"] == 0
    late.open_stats()
    assert fds_under(list(late.paths.values())) == []
    # taken by the exit between open_stats()' check and its hand-over (the
    # janitor preempted there): the janitor closes what it opened
    raced = cg.new_run()
    raced.close_fds()

    class TakenFirst(list):
        def append(self, item):
            assert raced.exit_stats()["pids_current"] == 0   # by path: nothing yet
            super().append(item)
    raced._stat_fds = TakenFirst()
    raced.open_stats()
    assert fds_under(list(raced.paths.values())) == []
    # one run of a sandbox holds its files at a time: the next one's opening
    # closes them (that run reads by path at its exit)
    first, second = cg.new_run(), cg.new_run()
    first.close_fds()
    second.close_fds()
    cg._open_stats_of(first)
    assert fds_under(list(first.paths.values())) != []
    cg._open_stats_of(second)
    assert fds_under(list(first.paths.values())) == []
    assert fds_under(list(second.paths.values())) != []
    assert first.exit_stats()["pids_current"] == 0
    # opened twice (one submission per run, but): one set of fds
    cg._open_stats_of(second)
    assert len(fds_under(list(second.paths.values()))) == len(files)
    # an exception (not an OSError) half-way: what was opened is closed
    failing = cg.new_run()
    failing.close_fds()
    real_open, calls = os.open, []

    def third_fails(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise MemoryError("the third file")
        return real_open(*args, **kwargs)
    cgd.os.open = third_fails
    try:
        with pytest.raises(MemoryError):
            failing.open_stats()
    finally:
        cgd.os.open = real_open
    assert len(calls) == 3 and fds_under(list(failing.paths.values())) == []
    assert failing.remove()
    # opened, never read: its removal closes them
    unread = cg.new_run()
    unread.close_fds()
    unread.open_stats()
    assert fds_under(list(unread.paths.values())) != []
    assert unread.remove() is True
    assert fds_under(list(unread.paths.values())) == []
    assert run.remove() and late.remove() and raced.remove() and first.remove()
    # and the sandbox cgroup's removal closes those of the runs it removes
    cg.remove()
    assert fds_under(list(second.paths.values())) == []


def test_removal_waits_for_figures_being_opened(env):
    """The sandbox cgroup's removal waits for the janitor if it is opening a
    run's figure files right then (preempted between its opens and their
    hand-over): once remove() returns, no fd of them is open."""
    need(memory=True)
    cg = env.open(memory=64 * MiB)
    run = cg.new_run()
    run.close_fds()
    dirs = list(run.paths.values())
    opened = threading.Event()

    class Preempted(list):
        def append(self, item):
            opened.set()
            time.sleep(0.3)
            super().append(item)
    run._stat_fds = Preempted()
    t = threading.Thread(target=cg._open_stats_of, args=(run,))
    t.start()
    try:
        assert opened.wait(10)
        assert fds_under(dirs) != []
        cg.remove()
        assert fds_under(dirs) == []
    finally:
        t.join()
    assert fds_under(dirs) == []


def test_refused_limit_leaves_nothing_behind(env):
    """A limit the kernel refuses half-way (here: more CPU than an ancestor's
    quota, which v1 rejects with EINVAL) raises SetupError naming the step
    and the path, and removes every directory it had made."""
    need(memory=True, cpus=True)
    holder = env.open(cpus=0.1)
    if holder.drivers.get("cpus") != 1:
        pytest.skip("v2 accepts a child quota above its parent's (it just caps it)")
    before = {d: sorted(os.listdir(d)) for d in holder.paths.values()}
    with pytest.raises(SetupError) as ei:
        cgd.open_sandbox_cgroup(memory=64 * MiB, cpus=0.5, parent=holder.name)
    e = ei.value
    assert e.errno == errno.EINVAL and e.step == "cgroup cpu limit"
    assert e.filename.endswith("cpu.cfs_quota_us") and "quota" in str(e)
    after = {d: sorted(os.listdir(d)) for d in holder.paths.values()}
    assert after == before, "a directory was left behind by the failed open"


def test_bad_values_are_refused_before_anything_is_created():
    for kw in ({"memory": 0}, {"pids": -1}, {"cpus": float("nan")}, {"cpus": 0.0},
               {"pids": True}, {"cpus": 1e-7}):
        with pytest.raises(ValueError):
            cgd.open_sandbox_cgroup(**kw)
    assert _mine() == []
