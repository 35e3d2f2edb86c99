"""SandboxPool: pre-built sandboxes, a fresh one per checkout, refilled by one
background thread, nothing left behind after close."""
import gc
import os
import time
import threading

import pytest

from sbxutil import child_pids, init_pids, open_fds
from sbxutil import alive, sh_run as sh, wait_until
from pysandbox import Bind, Sandbox, SandboxError, SandboxPool, SetupError
from pysandbox._pool import PoolTimeout

pytestmark = pytest.mark.timeout(120)

REFILL_THREAD = "pysandbox-pool-refill"





def pid_ns_members(ns_link):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns_link and alive(d):
                    out.append(int(d))
            except OSError:
                pass
    return out


def refill_threads():
    return [t for t in threading.enumerate() if t.name == REFILL_THREAD and t.is_alive()]


def our_fds():
    """This process's fds (that are still open once listed)."""
    out = []
    for fd in open_fds():
        try:
            os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        out.append(fd)
    return out


@pytest.fixture(scope="module", autouse=True)
def warm(rootfs):
    """One sandbox before any leak count: the sealed init memfd and the
    /dev/null fd are made once per process, on first use."""
    with Sandbox(rootfs) as s:
        s.run(["true"], timeout=20)


@pytest.fixture(autouse=True)
def nothing_left(warm):
    """Every test: no init, child, refill thread or fd left behind."""
    fds = our_fds()
    yield
    gc.collect()
    assert wait_until(lambda: refill_threads() == [], 10), "refill thread left running"
    assert init_pids() == [], "sandbox init left running"
    assert child_pids() == [], "child process (or zombie) left behind"
    assert our_fds() == fds, "file descriptors leaked"


# -- isolation between checkouts ------------------------------------------------

def test_no_state_leaks_between_checkouts(rootfs):
    # SYS_ADMIN and no seccomp filter: the command may change the hostname
    with SandboxPool(1, rootfs, capabilities=["SYS_ADMIN", "KILL"], seccomp=None) as pool:
        with pool.sandbox(timeout=30) as a:
            first_pid = a.pid
            ns = os.readlink(f"/proc/{a.pid}/ns/pid")
            r = sh(a, "echo changed > /canary; echo x > /tmp/left; echo y > /dev/shm/left;"
                      " mkdir /newdir; hostname polluted; hostname")
            assert r.returncode == 0, r.stderr
            assert r.stdout == "polluted\n"
            bg = a.popen(["sh", "-c", "setsid sleep 1000 & sleep 1000"])
            assert wait_until(lambda: "sleep" in sh(a, "ps -o comm").stdout)
            r = sh(a, "cat /canary /tmp/left /dev/shm/left; hostname")
            assert r.stdout == "changed\nx\ny\npolluted\n"   # state is there in a...
            members = pid_ns_members(ns)
            assert len(members) >= 4
        # ...and gone, with every process of a's pid namespace, at check-in
        assert wait_until(lambda: [m for m in members if alive(m)] == [])
        assert bg.wait(timeout=10) == -9

        with pool.sandbox(timeout=30) as b:
            assert b.pid != first_pid
            r = sh(b, "cat /canary; for f in /tmp/left /dev/shm/left /newdir; do"
                      " test -e $f && echo found $f; done; hostname; ps -o comm")
            assert r.returncode == 0, r.stderr
            lines = r.stdout.split("\n")
            assert lines[:2] == ["original", "sandbox"], r.stdout
            assert "sleep" not in r.stdout
    with open(os.path.join(rootfs, "canary")) as f:
        assert f.read() == "original\n"      # the rootfs on disk untouched


def test_every_checkout_is_a_new_sandbox(rootfs):
    with SandboxPool(2, rootfs) as pool:
        pids = []
        for _ in range(6):
            with pool.sandbox(timeout=30) as s:
                pids.append(s.pid)
                assert not s.closed
                assert sh(s, "echo hi").stdout == "hi\n"
        assert len(set(pids)) == 6
        assert wait_until(lambda: not any(alive(p) for p in pids))


