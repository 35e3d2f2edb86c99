"""Configuration: frozen, validated before anything is created."""
from __future__ import annotations

import errno
import math
import os
import re
import resource
import stat
from dataclasses import dataclass
from typing import Optional

from ._caps import parse_capabilities
from ._seccomp import validate_policy

__all__ = ["Bind", "Tmpfs", "SandboxConfig", "parse_size", "parse_rlimits"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(i?[bB]?)\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value, what):
    """Bytes from an int or a string like "256M", "1G", "512k"."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int (bytes) or a string like '256M', "
                        f"not {type(value).__name__}")
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{what}: cannot parse size {value!r} "
                             "(use bytes or a number with K, M, G or T)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"{what} must be positive, got {value}")
    return value


def _check_path_str(value, what):
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(value).__name__}")
    s = os.fsdecode(os.fspath(value))
    if "\0" in s:
        raise ValueError(f"{what} contains a NUL byte: {s!r}")
    return s


def _inside_path(value, what):
    """An absolute path inside the sandbox, normalized, without '..'."""
    s = _check_path_str(value, what)
    if not s.startswith("/"):
        raise ValueError(f"{what} must be an absolute path inside the sandbox: {s!r}")
    parts = [p for p in s.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} may not contain '..': {s!r}")
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Bind:
    """Bind a host path into the sandbox (read-only unless read_only=False)."""
    source: str
    target: Optional[str] = None
    read_only: bool = True

    def __post_init__(self):
        src = _check_path_str(self.source, "Bind source")
        object.__setattr__(self, "source", src)
        target = src if self.target is None else self.target
        object.__setattr__(self, "target", _inside_path(target, "Bind target"))
        if self.target == "/":
            raise ValueError("Bind target may not be '/': pass the directory as rootfs")
        if not isinstance(self.read_only, bool):
            raise TypeError("Bind read_only must be a bool")


@dataclass(frozen=True)
class Tmpfs:
    """A fresh tmpfs at target, optionally limited to size bytes."""
    target: str
    size: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "target", _inside_path(self.target, "Tmpfs target"))
        if self.target == "/":
            raise ValueError("Tmpfs target may not be '/'")
        if self.size is not None:
            object.__setattr__(self, "size", parse_size(self.size, "Tmpfs size"))


_RLIMITS = {
    name[len("RLIMIT_"):].lower(): getattr(resource, name)
    for name in dir(resource) if name.startswith("RLIMIT_")
}
_RLIMIT_SIZES = {"fsize", "data", "stack", "core", "rss", "memlock", "as", "msgqueue"}
RLIM_INFINITY = resource.RLIM_INFINITY


def _rlimit_value(name, v):
    if v is None or v == "unlimited" or v == RLIM_INFINITY:
        return RLIM_INFINITY
    if name in _RLIMIT_SIZES:
        if v == 0:
            return 0
        return parse_size(v, f"rlimit {name}")
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"rlimit {name} must be an int, not {type(v).__name__}")
    if v < 0:
        raise ValueError(f"rlimit {name} must not be negative, got {v}")
    return v


def parse_rlimits(rlimits):
    """{"nofile": 256, "fsize": "10M", "cpu": (2, 3)} -> ((resource, soft, hard), ...)."""
    if rlimits is None:
        return ()
    if not isinstance(rlimits, dict):
        raise TypeError("rlimits must be a dict like {'nofile': 256}")
    out = []
    for name, v in rlimits.items():
        if not isinstance(name, str) or name.lower() not in _RLIMITS:
            raise ValueError(f"unknown rlimit {name!r}; known: {', '.join(sorted(_RLIMITS))}")
        name = name.lower()
        if isinstance(v, tuple):
            if len(v) != 2:
                raise ValueError(f"rlimit {name}: give a value or (soft, hard)")
            soft, hard = (_rlimit_value(name, x) for x in v)
        else:
            soft = hard = _rlimit_value(name, v)
        if hard != RLIM_INFINITY and (soft == RLIM_INFINITY or soft > hard):
            raise ValueError(f"rlimit {name}: soft limit {soft} exceeds hard limit {hard}")
        out.append((_RLIMITS[name], soft, hard))
    return tuple(out)


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")


def _check_env(env, what):
    if env is None:
        return None
    if not hasattr(env, "items"):
        raise TypeError(f"{what} must be a mapping")
    out = {}
    for k, v in env.items():
        kb = os.fsencode(k) if not isinstance(k, bytes) else k
        vb = os.fsencode(v) if not isinstance(v, bytes) else v
        if b"\0" in kb or b"\0" in vb:
            raise ValueError(f"{what}: embedded null byte in {k!r}")
        if not kb or b"=" in kb:
            raise ValueError(f"illegal environment variable name {k!r}")
        out[kb] = vb
    return out


def _raise_unreachable(path, what):
    """`path` cannot be reached: the error says why (a missing entry, a
    directory that cannot be searched, a file on the way...)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(e.errno, f"{what} does not exist", path) from None
        raise OSError(e.errno, f"{what} cannot be reached: {os.strerror(e.errno)}",
                      path) from None
    raise FileNotFoundError(errno.ENOENT, f"{what} does not exist", path)


