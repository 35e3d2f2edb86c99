# cython: language_level=3
"""The only code that touches C: the sealed init, the spawn, and the Sandbox
type.  Every policy decision is made in the Python modules it calls."""
import os
import _socket
import socket
import threading

from ._config import SandboxConfig
from ._errors import SandboxError, setup_error
from . import _plan
from . import _seccomp
from ._caps import cap_mask
from . import _runner

from posix.types cimport pid_t
from libc.stdlib cimport malloc, free
from libc.signal cimport SIGKILL

cdef extern from "<sys/syscall.h>":
    long SYS_pidfd_send_signal

cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)
    int close(int fd)

cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int F_DUPFD_CLOEXEC

cdef extern from "<sys/wait.h>" nogil:
    pid_t waitpid(pid_t pid, int *status, int options)

cdef extern from "<errno.h>":
    int errno
    int EINTR, EPIPE, ECONNRESET, EMSGSIZE, EPERM

cdef extern from "<sched.h>":
    unsigned long CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWUTS
    unsigned long CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWCGROUP

cdef extern from "spawn.h":
    struct ps_error:
        int step
        int err
    struct ps_spawn_args:
        int init_fd
        char **argv
        char **envp
        int ctrl_fd
        int runq_fd
        int null_fd
        unsigned long ns_flags
        const char *uid_map
        const char *gid_map
        int deny_setgroups
        const int *cgroup_fds
        int n_cgroup_fds
    int ps_seal_init_from_parent(const char *path, int *fd_out, ps_error *e) nogil
    int ps_spawn_init_from_parent(const ps_spawn_args *a, pid_t *pid_out,
                                  int *pidfd_out, ps_error *e) nogil
    int ps_send_with_fds(int sock, const void *buf, size_t len, const int *fds,
                         int n_fds) nogil
    int ps_dev_nodes_from_parent(const char *const *names, const unsigned long *rdevs,
                                 const unsigned *modes, int n, int *fd_out,
                                 ps_error *e) nogil

cdef extern from "proto.h":
    int PS_REC_READY, PS_REC_SETUP_FAILED, PS_MAX_SEND_FDS

# plans up to this size are queued before the clone (well below the
# socket's send buffer, so sending cannot block before init exists)
PLAN_EARLY_MAX = 64 * 1024

INIT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pysandbox-init")

cdef int _dev_nodes_fd() except -2:
    """A detached tmpfs with the sandbox's own /dev nodes (see
    _plan.dev_nodes), or -1 when the host's /dev can be bound as it is."""
    cdef ps_error e
    cdef const char *names[16]
    cdef unsigned long rdevs[16]
    cdef unsigned modes[16]
    cdef int fd = -1, n, rc
    nodes = _plan.dev_nodes()
    if nodes is None:
        return -1
    keep = [os.fsencode(x) for x in nodes[0]]
    n = len(keep)
    if n > 16:
        raise SandboxError("too many device nodes")
    for i in range(n):
        names[i] = keep[i]
        rdevs[i] = nodes[1][i]
        modes[i] = nodes[2][i]
    with nogil:
        rc = ps_dev_nodes_from_parent(names, rdevs, modes, n, &fd, &e)
    if rc < 0:
        if e.err == EPERM:
            # no fsopen or mknod here (a root without CAP_SYS_ADMIN or
            # CAP_MKNOD, or confined in a user namespace): init binds the
            # host's nodes read-only instead (writes to them go on; their
            # mode, owner and times cannot be changed from inside)
            return -1
        raise setup_error(e.step, e.err)
    return fd


def _send_plan(parent, bytes plan, int dev_fd):
    """The plan, in one message, with the device nodes' fd when there is one."""
    cdef int fds[1]
    cdef int rc, err = 0
    if dev_fd < 0:
        parent.sendall(plan)
        return
    fds[0] = dev_fd
    rc = _send_on_copy(parent, plan, len(plan), fds, 1, &err)
    if rc < 0:
        if err in (EPIPE, ECONNRESET):
            raise BrokenPipeError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))


_plan_max_bytes = None


def _plan_max():
    """The largest message a new socket can send at once (a unix seqpacket
    message must fit the send buffer, less 32 bytes): the plan is one."""
    global _plan_max_bytes
    if _plan_max_bytes is None:
        a, b = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            _plan_max_bytes = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32
        finally:
            a.close()
            b.close()
    return _plan_max_bytes


cdef int _init_fd = -1
cdef int _null_fd = -1
cdef object _init_owner = None   # pid that made the memfd (fork safety)
_seal_lock = threading.Lock()


