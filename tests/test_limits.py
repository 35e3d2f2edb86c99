"""Resource limits end to end (issue 3): cgroup memory/pids/cpus limits on
Sandbox, rlimits per sandbox and per run, per-run and per-sandbox
statistics, kills through the run cgroup, and cgroup cleanup (close, an
exception, a crash, SIGKILL of the parent + the orphan sweep), and the CLI.

Everything drives the real kernel.  The cgroup parts need root here (uid
65534 cannot create cgroups on this machine): they are skipped when not root,
and the rootless tests check the SetupError instead.  The driver itself is
tested in test_cgroup.py; Tmpfs(size=) -> ENOSPC is test_filesystem.py's
test_tmpfs_size_limit and is not repeated here.
"""
import errno
import gc
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
from sbxutil import IS_ROOT, BASES, cg_dirs, fds_under, init_pids, open_fds, wait_until

from pysandbox import PIPE, Sandbox, SetupError, TimeoutExpired
from pysandbox import _cgroup

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="cgroup limits need root on this machine (uid 65534 cannot create "
    "cgroups); the rootless SetupError is checked by test_rootless_*")
rootless_only = pytest.mark.skipif(
    IS_ROOT, reason="root can create cgroups here: the rootless refusal is tested as uid 65534")

# rlimit tests run both in a plain sandbox and in one with cgroup limits
LIMITS = [
    pytest.param({}, id="plain"),
    pytest.param({"pids": 64, "memory": "256M"}, id="cgroup", marks=needs_root),
]

HOG = ("b = bytearray(200 * 1024 * 1024)\n"
       "for i in range(0, len(b), 4096):\n"
       "    b[i] = 1\n"
       "print('SURVIVED', flush=True)\n")

ALLOC_100M = ("b = bytearray(100 * 1024 * 1024)\n"
              "for i in range(0, len(b), 4096):\n"
              "    b[i] = 1\n")


def busy(seconds):
    """A python3 busy loop for `seconds` of wall time."""
    return ["python3", "-c", "import time\nend = time.monotonic() + %r\n"
            "while time.monotonic() < end: pass\n" % float(seconds)]


def sh(script):
    return ["sh", "-c", script]


def procs_below(d):
    """Host pids in cgroup directory d and its descendants."""
    pids = []
    for dirpath, _dirs, _files in os.walk(d):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def gone(pid):
    """True when pid no longer exists (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return gone(pid)


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Make the process-wide caches (the sealed init memfd, /dev/null) before
    any no_leaks check: they are made once per process, not leaked."""
    with Sandbox() as s:
        s.run(["true"])


@pytest.fixture(autouse=True)
def no_cgroup_left():
    """No test may leave a cgroup of this process behind."""
    before = cg_dirs()
    yield
    left = cg_dirs() - before
    assert not left, f"cgroup directories left behind: {sorted(left)}"


@pytest.fixture
def tiny(rootfs):
    return rootfs


# -- fork bomb ----------------------------------------------------------------

# The bomb forks in a subshell until fork fails (dash: "Cannot fork", then the
# subshell exits 2); the outer shell reports that and stays alive (exec, no
# fork needed), holding the run open with the sandbox at its pids limit.
BOMB = ('( i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done; echo NOFAIL ); '
        'echo "bomb status $?"; exec sleep 1000')
FORK_FAILED = ("Cannot fork", "Resource temporarily unavailable")


@needs_root
def test_fork_bomb_hits_pids_limit(rootfs, no_leaks):
    with Sandbox(rootfs, pids=32) as s:
        assert s.run(["true"]).returncode == 0
        base = s.stats()["pids_current"]
        p = s.popen(sh(BOMB), stdout=PIPE, stderr=PIPE)
        line = p.stdout.readline()
        assert line == b"bomb status 2\n"
        # the sandbox is at its limit...
        assert 30 <= s.stats()["pids_current"] <= 32
        # ...and the host can still fork
        assert subprocess.run(["true"], timeout=30).returncode == 0
        p.kill_tree()
        out, err = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        assert any(m in err.decode() for m in FORK_FAILED), err
        assert b"NOFAIL" not in line + out
        assert s.stats()["pids_peak"] == 32
        # the same sandbox runs the next command normally
        r = s.run(sh("echo ok; sleep 0 & wait"), capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, "ok\n")
        assert s.stats()["pids_current"] <= base + 1

        # the same bomb through run(timeout=): the timeout kills the tree and
        # the result reports the run's pids peak
        with pytest.raises(TimeoutExpired) as ei:
            s.run(sh(BOMB), capture_output=True, text=True, timeout=1.5)
        res = ei.value.result
        assert ei.value.output == "bomb status 2\n"
        assert any(m in ei.value.stderr for m in FORK_FAILED), ei.value.stderr
        assert res.timed_out is True
        assert res.pids_peak is not None and 25 <= res.pids_peak <= 32
        r = s.run(sh("echo ok"), capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, "ok\n")
        assert r.pids_peak is not None and r.pids_peak < 5   # per run, not the sandbox's


FIVE = ["sh", "-c", "sleep 0.01 & sleep 0.01 & wait; echo ok"]   # sh + 2 children