@dataclass(frozen=True)
class SandboxConfig:
    rootfs: Optional[str] = None
    mounts: tuple = ()
    read_only: bool = False
    hostname: str = "sandbox"
    network: str = "none"
    env: Optional[dict] = None
    cwd: str = "/"
    user: object = None
    memory: Optional[int] = None
    pids: Optional[int] = None
    cpus: Optional[float] = None
    rlimits: tuple = ()
    seccomp: object = "default"
    capabilities: object = None
    cgroup_parent: Optional[str] = None

    @classmethod
    def from_kwargs(cls, rootfs=None, *, mounts=(), read_only=False,
                    hostname="sandbox", network="none", env=None, cwd="/",
                    user=None, memory=None, pids=None, cpus=None,
                    rlimits=None, seccomp="default", capabilities=None,
                    cgroup_parent=None):
        if rootfs is not None:
            rootfs = _check_path_str(rootfs, "rootfs")
            if not os.path.exists(rootfs):
                _raise_unreachable(rootfs, "rootfs")
            if not os.path.isdir(rootfs):
                raise NotADirectoryError(20, "rootfs is not a directory", rootfs)
            rootfs = os.path.realpath(rootfs)
            # /proc and /dev are ours to mount: a rootfs that makes them
            # symlinks (or files) would send those mounts elsewhere
            for name in ("proc", "dev"):
                p = os.path.join(rootfs, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(
                        20, f"rootfs /{name} must be a directory (or absent), "
                            "not a symlink or file", p)
        if isinstance(mounts, (Bind, Tmpfs)):
            mounts = (mounts,)
        mounts = tuple(mounts)
        for m in mounts:
            if not isinstance(m, (Bind, Tmpfs)):
                raise TypeError(f"mounts takes Bind and Tmpfs, not {type(m).__name__}")
            # (access: no stat result to build; follows symlinks as exists() does)
            if isinstance(m, Bind) and not os.access(m.source, os.F_OK):
                _raise_unreachable(m.source, "bind source")
        if not isinstance(read_only, bool):
            raise TypeError("read_only must be a bool")
        if not isinstance(hostname, str) or not _HOSTNAME_RE.match(hostname):
            raise ValueError(f"invalid hostname {hostname!r}")
        if network not in ("none", "host"):
            raise ValueError(f"network must be 'none' or 'host', not {network!r}")
        env = _check_env(env, "env")
        cwd = _inside_path(cwd, "cwd")
        if memory is not None:
            memory = parse_size(memory, "memory")
        if pids is not None:
            if isinstance(pids, bool) or not isinstance(pids, int):
                raise TypeError("pids must be an int")
            if pids <= 0:
                raise ValueError(f"pids must be positive, got {pids}")
        if cpus is not None:
            if isinstance(cpus, bool) or not isinstance(cpus, (int, float)):
                raise TypeError("cpus must be a number")
            if math.isnan(cpus) or cpus <= 0 or math.isinf(cpus):
                raise ValueError(f"cpus must be a positive number, got {cpus}")
            cpus = float(cpus)
        rl = parse_rlimits(rlimits)
        seccomp = validate_policy(seccomp)
        capabilities = parse_capabilities(capabilities)
        if cgroup_parent is not None:
            cgroup_parent = _check_path_str(cgroup_parent, "cgroup_parent")
            if not os.path.isdir(cgroup_parent):
                raise NotADirectoryError(20, "cgroup_parent is not a directory", cgroup_parent)
        return cls(rootfs, mounts, read_only, hostname, network, env, cwd,
                   user, memory, pids, cpus, rl, seccomp, capabilities, cgroup_parent)
