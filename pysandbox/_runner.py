"""Runs: the request to init, stdio, the I/O pump, results.

Mirrors subprocess.run / subprocess.Popen where the APIs overlap."""
from __future__ import annotations

import errno
import io
import locale
import math
import os
import resource
import select
import signal
import struct
import subprocess
import threading
import time

from ._config import _check_env, _inside_path, parse_rlimits, parse_size
from ._errors import (CalledProcessError, SandboxError, TimeoutExpired,
                      exec_error)

PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL

# csrc/proto.h
REQ_RUN, REQ_SIGNAL = 1, 2
RUN_SETID, RUN_CAPS, RUN_NO_NEW_PRIVS, SIGNAL_TREE, RUN_QUIET_SPAWN = 1, 2, 4, 8, 16
REC_SPAWNED, REC_SPAWN_FAILED, REC_EXIT = 3, 4, 5
_REQ = struct.Struct("=4I2I2i2IQ")
_RLIMIT = struct.Struct("=IIQQ")
RECORD = struct.Struct("=IIiiqqqqq")
_CHUNK = 65536
_U64 = (1 << 64) - 1
MAX_REQUEST = 256 * 1024   # PS_MAX_REQUEST (csrc/proto.h)
_RLIMIT_NAMES = {getattr(resource, n): n[len("RLIMIT_"):].lower()
                 for n in dir(resource) if n.startswith("RLIMIT_") and n != "RLIMIT_OFILE"}   # RLIM_INFINITY is -1 in Python, ~0 in C
KILL_GRACE = 5.0   # seconds to collect a killed tree's output

DEFAULT_ENV = {
    b"PATH": b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    b"HOME": b"/root",
}


class SandboxResult(subprocess.CompletedProcess):
    """A CompletedProcess with the run's measurements."""

    def __init__(self, args, returncode, stdout=None, stderr=None, *,
                 wall_time=0.0, cpu_time=0.0, max_rss=0, timed_out=False,
                 oom_killed=False, output_truncated=False, pids_peak=None):
        super().__init__(args, returncode, stdout, stderr)
        self.wall_time = wall_time
        self.cpu_time = cpu_time
        self.max_rss = max_rss
        self.timed_out = timed_out
        self.oom_killed = oom_killed
        self.output_truncated = output_truncated
        self.pids_peak = pids_peak

    def check_returncode(self):
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout,
                                     self.stderr, result=self)


def _argv(args):
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    try:
        out = [a if isinstance(a, bytes) else os.fsencode(a) for a in args]
    except TypeError:
        raise TypeError("args must be a sequence of str, bytes or path-like "
                        "objects") from None
    if not out:
        raise ValueError("args must not be empty")
    for a in out:
        if b"\0" in a:
            raise ValueError("embedded null byte")
    return out