def _five_ok(s, n=5, **kw):
    """n runs in turn of FIVE: (init + a supervisor + sh + 2 children = 5)"""
    for i in range(n):
        r = s.run(FIVE, capture_output=True, text=True, timeout=30, **kw)
        assert (r.returncode, r.stdout) == (0, "ok\n"), (i, r.stderr)


@needs_root
def test_pids_limit_is_not_taken_by_a_spare_supervisor(no_leaks):
    # runs in turn get a spare supervisor beside the busy one (init sleeps
    # through them), but not in a sandbox with a pids limit: it would take
    # a process from the commands
    with Sandbox(pids=5) as s:
        _five_ok(s)
        # after concurrent runs the extra supervisor leaves (a second
        # without a run): one idle one is kept under a pids limit, not two
        a, b = s.popen(["sleep", "0.3"]), s.popen(["sleep", "0.3"])
        assert a.wait(timeout=30) == b.wait(timeout=30) == 0
        assert wait_until(lambda: s.stats()["pids_current"] <= 2, 10), s.stats()
        _five_ok(s)


# RLIMIT_NPROC counts the uid's processes in the sandbox's user namespace,
# init's and the supervisors' too; root (uid 0 outside) is exempt from it
@pytest.mark.skipif(IS_ROOT, reason="root is exempt from RLIMIT_NPROC: tested as uid 65534")
@pytest.mark.parametrize("where", ["sandbox", "run"])
def test_nproc_rlimit_is_not_taken_by_a_spare_supervisor(where, no_leaks):
    limit = {"nproc": 5}
    with Sandbox(rlimits=limit if where == "sandbox" else None) as s:
        _five_ok(s, **({"rlimits": limit} if where == "run" else {}))


# -- memory hog -----------------------------------------------------------------

@needs_root
def test_memory_hog_is_oom_killed(no_leaks):
    with Sandbox(memory="64M") as s:
        init = s.pid
        r = s.run(["python3", "-c", HOG], capture_output=True, text=True, timeout=60)
        assert r.returncode == -signal.SIGKILL
        assert "SURVIVED" not in r.stdout
        assert r.oom_killed is True
        assert r.timed_out is False
        assert 32 * MiB <= r.max_rss <= 70 * MiB
        # the OOM killer took the hog, not the init; the host is fine
        assert comm(init) == "pysandbox-init"
        assert subprocess.run(["true"], timeout=30).returncode == 0
        small = s.run(["python3", "-c", "print('fine')"], capture_output=True, text=True,
                      timeout=60)
        assert (small.returncode, small.stdout) == (0, "fine\n")
        assert small.oom_killed is False
        assert small.max_rss < 32 * MiB            # its own peak, not the hog's


@needs_root
def test_without_memory_limit_the_hog_survives(no_leaks):
    # the counterpart: the same program is not killed when only pids is limited
    with Sandbox(pids=64) as s:
        r = s.run(["python3", "-c", HOG], capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "SURVIVED\n")
        assert r.oom_killed is False
        assert r.max_rss >= 200 * MiB


@needs_root
def test_sandbox_stats_remember_an_oom_kill_of_a_finished_run(no_leaks):
    # s.stats() is the whole sandbox's accounting "so far": a run that was
    # OOM-killed earlier must still count once its run cgroup is gone
    with Sandbox(memory="64M") as s:
        r = s.run(["python3", "-c", HOG], timeout=60)
        assert r.oom_killed is True
        st = s.stats()
        assert st["oom_kills"] == 1
        assert st["oom_killed"] is True
        # the run's cgroup goes while the next command runs: its count is
        # then the sandbox's, once (not lost, not twice)
        hog_cg = os.path.join(s._cgroup.paths["memory"], "run-1")    # the first run's
        assert os.path.isdir(hog_cg)
        assert s.run(["true"]).returncode == 0
        assert wait_until(lambda: not os.path.exists(hog_cg), 10)
        assert s.stats()["oom_kills"] == 1


@needs_root
def test_sandbox_stats_read_while_run_cgroups_go(no_leaks):
    # another thread reading s.stats() while ended runs' cgroups are removed
    # (by the library's thread, during the next command) sees each OOM kill
    # once: never twice (the directory and the sandbox's tally) nor not at all
    with Sandbox(memory="48M") as s:
        done, wrong, reads = threading.Event(), [], [0]
        returned, started = [0], [0]    # OOM-killed runs returned / started

        def monitor():
            while not done.is_set():
                low = returned[0]
                n = s.stats()["oom_kills"]
                high = started[0]
                reads[0] += 1
                if not low <= n <= high:
                    wrong.append((low, n, high))
        t = threading.Thread(target=monitor)
        t.start()
        try:
            for _ in range(6):
                started[0] += 1
                assert s.run(["python3", "-c", HOG], timeout=60).oom_killed is True
                returned[0] += 1
                assert s.run(["sleep", "0.05"]).returncode == 0
        finally:
            done.set()
            t.join()
        assert reads[0] > 100
        assert wrong == [], wrong[:10]
        assert s.stats()["oom_kills"] == 6


