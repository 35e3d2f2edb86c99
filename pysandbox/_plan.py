"""The mount plan and the id maps: decided here, executed by csrc/init.c.

The plan is serialized once per sandbox into the wire format of
csrc/proto.h (struct ps_plan_hdr, struct ps_op_hdr)."""
from __future__ import annotations

import functools
import stat
import os
import struct
import time

from ._caps import cap_mask
from ._config import Bind, Tmpfs

# enum ps_op_kind / ps_op_flags / ps_plan_flags (csrc/proto.h)
(ROOT_TMPFS, ROOT_OVERLAY, BIND, TMPFS, PROC, DEVPTS, MKDIR, SYMLINK, REMOUNT_RO,
 MQUEUE, BIND_SELF) = range(1, 12)
F_RDONLY, F_NOSUID, F_NODEV, F_NOEXEC, F_FILE, F_OPTIONAL, F_NO_CREATE = 1, 2, 4, 8, 16, 32, 64
F_DEV_NODE = 128   # from the parent's private copies when it sends some (dev_nodes())
PLAN_CAPS, PLAN_FILTER_IN_INIT, PLAN_NO_SPARE = 4, 8, 16   # (network, time namespaces: init's argv)
PLAN_MAGIC = 0x31425350

_HDR = struct.Struct("=6IQ")
_OP = struct.Struct("=6I")

# The embedded default root: the host's system directories, read-only, and
# an allow-list of /etc (no shadow, no machine secrets).
HOST_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
HOST_ETC_ALLOW = (
    "passwd", "group", "hosts", "host.conf", "nsswitch.conf", "resolv.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "os-release",
    "protocols", "services", "ssl", "ca-certificates", "alternatives",
    "profile", "bash.bashrc", "shells", "terminfo",
)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("core", "/proc/kcore"))


def _z(s):
    return b"" if s is None else os.fsencode(s) + b"\0"


class Op:
    """One step of the plan.  Ops are immutable once made; the fixed ones
    (/proc, /dev, the default root) are shared between sandboxes, and each
    keeps its wire form once packed."""
    __slots__ = ("kind", "flags", "mode", "src", "dst", "data", "_packed")

    def __init__(self, kind, dst=None, src=None, data=None, flags=0, mode=0):
        self.kind, self.flags, self.mode = kind, flags, mode
        self.src, self.dst, self.data = src, dst, data
        self._packed = None

    def describe(self):
        """The path a failure of this op is about."""
        return self.dst if self.src is None else f"{self.src} -> {self.dst}"

    def pack(self):
        p = self._packed
        if p is None:
            src, dst, data = _z(self.src), _z(self.dst), _z(self.data)
            p = self._packed = (_OP.pack(self.kind, self.flags, self.mode, len(src), len(dst),
                                         len(data)) + src + dst + data)
        return p


def _overlay_escape(path):
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


# What the host's files decide (which system directories and /etc names
# exist, which /proc entries to mask, where to stage the root) is looked up
# again after this many seconds: it rarely changes, and each is a few stats.
HOST_CACHE_SECONDS = 5.0
_host_cache = {}


def _cached(key, make):
    now = time.monotonic()
    made, value = _host_cache.get(key, (0.0, None))
    if value is None or now - made > HOST_CACHE_SECONDS:
        value = make()
        _host_cache[key] = (now, value)
    return value


def _default_root_ops():
    """The ops of the embedded root."""
    return _cached("default-root", lambda: tuple(_make_default_root_ops()))


def _make_default_root_ops():
    ops = [Op(ROOT_TMPFS, "/", data="mode=0755")]
    for d in HOST_SYSTEM_DIRS:
        if os.path.islink(d):
            ops.append(Op(SYMLINK, d, data=os.readlink(d)))
        elif os.path.isdir(d):
            ops.append(Op(BIND, d, src=d, flags=F_RDONLY | F_NOSUID | F_NODEV))
    ops.append(Op(MKDIR, "/etc"))
    for name in HOST_ETC_ALLOW:
        p = "/etc/" + name
        if os.path.islink(p):
            ops.append(Op(SYMLINK, p, data=os.readlink(p)))
        elif os.path.exists(p):
            ops.append(Op(BIND, p, src=p, flags=F_RDONLY | F_NOSUID | F_NODEV | F_OPTIONAL))
    for d in ("/root", "/home", "/run", "/mnt"):
        ops.append(Op(MKDIR, d, mode=0o755))
    ops.append(Op(MKDIR, "/var", mode=0o755))
    ops.append(Op(MKDIR, "/var/tmp", mode=0o1777))
    return ops


# Docker's masked and read-only /proc paths (shared/reference/docker-defaults.md)
PROC_MASKED = ("acpi", "asound", "interrupts", "kcore", "keys", "latency_stats",
               "sched_debug", "scsi", "timer_list", "timer_stats")
PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")


def _proc_ops():
    ops = [Op(PROC, "/proc", flags=F_NOSUID | F_NODEV | F_NOEXEC)]
    for name in PROC_READ_ONLY:
        ops.append(Op(BIND_SELF, "/proc/" + name,
                      flags=F_RDONLY | F_NOSUID | F_NODEV | F_NOEXEC | F_NO_CREATE))
    for name in PROC_MASKED:
        host = "/proc/" + name
        if os.path.isdir(host):
            ops.append(Op(TMPFS, host, data="size=0,mode=0555",
                          flags=F_RDONLY | F_NOSUID | F_NODEV | F_NOEXEC | F_NO_CREATE))
        elif os.path.exists(host):
            ops.append(Op(BIND, host, src="/dev/null",
                          flags=F_RDONLY | F_NOSUID | F_NOEXEC | F_FILE | F_NO_CREATE))
    return ops


def _system_ops():
    """/proc, /dev and /tmp: the same in every sandbox."""
    ops = _proc_ops()
    ops.append(Op(TMPFS, "/dev", data="mode=0755,size=65536k", flags=F_NOSUID | F_NOEXEC))
    for n in DEV_NODES:
        ops.append(Op(BIND, "/dev/" + n, src="/dev/" + n,
                      flags=F_NOSUID | F_NOEXEC | F_FILE | F_DEV_NODE))
    ops.append(Op(DEVPTS, "/dev/pts", data="newinstance,ptmxmode=0666,mode=0620",
                  flags=F_NOSUID | F_NOEXEC))
    for name, target in DEV_LINKS:
        ops.append(Op(SYMLINK, "/dev/" + name, data=target))
    ops.append(Op(TMPFS, "/dev/shm", data="mode=1777", flags=F_NOSUID | F_NODEV))
    ops.append(Op(MQUEUE, "/dev/mqueue", flags=F_NOSUID | F_NODEV | F_NOEXEC))
    ops.append(Op(TMPFS, "/tmp", data="mode=1777", flags=F_NOSUID | F_NODEV))
    return tuple(ops)


@functools.lru_cache(maxsize=4096)
def _bind_op(m, cwd):
    src = os.path.abspath(m.source) if cwd is None else os.path.join(cwd, m.source)
    return Op(BIND, m.target, src=os.path.normpath(src),
              flags=(F_RDONLY if m.read_only else 0) | F_NODEV)


@functools.lru_cache(maxsize=4096)
def _tmpfs_op(m):
    data = "mode=0755" + (f",size={m.size}" if m.size else "")
    return Op(TMPFS, m.target, data=data, flags=F_NOSUID | F_NODEV)


def build_ops(cfg):
    if cfg.rootfs is None:
        ops = list(_default_root_ops())
    else:
        ops = [Op(ROOT_OVERLAY, "/", src=_overlay_escape(cfg.rootfs))]
    ops.extend(_cached("system", _system_ops))
    for m in cfg.mounts:
        if isinstance(m, Bind):
            # init opens sources in the host's view: symlinks resolve as
            # here, relative sources from this process's cwd
            src = m.source
            ops.append(_bind_op(m, None if src.startswith("/") else os.getcwd()))
        elif isinstance(m, Tmpfs):
            ops.append(_tmpfs_op(m))
    if cfg.read_only:
        ops.append(Op(REMOUNT_RO, "/"))
    return ops


def staging_dir():
    """Where init attaches the new root before pivot_root (host view, inside
    init's private mount namespace only)."""
    return _cached("staging", _find_staging_dir)


def _find_staging_dir():
    for d in ("/tmp", "/mnt", "/var/tmp", "/opt", "/srv"):
        if os.path.isdir(d) and not os.path.islink(d):
            return d
    raise FileNotFoundError(2, "no directory to stage the sandbox root in", "/tmp")


def pack_plan(cfg, ops, seccomp_filter=b""):
    flags = PLAN_CAPS
    if cfg.seccomp == "default":
        # the default deny-list leaves all that init and the supervisors do
        # once it is installed allowed, so it is installed once in init and
        # once in the first supervisor, before its go (custom policies: per
        # run)
        flags |= PLAN_FILTER_IN_INIT
    if cfg.pids is not None:
        # a spare supervisor (runs in turn, see csrc/init.c) would count
        # against the limit: the commands keep what they had (an nproc
        # rlimit, sandbox-wide or a run's, comes in every request that has
        # it: the supervisor that takes one says so on the board)
        flags |= PLAN_NO_SPARE
    hostname = cfg.hostname.encode() + b"\0"
    staging = staging_dir().encode() + b"\0"
    body = b"".join(op.pack() for op in ops)
    header = _HDR.pack(PLAN_MAGIC, flags, len(ops), len(hostname), len(staging),
                       len(seccomp_filter), cap_mask(cfg.capabilities))
    return header + hostname + staging + seccomp_filter + body


