"""SandboxPool: sandboxes built ahead of time, one fresh sandbox per checkout.

    with SandboxPool(4, rootfs="/srv/rootfs") as pool:
        with pool.sandbox() as s:          # ready at once (or waits for one)
            s.run(["make", "test"], timeout=60)

Building a sandbox (clone, mounts, pivot_root) costs a few milliseconds;
running a command in an open one costs about what subprocess.run costs.  A
pool moves the build off the caller's path: one background thread keeps
`size` open sandboxes ready.  A sandbox is never reused: at check-in it is
killed (its whole pid namespace dies at once) and the background thread
reaps it and builds a replacement, so nothing a command did (files written
to / or /tmp, processes left running, hostname, ...) can be seen by the
next checkout.  The replacement of a sandbox still checked out is built
early when fewer than half of `size` are left ready or a caller waits.

Errors: bad arguments raise at SandboxPool() (the first sandbox is built
there, synchronously, so SetupError too).  A failure to build a
replacement later is raised by the next pool.sandbox() call; the thread
then tries again.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque

from ._engine import Sandbox
from ._errors import SandboxError

__all__ = ["SandboxPool", "PoolTimeout"]


class PoolTimeout(SandboxError, TimeoutError):
    """pool.sandbox(timeout=...) found no sandbox ready in time."""


_live_pools = weakref.WeakSet()
# every refill thread still running, with its state: a pool collected
# shortly before the interpreter exits is gone from _live_pools, but its
# thread may still be building or closing a sandbox (its cgroup, if the
# thread were frozen at finalization, would stay on disk)
_refills = {}
_refills_lock = threading.Lock()
EXIT_JOIN_TIMEOUT = 10.0


@atexit.register
def _close_live_pools():
    # at interpreter exit, before threads stop: a daemon thread woken during
    # finalization never runs again, so joining it there would hang
    for pool in list(_live_pools):
        pool.close()
    with _refills_lock:
        left = list(_refills.items())
    for t, st in left:
        with st.cond:
            st.closed = True
            st.cond.notify_all()
    for t, st in left:
        if t is not threading.current_thread():
            t.join(EXIT_JOIN_TIMEOUT)


def _forget_parents_pools():
    # a forked child owns none of them (their locks may have been copied
    # held by a thread that does not exist here: closing them at the
    # child's exit hung)
    global _refills_lock
    _refills_lock = threading.Lock()
    _refills.clear()
    _live_pools.clear()


os.register_at_fork(after_in_child=_forget_parents_pools)


class _State:
    """What the refill thread shares with the pool.  The thread holds this,
    not the pool, so an abandoned pool can still be garbage collected (its
    __del__ closes it and stops the thread)."""

    def __init__(self, size, rootfs, kwargs):
        self.size = size
        self.rootfs = rootfs
        self.kwargs = kwargs
        self.cond = threading.Condition(threading.Lock())
        self.idle = deque()       # open sandboxes, ready to be checked out
        self.dead = []            # killed at check-in, still to be reaped
        self.error = None         # a refill failure, for the next checkout
        self.closed = False
        self.busy = False         # the thread is reaping or building
        self.waiters = 0          # callers blocked in checkout / wait_ready
        self.last_checkout = 0.0


# When the refill thread is woken by a checkout (under half the pool left
# ready, see _refill_now), the replacement is built at once if a caller is
# waiting or nothing is ready; otherwise the build waits until the checkout
# ends or this long, so that it does not compete (for the CPU and the GIL)
# with the first command of the sandbox just handed out.
REFILL_DELAY = 0.02


def _refill_now(st):
    """Under st.cond, at a checkout: does the refill thread need waking
    now?  Not while at least half the pool is still ready: the check-in
    (checkin(), the end of pool.sandbox()) wakes it.  (Waking it costs the
    checkout ~12 us and, with the thread taking the lock and the GIL on the
    other CPU, slows the first command of the sandbox just handed out by
    10-40 us.)"""
    return st.waiters > 0 or 2 * len(st.idle) < st.size


def _must_wait(st):
    """Called by the refill thread under st.cond: how long to wait before
    there is work (0: work now, None: until notified)."""
    if st.closed or st.dead:
        return 0
    if st.error is not None or len(st.idle) >= st.size:
        return None
    if not st.idle or st.waiters:
        return 0
    return max(0.0, st.last_checkout + REFILL_DELAY - time.monotonic())


def _refill(st):
    """The refill thread: reap checked-in sandboxes, keep `size` ready.
    `st.busy` is set while it works outside the lock, and every change is
    announced with notify_all (wait_ready() waits for busy to clear)."""
    try:
        _refill_loop(st)
    finally:
        with _refills_lock:
            _refills.pop(threading.current_thread(), None)


def _refill_loop(st):
    cond = st.cond
    while True:
        with cond:
            while True:
                left = _must_wait(st)
                if left == 0:
                    break
                cond.wait(left)
            dead, st.dead = st.dead, []
            stop = st.closed
            build = not stop and st.error is None and len(st.idle) < st.size
            st.busy = True
        for s in dead:                   # off the checkout path: waitpid
            _close_quietly(s)
        s = exc = None
        if build:
            try:
                s = Sandbox(st.rootfs, **st.kwargs)
            except BaseException as e:   # noqa: BLE001 -- handed to a caller
                exc = e
        with cond:
            st.busy = False
            if exc is not None:
                st.error = exc
            elif s is not None and not st.closed:
                st.idle.append(s)
                s = None
            stop = stop or st.closed
            cond.notify_all()
        if s is not None:                # the pool was closed meanwhile
            _close_quietly(s)
        if stop:
            return


def _raise_if_unusable(st):
    """Under st.cond: raise if the pool is closed, or the refill failure
    waiting for a caller (it is this caller's; the thread may try again)."""
    if st.closed:
        raise SandboxError("the pool is closed")
    if st.error is not None:
        exc, st.error = st.error, None
        st.cond.notify_all()
        raise exc


def _close_quietly(s):
    try:
        s.close()
    except Exception:                    # noqa: BLE001 -- close must go on
        pass


class SandboxPool:
    """`size` pre-built sandboxes, all made with Sandbox(rootfs, **kwargs).

    `pool.sandbox(timeout=None)` is a context manager giving a fresh,
    never-used sandbox; at the end of the with-block that sandbox is killed
    (everything running in it dies) and replaced in the background.
    `pool.close()` (or leaving `with SandboxPool(...)`) closes the ready
    sandboxes and stops the thread; sandboxes still checked out are closed
    when their with-block ends."""

    def __init__(self, size, rootfs=None, **sandbox_kwargs):
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._state = None
        self._thread = None
        self._owner = os.getpid()
        first = Sandbox(rootfs, **sandbox_kwargs)   # raises config/setup errors here
        st = _State(size, rootfs, sandbox_kwargs)
        st.idle.append(first)
        self._state = st
        self._thread = threading.Thread(target=_refill, args=(st,), daemon=True,
                                        name="pysandbox-pool-refill")
        with _refills_lock:
            _refills[self._thread] = st
        try:
            self._thread.start()
        except BaseException:
            with _refills_lock:
                _refills.pop(self._thread, None)
            self._thread = None
            self.close()
            raise
        _live_pools.add(self)

    # -- checkout ----------------------------------------------------------
    @property
    def size(self):
        return self._state.size

    @property
    def idle(self):
        """How many sandboxes are ready right now."""
        st = self._state
        with st.cond:
            return len(st.idle)

    @property
    def closed(self):
        return self._state is None or self._state.closed

    def _check_open(self):
        if self._state is None or self._state.closed:
            raise SandboxError("the pool is closed")
        if os.getpid() != self._owner:
            raise SandboxError("a SandboxPool cannot be used in a forked child")

    def checkout(self, timeout=None):
        """Take a ready sandbox (waiting up to `timeout` seconds for one).
        The caller owns it and ends it with pool.checkin(s) (pool.sandbox()
        does that): closing it also works, but the pool then replaces it
        only when a later checkout leaves it under half full."""
        self._check_open()
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
            if not timeout >= 0:
                raise ValueError(f"timeout must be a non-negative number, got {timeout}")
            deadline = time.monotonic() + timeout
        st = self._state
        with st.cond:
            while True:
                _raise_if_unusable(st)
                if st.idle:
                    s = st.idle.popleft()
                    st.last_checkout = time.monotonic()
                    if _refill_now(st):
                        st.cond.notify_all()      # running low: refill
                    return s
                if timeout is None:
                    left = None
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PoolTimeout(f"no sandbox ready within {timeout} s "
                                          f"(pool of {st.size})")
                self._wait(left)

    def checkin(self, s):
        """End a checked-out sandbox: kill it now (its pid namespace dies
        with its init) and let the refill thread reap it."""
        if os.getpid() != self._owner:
            return     # (a forked child: the sandbox and the pool are the parent's)
        st = self._state
        pid = s.pid
        if pid is not None:
            # init is our unreaped child until close(): the pid is still its
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with st.cond:
            if not st.closed:
                st.dead.append(s)
                st.cond.notify_all()
                return
        s.close()                                 # pool closed: reap here

    @contextlib.contextmanager
    def sandbox(self, timeout=None):
        """with pool.sandbox() as s: ... -- a fresh sandbox, ended on exit."""
        s = self.checkout(timeout)
        try:
            yield s
        finally:
            self.checkin(s)

    def wait_ready(self, timeout=None):
        """Block until `size` sandboxes are ready and every checked-in one is
        reaped; True, or False on timeout.  Raises a pending refill error."""
        self._check_open()
        st = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        with st.cond:
            while len(st.idle) < st.size or st.dead or st.busy:
                _raise_if_unusable(st)
                if deadline is None:
                    left = None
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                self._wait(left)
            return True

    def _wait(self, timeout):
        """Wait on the condition (held) as a waiter: the refill thread
        builds at once while someone waits."""
        st = self._state
        st.waiters += 1
        try:
            st.cond.notify_all()
            st.cond.wait(timeout)
        finally:
            st.waiters -= 1

    # -- end ---------------------------------------------------------------
    def close(self):
        """Stop the refill thread and close every sandbox the pool holds.
        Idempotent."""
        self._close(join=True)

    def _close(self, join):
        st = self._state
        if st is None or os.getpid() != self._owner:
            return     # (a forked child: the parent's pool, not its own)
        with st.cond:
            st.closed = True
            st.error = None
            st.cond.notify_all()
        t = self._thread
        if (join and t is not None and t is not threading.current_thread() and t.is_alive()
                and not sys.is_finalizing()):
            t.join()
        self._thread = None
        with st.cond:
            idle, st.idle = list(st.idle), deque()
            dead, st.dead = st.dead, []
        for s in idle + dead:
            _close_quietly(s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # a finalizer runs in whatever thread collects the pool, which may
        # hold a lock the refill thread waits for (the cgroup thread holds a
        # sandbox's while it works, and the refill thread may be closing
        # that sandbox): no join here.  The thread sees `closed` and ends
        # by itself, closing what it was building; the rest is closed here.
        if getattr(self, "_owner", None) == os.getpid():
            self._close(join=False)

    def __repr__(self):
        st = self._state
        if st is None or st.closed:
            return "<SandboxPool closed>"
        return f"<SandboxPool size={st.size} ready={len(st.idle)} rootfs={st.rootfs!r}>"