def sealed_init_fd():
    """The sealed memfd copy of the init program, made once per process."""
    global _init_fd, _init_owner
    cdef ps_error e
    cdef int fd = -1
    cdef bytes path
    with _seal_lock:
        if _init_fd >= 0 and _init_owner == os.getpid():
            return _init_fd
        path = os.fsencode(INIT_PATH)
        if ps_seal_init_from_parent(path, &fd, &e) < 0:
            raise setup_error(e.step, e.err, INIT_PATH, "load the init program")
        _init_fd = fd
        _init_owner = os.getpid()
        return fd


_swept = False
import resource as _resource
_RLIMIT_CORE = _resource.RLIMIT_CORE


def _sweep_cgroups_once():
    """The first cgroup sandbox of a process removes what dead owners left."""
    global _swept
    if not _swept:
        _swept = True
        from . import _cgroup
        try:
            _cgroup.sweep_orphans()
        except OSError:
            pass


def null_fd():
    global _null_fd
    if _null_fd < 0:
        _null_fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    return _null_fd


cdef unsigned long _ns_flags():
    # no CLONE_NEWNET: with network="none" init's first supervisor makes the
    # network namespace while init builds the mounts (init's argv); it is owned
    # by the sandbox's user namespace all the same
    return (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS
            | CLONE_NEWIPC)   # (the cgroup namespace: by the child, once in its cgroups)


_FORKED = "a Sandbox cannot be used in a forked child (it belongs to the parent process)"


cdef int _send_on_copy(object sock, const char *buf, size_t size, const int *fds, int n,
                       int *err):
    """Send on a copy of sock's fd, made under the GIL: close() in another
    thread while this sends (without the GIL) closes the sandbox's own fd,
    whose number a new socket (another sandbox's) may take at once; the
    copy keeps the message on this sandbox's socket.  -1 with *err set."""
    cdef int fd = fcntl(sock.fileno(), F_DUPFD_CLOEXEC, 0)
    cdef int rc
    if fd < 0:
        err[0] = errno
        return -1
    with nogil:
        rc = ps_send_with_fds(fd, buf, size, fds, n)
        if rc < 0:
            err[0] = errno
        close(fd)
    return rc


cdef int _kill_and_reap(pid_t pid, int pidfd) noexcept nogil:
    cdef int status
    if pidfd >= 0:
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, <void *>0, 0)
    while waitpid(pid, &status, 0x40000000) < 0:   # __WALL
        if errno != EINTR:
            break
    if pidfd >= 0:
        close(pidfd)
    return 0