def test_kwargs_reach_the_sandboxes(rootfs, tmp_path):
    (tmp_path / "data").write_text("from the host\n")
    with SandboxPool(2, rootfs=rootfs, hostname="pooled", env={"PATH": "/bin", "X": "1"},
                     mounts=[Bind(str(tmp_path), "/data")], read_only=True) as pool:
        assert pool.wait_ready(30)
        for _ in range(3):
            with pool.sandbox(timeout=30) as s:
                r = sh(s, "hostname; echo $X; cat /data/data; touch /f 2>/dev/null || echo ro")
                assert r.stdout == "pooled\n1\nfrom the host\nro\n", r


# -- refill -----------------------------------------------------------------------

def test_pool_refills_in_the_background(rootfs):
    pool = SandboxPool(2, rootfs)
    try:
        assert pool.wait_ready(30)
        assert pool.idle == 2
        ready = set(init_pids())
        assert len(ready) == 2
        a = pool.checkout()
        b = pool.checkout()
        assert {a.pid, b.pid} == ready
        # both are out: the thread builds two new ones without being asked
        assert pool.wait_ready(30)
        assert pool.idle == 2
        assert len(set(init_pids()) - ready) == 2
        pool.checkin(a)
        pool.checkin(b)
        assert pool.wait_ready(30)       # and reaps what was checked in
        assert wait_until(lambda: len(init_pids()) == 2)
        assert not (set(init_pids()) & ready)
    finally:
        pool.close()
    assert init_pids() == []


def test_refill_needs_no_waiter(rootfs):
    # nobody waits: a sandbox still checked out is replaced at its check-in,
    # or at once when fewer than half of the pool are left ready
    with SandboxPool(2, rootfs) as pool:
        assert pool.wait_ready(30)
        with pool.sandbox() as s:
            assert pool.idle == 1
            time.sleep(0.3)                  # half is ready: nothing is built
            assert pool.idle == 1 and len(init_pids()) == 2
        assert wait_until(lambda: pool.idle == 2, 20)
        assert s.pid not in [x.pid for x in pool._state.idle]
        assert wait_until(lambda: len(init_pids()) == 2, 20)   # s reaped
    with SandboxPool(4, rootfs) as pool:
        assert pool.wait_ready(30)
        held = [pool.checkout() for _ in range(3)]      # one of four left
        try:
            assert wait_until(lambda: pool.idle == 4, 20)
            assert len(init_pids()) == 7
        finally:
            for h in held:
                pool.checkin(h)
        assert wait_until(lambda: len(init_pids()) == 4, 20)


def test_checkout_waits_for_a_refill_or_times_out(rootfs):
    with SandboxPool(1, rootfs) as pool:
        held = [pool.checkout(timeout=30)]
        timed_out = False
        try:
            # the pool is empty right after taking its only sandbox: the
            # replacement takes milliseconds to build
            for _ in range(5):
                try:
                    held.append(pool.checkout(timeout=0))
                except PoolTimeout as exc:
                    assert isinstance(exc, TimeoutError) and isinstance(exc, SandboxError)
                    timed_out = True
                    break
            assert timed_out
            s = pool.checkout(timeout=30)      # waits for the replacement
            held.append(s)
            assert sh(s, "echo ok").stdout == "ok\n"
            assert len({h.pid for h in held}) == len(held)
        finally:
            for h in held:
                pool.checkin(h)