# --- identity -------------------------------------------------------------

def _ids_from_zero(path):
    """How many ids from 0 up this process's user namespace maps (its
    /proc/self/uid_map or gid_map): all of them on the host, often 1 in a
    rootless container."""
    try:
        with open(path) as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside == 0:
                    return count
    except (OSError, ValueError):
        pass
    return 1


_root_ranges = None


def id_maps():
    """(uid_map, gid_map, deny_setgroups): the caller is root inside.  Root
    can map a range (at most 65536, and no more than its own namespace maps:
    a root that is root of a one-id container maps one id), so that user=
    can pick other ids; an ordinary user can map only its own ids."""
    global _root_ranges
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        if _root_ranges is None:   # a namespace's maps never change once written
            _root_ranges = (min(65536, _ids_from_zero("/proc/self/uid_map")),
                            min(65536, _ids_from_zero("/proc/self/gid_map")))
        nu, ng = _root_ranges
        return f"0 0 {nu}\n".encode(), f"0 0 {ng}\n".encode(), False
    return f"0 {uid} 1\n".encode(), f"0 {gid} 1\n".encode(), True


def _passwd_lookup(rootfs, name):
    path = os.path.join(rootfs or "/", "etc/passwd")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 4 and (parts[0] == name or parts[2] == name):
                    return int(parts[2]), int(parts[3])
    except OSError:
        pass
    return None


def resolve_user(user, rootfs):
    """user= -> (uid, gid) inside, or None for the default (0, 0)."""
    if user is None:
        return None
    if isinstance(user, bool):
        raise TypeError("user must be an int, 'uid:gid', a name, or a (uid, gid) tuple")
    if isinstance(user, int):
        found = _passwd_lookup(rootfs, str(user))
        ids = (user, found[1] if found else user)
    elif isinstance(user, tuple) and len(user) == 2 and all(isinstance(x, int) for x in user):
        ids = user
    elif isinstance(user, str):
        if ":" in user:
            u, g = user.split(":", 1)
            if not (u.isdigit() and g.isdigit()):
                raise ValueError(f"user {user!r}: 'uid:gid' takes numbers")
            ids = (int(u), int(g))
        elif user.isdigit():
            return resolve_user(int(user), rootfs)
        else:
            ids = _passwd_lookup(rootfs, user)
            if ids is None:
                raise ValueError(f"user {user!r} not found in the sandbox's /etc/passwd")
    else:
        raise TypeError("user must be an int, 'uid:gid', a name, or a (uid, gid) tuple")
    if min(ids) < 0:
        raise ValueError(f"user ids must not be negative: {ids}")
    limit = 65536 if os.geteuid() == 0 else 1
    if max(ids) >= limit:
        raise ValueError(
            f"user {user!r} -> uid/gid {ids} cannot be mapped: "
            + ("only ids below 65536 exist inside" if limit > 1 else
               "a sandbox made by an ordinary user has only uid/gid 0 inside"))
    return ids


_dev_nodes = None


def _owner_mapped_in_sandbox(st):
    """Is st's owner mapped in a sandbox (id_maps())?  (Its owner may chmod
    it with no capability at all.)"""
    uid = os.geteuid()
    if uid == 0:
        id_maps()                     # (fills _root_ranges)
        return st.st_uid < _root_ranges[0]
    return st.st_uid == uid


def dev_nodes():
    """(names, rdevs, modes) of the host's /dev nodes that every sandbox
    gets, when their owner is mapped in the sandbox (the caller is root):
    the sandbox's root could then chmod or chown nodes bound from the
    host's /dev (it has CAP_FOWNER and CAP_CHOWN in its user namespace over
    what mapped ids own), so it gets private nodes of the same devices,
    made by the parent.  None otherwise.  (Where they cannot be made, and
    for whatever is not among them, init binds the host's nodes read-only:
    writes to the devices go on, their attributes cannot change.)"""
    global _dev_nodes
    if _dev_nodes is None:
        names, rdevs, modes, mapped = [], [], [], False
        for n in DEV_NODES:
            try:
                st = os.stat("/dev/" + n)
            except OSError:
                continue              # (its bind fails as before: named)
            if not stat.S_ISCHR(st.st_mode):
                continue              # (bound from the host, read-only)
            names.append(n)
            rdevs.append(st.st_rdev)
            modes.append(stat.S_IMODE(st.st_mode))
            mapped = mapped or _owner_mapped_in_sandbox(st)
        _dev_nodes = (tuple(names), tuple(rdevs), tuple(modes)) if mapped else ()
    return _dev_nodes or None