@needs_root
def test_collected_process_objects_with_limits(no_leaks):
    # a SandboxProcess dropped in a reference cycle is finalized by the
    # garbage collector in whatever thread allocates, possibly one holding
    # the sandbox cgroup's locks (the library's thread, a stats() reader):
    # its run cgroup must be handed over, not removed there (that hung)
    old = gc.get_threshold()
    gc.set_threshold(20)
    try:
        with Sandbox(memory="64M") as s:
            for _ in range(300):
                p = s.popen(["true"])
                p.cycle = p
                del p
                s.stats()
            gc.collect()
            base = s._cgroup.paths["pids"]
            # their cgroups go at the next runs (once their commands ended)

            def fewer():
                assert s.run(["true"]).returncode == 0
                return len(glob.glob(os.path.join(base, "run-*"))) <= 2
            assert wait_until(fewer, 10)
    finally:
        gc.set_threshold(*old)


# a shell that prints its own cgroups with builtins only: one process
CGROUP_OF_RUN = ["sh", "-c", 'while read -r l; do echo "$l"; done < /proc/self/cgroup']


@needs_root
def test_run_cgroups_are_made_ahead_and_removed_behind(rootfs, no_leaks, monkeypatch):
    # a run's cgroup is made (a mkdir per hierarchy) while the previous
    # run's command runs, and removed while the next one's does, by a
    # thread of the library: neither is on a run's own path
    with Sandbox(rootfs, memory="64M", pids=32) as s:
        base = s._cgroup.paths["pids"]

        def runs():
            return {os.path.basename(d) for d in glob.glob(os.path.join(base, "run-*"))}

        def cgroup_of(r):
            assert r.returncode == 0, r.stderr
            return [x for x in r.stdout.splitlines() if ":pids:" in x][0].rsplit("/", 1)[1]

        first = cgroup_of(s.run(CGROUP_OF_RUN, capture_output=True, text=True))
        assert wait_until(lambda: len(runs() - {first}) == 1, 10), (first, runs())
        ahead = (runs() - {first}).pop()                # made while `first` ran
        assert procs_below(os.path.join(base, ahead)) == []
        second = cgroup_of(s.run(CGROUP_OF_RUN, capture_output=True, text=True))
        assert second == ahead                          # the next run got it
        assert wait_until(lambda: first not in runs(), 10)   # gone while `second` ran
        for _ in range(5):
            assert s.run(["true"]).returncode == 0
            assert len(runs()) <= _cgroup._PENDING_MAX + 2, runs()
        # the last run's and the next's
        assert wait_until(lambda: len(runs()) <= 2, 10), runs()
        for _ in range(10):
            assert s.popen(["true"]).wait(timeout=30) == 0
        assert wait_until(lambda: len(runs()) <= 2, 10), runs()
        # without the thread the runs still get their cgroups (made and
        # removed on their own path), and a few ended ones wait, no more
        monkeypatch.setattr(_cgroup._JANITOR, "submit", lambda cg, run=None: None)
        for _ in range(_cgroup._PENDING_MAX + 10):
            assert cgroup_of(s.run(CGROUP_OF_RUN, capture_output=True, text=True))
        assert len(runs()) <= _cgroup._PENDING_MAX + 1, runs()


@needs_root
def test_run_figures_files_are_opened_while_the_command_runs(no_leaks):
    # the files of a run's figures (peak memory, CPU time, pids...) are
    # opened by the library's thread while the command runs, and read
    # through those fds at its exit (opening them then cost the run ~0.1 ms);
    # the figures are the run's own, and no fd stays
    with Sandbox(memory="256M", pids=32) as s:
        assert s.run(["true"]).returncode == 0
        p = s.popen(["python3", "-c", "import sys\n" + ALLOC_100M + "sys.stdin.readline()"],
                    stdin=PIPE)
        dirs = list(p._cg.paths.values())
        files = sorted(os.path.join(d, spec.file) for spec, d in
                       (p._cg._stat_source(k) for k in _cgroup._STAT_KEYS) if spec is not None)

        assert wait_until(lambda: fds_under(dirs) == files, 10), (fds_under(dirs), files)
        out, _ = p.communicate(b"go\n", timeout=60)
        assert p.returncode == 0
        assert fds_under(dirs) == []
        r = s.run(["python3", "-c", ALLOC_100M + "import os\nos.system('true')\n"])
        assert r.returncode == 0
        assert r.max_rss >= 100 * MiB and r.pids_peak >= 2 and r.cpu_time > 0