def test_refill_failure_is_raised_by_the_next_checkout(rootfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("here\n")
    with SandboxPool(1, rootfs, mounts=[Bind(str(src), "/data")]) as pool:
        os.unlink(src / "f")
        os.rmdir(src)
        with pool.sandbox(timeout=30) as s:   # built before the rmdir
            assert sh(s, "ls /data; echo done").stdout == "done\n"
        # its replacement cannot be built: the bind source is gone
        with pytest.raises(FileNotFoundError) as info:
            with pool.sandbox(timeout=30):
                pass
        assert str(src) in str(info.value)
        src.mkdir()
        (src / "f").write_text("back\n")
        # the error was handed out once; the thread tries again
        with pool.sandbox(timeout=30) as s:
            assert sh(s, "cat /data/f").stdout == "back\n"


# -- errors -----------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, exc", [
    ((0,), {}, ValueError),
    ((-1,), {}, ValueError),
    (("2",), {}, TypeError),
    ((True,), {}, TypeError),
    ((1,), {"network": "bogus"}, ValueError),
    ((1,), {"no_such_option": 1}, TypeError),
    ((1,), {"rootfs": "/nonexistent/rootfs"}, FileNotFoundError),
    ((1,), {"mounts": [Bind("/nonexistent/src", "/x")]}, OSError),
])
def test_bad_arguments_raise_at_construction(args, kwargs, exc):
    with pytest.raises(exc):
        SandboxPool(*args, **kwargs)
    assert refill_threads() == []
    assert init_pids() == []


def test_setup_error_raises_at_construction(tmp_path):
    # passes validation, fails while the sandbox is built: the first one is
    # built synchronously, so the error is the caller's at once
    (tmp_path / "file").write_text("")
    with pytest.raises(SetupError):
        SandboxPool(2, mounts=[Bind(str(tmp_path / "file"), "/proc/x")])
    assert refill_threads() == []
    assert init_pids() == []


def test_bad_checkout_timeout(rootfs):
    with SandboxPool(1, rootfs) as pool:
        with pytest.raises(ValueError):
            pool.checkout(timeout=-1)
        with pytest.raises(TypeError):
            pool.checkout(timeout="1")


# -- close --------------------------------------------------------------------

def test_close_stops_everything(rootfs):
    pool = SandboxPool(3, rootfs)
    assert pool.wait_ready(30)
    with pool.sandbox() as s:
        assert sh(s, "echo hi").stdout == "hi\n"
    assert pool.wait_ready(30)
    inits = init_pids()
    assert len(inits) == 3 and len(refill_threads()) == 1
    pool.close()
    assert pool.closed
    assert init_pids() == []
    assert not any(alive(p) for p in inits)
    assert refill_threads() == []
    with pytest.raises(SandboxError, match="closed"):
        with pool.sandbox():
            pass
    pool.close()                           # idempotent


def test_close_with_a_sandbox_checked_out(rootfs):
    with SandboxPool(2, rootfs) as pool:
        with pool.sandbox(timeout=30) as s:
            pool.close()
            assert refill_threads() == []
            assert init_pids() == [s.pid]     # only the one in use is left
            assert sh(s, "echo still").stdout == "still\n"
        assert init_pids() == []


def test_with_block_closes_pool_on_exception(rootfs):
    with pytest.raises(RuntimeError, match="boom"):
        with SandboxPool(2, rootfs) as pool:
            with pool.sandbox(timeout=30) as s:
                s.popen(["sleep", "1000"])
                raise RuntimeError("boom")
    assert pool.closed
    assert init_pids() == []


def test_abandoned_pool_is_collected(rootfs):
    pool = SandboxPool(2, rootfs)
    assert pool.wait_ready(30)
    assert len(init_pids()) == 2
    del pool
    gc.collect()
    assert wait_until(lambda: refill_threads() == [])
    assert init_pids() == []


# -- concurrency ----------------------------------------------------------------