def _readable(fd, timeout):
    """Whether fd has data (or EOF) within timeout seconds (poll: any fd
    number, select() stops at 1023)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(math.ceil(timeout * 1000)))


def _check_timeout(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, got {timeout}")
    return float(timeout)


def _request_tail(envb, cwd, rl):
    """(cwd, rlimits, number of env entries, (bytes before argv, after))."""
    envl = [k + b"=" + v for k, v in envb.items()]
    before = b"".join(_RLIMIT.pack(r, 0, s & _U64, h & _U64) for r, s, h in rl) + cwd.encode() + b"\0"
    after = b"\0".join(envl) + (b"\0" if envl else b"")
    return cwd, rl, len(envl), (before, after)


class SandboxProcess:
    """A command running in a sandbox: the subset of subprocess.Popen that
    makes sense there.  `pid` is the pid inside the sandbox."""

    def __init__(self, sandbox, args, *, stdin=None, stdout=None, stderr=None,
                 text=False, encoding=None, errors=None, env=None, cwd=None,
                 rlimits=None, user=None, bufsize=-1, universal_newlines=None,
                 _start=None, _quiet=False):
        self.args = args
        self.returncode = None
        self.stdin = self.stdout = self.stderr = None
        self._sandbox = sandbox
        self._chan = None      # read end of the run's record pipe (an fd)
        self._records_lock = threading.Lock()   # one reader of the pipe at a time
        self._rusage = None
        self._exit_time = None
        self.timed_out = False
        self.pid = None
        self._cg = None        # the run's cgroup, when the sandbox has limits
        self._cg_later = False  # its rmdir may wait for the next run's housekeeping
        self._cgstats = None
        self._argv0 = None
        self._cwd = None
        if universal_newlines is not None:
            text = text or universal_newlines
        self.text_mode = bool(text or encoding or errors)
        self.encoding = encoding
        self.errors = errors
        if self.text_mode and encoding is None:
            self.encoding = locale.getpreferredencoding(False)

        argv = _argv(args)
        if env is None and cwd is None and rlimits is None:
            # the sandbox's defaults: their wire form is made at construction
            tail = sandbox._request_tail
        else:
            tail = _request_tail(sandbox._env if env is None else _check_env(env, "env"),
                                 sandbox._cwd if cwd is None else _inside_path(cwd, "cwd"),
                                 sandbox._rlimits + parse_rlimits(rlimits))
        cwd, rl, n_env, tail = tail
        self._rlimits_sent = rl
        ids = sandbox._ids if user is None else sandbox._resolve_user(user)

        to_close = []     # child ends, closed once sent
        parent_ends = []  # closed on failure
        try:
            if stdin is None and stdout is None and stderr is None:
                # all inherited: checked only if the send refuses one (EBADF)
                p2c, c2p, errwrite = 0, 1, 2
            else:
                p2c, c2p, errwrite = self._child_fds(stdin, stdout, stderr, to_close,
                                                     parent_ends, bufsize)
            # the run's records come back on a pipe (its write end goes to
            # the supervisor; EOF: the supervisor is gone): cheaper to make
            # and to pass than a socketpair
            chan, chan_child = os.pipe2(os.O_CLOEXEC)
            to_close.append(chan_child)
            self._chan = chan
            self.run_id = sandbox._next_run_id()
            flags = ((RUN_SETID if ids is not None else 0) | sandbox._run_flags
                     | (RUN_QUIET_SPAWN if _quiet else 0))
            uid, gid = ids if ids is not None else (0, 0)
            req = b"".join((
                _REQ.pack(REQ_RUN, flags, self.run_id, 0, len(argv), n_env,
                          uid, gid, len(rl), 0, sandbox._cap_keep),
                tail[0], b"\0".join(argv), b"\0", tail[1],
            ))
            if len(req) > MAX_REQUEST:
                raise ValueError(f"argv, environment and cwd too large: {len(req)} bytes "
                                 f"(at most {MAX_REQUEST})")
            self._start = time.monotonic() if _start is None else _start
            if sandbox._cgroup is not None:
                self._cg = sandbox._cgroup.new_run()
            fds = [to_close[-1], p2c, c2p, errwrite]
            if self._cg is not None:
                fds += self._cg.procs_fds
            queued_ahead = sandbox._ready_pending
            try:
                sandbox._send(req, fds)
            except (OSError, SandboxError) as exc:
                if sandbox._ready_pending:
                    # queued ahead of READY (pysandbox.run): an init that
                    # failed its build is gone, and its error says why
                    sandbox._wait_ready()
                if (not isinstance(exc, OSError) or exc.errno != errno.EBADF
                        or (p2c, c2p, errwrite) != (0, 1, 2)):
                    raise
                # a closed 0, 1 or 2 here: the command gets /dev/null there
                fds[1:4] = self._child_fds(None, None, None, to_close, parent_ends, bufsize)
                sandbox._send(req, fds)
            if self._cg is not None:
                self._cg.close_fds()
                if not queued_ahead:
                    # while the command runs: the ended runs' cgroups go,
                    # the next run's is made (the janitor thread, off this
                    # path; not for pysandbox.run(), which has one run)
                    sandbox._cgroup.housekeeping(self._cg)
                    self._cg_later = True
            if queued_ahead:
                # pysandbox.run(): the request went ahead of init's READY
                # (its set-up failure raises here); the run starts now
                if sandbox._ready_pending:
                    sandbox._wait_ready()
                self._start = time.monotonic()
        except BaseException:
            if self._cg is not None:
                self._cg.close_fds()
                self._cg.remove()
                self._cg = None
            for fd in parent_ends:
                try:
                    os.close(fd) if isinstance(fd, int) else fd.close()
                except OSError:
                    pass
            self._close_chan()
            raise
        finally:
            for fd in to_close:
                os.close(fd)

        self._argv0 = os.fsdecode(argv[0])
        self._cwd = cwd
        if not _quiet:
            # Popen semantics: the command is running (or raised) on return;
            # one that never started leaves no cgroup (nor its fds) to the
            # exception's lifetime
            try:
                self._handle_record(self._recv(block=True))
            except BaseException:
                cg, self._cg = self._cg, None
                if cg is not None and not cg.remove():
                    cg.drop()   # (interrupted, the command running: removed once it ends)
                raise

    def _rlimit_name(self, index):
        rl = self._rlimits_sent
        if 0 <= index < len(rl):
            r, soft, hard = rl[index]
            fmt = lambda v: "unlimited" if v == resource.RLIM_INFINITY else v
            return f"rlimit {_RLIMIT_NAMES.get(r, r)}={fmt(soft)}:{fmt(hard)}"
        return None

    def _handle_record(self, rec):
        """One record from the supervisor.  Raises for an exec failure."""
        if rec is False:
            return
        if rec is not None and rec[0] == REC_SPAWNED:
            self.pid = rec[4]
            return
        if rec is None and self.pid is None and self._sandbox.closed:
            self._close_streams()
            self._close_chan()
            raise SandboxError("the sandbox was closed")
        # rec None with the sandbox open: the run's supervisor was killed
        # from inside, and init killed the run's processes with it (-9)
        if rec is not None and rec[0] == REC_SPAWN_FAILED:
            self._close_streams()
            self._close_chan()
            raise exec_error(rec[1], rec[2], self._argv0, self._cwd,
                             self._rlimit_name(rec[3]))
        if rec is not None and self.pid is None:
            self.pid = rec[4]
        self._take_exit(rec)

    # -- stdio -------------------------------------------------------------
    def _child_fds(self, stdin, stdout, stderr, to_close, parent_ends, bufsize):
        null = self._sandbox._null_fd

        def inherit(fd):
            try:
                os.fstat(fd)
                return fd
            except OSError:
                return null

        def child_fd(spec, default_fd, for_read):
            if spec is None:
                return inherit(default_fd), None
            if spec == PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                child, parent = (r, w) if for_read else (w, r)
                to_close.append(child)
                parent_ends.append(parent)
                return child, parent
            if spec == DEVNULL:
                return null, None
            if isinstance(spec, int):
                if spec < 0:
                    raise ValueError(f"invalid file descriptor {spec}")
                return spec, None
            if hasattr(spec, "fileno"):
                return spec.fileno(), None
            raise TypeError(f"invalid stdio argument {spec!r}")

        if stdin == STDOUT:
            raise ValueError("STDOUT is only valid for stderr")
        if bufsize == 1:
            # as subprocess: line buffering exists in text mode only
            if not self.text_mode:
                import warnings
                warnings.warn("line buffering (buffering=1) isn't supported in binary "
                              "mode, the default buffer size will be used",
                              RuntimeWarning, stacklevel=4)
            raw_bufsize = -1
        else:
            raw_bufsize = bufsize
        p2c, w = child_fd(stdin, 0, True)
        c2p, r = child_fd(stdout, 1, False)
        if stderr == STDOUT:
            errwrite, e = c2p, None
        else:
            errwrite, e = child_fd(stderr, 2, False)
        if w is not None:
            self.stdin = io.open(w, "wb", raw_bufsize)
            if self.text_mode:
                self.stdin = io.TextIOWrapper(self.stdin, write_through=True,
                                              line_buffering=(bufsize == 1),
                                              encoding=self.encoding, errors=self.errors)
        if r is not None:
            self.stdout = io.open(r, "rb", raw_bufsize)
            if self.text_mode:
                self.stdout = io.TextIOWrapper(self.stdout, encoding=self.encoding,
                                               errors=self.errors)
        if e is not None:
            self.stderr = io.open(e, "rb", raw_bufsize)
            if self.text_mode:
                self.stderr = io.TextIOWrapper(self.stderr, encoding=self.encoding,
                                               errors=self.errors)
        parent_ends[:] = [f for f in (self.stdin, self.stdout, self.stderr) if f is not None]
        return p2c, c2p, errwrite

    def _close_streams(self):
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    # -- the channel -------------------------------------------------------
    def _recv(self, block):
        """The next record; None at EOF (the supervisor is gone), False when
        none is there yet and `block` is false.  Records are written whole
        (56 bytes, under PIPE_BUF) and read one at a time."""
        chan = self._chan
        if chan is None:
            return None
        try:
            if not block and not _readable(chan, 0):
                return False
            data = os.read(chan, RECORD.size)
        except OSError:
            return None
        if len(data) != RECORD.size:
            return None
        return RECORD.unpack(data)

    def _read_record(self, block):
        """Read and handle the next record, under the lock poll() and wait()
        take (one reader of the pipe at a time)."""
        with self._records_lock:
            if self.returncode is None:
                self._handle_record(self._recv(block))

    def _close_chan(self):
        chan, self._chan = self._chan, None
        if chan is not None:
            os.close(chan)

    def _take_exit(self, rec):
        if rec is None:
            # init died (sandbox closed): the command went with it
            self.returncode = -signal.SIGKILL
            self._rusage = (0, 0, 0)
        else:
            status = rec[5]
            self.returncode = os.waitstatus_to_exitcode(status)
            self._rusage = (rec[6], rec[7], rec[8])
        self._exit_time = time.monotonic()
        self._close_chan()
        if self._cg is not None:
            # figures at the command's exit; the cgroup goes now if the run
            # left nothing behind, else it stays so that a timeout or
            # kill_tree() can still kill through it
            self._cgstats = self._cg.exit_stats()
            if self._cg.remove(self._cgstats, later=self._cg_later):
                self._cg = None

    def poll(self):
        # (another thread reading the records, in wait(): not done yet, as
        # subprocess.Popen.poll answers while a wait() holds its lock)
        if self.returncode is None and self._records_lock.acquire(False):
            try:
                if self.returncode is None:
                    self._handle_record(self._recv(block=False))
            finally:
                self._records_lock.release()
        return self.returncode

    def wait(self, timeout=None):
        timeout = _check_timeout(timeout)
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if deadline is None:
                self._records_lock.acquire()
            elif not self._records_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise subprocess.TimeoutExpired(self.args, timeout)
            try:
                if self.returncode is not None:
                    break   # another thread read the exit
                if deadline is not None and not _readable(
                        self._chan, max(0.0, deadline - time.monotonic())):
                    raise subprocess.TimeoutExpired(self.args, timeout)
                self._handle_record(self._recv(block=True))
            finally:
                self._records_lock.release()
        return self.returncode

    def send_signal(self, sig):
        sig = int(sig)
        if self.returncode is None and self.poll() is None and sig != 0:
            self._sandbox._signal(self.run_id, sig, 0)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def kill_tree(self):
        """SIGKILL the command and everything it started, setsid or not
        (also what is left after the command itself has exited)."""
        self._sandbox._signal(self.run_id, 0, SIGNAL_TREE)
        if self._cg is not None:
            self._cg.kill()

    def _chan_open(self):
        return self._chan is not None

    def _release_cgroup(self):
        cg, self._cg = self._cg, None
        if cg is not None:
            cg.remove()   # left to the sandbox if processes remain

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_streams()
        if self.returncode is None:
            self.wait()
        self._release_cgroup()

    def __del__(self):
        if getattr(self, "_chan", None) is not None:
            self._close_chan()
        cg = getattr(self, "_cg", None)
        if cg is not None:
            # a finalizer may run in a thread that holds the sandbox cgroup's
            # locks (the garbage collector runs where memory is allocated):
            # the run's cgroup is only handed over, removed by the next one
            # that takes them
            self._cg = None
            try:
                cg.drop()
            except Exception:
                pass

    # -- communicate -------------------------------------------------------
    def communicate(self, input=None, timeout=None, *, max_output=None):
        timeout = _check_timeout(timeout)
        out, err, truncated = self._pump(input, timeout, max_output)
        self.output_truncated = truncated
        return out, err

    def _decode(self, data):
        if data is None or not self.text_mode:
            return data
        s = data.decode(self.encoding, self.errors or "strict")
        return s.replace("\r\n", "\n").replace("\r", "\n")

    def _pump(self, input, timeout, max_output):
        """Feed stdin, read stdout/stderr (keeping at most max_output bytes of
        each), until both close and the command has exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not hasattr(self, "_bufs"):
            self._bufs = {}
            self._kept = {}
            self._truncated = False
            self._input = None
            self._input_off = 0
            if self.stdin is not None:
                data = input
                if data is not None and self.text_mode:
                    data = data.encode(self.stdin.encoding, self.stdin.errors)
                try:
                    self.stdin.flush()
                except BrokenPipeError:
                    pass
                if not data:
                    try:
                        self.stdin.close()
                    except BrokenPipeError:
                        pass
                else:
                    self._input = memoryview(data)
        readers = {}
        for name, f in (("out", self.stdout), ("err", self.stderr)):
            if f is not None and not f.closed:
                fd = f.fileno()
                readers[fd] = name
                self._bufs.setdefault(name, [])
                self._kept.setdefault(name, 0)
        writer = self.stdin.fileno() if (self._input is not None and not self.stdin.closed) else None
        if not readers and writer is None and deadline is None:
            # nothing to pump, no deadline: just the exit record
            self._read_record(block=True)
            return self._collected()
        poller = select.poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        if writer is not None:
            poller.register(writer, select.POLLOUT)
        chan_fd = self._chan if self.returncode is None else None
        if chan_fd is not None:
            poller.register(chan_fd, select.POLLIN)
        limit = None if max_output is None else max_output

        while readers or writer is not None or self.returncode is None:
            if deadline is None:
                ms = None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                ms = max(1, math.ceil(left * 1000))
            for fd, ev in poller.poll(ms):
                if fd == chan_fd:
                    # (readable, unless a poll() or wait() in another
                    # thread has read it meanwhile)
                    self._read_record(block=False)
                    if self.returncode is not None:
                        poller.unregister(chan_fd)
                        chan_fd = None
                elif fd == writer:
                    if ev & (select.POLLERR | select.POLLHUP):
                        n = -1
                    else:
                        try:
                            n = os.write(writer, self._input[self._input_off:self._input_off + _CHUNK])
                        except BrokenPipeError:
                            n = -1
                    if n < 0:
                        self._input_off = len(self._input)
                    else:
                        self._input_off += n
                    if self._input_off >= len(self._input):
                        poller.unregister(writer)
                        writer = None
                        try:
                            self.stdin.close()
                        except BrokenPipeError:
                            pass
                elif fd in readers:
                    data = os.read(fd, 1 << 17)
                    name = readers[fd]
                    if not data:
                        poller.unregister(fd)
                        del readers[fd]
                        continue
                    if limit is None:
                        self._bufs[name].append(data)
                    else:
                        room = limit - self._kept[name]
                        if room > 0:
                            self._bufs[name].append(data[:room])
                            self._kept[name] += min(room, len(data))
                        if len(data) > max(room, 0):
                            self._truncated = True
            if self.returncode is None and chan_fd is None:
                break
        return self._collected()

    def _collected(self):
        """(stdout, stderr, truncated) of a pump that has ended."""
        out = err = None
        if self.stdout is not None:
            out = self._decode(b"".join(self._bufs.get("out", [])))
            self.stdout.close()
        if self.stderr is not None:
            err = self._decode(b"".join(self._bufs.get("err", [])))
            self.stderr.close()
        return out, err, self._truncated

    def _kill_and_collect(self, max_output):
        """Kill the run's tree and collect what it wrote.  Bounded: a process
        that detached itself from its supervisor (by killing or stopping it)
        cannot hold the caller forever; its output is then abandoned."""
        self.kill_tree()
        try:
            return self._pump(None, KILL_GRACE, max_output)
        except subprocess.TimeoutExpired:
            out = err = None
            if self.stdout is not None:
                out = self._decode(b"".join(self._bufs.get("out", [])))
            if self.stderr is not None:
                err = self._decode(b"".join(self._bufs.get("err", [])))
            self._close_streams()
            if self.returncode is None:
                self._take_exit(None)
            return out, err, self._truncated

    def _result(self, stdout, stderr, truncated):
        utime, stime, maxrss = self._rusage or (0, 0, 0)
        end = self._exit_time or time.monotonic()
        cpu_time, max_rss = (utime + stime) / 1e6, maxrss * 1024
        oom_killed, pids_peak = False, None
        cg = self._cgstats
        if cg:
            # the cgroup sees the whole run, waited-for or not
            if cg.get("cpu_time") is not None:
                cpu_time = cg["cpu_time"]
            if cg.get("max_memory") is not None:
                max_rss = cg["max_memory"]
            oom_killed = bool(cg.get("oom_killed"))
            pids_peak = cg.get("pids_peak")
        return SandboxResult(self.args, self.returncode, stdout, stderr,
                             wall_time=end - self._start, cpu_time=cpu_time,
                             max_rss=max_rss, timed_out=self.timed_out,
                             oom_killed=oom_killed, output_truncated=truncated,
                             pids_peak=pids_peak)


