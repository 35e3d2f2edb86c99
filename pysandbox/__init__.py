"""pysandbox: run commands in real Linux containers, as a library."""
from subprocess import DEVNULL, PIPE, STDOUT

from ._config import Bind, Tmpfs
from ._engine import Sandbox
from ._errors import CalledProcessError, SandboxError, SetupError, TimeoutExpired
from ._runner import SandboxProcess, SandboxResult
from ._pool import SandboxPool

__all__ = ["Sandbox", "SandboxPool", "Bind", "Tmpfs", "run", "SandboxResult", "SandboxProcess",
           "SandboxError", "SetupError", "TimeoutExpired", "CalledProcessError",
           "PIPE", "STDOUT", "DEVNULL"]
__version__ = "0.1.0"

_SANDBOX_KWARGS = ("mounts", "read_only", "hostname", "network", "env", "cwd",
                   "user", "memory", "pids", "cpus", "rlimits", "seccomp",
                   "capabilities", "cgroup_parent")


def run(args, rootfs=None, **kwargs):
    """One-shot: build a sandbox, run one command in it, remove it."""
    sb_kwargs = {k: kwargs.pop(k) for k in _SANDBOX_KWARGS if k in kwargs}
    # the run request is queued while init builds the sandbox: its first
    # supervisor takes it as soon as the build is done
    with Sandbox._unready(rootfs, sb_kwargs) as s:
        return s.run(args, **kwargs)