cdef class Sandbox:
    """A Linux container.  Built at construction, ended by close() (or the
    with-block, garbage collection, or the death of this process)."""

    cdef readonly object config
    cdef object _ctrl
    cdef object _runq
    cdef pid_t _pid
    cdef int _pidfd
    cdef object _lock
    cdef object _run_ids
    cdef object _ops
    cdef public object _env
    cdef public object _cwd
    cdef public object _rlimits
    cdef public object _request_tail   # wire form of the defaults (_runner)
    cdef public object _ids
    cdef public int _null_fd
    cdef public unsigned long long _cap_keep
    cdef public int _run_flags
    cdef public object _cgroup
    cdef object _owner
    cdef public bint _ready_pending  # built by _unready(): READY not read yet

    def __cinit__(self):
        self._pid = 0
        self._pidfd = -1

    def __init__(self, rootfs=None, **kwargs):
        self._setup(rootfs, kwargs, True)

    @staticmethod
    def _unready(rootfs, kwargs):
        """A sandbox whose init is still building it: the first request can
        be queued at once, and the READY record is read by that request
        (_wait_ready).  For pysandbox.run(), which makes exactly one."""
        s = Sandbox.__new__(Sandbox)
        s._setup(rootfs, kwargs, False)
        return s

    def _setup(self, rootfs, kwargs, bint wait_ready):
        cfg = SandboxConfig.from_kwargs(rootfs, **kwargs)
        self.config = cfg
        self._ids = _plan.resolve_user(cfg.user, cfg.rootfs)
        self._env = dict(_runner.DEFAULT_ENV if cfg.env is None else cfg.env)
        self._cwd = cfg.cwd
        # core dumps off unless asked for (later entries win); the hard
        # limit stays, since nothing in a user namespace can raise it again
        self._rlimits = ((_RLIMIT_CORE, 0, _resource.getrlimit(_RLIMIT_CORE)[1]),) + cfg.rlimits
        self._cap_keep = cap_mask(cfg.capabilities)
        self._run_flags = _runner.RUN_CAPS | _runner.RUN_NO_NEW_PRIVS
        # the wire form of the run defaults, ready for the first run (a pooled
        # sandbox's first run is the one that counts)
        self._request_tail = _runner._request_tail(self._env, self._cwd, self._rlimits)
        self._ops = _plan.build_ops(cfg)
        plan = _plan.pack_plan(cfg, self._ops, _seccomp.compile_filter(cfg.seccomp))
        if len(plan) > _plan_max():
            raise ValueError(f"the sandbox's plan takes {len(plan)} bytes, more than one "
                             f"message to its init can carry ({_plan_max()}): fewer or "
                             f"shorter mounts")
        self._lock = threading.Lock()
        self._run_ids = iter(range(1, 1 << 32))
        self._null_fd = null_fd()
        self._cgroup = None
        if cfg.memory is not None or cfg.pids is not None or cfg.cpus is not None:
            from . import _cgroup
            _sweep_cgroups_once()
            self._cgroup = _cgroup.open_sandbox_cgroup(
                memory=cfg.memory, pids=cfg.pids, cpus=cfg.cpus, parent=cfg.cgroup_parent)
        try:
            self._open(plan, wait_ready)
        except BaseException:
            if self._cgroup is not None:
                self._cgroup.remove()
                self._cgroup = None
            raise

    def _open(self, bytes plan, bint wait_ready):
        cdef ps_spawn_args a
        cdef ps_error e
        cdef pid_t pid = 0
        cdef int pidfd = -1, rc
        cdef bytes uid_map, gid_map
        cdef char *argv[3]
        cdef char *envp[1]
        cdef int cg_fds[8]
        cdef int n_cg = 0
        # (private device nodes for /dev, when the host's root is mapped:
        # made first, so that a failure leaves nothing else made)
        dev_fd = _dev_nodes_fd()
        try:
            uid_map, gid_map, deny = _plan.id_maps()
            parent, child = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            runq, runq_child = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # the plan waits in the socket for init: it reads it first thing
            # (a plan too large for the socket buffer goes once init reads)
            early = len(plan) <= PLAN_EARLY_MAX
            if early:
                _send_plan(parent, plan, dev_fd)
            try:
                argv[0] = b"pysandbox-init"
                # a network namespace: init's first supervisor starts making it
                # before init reads the plan
                argv[1] = NULL
                argv[2] = NULL
                if self.config.network == "none":
                    argv[1] = b"netns"
                envp[0] = NULL
                a.init_fd = sealed_init_fd()
                a.argv = argv
                a.envp = envp
                a.ctrl_fd = child.fileno()
                a.runq_fd = runq_child.fileno()
                a.null_fd = self._null_fd
                a.ns_flags = _ns_flags()
                a.uid_map = uid_map
                a.gid_map = gid_map
                a.deny_setgroups = deny
                if self._cgroup is not None:
                    for fd in self._cgroup.procs_fds:
                        if n_cg == 8:
                            raise SandboxError("too many cgroup hierarchies")
                        cg_fds[n_cg] = fd
                        n_cg += 1
                a.cgroup_fds = cg_fds
                a.n_cgroup_fds = n_cg
                with nogil:
                    rc = ps_spawn_init_from_parent(&a, &pid, &pidfd, &e)
                if rc == 0:
                    # recorded before any Python code can raise
                    self._pid = pid
                    self._pidfd = pidfd
                    self._owner = os.getpid()
                    self._ctrl = parent
                    self._runq = runq
                else:
                    raise setup_error(e.step, e.err)
            except BaseException:
                if self._ctrl is None:
                    parent.close()
                    runq.close()
                else:
                    self.close()
                raise
            finally:
                child.close()
                runq_child.close()
            try:
                if not early:
                    try:
                        _send_plan(parent, plan, dev_fd)
                    except (BrokenPipeError, ConnectionResetError):
                        self._wait_ready()   # init failed before reading it: why
                        raise
            except BaseException:
                self.close()
                raise
            if wait_ready:
                self._wait_ready()
            else:
                self._ready_pending = True
        finally:
            if dev_fd >= 0:
                close(dev_fd)

    def _wait_ready(self):
        """Read init's READY (or its setup failure: raised, sandbox closed)."""
        parent = self._ctrl
        self._ready_pending = False
        try:
            if parent is None:
                raise SandboxError("the sandbox is closed")
            try:
                data = parent.recv(_runner.RECORD.size)
            except ConnectionResetError:
                # an init that failed before it read the plan closed its end
                # with the plan unread: the error is said once, then what it
                # sent (its SETUP_FAILED record) can be read
                data = parent.recv(_runner.RECORD.size)
            if len(data) != _runner.RECORD.size:
                raise setup_error(0, 0, None, self._init_end())
            rec = _runner.RECORD.unpack(data)
            if rec[0] == PS_REC_SETUP_FAILED:
                index = rec[3]
                path = self._ops[index].describe() if 0 <= index < len(self._ops) else None
                raise setup_error(rec[1], rec[2], path)
            if rec[0] != PS_REC_READY:
                raise setup_error(0, 0, None, f"unexpected record {rec[0]}")
        except BaseException:
            self.close()
            raise

    def _init_end(self):
        """How an init that never reported ended (it closed the control
        socket by exiting): a signal (a crash, an OOM kill) or a status."""
        import select
        import signal as _signal
        if self._pidfd < 0:
            return "the init exited before reporting"
        try:
            p = select.poll()
            p.register(self._pidfd, select.POLLIN)
            p.poll(2000)                               # (readable: it has exited)
            st = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except OSError:
            st = None
        if st is None:
            return "the init closed its socket before reporting"
        if st.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            try:
                name = _signal.Signals(st.si_status).name
            except ValueError:
                name = f"signal {st.si_status}"
            return f"the init was killed by {name} before reporting"
        return f"the init exited with status {st.si_status} before reporting"

    # -- used by _runner ---------------------------------------------------
    def _next_run_id(self):
        """A run begins: its id.  Not in a forked child, whose copy of the
        sandbox shares the parent's channels, run ids and next run cgroup:
        its run would take the parent's (and the parent's kills hit it)."""
        if self._owner != os.getpid():
            raise SandboxError(_FORKED)
        with self._lock:
            return next(self._run_ids)

    def _send(self, bytes req, fds):
        """A run request, on the run queue (read by the spare supervisor)."""
        cdef int cfds[16]
        cdef int n = len(fds), rc, err = 0
        cdef const char *buf = req
        cdef size_t size = len(req)
        runq = self._runq
        if self._ctrl is None or runq is None:
            raise SandboxError("the sandbox is closed")
        if n > PS_MAX_SEND_FDS or n > 16:
            raise SandboxError(f"too many fds for one request ({n})")
        for i in range(n):
            cfds[i] = fds[i]
        rc = _send_on_copy(runq, buf, size, cfds, n, &err)
        if rc < 0:
            if err in (EPIPE, ECONNRESET):
                raise SandboxError("the sandbox init is gone")
            if err == EMSGSIZE:
                raise ValueError(f"argv and environment too large ({size} bytes)")
            raise OSError(err, os.strerror(err))

    def _signal(self, run_id, sig, flags):
        cdef bytes req
        cdef int err = 0
        ctrl = self._ctrl
        if ctrl is None:
            return
        if self._owner != os.getpid():
            raise SandboxError(_FORKED)
        req = _runner._REQ.pack(_runner.REQ_SIGNAL, flags, run_id, sig, 0, 0, 0, 0, 0, 0, 0)
        _send_on_copy(ctrl, req, len(req), NULL, 0, &err)   # (init gone: nothing to signal)

    def _resolve_user(self, user):
        return _plan.resolve_user(user, self.config.rootfs)

    # -- public ------------------------------------------------------------
    def run(self, args, **kwargs):
        """Run a command to completion, as subprocess.run does."""
        return _runner.run(self, args, **kwargs)

    def popen(self, args, **kwargs):
        """Start a command and return a Popen-like SandboxProcess."""
        return _runner.SandboxProcess(self, args, **kwargs)

    def stats(self):
        """The whole sandbox's accounting so far (cgroup figures: cpu_time,
        max_memory, oom_killed, oom_kills, pids_peak, pids_current), or {}
        when the sandbox has no cgroup (no limits were asked for)."""
        if self._cgroup is None:
            return {}
        return self._cgroup.stats()

    @property
    def closed(self):
        return self._ctrl is None

    @property
    def pid(self):
        """The init's pid on the host (None once closed)."""
        return None if self._ctrl is None else self._pid

    def close(self):
        """Kill everything in the sandbox and remove it.  Idempotent."""
        cdef pid_t pid
        cdef int pidfd
        ctrl = self._ctrl
        if ctrl is None and self._pid == 0 and self._cgroup is None:
            return
        self._ctrl = None
        if ctrl is not None:
            ctrl.close()
        if self._runq is not None:
            self._runq.close()
            self._runq = None
        pid, pidfd = self._pid, self._pidfd
        self._pid, self._pidfd = 0, -1
        if pid > 0 and self._owner == os.getpid():
            with nogil:
                _kill_and_reap(pid, pidfd)
        elif pidfd >= 0:
            close(pidfd)
        # (kept until removed: an interrupt here, e.g. Ctrl-C raised on the
        # way out of the wait above, leaves it for the next close() or the
        # garbage collector; remove() may be called again)
        cg = self._cgroup
        if cg is not None and self._owner == os.getpid():
            cg.remove()
        self._cgroup = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # garbage collection closes like close(): processes, cgroup, all
        try:
            if self._owner is not None and self._owner == os.getpid():
                self.close()
        except Exception:
            pass

    def __dealloc__(self):
        if self._pid > 0 and self._owner is not None and self._owner == os.getpid():
            _kill_and_reap(self._pid, self._pidfd)

    def __repr__(self):
        state = "closed" if self._ctrl is None else f"pid={self._pid}"
        return f"<Sandbox rootfs={self.config.rootfs!r} {state}>"