def run(sandbox, args, *, input=None, stdin=None, stdout=None, stderr=None,
        capture_output=False, text=False, encoding=None, errors=None,
        timeout=None, check=False, env=None, cwd=None, max_output=None,
        rlimits=None, user=None, universal_newlines=None):
    timeout = _check_timeout(timeout)
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, (int, str)):
            raise TypeError("max_output must be a number of bytes")
        max_output = 0 if max_output == 0 else parse_size(max_output, "max_output")
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        stdin = PIPE
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr arguments may not be used "
                             "with capture_output.")
        stdout = stderr = PIPE
    start = time.monotonic()
    p = SandboxProcess(sandbox, args, stdin=stdin, stdout=stdout, stderr=stderr,
                       text=text, encoding=encoding, errors=errors, env=env,
                       cwd=cwd, rlimits=rlimits, user=user,
                       universal_newlines=universal_newlines, _start=start,
                       _quiet=True)
    try:
        out, err, truncated = p._pump(input, timeout, max_output)
    except subprocess.TimeoutExpired:
        p.timed_out = True
        out, err, truncated = p._kill_and_collect(max_output)
        result = p._result(out, err, truncated)
        raise TimeoutExpired(p.args, timeout, out, err, result=result) from None
    except BaseException:
        if p._chan_open():   # else: it never started (exec failure)
            p._kill_and_collect(max_output)
        raise
    finally:
        p._release_cgroup()
    result = p._result(out, err, truncated)
    if check:
        result.check_returncode()
    return result
