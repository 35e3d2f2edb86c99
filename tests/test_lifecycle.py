"""Open, close, garbage collection and death of the parent: a sandbox never
outlives its owner and leaves nothing behind."""
import gc
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from sbxutil import init_pids, pids_in_ns
from sbxutil import alive, sh_run as sh, wait_until
from pysandbox import Sandbox, SandboxError

pytestmark = pytest.mark.timeout(120)





def start_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def now_ticks():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")


def pid_ns_members(ns_link, started_before=None):
    """Host pids of every process in the pid namespace ns_link (only those
    started before the given uptime in ticks: a namespace's inode number is
    reused once it is freed, by whichever namespace comes next)."""
    out = []
    for d in pids_in_ns(ns_link):
        try:
            if started_before is not None and start_ticks(d) > started_before:
                continue
            if alive(d):
                out.append(int(d))
        except OSError:
            continue
    return out


@pytest.fixture(scope="module")
def warm(rootfs):
    """One sandbox before any leak count: the sealed init memfd and the
    /dev/null fd are made once per process, on first use."""
    with Sandbox(rootfs) as s:
        s.run(["true"], timeout=20)


# -- close ----------------------------------------------------------------------

def test_close_is_idempotent_and_flips_closed(rootfs):
    s = Sandbox(rootfs)
    pid = s.pid
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    assert not s.closed
    assert alive(pid) and pid in init_pids()
    members = pid_ns_members(ns)
    assert pid in members
    s.close()
    assert s.closed
    assert s.pid is None
    assert pid not in init_pids()
    assert [m for m in members if alive(m)] == []
    s.close()
    s.close()
    assert s.closed


def test_close_kills_running_commands(rootfs):
    s = Sandbox(rootfs)
    ns = os.readlink(f"/proc/{s.pid}/ns/pid")
    p = s.popen(["sleep", "1000"])
    q = s.popen(["sh", "-c", "setsid sleep 1000 & sleep 1000"])
    members = pid_ns_members(ns)
    assert len(members) >= 5   # init, two supervisors, sleep, sh, setsid sleep
    s.close()
    assert [m for m in members if alive(m)] == []
    assert p.wait(timeout=10) is not None
    assert q.wait(timeout=10) is not None


def test_run_after_close_raises(rootfs):
    s = Sandbox(rootfs)
    s.close()
    with pytest.raises(SandboxError):
        s.run(["true"], timeout=10)
    with pytest.raises(SandboxError):
        s.popen(["true"])


def test_with_block_closes(rootfs):
    with Sandbox(rootfs) as s:
        pid = s.pid
        assert pid in init_pids()
    assert s.closed
    assert pid not in init_pids()


def test_with_block_closes_on_exception(rootfs):
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox(rootfs) as s:
            pid = s.pid
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            s.popen(["sleep", "1000"])
            members = pid_ns_members(ns)
            raise RuntimeError("boom")
    assert s.closed
    assert pid not in init_pids()
    assert [m for m in members if alive(m)] == []


# -- zombies --------------------------------------------------------------------

def test_no_zombies_after_many_orphans():
    with Sandbox() as s:
        r = sh(s, "for i in $(seq 50); do (sleep 0 &) ; done; echo done")
        assert r.returncode == 0 and r.stdout == "done\n", r.stderr

        def listing():
            return sh(s, "ps -eo stat=,comm=").stdout

        def clean():
            out = listing()
            stats = [line.split()[0] for line in out.splitlines()]
            comms = [line.split()[1] for line in out.splitlines()]
            # and no supervisor of a finished run lingers: at most the one
            # running ps and a spare (a third, forked on a busy machine,
            # leaves after a second without a run)
            return not any(st.startswith("Z") for st in stats) and \
                "sleep" not in out.split() and comms.count("pysandbox-run") <= 2 and out
        out = wait_until(clean, 10)
        assert out, listing()


