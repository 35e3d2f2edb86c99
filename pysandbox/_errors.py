"""Errors: the one place where C failure records become Python exceptions."""
import errno as _errno
import os
import subprocess

__all__ = ["SandboxError", "SetupError", "TimeoutExpired", "CalledProcessError"]

# enum ps_step in csrc/proto.h -> what the step does, as said in messages
STEP_NAMES = {
    0: "none",
    1: "pipe",
    2: "clone (new namespaces)",
    3: "write /proc/PID/setgroups",
    4: "write /proc/PID/gid_map",
    5: "write /proc/PID/uid_map",
    6: "set up init's fds",
    7: "exec the sandbox init",
    8: "unshare the cgroup namespace",
    9: "make /dev's device nodes",
    10: "read the plan",
    11: "make / private",
    12: "open bind source",
    13: "mount the root",
    14: "attach the root",
    15: "resolve mount target",
    16: "create mount target",
    17: "mount",
    18: "symlink",
    19: "remount read-only",
    20: "sethostname",
    21: "bring up loopback",
    22: "pivot_root",
    23: "unshare time namespace",
    24: "signalfd",
    25: "make the network namespace",
    26: "share the supervisors' board",
    30: "fork",
    31: "set up stdio",
    32: "set uid/gid",
    33: "chdir",
    34: "execve",
    35: "setrlimit",
    36: "drop capabilities",
    37: "install the seccomp filter",
    38: "join the cgroup",
}


class SandboxError(Exception):
    """Base of every error pysandbox raises about the sandbox itself."""


class SetupError(SandboxError, OSError):
    """The sandbox could not be built.  `step` names what failed, `filename`
    the path involved (when there is one), `errno` the cause."""

    def __init__(self, err, step, path=None, detail=None):
        self.step = step
        what = step if detail is None else f"{step} ({detail})"
        msg = f"{what}: {os.strerror(err) if err else 'failed'}"
        if path is None:
            OSError.__init__(self, err, msg)
        else:
            OSError.__init__(self, err, msg, path)

    def __reduce__(self):
        return (type(self), (self.errno, self.step, self.filename))


class TimeoutExpired(subprocess.TimeoutExpired, SandboxError):
    """The command ran past its timeout; its whole process tree was killed.
    `result` is the SandboxResult with the partial output."""

    def __init__(self, cmd, timeout, output=None, stderr=None, result=None):
        super().__init__(cmd, timeout, output, stderr)
        self.result = result


class CalledProcessError(subprocess.CalledProcessError, SandboxError):
    """check=True and the command failed.  `result` is the SandboxResult."""

    def __init__(self, returncode, cmd, output=None, stderr=None, result=None):
        super().__init__(returncode, cmd, output, stderr)
        self.result = result


def setup_error(step, err, path=None, detail=None):
    return SetupError(err, STEP_NAMES.get(step, f"step {step}"), path, detail)


def exec_error(step, err, argv0, cwd, detail=None):
    """The command could not be started inside: raise what subprocess would,
    naming the path inside the sandbox."""
    if step == 33:  # chdir
        filename = cwd
    elif step == 34:  # execve
        filename = argv0
    else:
        return setup_error(step, err, argv0, detail if step == 35 else None)
    cls = {
        _errno.ENOENT: FileNotFoundError,
        _errno.EACCES: PermissionError,
        _errno.EPERM: PermissionError,
        _errno.ENOTDIR: NotADirectoryError,
    }.get(err, OSError)
    return cls(err, f"{os.strerror(err)} (inside the sandbox)", filename)
