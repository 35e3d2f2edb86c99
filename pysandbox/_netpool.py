"""A small pool of pre-made network namespaces (lo up), filled by a daemon
thread, so that creating a network namespace (~0.5 ms) is off the path of
Sandbox(network="none").

Only where this process may create network namespaces in its own user
namespace (root); elsewhere, and when PYSANDBOX_NETNS_POOL=0, take()
returns -1 and the clone makes the namespace itself.  After os.fork() the
child starts its own pool."""
import os
import threading

SIZE = 2

_lock = threading.Lock()
_state = {"pid": None, "fds": [], "wake": None, "disabled": None}


def _enabled():
    return os.geteuid() == 0 and os.environ.get("PYSANDBOX_NETNS_POOL", "1") != "0"


def _filler(wake, fds):
    from ._engine import netns_make
    while True:
        with _lock:
            while len(fds) >= SIZE:
                wake.wait()
            if _state["fds"] is not fds:   # forked or reset
                return
        try:
            fd = netns_make()
        except OSError as exc:
            with _lock:
                _state["disabled"] = exc
            return
        with _lock:
            fds.append(fd)


def take():
    """An fd of a pre-made network namespace (the caller closes it), or -1."""
    if not _enabled():
        return -1
    with _lock:
        if _state["pid"] != os.getpid():
            # first use in this process (or in a forked child): a new pool;
            # the parent's fds are not ours to use
            _state.update(pid=os.getpid(), fds=[], disabled=None,
                          wake=threading.Condition(_lock))
            t = threading.Thread(target=_filler, args=(_state["wake"], _state["fds"]),
                                 name="pysandbox-netns-pool", daemon=True)
            t.start()
            return -1
        if _state["disabled"] is not None:
            return -1
        fds = _state["fds"]
        fd = fds.pop(0) if fds else -1
        _state["wake"].notify()
        return fd