@needs_root
def test_run_figures_files_never_outlive_their_run(no_leaks):
    # the files opened for a run's exit figures are closed whatever becomes
    # of the run: a popen() dropped while its command runs, commands running
    # at once (one run of a sandbox holds them: the others read by path), a
    # sandbox closed during a run, a command that never started
    def held(p):
        return fds_under(list(p._cg.paths.values()))
    with Sandbox(memory="256M", pids=32) as s:
        assert s.run(["true"]).returncode == 0
        dropped = s.popen(["sleep", "30"])
        assert wait_until(lambda: held(dropped) != [], 10)
        dirs = list(dropped._cg.paths.values())
        del dropped
        gc.collect()
        # (closed at once, or by the janitor if it was still opening them)
        assert wait_until(lambda: fds_under(dirs) == [], 5)
        a = s.popen(["sleep", "30"])
        assert wait_until(lambda: held(a) != [], 10)
        a_dirs = list(a._cg.paths.values())
        b = s.popen(["sh", "-c", "read x"], stdin=PIPE)
        assert wait_until(lambda: held(b) != [] and fds_under(a_dirs) == [], 10)
        b.communicate(b"x\n", timeout=30)
        assert b.returncode == 0 and fds_under(a_dirs) == []
        a.kill()
        assert a.wait(timeout=30) == -signal.SIGKILL
        c = s.popen(["sleep", "30"])
        assert wait_until(lambda: held(c) != [], 10)
        c_dirs = list(c._cg.paths.values())
        base = list(s._cgroup.paths.values())
    # (close() waits for the janitor if it is opening them right then)
    assert fds_under(c_dirs) == [] and fds_under(base) == []
    with Sandbox(memory="256M", pids=32) as s:
        assert s.run(["true"]).returncode == 0
        base = list(s._cgroup.paths.values())
        failures = []
        for _ in range(3):
            try:
                s.popen(["/nonexistent-command"])
            except FileNotFoundError as e:
                failures.append(e)      # kept: with it, its process object
        assert len(failures) == 3
        assert wait_until(lambda: [f for f in fds_under(base)
                                   if "/run-" in f and "cgroup.procs" not in f] == [], 5)


@needs_root
def test_interrupted_popen_leaves_no_run_cgroup(no_leaks, monkeypatch):
    # popen() interrupted once its command runs (KeyboardInterrupt while it
    # waits for the start record): the command runs on, as with
    # subprocess.Popen, and its run cgroup goes once it has ended
    from pysandbox import _runner
    with Sandbox(memory="64M", pids=32) as s:
        assert s.run(["true"]).returncode == 0
        base = s._cgroup.paths["pids"]

        def runs():
            return glob.glob(os.path.join(base, "run-*"))

        def interrupted(self, block):
            raise KeyboardInterrupt
        monkeypatch.setattr(_runner.SandboxProcess, "_recv", interrupted)
        with pytest.raises(KeyboardInterrupt):
            s.popen(["sleep", "1"])
        monkeypatch.undo()
        gc.collect()

        def gone():
            assert s.run(["true"]).returncode == 0
            return len(runs()) <= 2
        assert wait_until(gone, 15), runs()


# -- cpus -----------------------------------------------------------------------

@needs_root
def test_cpus_half_a_core(no_leaks):
    with Sandbox(cpus=0.5) as s:
        r = s.run(busy(2.0), timeout=60)
        assert r.returncode == 0
        assert r.wall_time >= 1.9
        assert 0.4 <= r.cpu_time <= 1.5, r.cpu_time
    # the same loop without the limit uses (nearly) all of its wall time
    with Sandbox(pids=64) as s:
        free = s.run(busy(2.0), timeout=60)
        assert free.returncode == 0
        assert free.cpu_time > 1.5, free.cpu_time


# -- rlimits --------------------------------------------------------------------

@pytest.mark.parametrize("limits", LIMITS)
def test_rlimit_nofile_per_sandbox_and_per_run(limits, no_leaks):
    opener = ("import os\n"
              "n = 0\n"
              "try:\n"
              "    while n < 1000:\n"
              "        os.open('/dev/null', os.O_RDONLY); n += 1\n"
              "except OSError as e:\n"
              "    print(e.errno, n)\n")
    with Sandbox(rlimits={"nofile": 40}, **limits) as s:
        r = s.run(sh("ulimit -S -n; ulimit -H -n"), capture_output=True, text=True)
        assert r.stdout.split() == ["40", "40"]
        r = s.run(["python3", "-c", opener], capture_output=True, text=True, timeout=60)
        err, n = r.stdout.split()
        assert int(err) == errno.EMFILE and int(n) < 40
        r = s.run(sh("ulimit -S -n; ulimit -H -n"), rlimits={"nofile": (16, 24)},
                  capture_output=True, text=True)
        assert r.stdout.split() == ["16", "24"]
        # the run's limits were its own
        r = s.run(sh("ulimit -n"), capture_output=True, text=True)
        assert r.stdout.split() == ["40"]