def test_threads_share_a_pool(rootfs):
    results, errors = [], []

    def worker(n):
        try:
            for i in range(3):
                with pool.sandbox(timeout=60) as s:
                    r = sh(s, f"cat /marker 2>/dev/null; echo {n}-{i} > /marker; cat /marker",
                           timeout=30)
                    results.append((s.pid, r.returncode, r.stdout))
        except BaseException as exc:   # noqa: BLE001 -- reported below
            errors.append(exc)

    with SandboxPool(2, rootfs) as pool:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 18
    # every checkout had its own sandbox, and never saw another's marker
    assert len({pid for pid, _, _ in results}) == 18
    for _, rc, out in results:
        assert rc == 0
        assert len(out.split()) == 1, out


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup limits need root on this machine")
def test_pool_collected_where_its_refill_thread_waits(rootfs, no_leaks, monkeypatch):
    """A pool dropped in a reference cycle is collected in whatever thread
    runs the garbage collector: here the library's cgroup thread, while it
    holds the lock of a sandbox that the pool's refill thread is closing
    (it waits for that lock).  The pool's finalizer must not wait for the
    refill thread: everything still ends, nothing is left."""
    from pysandbox import _cgroup
    real = _cgroup.RunCgroup.open_stats
    armed, collected = threading.Event(), threading.Event()

    def open_stats(run):
        real(run)
        if armed.is_set():
            armed.clear()
            time.sleep(0.3)     # meanwhile the check-in reaches the refill thread
            gc.collect()        # which collects the pool here, lock held
            collected.set()
    monkeypatch.setattr(_cgroup.RunCgroup, "open_stats", open_stats)
    gc.disable()                # (only the collection above)
    try:
        pool = SandboxPool(1, rootfs, memory="64M")
        pool.cycle = pool
        s = pool.checkout()
        dirs = list(s._cgroup.paths.values())
        armed.set()
        p = s.popen(["sleep", "0.2"])
        pool.checkin(s)
        del pool, s, p
        assert collected.wait(10)
        assert wait_until(lambda: not any(os.path.exists(d) for d in dirs), 10), dirs
    finally:
        gc.enable()
    gc.collect()


def test_forked_child_exits_while_a_parent_thread_holds_the_pool(rootfs):
    """A fork while another thread holds the pool's lock (a checkout, the
    refill thread): neither the child's check-in of a sandbox it inherited
    (a with pool.sandbox() block it leaves) nor its exit may touch the
    parent's pool (both hung on the copied, held lock)."""
    pool = SandboxPool(1, rootfs)
    try:
        s = pool.checkout(timeout=20)
        with pool._state.cond:           # as a thread of the parent would
            pid = os.fork()
            if pid == 0:
                pool.checkin(s)          # (the end of a with pool.sandbox() block)
                os._exit(_run_exit_handlers_then(0))
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung at its exit")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
        assert s.run(["true"]).returncode == 0   # the child's check-in left it alone
        pool.checkin(s)
        with pool.sandbox(timeout=20) as s:
            assert s.run(["true"]).returncode == 0
    finally:
        pool.close()


def _run_exit_handlers_then(code):
    """In a forked child: what a normal interpreter exit runs (atexit, where
    the pools are closed), then the status to _exit with."""
    import atexit
    atexit._run_exitfuncs()
    return code


POOL_DROPPED_AT_EXIT = """
import gc, sys
sys.path.insert(0, sys.argv[1])
from pysandbox import SandboxPool
p = SandboxPool(2, memory="64M", pids=32)
with p.sandbox() as s:
    s.run(["true"])
del p, s
gc.collect()
print("dropped", flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup limits need root on this machine")
def test_pool_dropped_just_before_exit_leaves_no_cgroup():
    """A pool collected just before the interpreter exits: its refill
    thread is still replacing the checked-in sandbox.  The exit waits for
    it, so the replacement's cgroup is removed (with the thread frozen at
    finalization, it stayed in 8 exits of 10)."""
    import subprocess
    import sys
    from sbxutil import cg_dirs
    here = os.path.dirname(os.path.dirname(os.path.abspath(__import__("pysandbox").__file__)))
    for _ in range(5):
        with subprocess.Popen([sys.executable, "-c", POOL_DROPPED_AT_EXIT, here],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
            out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out == "dropped\n", (p.returncode, out, err)
        left = cg_dirs(p.pid)
        assert not left, left