def test_no_zombies_from_orphans_of_a_live_command():
    """Orphans of a command that is still running are reaped too."""
    with Sandbox() as s:
        p = s.popen(["sh", "-c", "for i in $(seq 30); do (sleep 0 &) ; done; "
                                 "sleep 1000"])
        try:
            def clean():
                out = sh(s, "ps -eo stat=,comm=").stdout
                rows = [ln.split() for ln in out.splitlines()]
                zombies = [r for r in rows if r[0].startswith("Z")]
                sleeps = [r for r in rows if r[1] == "sleep"]
                return not zombies and len(sleeps) == 1
            assert wait_until(clean), sh(s, "ps -eo pid,ppid,stat,comm").stdout
        finally:
            p.kill()
            p.wait(timeout=10)


# -- parent death -----------------------------------------------------------------

OWNER = r"""
import sys, time
from pysandbox import Sandbox
s = Sandbox(sys.argv[1])
p = s.popen(["sleep", "1000"])
q = s.popen(["sh", "-c", "setsid sleep 1000 & exec sleep 1000"])
print(s.pid, p.pid, q.pid, flush=True)
time.sleep(1000)
"""

# A subreaper between the test and the sandbox owner: once the owner dies, its
# orphans (the sandbox init, if it outlived it) come here and are reaped, so
# that a dead init does not linger as a zombie of the host's PID 1.
REAPER = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
owner = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(owner.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def _readline(stream, timeout):
    r, _, _ = select.select([stream], [], [], timeout)
    assert r, "no answer from the child process"
    return stream.readline()


def test_sigkill_of_parent_leaves_no_sandbox_process(rootfs):
    reaper = subprocess.Popen([sys.executable, "-c", REAPER, OWNER, rootfs],
                              stdout=subprocess.PIPE, text=True)
    members = []
    owner = None
    try:
        owner = int(_readline(reaper.stdout, 30))
        init_pid = int(_readline(reaper.stdout, 30).split()[0])
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
        assert ns != os.readlink("/proc/self/ns/pid")
        # init, 2 supervisors, sleep, sleep, setsid sleep
        members = wait_until(lambda: (lambda m: m if len(m) >= 6 else None)(
            pid_ns_members(ns)))
        assert members and init_pid in members, pid_ns_members(ns)
        os.kill(owner, signal.SIGKILL)
        killed_at = now_ticks() + 1
        members = sorted(set(members) | set(pid_ns_members(ns, killed_at)))
        gone = wait_until(lambda: not [m for m in members if alive(m)]
                          and not pid_ns_members(ns, killed_at), timeout=5)
        assert gone, ([m for m in members if alive(m)], pid_ns_members(ns, killed_at))
        assert not alive(init_pid)
        assert reaper.wait(timeout=10) == 0
    finally:
        for pid in members + ([owner] if owner else []):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if reaper.poll() is None:
            reaper.kill()
        reaper.wait(timeout=10)
        reaper.stdout.close()


# -- garbage collection ---------------------------------------------------------------

def test_garbage_collection_ends_init(rootfs):
    s = Sandbox(rootfs)
    s.popen(["sleep", "1000"])
    pid = s.pid
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    members = pid_ns_members(ns)
    assert pid in members and len(members) >= 3
    del s
    gc.collect()
    assert pid not in init_pids()
    assert [m for m in members if alive(m)] == []


def test_garbage_collection_of_a_sandbox_in_a_cycle(rootfs):
    class Holder:
        pass
    h = Holder()
    h.me = h
    h.s = Sandbox(rootfs)
    pid = h.s.pid
    del h
    gc.collect()
    assert pid not in init_pids()


# -- leaks ------------------------------------------------------------------------

def _temp_entries():
    found = set()
    for d in {"/tmp", "/dev/shm", tempfile.gettempdir()}:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        found |= {os.path.join(d, n) for n in names if "pysandbox" in n.lower()}
    return found


def test_many_cycles_leak_nothing(warm, no_leaks, rootfs):
    temp_before = _temp_entries()
    for i in range(200):
        with Sandbox(rootfs) as s:
            if i % 3 == 0:
                r = s.run(["echo", str(i)], capture_output=True, timeout=20)
                assert r.stdout == f"{i}\n".encode()
            elif i % 3 == 1:
                r = s.run(["sh", "-c", "exit 3"], timeout=20)
                assert r.returncode == 3
            else:
                p = s.popen(["sleep", "1000"])
                assert p.poll() is None
        if i % 3 == 2:
            assert p.wait(timeout=10) is not None
    gc.collect()
    assert _temp_entries() == temp_before


def test_failed_setup_leaks_nothing(warm, no_leaks, rootfs):
    """A sandbox that cannot be built (a mount target below a file) raises
    SetupError and leaves nothing behind either."""
    from pysandbox import SetupError, Tmpfs
    for _ in range(20):
        with pytest.raises(SetupError):
            Sandbox(rootfs, mounts=[Tmpfs("/canary/sub")])


def test_forked_child_cannot_use_the_parents_sandbox(rootfs):
    """A forked child's copy of a Sandbox shares the parent's channels and
    run ids: a run or a signal from it would land in the parent's runs.
    Both are refused there; the parent's sandbox goes on working."""
    with Sandbox(rootfs) as s:
        assert s.run(["true"]).returncode == 0
        p = s.popen(["sleep", "30"])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                  # the child
            said = []
            for label, act in (("run", lambda: s.run(["true"])),
                               ("popen", lambda: s.popen(["true"])),
                               ("kill", p.kill)):
                try:
                    act()
                    said.append(f"{label}:ran")
                except SandboxError as exc:
                    said.append(f"{label}:{'forked child' in str(exc)}")
                except BaseException as exc:          # noqa: BLE001
                    said.append(f"{label}:{type(exc).__name__}")
            os.write(w, " ".join(said).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            said = f.read()
        assert os.waitpid(pid, 0)[1] == 0
        assert said == "run:True popen:True kill:True", said
        assert p.poll() is None                       # not killed by the child
        assert s.run(["true"]).returncode == 0
        p.kill()
        assert p.wait() == -9


@pytest.mark.skipif(not shutil.which("strace") or os.geteuid() != 0,
                    reason="needs strace and root (to hold a thread at its sendmsg)")
def test_close_while_a_run_is_being_sent_keeps_it_off_other_sandboxes():
    """A run's request is sent without the GIL.  If another thread closes
    the sandbox meanwhile and a new sandbox takes the freed fd number, the
    request must not land there: it is sent on a copy of the fd taken
    with the GIL held (it used to run in the new sandbox, its output
    returned as the old one's).  strace holds the sending thread at the
    entry of its sendmsg for 0.7 s while the main thread closes the
    sandbox, opens another and gives the freed number to the new one's
    run queue (dup2: what a new socket taking the lowest free number did
    when the numbers lined up)."""
    import threading
    before = set(_socket_fds())
    one = Sandbox(hostname="one")
    one_socks = set(_socket_fds()) - before
    got, tid, go = [], [], threading.Event()

    def worker():
        tid.append(threading.get_native_id())
        go.wait()
        try:
            got.append(one.run(["hostname"], capture_output=True, text=True).stdout)
        except Exception as exc:                   # noqa: BLE001
            got.append(exc)
    t = threading.Thread(target=worker)
    t.start()
    while not tid:
        time.sleep(0.001)
    tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(tid[0]),
                               "-e", "trace=sendmsg",
                               "-e", "inject=sendmsg:delay_enter=700000:when=1"])
    two = None
    try:
        assert wait_until(lambda: _traced(tid[0]), 10), "strace did not attach"
        go.set()
        time.sleep(0.2)                 # the worker waits at its sendmsg
        one.close()
        two = Sandbox(hostname="two")
        # the freed number of one's run queue now names two's (each sandbox
        # makes its control socket pair first, then its run queue's)
        two_socks = set(_socket_fds()) - before - one_socks
        reused = max(one_socks)
        os.dup2(max(two_socks), reused)
        t.join(30)
        os.close(reused)
        assert not t.is_alive()
        assert got and got[0] != "two\n", got
        assert isinstance(got[0], SandboxError), got
    finally:
        tracer.kill()
        tracer.wait()
        go.set()
        t.join(30)
        one.close()
        if two is not None:
            two.close()


def _socket_fds():
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                out.append(int(name))
        except OSError:
            pass
    return out


def _traced(tid):
    with open(f"/proc/{tid}/status") as f:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