@pytest.mark.parametrize("limits", LIMITS)
def test_rlimit_fsize_sigxfsz_and_efbig(tiny, limits, no_leaks):
    with Sandbox(tiny, rlimits={"fsize": ("8k", "1M")}, **limits) as s:
        r = s.run(["dd", "if=/dev/zero", "of=/tmp/f", "bs=1k", "count=64"], capture_output=True)
        assert r.returncode == -signal.SIGXFSZ
        assert r.oom_killed is False
        r = s.run(sh("trap '' XFSZ; dd if=/dev/zero of=/tmp/g bs=1k count=64"),
                  capture_output=True, text=True)
        assert r.returncode == 1
        assert "File too large" in r.stderr            # EFBIG
        r = s.run(["stat", "-c", "%s", "/tmp/f", "/tmp/g"], capture_output=True, text=True)
        assert r.stdout.split() == ["8192", "8192"]
        # per run: up to the sandbox's hard limit, the same write goes through
        r = s.run(["dd", "if=/dev/zero", "of=/tmp/h", "bs=1k", "count=64"],
                  rlimits={"fsize": "1M"}, capture_output=True)
        assert r.returncode == 0
        # above it: refused (nothing inside may raise a hard limit), naming the rlimit
        with pytest.raises((OSError, ValueError), match="fsize"):
            s.run(["dd", "if=/dev/zero", "of=/tmp/i", "bs=1k", "count=64"],
                  rlimits={"fsize": "2M"}, capture_output=True)
        assert s.run(["stat", "/tmp/i"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL).returncode != 0


@pytest.mark.parametrize("limits", LIMITS)
def test_rlimit_cpu_reports_the_signal_honestly(tiny, limits, no_leaks):
    with Sandbox(tiny, **limits) as s:
        # soft limit: SIGXCPU (its default action kills)
        r = s.run(sh("while :; do :; done"), rlimits={"cpu": (1, 2)}, timeout=60)
        assert r.returncode == -signal.SIGXCPU
        # generous: the kernel checks RLIMIT_CPU against tick-sampled
        # utime+stime, which on a busy VM runs ahead of the precise runtime
        # that the cgroup (cpuacct) reports
        assert r.cpu_time >= 0.75
        assert (r.timed_out, r.oom_killed) == (False, False)
        soft = r.cpu_time
        # SIGXCPU ignored: the hard limit's SIGKILL, reported as such
        r = s.run(sh("trap '' XCPU; while :; do :; done"), rlimits={"cpu": (1, 2)}, timeout=60)
        assert r.returncode == -signal.SIGKILL
        assert r.cpu_time >= 1.5 and r.cpu_time > soft + 0.4
        assert (r.timed_out, r.oom_killed) == (False, False)


@pytest.mark.parametrize("limits", LIMITS)
def test_core_dumps_off_by_default_and_raisable_per_run(tiny, limits, no_leaks):
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    # dash's ulimit -c counts 512-byte blocks
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard // 512)
    with Sandbox(tiny, **limits) as s:
        r = s.run(sh("ulimit -S -c; ulimit -H -c"), capture_output=True, text=True)
        assert r.stdout.split() == ["0", shown_hard]
        # raised per run, up to the hard limit
        r = s.run(sh("ulimit -S -c; ulimit -H -c"), rlimits={"core": (hard, hard)},
                  capture_output=True, text=True)
        assert r.stdout.split() == [shown_hard, shown_hard]
        r = s.run(sh("ulimit -S -c"), rlimits={"core": ("1M", hard)},
                  capture_output=True, text=True)
        assert r.stdout.split() == ["2048"]
        # only that run: the next one is back to 0
        r = s.run(sh("ulimit -S -c"), capture_output=True, text=True)
        assert r.stdout.split() == ["0"]
    with Sandbox(tiny, rlimits={"core": "1M"}, **limits) as s:
        r = s.run(sh("ulimit -S -c"), capture_output=True, text=True)
        assert r.stdout.split() == ["2048"]


@pytest.mark.parametrize("bad", [{"bogus": 1}, {"nofile": (100, 50)}, {"fsize": ("2M", "1M")},
                                 {"nofile": -2}, {"nofile": (1, 2, 3)}])
@pytest.mark.parametrize("limits", LIMITS)
def test_bad_rlimits_refused_before_anything_is_created(tiny, limits, bad, no_leaks):
    before = cg_dirs()
    with pytest.raises(ValueError):
        Sandbox(tiny, rlimits=bad, **limits)
    assert cg_dirs() == before
    assert init_pids() == []
    with Sandbox(tiny, **limits) as s:
        fds = open_fds()
        with pytest.raises(ValueError):
            s.run(["touch", "/tmp/ran"], rlimits=bad)
        assert open_fds() == fds
        assert s.run(["stat", "/tmp/ran"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL).returncode != 0
        assert s.run(["true"]).returncode == 0


# -- max_rss --------------------------------------------------------------------

@pytest.mark.parametrize("limits", [
    pytest.param({}, id="rusage"),
    pytest.param({"memory": "512M", "pids": 64}, id="cgroup", marks=needs_root),
])
def test_max_rss_of_100_mb(limits, no_leaks):
    with Sandbox(**limits) as s:
        r = s.run(["python3", "-c", ALLOC_100M], timeout=60)
        assert r.returncode == 0
        assert r.oom_killed is False
        assert 100 * MiB <= r.max_rss < 512 * MiB
        small = s.run(["true"])
        assert small.max_rss < 50 * MiB    # per run, not the sandbox's peak


# -- accounting of two sandboxes at once ------------------------------------------

@pytest.mark.parametrize("limits", [
    pytest.param({}, id="rusage"),
    pytest.param({"pids": 64}, id="cgroup", marks=needs_root),
])
def test_two_sandboxes_at_once_account_separately(limits, no_leaks):
    results, spans, errors = {}, {}, []
    barrier = threading.Barrier(2, timeout=30)

    def go(name, argv):
        try:
            with Sandbox(**limits) as s:
                s.run(["true"])
                barrier.wait()
                t0 = time.monotonic()
                results[name] = s.run(argv, timeout=60)
                spans[name] = (t0, time.monotonic())
                results[name + "-stats"] = s.stats()
        except BaseException as e:   # reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=("busy", busy(1.0))),
               threading.Thread(target=go, args=("idle", ["sleep", "1"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    (b0, b1), (i0, i1) = spans["busy"], spans["idle"]
    assert b0 < i1 and i0 < b1, "the two runs did not overlap"
    busy_r, idle_r = results["busy"], results["idle"]
    assert busy_r.returncode == idle_r.returncode == 0
    assert busy_r.cpu_time >= 0.5, busy_r.cpu_time
    assert idle_r.cpu_time < 0.2, idle_r.cpu_time
    if limits:
        assert results["busy-stats"]["cpu_time"] >= 0.5
        assert results["idle-stats"]["cpu_time"] < 0.3
    else:
        assert results["busy-stats"] == results["idle-stats"] == {}


# -- s.stats() ------------------------------------------------------------------

@needs_root
def test_stats_of_a_limited_sandbox(no_leaks):
    with Sandbox(memory="256M", pids=64, cpus=1.5) as s:
        st0 = s.stats()
        assert {"cpu_time", "max_memory", "oom_killed", "oom_kills", "pids_peak",
                "pids_current"} <= set(st0)
        assert st0["pids_current"] >= 1             # the init
        r = s.run(["python3", "-c", "import time\nb = b'x' * (40 << 20)\n"
                   "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"],
                  timeout=60)
        assert r.returncode == 0
        st = s.stats()
        assert st["cpu_time"] >= 0.25 and st["cpu_time"] >= st0["cpu_time"] + 0.25
        assert st["max_memory"] >= 40 * MiB
        assert st["pids_peak"] >= 2
        assert st["pids_current"] >= 1
        assert (st["oom_kills"], st["oom_killed"]) == (0, False)
        # the whole sandbox: figures only grow across runs
        s.run(busy(0.3), timeout=60)
        st2 = s.stats()
        assert st2["cpu_time"] >= st["cpu_time"] + 0.2
        assert st2["max_memory"] >= st["max_memory"]


def test_stats_without_limits_is_empty(tiny, no_leaks):
    with Sandbox(tiny) as s:
        s.run(["true"])
        assert s.stats() == {}


# -- no cgroup survives ---------------------------------------------------------

def _hierarchy_dirs(new):
    """The new sandbox's directories: one per hierarchy, same name."""
    names = {os.path.basename(d) for d in new}
    assert len(names) == 1, new
    return names.pop()


@needs_root
def test_close_removes_the_cgroups(tiny, no_leaks):
    before = cg_dirs()
    s = Sandbox(tiny, memory="64M", pids=32, cpus=1)
    try:
        new = cg_dirs() - before
        _hierarchy_dirs(new)
        # at least the memory, pids and cpu hierarchies carry it
        assert len(new) >= 3, new
        init = s.pid
        assert any(init in procs_below(d) for d in new)
        assert s.run(["true"]).returncode == 0
    finally:
        s.close()
    assert cg_dirs() == before
    s.close()   # idempotent
    assert cg_dirs() == before


@needs_root
def test_exception_in_with_block_removes_the_cgroups(tiny, no_leaks):
    before = cg_dirs()
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox(tiny, memory="64M") as s:
            p = s.popen(["sleep", "1000"])
            assert cg_dirs() - before
            assert p.poll() is None
            raise RuntimeError("boom")
    assert cg_dirs() == before


@needs_root
def test_crash_inside_leaves_no_cgroup(tiny, no_leaks):
    before = cg_dirs()
    with Sandbox(tiny, memory="64M", pids=32) as s:
        r = s.run(sh("kill -SEGV $$"))
        assert r.returncode == -signal.SIGSEGV
        assert r.oom_killed is False
        # killing the init itself from outside: the sandbox dies mid-run
        p = s.popen(["sleep", "1000"])
        os.kill(s.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    assert cg_dirs() == before


CHILD = r'''
import os, sys, time
from pysandbox import Sandbox
s = Sandbox(memory="64M", pids=64)
p = s.popen(["sleep", "1000"])
print(os.getpid(), s.pid, flush=True)
time.sleep(1000)
'''


@needs_root
def test_sigkill_of_the_parent_then_sweep(tmp_path, no_leaks):
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=PIPE, text=True,
                            cwd=str(tmp_path))
    try:
        line = proc.stdout.readline()
        parent, init = map(int, line.split())
        orphans = cg_dirs(parent)
        assert orphans, "the child's sandbox cgroups were not found"
        held = sorted({pid for d in orphans for pid in procs_below(d)})
        assert init in held and len(held) >= 2      # the init and the sleep's tree
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait(timeout=30)
    # the init dies with its parent (and takes the sandbox's processes along)
    for pid in held:
        assert wait_gone(pid), f"pid {pid} ({comm(pid)}) survived its sandbox's parent"
    # our own live sandbox is not an orphan: the sweep must leave it alone
    with Sandbox(memory="64M") as mine:
        ours = cg_dirs()
        _cgroup.sweep_orphans()
        assert cg_dirs(parent) == set()
        assert cg_dirs() == ours
        assert mine.run(["true"]).returncode == 0


# -- a timed-out run loses its whole tree -----------------------------------------

# the grandchild calls setsid and records that it started; `main` is what
# the command does next: stay (sleep) or exit and leave the grandchild
# holding its stdout
TREE = ("setsid sh -c 'echo started > /tmp/gc; exec sleep 1000' & "
        "sleep 1000 & "
        "while [ ! -e /tmp/gc ]; do sleep 0.01; done; echo ready; {main}")


@needs_root
@pytest.mark.parametrize("main", ["exec sleep 1000", "exit 0"], ids=["main-alive", "main-exited"])
def test_timeout_kills_the_whole_tree_via_the_cgroup(tiny, main, no_leaks):
    before = cg_dirs()
    with Sandbox(tiny, pids=64, memory="256M") as s:
        new = cg_dirs() - before
        bystander = s.popen(["sleep", "1000"])          # another run: untouched
        try:
            with pytest.raises(TimeoutExpired) as ei:
                s.run(sh(TREE.format(main=main)), capture_output=True, text=True, timeout=1.5)
            output, timed_out = ei.value.output, ei.value.result.timed_out
            left = sorted({(pid, comm(pid)) for d in new for pid in procs_below(d)})
            ps = s.run(["ps", "-e", "-o", "comm="], capture_output=True, text=True).stdout
            gc_ran = s.run(["stat", "/tmp/gc"], stdout=subprocess.DEVNULL).returncode == 0
            bystander_alive = bystander.poll() is None
        finally:
            bystander.kill()
            bystander_rc = bystander.wait(timeout=30)
        runs = [d for sd in new for d in glob.glob(os.path.join(sd, "run-*"))]
        held = [pid for d in runs for pid in procs_below(d)]
        # a run's cgroup goes while the next run's command runs (and one is
        # made ahead for the run after): one more run leaves only those two
        assert s.run(["true"]).returncode == 0

        def after():
            return {os.path.basename(d) for sd in new
                    for d in glob.glob(os.path.join(sd, "run-*"))}
        wait_until(lambda: len(after()) <= 2, 10)
        after = after()
    assert output == "ready\n"
    assert timed_out is True
    assert gc_ran                                       # the setsid'd grandchild existed
    # no process of the run is left in the sandbox's cgroups, nor inside
    sleeps = [x for x in left if x[1] == "sleep"]
    assert len(sleeps) == 1, left                       # the bystander only
    assert ps.split().count("sleep") == 1, ps
    # nothing else in the sandbox was touched
    assert bystander_alive
    assert bystander_rc == -signal.SIGKILL
    # the run cgroups hold nothing (once the bystander ended too) and go
    assert held == [], held
    assert len(after) <= 2, after
    assert cg_dirs() == before


# -- rootless -------------------------------------------------------------------

@rootless_only
@pytest.mark.parametrize("kwargs", [dict(memory="64M"), dict(pids=32), dict(cpus=0.5)],
                         ids=["memory", "pids", "cpus"])
def test_rootless_cgroup_limit_is_a_setup_error(tiny, kwargs, no_leaks):
    before = cg_dirs()
    with pytest.raises(SetupError) as ei:
        Sandbox(tiny, **kwargs)
    e = ei.value
    assert isinstance(e, OSError)
    assert e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTSUP, errno.ENOENT)
    msg = str(e)
    assert "cgroup" in msg
    limit = {"memory": "memory", "pids": "pids", "cpus": "cpu"}[next(iter(kwargs))]
    assert limit in msg                                  # which limit
    assert "root" in msg or "delegat" in msg             # what to do
    assert cg_dirs() == before
    assert init_pids() == []


@rootless_only
def test_rootless_rlimits_still_work(tiny, no_leaks):
    with Sandbox(tiny, rlimits={"nofile": 64, "fsize": "4k"}) as s:
        r = s.run(sh("ulimit -n; ulimit -S -c"), capture_output=True, text=True)
        assert r.stdout.split() == ["64", "0"]
        r = s.run(["dd", "if=/dev/zero", "of=/tmp/f", "bs=1k", "count=64"], capture_output=True)
        assert r.returncode == -signal.SIGXFSZ
        assert s.stats() == {}


# -- CLI ------------------------------------------------------------------------

def cli(*args, timeout=60):
    p = subprocess.Popen([sys.executable, "-m", "pysandbox", "run", *args],
                         stdout=PIPE, stderr=PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.returncode is None:
            p.kill()
            p.wait()
    return p.returncode, out, err, p.pid


def _json_stats(err):
    return json.loads(err.strip().splitlines()[-1])


@needs_root
def test_cli_memory_json_reports_oom(no_leaks):
    rc, out, err, pid = cli("--memory", "64M", "--json", "--", "python3", "-c", HOG)
    assert rc == 128 + signal.SIGKILL, err
    assert "SURVIVED" not in out
    st = _json_stats(err)
    assert st["oom_killed"] is True
    assert st["returncode"] == -signal.SIGKILL
    assert 32 * MiB <= st["max_rss"] <= 70 * MiB
    assert cg_dirs(pid) == set()


@needs_root
def test_cli_pids_cpus_rlimit_accepted(no_leaks):
    rc, out, err, pid = cli("--pids", "16", "--cpus", "0.5", "--rlimit", "nofile=32",
                            "--json", "--", "sh", "-c", "echo ok; ulimit -n")
    assert rc == 0, err
    assert out.split() == ["ok", "32"]
    st = _json_stats(err)
    assert st["oom_killed"] is False
    assert st["pids_peak"] is not None
    rc, out, err, pid2 = cli("--pids", "16", "--stats", "--", "sh", "-c", "exit 3")
    assert rc == 3
    assert "pids peak" in err.splitlines()[-1]
    assert cg_dirs(pid) == cg_dirs(pid2) == set()


@needs_root
def test_cli_fork_bomb_under_pids(rootfs, no_leaks):
    rc, out, err, _ = cli("--rootfs", rootfs, "--pids", "16", "--timeout", "1.5", "--",
                          "sh", "-c", BOMB)
    assert rc == 124, err
    # the bomb's "Cannot fork" reached the caller's stderr before the timeout
    assert any(m in err for m in FORK_FAILED), err


def test_cli_rlimit_works_everywhere(no_leaks):
    rc, out, err, _ = cli("--rlimit", "nofile=32", "--rlimit", "fsize=4k", "--", "sh", "-c",
                          "ulimit -n; dd if=/dev/zero of=/tmp/x bs=1k count=16 2>/dev/null")
    assert rc == 128 + signal.SIGXFSZ, err
    assert out.split() == ["32"]


@rootless_only
@pytest.mark.parametrize("opt", [["--memory", "64M"], ["--pids", "16"], ["--cpus", "0.5"]],
                         ids=["memory", "pids", "cpus"])
def test_cli_rootless_limit_exits_125(opt, no_leaks):
    rc, out, err, _ = cli(*opt, "--", "true")
    assert rc == 125
    assert out == ""
    assert err.startswith("pysandbox: ")
    assert "cgroup" in err and ("root" in err or "delegat" in err)


@needs_root
def test_interrupted_close_is_finished_by_the_next(no_leaks, monkeypatch):
    """Ctrl-C raised on the way out of close()'s wait for the init (where
    the GIL comes back) lands in the cgroup's removal: the sandbox keeps
    its cgroup for the next close() (or the garbage collector) to remove."""
    s = Sandbox(memory="64M", pids=32)
    assert s.run(["true"]).returncode == 0
    dirs = list(s._cgroup.paths.values())
    real = _cgroup.SandboxCgroup.remove
    calls = []

    def remove(cg, *args, **kwargs):
        calls.append(cg)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(cg, *args, **kwargs)
    monkeypatch.setattr(_cgroup.SandboxCgroup, "remove", remove)
    with pytest.raises(KeyboardInterrupt):
        s.close()
    assert s.closed and all(os.path.isdir(d) for d in dirs)
    s.close()
    assert len(calls) == 2, calls
    assert not any(os.path.exists(d) for d in dirs), dirs
    s.close()                      # idempotent: nothing more to do
    assert len(calls) == 2


@needs_root
def test_interrupted_construction_leaves_no_cgroup(no_leaks, monkeypatch):
    """Ctrl-C while the sandbox cgroup is made (here: at its first limit
    write) removes what was made, as a failed write does."""
    real = _cgroup._apply_write

    def apply_write(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(_cgroup, "_apply_write", apply_write)
    before = cg_dirs()
    with pytest.raises(KeyboardInterrupt):
        Sandbox(memory="64M")
    assert cg_dirs() == before
    monkeypatch.setattr(_cgroup, "_apply_write", real)


@needs_root
def test_cgroup_namespace_is_rooted_at_the_sandbox_cgroup(no_leaks):
    """The sandbox's cgroup namespace is made once the init is in the
    sandbox's cgroups: from inside, the init is at the root of each, and no
    path names the host's side (pysandbox-<host pid>-N)."""
    with Sandbox(memory="64M", pids=32) as s:
        init = s.run(["cat", "/proc/1/cgroup"], capture_output=True, text=True)
        run = s.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True)
    assert init.returncode == 0 and run.returncode == 0
    assert "pysandbox-" not in init.stdout + run.stdout, (init.stdout, run.stdout)
    paths = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in init.stdout.splitlines()}
    limited = [c for c in paths if "memory" in c.split(",") or "pids" in c.split(",")]
    assert len(limited) == 2, paths
    assert all(paths[c] == "/" for c in limited), paths


@needs_root
def test_interrupt_as_the_cgroup_mkdir_returns_leaves_nothing(no_leaks, monkeypatch):
    """Ctrl-C raised the moment mkdir of the sandbox cgroup has returned
    (before the directory was noted as made): it is removed all the same."""
    real = os.mkdir
    hit = []

    def mkdir(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if os.path.basename(path).startswith("pysandbox-") and not hit:
            hit.append(path)
            raise KeyboardInterrupt
    monkeypatch.setattr(os, "mkdir", mkdir)
    before = cg_dirs()
    with pytest.raises(KeyboardInterrupt):
        Sandbox(memory="64M")
    monkeypatch.setattr(os, "mkdir", real)
    assert hit and not os.path.exists(hit[0]), hit
    assert cg_dirs() == before
