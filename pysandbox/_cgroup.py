"""Cgroup driver (parent side): one cgroup per sandbox, a child per run.

The sandbox cgroup is created BELOW the calling process's own cgroup (read
from /proc/self/cgroup) in every hierarchy that carries something pysandbox
uses, on cgroup v1, v2, or a hybrid of both (v1 controllers plus a unified
tree).  The caller is never moved; only processes we are handed are.

Everything that differs between v1 and v2 is DATA: the two `_Version` tables
below say which controller each limit and statistic lives in, the file names,
the value formats, how to kill and how to freeze.  The code that creates,
limits, measures, kills and removes is written once and reads the tables
(the same idea as crun's cgroup-resources.c).  For every resource the
hierarchy is chosen by what actually has the controller: v2 when the unified
tree offers it, else the v1 hierarchy that has it.

Layout (NAME = pysandbox-<creator pid>-<counter>):

    <caller's cgroup>/NAME            limits live here; stats of the whole sandbox
    <caller's cgroup>/NAME/init       v2 only: the init's leaf (v2's "no internal
                                      processes" rule: NAME itself must stay empty
                                      for its controllers to reach the runs)
    <caller's cgroup>/NAME/run-N      one per run: per-run stats and kill; made
                                      ahead while the previous run's command
                                      runs, removed (when the run left it
                                      empty) while the next one's does

Facts about the kernels this was written against (Debian 12 VM, 6.x, v1
controllers + a hugetlb-only cgroup2 tree at /sys/fs/cgroup/unified):

- v1 memory: memory.limit_in_bytes; memory.memsw.limit_in_bytes exists
  (swap accounting compiled in), so memory+swap is capped to the same value
  and swap cannot be used to exceed the limit.  Where memsw is missing and
  swap is active, memory.swappiness=0 keeps the cgroup's own reclaim from
  swapping; where memsw is missing and there is no swap (/proc/swaps empty),
  the RAM limit alone is the whole limit.  memory.use_hierarchy is always 1
  on 6.x (it is written on old kernels that default to 0).
  Peak: memory.max_usage_in_bytes.  OOM kills: the `oom_kill` line of
  memory.oom_control, which v1 counts in the cgroup of the VICTIM only (not
  in the ancestor whose limit was hit), so it is summed over the subtree.
- v2 memory: memory.max, memory.swap.max=0, memory.peak, memory.events
  `oom_kill` (hierarchical).
- pids (both): pids.max, pids.current, pids.peak (v1 has it too on 6.x).
- cpu: v1 cpu.cfs_period_us + cpu.cfs_quota_us, v2 cpu.max "quota period".
  CPU time: v1 cpuacct.usage (ns, user+sys), v2 cpu.stat usage_usec, which
  every v2 cgroup has even without the cpu controller.
- kill: v2 cgroup.kill (5.14+); otherwise freeze (v1 freezer.state, v2
  cgroup.freeze), SIGKILL every pid in the subtree, thaw; loop until empty.
"""
from __future__ import annotations

import collections
import errno
import itertools
import math
import os
import queue
import re
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Optional

from ._errors import SandboxError, SetupError

__all__ = ["open_sandbox_cgroup", "SandboxCgroup", "RunCgroup", "sweep_orphans", "available"]

# --------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------

CORE = ""  # v2 core files: in every non-root cgroup, no controller needed


@dataclass(frozen=True)
class _Write:
    """A file written to set a limit.  `fmt` is formatted with the limit's
    values: {bytes}, {pids}, {quota}, {period}."""
    controller: str
    file: str
    fmt: str
    # "always": the file must exist.  "if_swap": needed only while swap is
    # active (a kernel without swap accounting and without swap has nothing
    # to cap).  "if_old": written only when it does not already read `fmt`.
    need: str = "always"
    alt: Optional["_Write"] = None  # tried when `file` is missing but needed


@dataclass(frozen=True)
class _Stat:
    controller: str
    file: str
    key: Optional[str] = None   # "name value" lines; None: the file is one number
    scale: float = 1            # 1e-9: ns -> s, 1e-6: us -> s; 1: int as is
    subtree: bool = False       # a per-cgroup counter: sum it over the subtree


@dataclass(frozen=True)
class _Freeze:
    controller: str
    file: str
    frozen: str
    thawed: str
    state_file: str
    state_key: Optional[str]
    state_frozen: str


@dataclass(frozen=True)
class _Version:
    version: int
    limits: dict          # limit name -> tuple of _Write
    ensure: tuple         # _Write applied at creation (need="if_old")
    stats: dict           # stat name -> _Stat
    kill: Optional[tuple]  # (controller, file, value): kill the whole subtree at once
    kill_since: tuple     # the kernel version that has `kill`
    freeze: Optional[_Freeze]
    init_leaf: Optional[str]   # where the sandbox's own processes go
    delegates: bool       # controllers must be enabled in the parent's cgroup.subtree_control


_V1 = _Version(
    version=1,
    limits={
        "memory": (
            _Write("memory", "memory.limit_in_bytes", "{bytes}"),
            # memsw caps RAM+swap: must be written after limit_in_bytes
            # (the kernel wants memsw >= limit).  It is written whenever it
            # exists, swap or not (the CI VM has memsw but no swap at all:
            # /proc/swaps is empty, so there the RAM limit is already the
            # whole limit).  Without memsw and with swap active,
            # swappiness=0 stops this cgroup's own reclaim from swapping.
            _Write("memory", "memory.memsw.limit_in_bytes", "{bytes}", need="if_swap",
                   alt=_Write("memory", "memory.swappiness", "0")),
        ),
        "pids": (_Write("pids", "pids.max", "{pids}"),),
        "cpus": (_Write("cpu", "cpu.cfs_period_us", "{period}"),
                 _Write("cpu", "cpu.cfs_quota_us", "{quota}")),
    },
    ensure=(_Write("memory", "memory.use_hierarchy", "1", need="if_old"),),
    stats={
        "cpu_time": _Stat("cpuacct", "cpuacct.usage", scale=1e-9),
        "max_memory": _Stat("memory", "memory.max_usage_in_bytes"),
        "oom_kills": _Stat("memory", "memory.oom_control", key="oom_kill", subtree=True),
        "pids_peak": _Stat("pids", "pids.peak"),
        "pids_current": _Stat("pids", "pids.current"),
    },
    kill=None,
    kill_since=(),
    freeze=_Freeze("freezer", "freezer.state", "FROZEN", "THAWED",
                   "freezer.state", None, "FROZEN"),
    init_leaf=None,
    delegates=False,
)

_V2 = _Version(
    version=2,
    limits={
        "memory": (
            _Write("memory", "memory.max", "{bytes}"),
            # no swap for the sandbox: memory= is the whole budget
            _Write("memory", "memory.swap.max", "0", need="if_swap"),
        ),
        "pids": (_Write("pids", "pids.max", "{pids}"),),
        "cpus": (_Write("cpu", "cpu.max", "{quota} {period}"),),
    },
    ensure=(),
    stats={
        "cpu_time": _Stat(CORE, "cpu.stat", key="usage_usec", scale=1e-6),
        "max_memory": _Stat("memory", "memory.peak"),
        "oom_kills": _Stat("memory", "memory.events", key="oom_kill"),
        "pids_peak": _Stat("pids", "pids.peak"),
        "pids_current": _Stat("pids", "pids.current"),
    },
    kill=(CORE, "cgroup.kill", "1"),
    kill_since=(5, 14),
    freeze=_Freeze(CORE, "cgroup.freeze", "1", "0", "cgroup.events", "frozen", "1"),
    init_leaf="init",
    delegates=True,
)

_TABLES = {2: _V2, 1: _V1}
_PREFERENCE = (2, 1)             # per resource: v2 when it has the controller
_STAT_KEYS = ("cpu_time", "max_memory", "oom_kills", "pids_peak", "pids_current")
# v1 hierarchies that may be worth a cgroup when no limit needs them (stats,
# kill): each gets one if it adds what the others do not (_Served)
_USEFUL_V1 = frozenset(["memory", "pids", "cpu", "cpuacct", "freezer"])
# v2 controllers enabled for the runs when the sandbox cgroup has them
_USEFUL_V2 = ("memory", "pids", "cpu")
_LIMIT_STEP = {"memory": "cgroup memory limit", "pids": "cgroup pids limit",
               "cpus": "cgroup cpu limit"}
_CFS_PERIOD = 100_000       # us
_CFS_MIN_QUOTA = 1_000      # us, the kernel's minimum
_CFS_MAX_PERIOD = 1_000_000

_NAME_RE = re.compile(r"^pysandbox-(\d+)-(\d+)$")
_PENDING_MAX = 16            # run cgroups left for housekeeping() to remove
_counter = itertools.count()
_KILL_TIMEOUT = 5.0

# --------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------


def _read(path):
    # (a file object, not a bare fd: one dropped by an interrupt raised as
    # open() returns is closed by its finalizer)
    with open(path, "rb", buffering=0) as f:
        return f.readall().decode()


def _write(path, value):
    # (a bare fd: open()'s write modes would add O_CREAT and O_TRUNC)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text, key):
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return parts[1]
    return None


def _swap_active():
    try:
        with open("/proc/swaps") as f:
            return len(f.read().strip().splitlines()) > 1
    except OSError:
        return False


def _unescape(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


# --------------------------------------------------------------------------
# Hierarchies the caller is in
# --------------------------------------------------------------------------


class _Hier:
    """One mounted hierarchy and where the sandbox cgroups go in it."""

    __slots__ = ("version", "label", "controllers", "mount", "root", "base", "base_cg")

    def __init__(self, version, label, controllers, mount, root, base_cg):
        self.version = version
        self.label = label              # "memory", "cpu,cpuacct", "unified"
        self.controllers = controllers  # v1: the hierarchy's; v2: filled from cgroup.controllers
        self.mount = mount
        self.root = root                # the mount's root inside the hierarchy
        self.base_cg = base_cg          # cgroup path (as in /proc/self/cgroup) of the parent
        base = self.dir_of(base_cg)
        self.base = os.path.normpath(base) if base is not None else None

    @property
    def table(self):
        return _TABLES[self.version]

    def dir_of(self, cg):
        """Filesystem path of cgroup path `cg`, or None when this mount does
        not show it."""
        root = self.root.rstrip("/")
        if cg != root and not cg.startswith(root + "/"):
            return None
        return self.mount + cg[len(root):] if root else self.mount + cg

    def can_delegate(self, controller):
        """v2: can `controller` reach the children of base?  It can when it is
        already in base's cgroup.subtree_control, or when base may enable it
        (the hierarchy's root, or a cgroup holding no process)."""
        if self.version == 1 or controller == CORE:
            return self.offers(controller)
        if controller not in self.controllers:
            return False
        try:
            if controller in _read(self.base + "/cgroup.subtree_control").split():
                return True
            if self.base_cg == self.root or self.base_cg == "/":
                return True
            return not _read(self.base + "/cgroup.procs").split()
        except OSError:
            return False

    def cg_of(self, path):
        """Cgroup path (as /proc/PID/cgroup shows it) of directory `path`."""
        rel = path[len(self.mount):]
        return (self.root.rstrip("/") + rel) or "/"

    def offers(self, controller):
        """Can a child of base have `controller`?"""
        if self.version == 1:
            return controller in self.controllers
        return controller == CORE or controller in self.controllers

    def __repr__(self):
        return f"<cgroup v{self.version} {self.label} at {self.base}>"


def _mounts():
    out = []  # (fstype, superopts set, root, mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
                continue
            out.append((rf[0], set(rf[2].split(",")), _unescape(lf[3]), _unescape(lf[4])))
    return out


def _resolve_parent(parent, mounts):
    """parent -> (absolute cgroup path or None, relative path or None)."""
    if parent is None:
        return None, None
    p = os.fsdecode(os.fspath(parent))
    if "\0" in p:
        raise ValueError("cgroup parent contains a NUL byte")
    if not p.startswith("/"):
        parts = [x for x in p.split("/") if x not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"cgroup parent may not contain '..': {p!r}")
        return None, "/".join(parts)
    p = os.path.normpath(p)
    for _fstype, _opts, root, mnt in sorted(mounts, key=lambda m: -len(m[3])):
        if p == mnt or p.startswith(mnt.rstrip("/") + "/"):
            rel = p[len(mnt):]
            return (root.rstrip("/") + rel) or "/", None
    return p, None


# The hierarchies are looked up again when this process's cgroups change
# (/proc/self/cgroup, read each time: ~10 us), else after this many seconds
# (the mounts and a cgroup2 parent's controllers rarely change; each lookup
# parses mountinfo: ~0.2 ms of every sandbox with limits)
HIER_CACHE_SECONDS = 5.0
_hier_cache = {}


def _hierarchies(parent=None, versions=_PREFERENCE):
    """Every hierarchy the caller is in, with base = where to create."""
    with open("/proc/self/cgroup") as f:
        text = f.read()
    key = (None if parent is None else os.fsdecode(os.fspath(parent)), tuple(versions))
    now = time.monotonic()
    hit = _hier_cache.get(key)
    if hit is not None and hit[1] == text and now - hit[0] <= HIER_CACHE_SECONDS:
        return list(hit[2])
    out = _find_hierarchies(parent, versions, text)
    if len(_hier_cache) >= 16:
        _hier_cache.clear()     # (one entry per cgroup parent asked for)
    _hier_cache[key] = (now, text, tuple(out))
    return out


def _find_hierarchies(parent, versions, cgroup_text):
    mounts = _mounts()
    abs_cg, rel = _resolve_parent(parent, mounts)
    out = []
    lines = cgroup_text.splitlines()
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            version, want = 2, None
        else:
            version = 1
            want = set(ctrls.split(","))
            if not want & _USEFUL_V1:
                continue  # cpuset, devices, blkio, name=systemd...
        if version not in versions:
            continue
        if abs_cg is not None:
            base_cg = abs_cg
        elif rel:
            base_cg = path.rstrip("/") + "/" + rel
        else:
            base_cg = path
        for fstype, opts, root, mnt in mounts:
            if version == 2 and fstype != "cgroup2":
                continue
            if version == 1 and (fstype != "cgroup" or not want <= opts):
                continue
            h = _Hier(version, "unified" if version == 2 else ctrls,
                      frozenset(want) if version == 1 else frozenset(), mnt, root, base_cg)
            if h.base is None:
                continue
            if version == 2:
                try:
                    h.controllers = frozenset(_read(h.base + "/cgroup.controllers").split())
                except OSError:
                    h.controllers = frozenset()
            out.append(h)
            break
    return out


# --------------------------------------------------------------------------
# Error messages: why, and what to do
# --------------------------------------------------------------------------


def _advice(err, path):
    uid = os.geteuid()
    if err in (errno.EACCES, errno.EPERM):
        return (f"uid {uid} may not create or write cgroups here: cgroup limits need root, "
                "or a cgroup delegated to this user (systemd-run --user --scope "
                "-p Delegate=yes ..., or a cgroup directory chowned to the user) given "
                "as the cgroup parent")
    if err == errno.EROFS:
        return ("the cgroup filesystem is mounted read-only (a container without cgroup "
                "delegation): mount it read-write or give the container a delegated cgroup")
    if err == errno.ENOENT:
        return "the parent cgroup does not exist: check the cgroup parent"
    if err in (errno.ENOSPC, errno.EAGAIN):
        return ("cgroup.max.descendants or cgroup.max.depth was reached, or the kernel "
                "ran out of cgroup ids: close other sandboxes or raise the limit")
    return "the kernel refused"


def _error(err, step, path, detail):
    return SetupError(err, step, path, detail)


# --------------------------------------------------------------------------
# A cgroup in every hierarchy
# --------------------------------------------------------------------------


def _can_kill(h, d=None):
    """Can cgroup d of hierarchy h kill its whole tree at once (v2
    cgroup.kill)?  Without d: would a cgroup made there (by the table and
    the kernel's version)?"""
    k = h.table.kill
    if k is None or not h.offers(k[0]):
        return False
    if d is None:
        return _kernel_version() >= h.table.kill_since
    return os.path.exists(os.path.join(d, k[1]))


def _can_freeze(h):
    fz = h.table.freeze
    return fz is not None and h.offers(fz.controller)


def _subdirs(d):
    """The child cgroups of d; none when d cannot be read (gone meanwhile),
    as os.walk would skip it.  A cgroup directory's link count is 2 plus
    its subdirectories (kernfs): a leaf, the usual case, costs one stat
    instead of a listing of its thirty-odd files."""
    try:
        if os.stat(d).st_nlink == 2:
            return []
        with os.scandir(d) as it:
            return [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _subdirs_bottom_up(d):
    out = []
    for x in _subdirs(d):
        out.extend(_subdirs_bottom_up(x))
        out.append(x)
    return out


def _walk(d):
    """d and every cgroup below it, top-down."""
    todo = [d]
    while todo:
        x = todo.pop()
        yield x
        todo.extend(_subdirs(x))


def _pids_in(h, d):
    """(pid, cgroup path) of every process in d's subtree, or [] if gone.
    A pid of 0 (a process outside our pid namespace) is kept: it makes the
    group 'not empty' but cannot be signalled from here."""
    out = []
    try:
        for dd in _walk(d):
            try:
                text = _read(dd + "/cgroup.procs")
            except FileNotFoundError:
                continue
            cg = h.cg_of(dd)
            out.extend((int(x), cg) for x in text.split())
    except OSError:
        pass
    return out


def _member_path(pid, h):
    """The cgroup path of `pid` in hierarchy h, from /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if h.version == 2 and hid == "0" and ctrls == "":
                return path
            if h.version == 1 and ctrls == h.label:
                return path
    return None


def _sigkill_member(pid, h, cg):
    """SIGKILL pid only if it is (still) in cgroup cg: the pidfd pins the
    process, so a recycled pid can never be hit."""
    if pid <= 0:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        try:
            path = _member_path(pid, h)
        except OSError:
            return
        # if the pidfd is readable the process exited and /proc/PID may
        # already be someone else: do nothing
        if select.select([pidfd], [], [], 0)[0]:
            return
        if path is None or not (path == cg or path.startswith(cg.rstrip("/") + "/")):
            return
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        os.close(pidfd)


def _with_oom_flag(figures):
    """stats() from the figures read: no OOM kill counted is 0, and the flag."""
    figures["oom_kills"] = figures["oom_kills"] or 0
    figures["oom_killed"] = figures["oom_kills"] > 0
    return figures


def _figure(spec, d, text=None):
    """The figure `spec` in cgroup d (summed over its subtree for a
    per-cgroup counter); `text`: d's own file, already read.  None when it
    cannot be read."""
    total = 0
    try:
        for dd in (_walk(d) if spec.subtree else (d,)):
            if text is None or dd != d:
                text = _read(os.path.join(dd, spec.file))
            val = _keyed(text, spec.key) if spec.key else text.strip()
            if val is None or val == "max":
                return None
            total += int(val)
    except (OSError, ValueError):
        return None
    return total * spec.scale if spec.scale != 1 else total


class _Group:
    """The same-named cgroup in several hierarchies: {hierarchy: dir}."""

    def __init__(self, dirs):
        self._dirs = dict(dirs)   # _Hier -> directory

    @property
    def paths(self):
        """{hierarchy label: directory}."""
        return {h.label: d for h, d in self._dirs.items()}

    # ---- stats ----------------------------------------------------------

    def _stat_source(self, key, versions=_PREFERENCE):
        cache = self.__dict__.setdefault("_sources", {})
        hit = cache.get((key, versions))
        if hit is None:
            hit = cache[(key, versions)] = self._find_stat_source(key, versions)
        return hit

    def _find_stat_source(self, key, versions):
        for v in versions:
            for h, d in self._dirs.items():
                if h.version != v:
                    continue
                spec = h.table.stats.get(key)
                if spec is None or not h.offers(spec.controller):
                    continue
                if os.path.exists(os.path.join(d, spec.file)):
                    return spec, d
        return None, None

    def _stat(self, key, versions=_PREFERENCE):
        spec, d = self._stat_source(key, versions)
        if spec is None:
            return None
        return _figure(spec, d)

    def _figures(self):
        return {k: self._stat(k) for k in _STAT_KEYS}

    def stats(self):
        return _with_oom_flag(self._figures())

    # ---- processes ------------------------------------------------------

    def _pids(self, versions=_PREFERENCE):
        out = []
        for h, d in self._dirs.items():
            if h.version in versions:
                out.extend((pid, h, cg) for pid, cg in _pids_in(h, d))
        return out

    def _freeze(self, versions, frozen):
        """Freeze (or thaw) in every hierarchy that can (v1 freezer, v2
        cgroup.freeze); returns [(dir, _Freeze)] of those written."""
        done = []
        for h, d in self._dirs.items():
            if h.version not in versions or not _can_freeze(h):
                continue
            fz = h.table.freeze
            path = os.path.join(d, fz.file)
            try:
                _write(path, fz.frozen if frozen else fz.thawed)
            except OSError:
                continue
            done.append((d, fz))
        if frozen and done:  # wait (briefly) for FREEZING -> FROZEN
            deadline = time.monotonic() + 0.2
            for d, fz in done:
                while time.monotonic() < deadline:
                    try:
                        text = _read(os.path.join(d, fz.state_file))
                    except OSError:
                        break
                    state = _keyed(text, fz.state_key) if fz.state_key else text.strip()
                    if state == fz.state_frozen:
                        break
                    time.sleep(0.001)
        return done

    def _kill(self, timeout=_KILL_TIMEOUT, versions=_PREFERENCE):
        """SIGKILL every process in the subtree, in every hierarchy, until
        none is left or `timeout` passes.  Returns True when empty."""
        killers = [(os.path.join(d, h.table.kill[1]), h.table.kill[2])
                   for h, d in self._dirs.items() if h.version in versions and _can_kill(h, d)]
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            for path, value in killers:
                try:
                    _write(path, value)
                except OSError:
                    pass
            procs = self._pids()
            if not procs:
                return True
            if time.monotonic() > deadline:
                return False
            if not killers or delay > 0.004:
                # freeze so that nothing forks while we list and signal;
                # killed frozen tasks die when thawed
                frozen = self._freeze(versions, True)
                try:
                    for pid, h, cg in self._pids():
                        _sigkill_member(pid, h, cg)
                finally:
                    for d, fz in frozen:
                        try:
                            _write(os.path.join(d, fz.file), fz.thawed)
                        except OSError:
                            pass
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _rmdir_all(self, deadline):
        """rmdir the subtree bottom-up in every hierarchy; retried while
        processes are still leaving.  Returns the first directory that could
        not be removed (and its errno), or None."""
        while True:
            failed = _rmdir_trees(self._dirs.values())
            if failed is None or time.monotonic() > deadline:
                return failed
            self._kill(timeout=max(0.0, deadline - time.monotonic()))
            time.sleep(0.005)


def _rmdir_trees(dirs):
    """rmdir each directory's subtree bottom-up, then the directory (one
    already gone is fine).  Returns the first (path, errno) that could not
    be removed, or None when every one is gone."""
    failed = None
    for d in dirs:
        try:
            os.rmdir(d)     # the usual case: no child cgroup (a run's)
            continue
        except FileNotFoundError:
            continue
        except OSError:
            pass
        for p in _subdirs_bottom_up(d) + [d]:
            try:
                os.rmdir(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                failed = failed or (p, e.errno)
    return failed


def _close_stat_fds(opened):
    for _key, _spec, _d, fd in opened:
        os.close(fd)


def _open_procs(dirs):
    fds = []
    try:
        for d in dirs:
            fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


class RunCgroup(_Group):
    """The cgroup of one run ("run-N") in the hierarchies a run needs (see
    SandboxCgroup._run_hierarchies); in the others the command stays where
    it was born, in the sandbox's cgroup, under the same limits.

    `procs_fds`: cgroup.procs of the run cgroup in each hierarchy, opened
    O_WRONLY|O_CLOEXEC.  The command writes "0" to each before exec (the
    open-time credentials and cgroup namespace of the fd are what the kernel
    checks, so this works from inside the sandbox's user namespace)."""

    def __init__(self, sandbox, name, dirs):
        super().__init__(dirs)
        self.name = name
        self._sandbox = sandbox
        # a run has the files its sandbox has, in the same hierarchies:
        # where each figure is read is looked up once per sandbox
        self._sources = sandbox._run_sources(self._dirs)
        self.procs_fds = []
        self.procs_fds = _open_procs(self._dirs.values())
        # the files exit_stats() reads, opened by the janitor while the
        # command runs (open_stats): a list holding at most one tuple of
        # (key, spec, dir, fd) tuples, so that the janitor's hand-over and
        # the taking need no lock (append and pop are atomic; a finalizer
        # may close)
        self._stat_fds = []
        self._stats_taken = False

    def open_stats(self):
        """The janitor, while the command runs (SandboxCgroup._open_stats_of):
        open the files of the figures read at its exit (by path, after the
        exit, ~90 us of the run's path; through fds opened here, ~45 us).
        Nothing when the figures were taken meanwhile, when they are open
        already, or when a file cannot be opened."""
        if self._stats_taken or self._stat_fds:
            return
        opened = []
        try:
            for key in _STAT_KEYS:
                spec, d = self._stat_source(key)
                if spec is not None:
                    opened.append((key, spec, d, os.open(os.path.join(d, spec.file),
                                                         os.O_RDONLY | os.O_CLOEXEC)))
        except BaseException as e:
            _close_stat_fds(opened)
            if isinstance(e, OSError):
                return
            raise
        self._stat_fds.append(tuple(opened))
        if self._stats_taken:   # taken meanwhile: this thread or the taker closes them
            self._close_stats()

    def _take_stat_fds(self):
        self._stats_taken = True
        try:
            return self._stat_fds.pop()
        except IndexError:
            return None

    def _close_stats(self):
        _close_stat_fds(self._take_stat_fds() or ())

    def exit_stats(self):
        """stats(), at the command's exit: through the fds open_stats()
        opened when it did (else by path, as stats())."""
        opened = self._take_stat_fds()
        if opened is None:
            return self.stats()
        out = dict.fromkeys(_STAT_KEYS)
        try:
            for key, spec, d, fd in opened:
                try:
                    text = os.pread(fd, 4096, 0)
                    if len(text) == 4096:   # (no such file is that long: read it whole)
                        text = None
                    else:
                        text = text.decode()
                except OSError:
                    text = None
                out[key] = _figure(spec, d, text)
        finally:
            _close_stat_fds(opened)
        return _with_oom_flag(out)

    def kill(self):
        """SIGKILL every process of the run (its whole tree, setsid and
        double-forked children included).  v2: cgroup.kill; v1: freeze,
        kill, thaw, until empty.  Bounded; returns True when empty."""
        return self._kill()

    def close_fds(self):
        fds, self.procs_fds = self.procs_fds, []
        for fd in fds:
            os.close(fd)

    def _populated(self):
        """Does a live process remain (cgroup.procs: what rmdir checks; a
        pids count also holds exited, unreaped ones)?"""
        for d in self._dirs.values():
            try:
                return bool(_read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                continue
        return False

    def drop(self):
        """remove() for a finalizer: takes no lock (see SandboxProcess.__del__);
        the janitor removes it at the sandbox's next housekeeping()."""
        self.close_fds()
        self._close_stats()
        self._sandbox._pending.append(self)     # (deque: no lock)

    def remove(self, stats=None, later=False):
        """rmdir when empty; if processes remain it is left for
        SandboxCgroup.remove (which kills them).  Counters that the kernel
        keeps per cgroup only (summed over the subtree, e.g. v1 oom_kill)
        are handed to the sandbox when their directory goes.  `stats`: what
        stats() read at the command's exit; when it shows nothing of the run
        left and `later` is true, the rmdir waits for the next
        SandboxCgroup.housekeeping()."""
        self.close_fds()
        self._close_stats()
        sandbox = self._sandbox
        empty = stats is not None and stats.get("pids_current") == 0
        if later and empty and sandbox._remove_later(self):
            return True
        with sandbox._tally:
            # the counters handed over must be final: read once nothing of the
            # run is left (a leftover process OOM-killed after a reading would
            # be lost with the directory); one still populated stays, counted
            # where it is, for the sandbox to kill and remove
            if not empty and self._populated():
                return False
            retired = {}
            for key in _STAT_KEYS:
                spec, _ = self._stat_source(key)
                if spec is not None and spec.subtree:
                    value = stats.get(key) if empty else None
                    retired[key] = (self._stat(key) if value is None else value) or 0
            gone = _rmdir_trees(self._dirs.values()) is None
            if gone:   # else still the sandbox's to kill and remove
                sandbox._forget(self, retired)
        return gone

    def __repr__(self):
        return f"<RunCgroup {self.name} {sorted(self.paths.values())}>"


class SandboxCgroup(_Group):
    """The sandbox's cgroup in every hierarchy it needs (see open_sandbox_cgroup).

    `procs_fds`: cgroup.procs (v2: of the `init` leaf) in each hierarchy,
    O_WRONLY|O_CLOEXEC: write the init's pid to each (or call add_pid)."""

    def __init__(self, name, dirs, limits, drivers=None):
        super().__init__(dirs)
        self.name = name
        self.limits = limits    # {"memory": bytes, "pids": n, "cpus": x} as applied
        self.drivers = drivers or {}   # {"memory": 1, ...}: the cgroup version enforcing each
        # reentrant: a finalizer (Sandbox.__del__ -> close -> remove) may run
        # in a thread that holds it, e.g. the janitor inside _make_run()
        self._lock = threading.RLock()
        self._runs = []
        self._ahead = None   # a run cgroup made ahead for the next run
        # run cgroups left for housekeeping() to remove: ended empty, or
        # their process object collected (RunCgroup.drop); a deque, so that a
        # finalizer adds to it without a lock
        self._pending = collections.deque()
        self._closing = False  # remove() has begun
        self._stats_run = None  # the one run holding its figures' files open
        # held around a run cgroup's rmdir with the hand-over of its counters,
        # and around stats()' walk with the adding of them: a reader never
        # sees a count in both places, or in neither
        self._tally = threading.Lock()
        self._run_hiers = None
        self._retired = {}   # counts of removed runs the kernel does not keep
        self._run_counter = itertools.count(1)
        self._removed = False
        self.procs_fds = []
        self.procs_fds = _open_procs(self._init_dirs())

    def _init_dirs(self):
        out = []
        for h, d in self._dirs.items():
            leaf = h.table.init_leaf
            out.append(os.path.join(d, leaf) if leaf else d)
        return out

    def add_pid(self, pid):
        """Move process `pid` (its whole thread group) into the sandbox cgroup
        in every hierarchy."""
        data = str(int(pid)).encode()
        for fd, d in zip(self.procs_fds, self._init_dirs()):
            try:
                os.write(fd, data)
            except OSError as e:
                raise _error(e.errno, "cgroup add process", os.path.join(d, "cgroup.procs"),
                             f"could not move pid {pid} into the sandbox cgroup") from None

    def _run_hierarchies(self):
        """The hierarchies a run's cgroup is needed in: where each run figure
        is read, and one way to kill the run's tree (cgroup.kill, else a
        freezer).  The limits sit on the sandbox cgroup and bind its runs in
        every hierarchy, so the others add nothing but cost (each join is a
        cgroup migration, each run cgroup a mkdir and an rmdir)."""
        if self._run_hiers is None:
            need = []
            for key in _STAT_KEYS:
                _spec, h = self._stat_hierarchy(key)
                if h is not None and h not in need:
                    need.append(h)
            killers = [h for h, d in self._dirs.items() if _can_kill(h, d)]
            freezers = [h for h in self._dirs if _can_freeze(h)]
            if not any(h in need for h in killers):
                extra = (killers or freezers)[:1]
                need.extend(h for h in extra if h not in need)
            self._run_hiers = need
        return self._run_hiers

    def _stat_hierarchy(self, key):
        """(spec, hierarchy) where this sandbox reads `key` (None, None: nowhere)."""
        spec, d = self._stat_source(key)
        return spec, next((h for h, dd in self._dirs.items() if dd == d), None)

    def _run_sources(self, run_dirs):
        """The stat sources of a run cgroup (see RunCgroup.__init__)."""
        layout = self.__dict__.setdefault("_run_layout", {})
        out = {}
        for key in _STAT_KEYS:
            ck = (key, _PREFERENCE)
            if ck not in layout:
                spec, h = self._stat_hierarchy(key)
                layout[ck] = (spec, h) if h in run_dirs else (None, None)
            spec, h = layout[ck]
            out[ck] = (spec, run_dirs[h]) if spec is not None and h in run_dirs else (None, None)
        return out

    def new_run(self):
        """A child cgroup "run-N" in each hierarchy a run needs (made ahead
        by housekeeping() when it could)."""
        with self._lock:
            if self._closing:
                raise SandboxError("the sandbox is closed (its cgroup was removed)")
            run, self._ahead = self._ahead, None
            if run is None:
                run = self._make_run()
            self._runs.append(run)
            return run

    def _make_run(self):
        """mkdir "run-N" in each hierarchy a run needs (under self._lock)."""
        name = f"run-{next(self._run_counter)}"
        made = {}
        try:
            for h in self._run_hierarchies():
                p = os.path.join(self._dirs[h], name)
                os.mkdir(p)
                made[h] = p
            return RunCgroup(self, name, made)
        except BaseException as e:  # (KeyboardInterrupt too: nothing left)
            for p in made.values():
                try:
                    os.rmdir(p)
                except OSError:
                    pass
            if not isinstance(e, OSError):
                raise
            raise _error(e.errno, "cgroup create run", e.filename,
                         _advice(e.errno, e.filename)) from None

    def _open_stats_of(self, run):
        """The janitor, once `run`'s request is sent: its figures' files
        (RunCgroup.open_stats).  One run of a sandbox holds them at a time:
        the one before, still running (popen() users), closes its own and
        reads them by path at its exit, so that many commands running at
        once hold no more fds than before.  Under the lock remove() takes
        first: once it has begun nothing is opened, and what is being
        opened when it begins is there for it to close."""
        with self._lock:
            if self._closing:
                return
            prev, self._stats_run = self._stats_run, run
            if prev is not None and prev is not run:
                prev._close_stats()
            run.open_stats()

    def _remove_pending(self):
        """rmdir the pending run cgroups (remove(): their counters read once
        they are empty); one still populated is tried again next time, while
        few wait (the rest go with the sandbox)."""
        for _ in range(len(self._pending)):
            if self._closing:
                return
            try:
                run = self._pending.popleft()
            except IndexError:
                return
            try:
                gone = run.remove()
            except (OSError, SetupError):
                gone = False
            if not gone and len(self._pending) < _PENDING_MAX:
                self._pending.append(run)

    def _remove_later(self, run):
        """Leave an ended run's empty cgroup to housekeeping() (a few at
        most: popen() users may never call run())."""
        if self._closing or len(self._pending) >= _PENDING_MAX:
            return False
        self._pending.append(run)
        return True

    def housekeeping(self, run=None):
        """Called once a run's request is sent: the janitor thread opens the
        files of `run`'s exit figures (RunCgroup.open_stats), removes the
        cgroups of the runs that ended empty and makes the next run's
        cgroup, on the other CPU while the caller waits for its command
        (inline, each mkdir and rmdir, ~25 us a hierarchy, was on the runs'
        path)."""
        _JANITOR.submit(self, run)

    def _housekeeping(self):
        """The janitor's work for this sandbox.  A failure is left to the
        path that needs the result: new_run() makes the cgroup itself,
        remove() takes every directory.  Once remove() has begun nothing is
        made: it sets _closing first thing, under the lock _make_run() runs
        under."""
        self._remove_pending()
        with self._lock:
            if self._closing or self._ahead is not None:
                return
            try:
                run = self._make_run()
            except (OSError, SetupError):
                return
            if self._closing:
                # closed meanwhile by a finalizer in this thread (the lock is
                # reentrant): what was made goes at once
                run.close_fds()
                _rmdir_trees(run._dirs.values())
                return
            self._ahead = run

    def _forget(self, run, retired=None):
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)
                for key, value in (retired or {}).items():
                    self._retired[key] = self._retired.get(key, 0) + value

    def stats(self):
        with self._tally:
            out = self._figures()
            with self._lock:
                retired = dict(self._retired)
        for key, value in retired.items():
            out[key] = (out.get(key) or 0) + value
        return _with_oom_flag(out)

    def kill(self):
        """SIGKILL every process in the whole sandbox cgroup tree (the init
        and every run).  Bounded; returns True when empty."""
        return self._kill()

    def remove(self, timeout=_KILL_TIMEOUT):
        """Kill what is left, rmdir every run cgroup and the sandbox cgroup in
        every hierarchy, close the fds.  Idempotent.  Raises SetupError only
        if a directory is still there after `timeout` (an unkillable process);
        calling it again retries."""
        with self._lock:
            if self._removed:
                return
            self._closing = True   # from here the janitor makes nothing
            self._stats_run = None
            runs, self._runs = self._runs, []
            if self._ahead is not None:
                runs.append(self._ahead)
                self._ahead = None
            self._pending.clear()   # (their directories go with the sandbox's)
        for r in runs:
            r.close_fds()
            r._close_stats()
        fds, self.procs_fds = self.procs_fds, []
        for fd in fds:
            os.close(fd)
        deadline = time.monotonic() + timeout
        # usually empty already (Sandbox.close() reaps the init first, and
        # the pid namespace's end takes every process of it): then one pass
        # of rmdir is all; a cgroup still populated refuses it (EBUSY)
        failed = _rmdir_trees(self._dirs.values())
        if failed is not None:
            self._kill(timeout=timeout)
            failed = self._rmdir_all(deadline)
        if failed is not None:
            path, err = failed
            raise _error(err, "cgroup remove", path,
                         "processes in the sandbox cgroup could not be killed in "
                         f"{timeout:g} s; call remove() again or sweep_orphans() later")
        with self._lock:
            self._removed = True

    @property
    def removed(self):
        return self._removed

    def __repr__(self):
        return f"<SandboxCgroup {self.name} {sorted(self.paths.values())}>"


# --------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------


def _limit_values(memory, pids, cpus):
    vals, wanted = {}, []
    if memory is not None:
        if isinstance(memory, str):
            from ._config import parse_size
            memory = parse_size(memory, "memory")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
            raise ValueError(f"memory must be a positive number of bytes, got {memory!r}")
        vals["bytes"] = memory
        wanted.append("memory")
    if pids is not None:
        if isinstance(pids, bool) or not isinstance(pids, int) or pids <= 0:
            raise ValueError(f"pids must be a positive int, got {pids!r}")
        vals["pids"] = pids
        wanted.append("pids")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) \
                or math.isnan(cpus) or math.isinf(cpus) or cpus <= 0:
            raise ValueError(f"cpus must be a positive number, got {cpus!r}")
        period = _CFS_PERIOD
        quota = round(cpus * period)
        if quota < _CFS_MIN_QUOTA:      # small shares: a longer period
            period = _CFS_MAX_PERIOD
            quota = round(cpus * period)
        if quota < _CFS_MIN_QUOTA:
            raise ValueError(f"cpus={cpus} is below the kernel's minimum of "
                             f"{_CFS_MIN_QUOTA / _CFS_MAX_PERIOD}")
        vals["quota"], vals["period"] = quota, period
        wanted.append("cpus")
    return vals, wanted


def _describe(hiers):
    if not hiers:
        return "no cgroup hierarchy is mounted"
    parts = []
    for h in hiers:
        if h.version == 1:
            parts.append(f"v1 {h.label}")
        else:
            parts.append(f"v2 at {h.mount} offering {' '.join(sorted(h.controllers)) or 'no controller'}")
    return "; ".join(parts)


def _plan(hiers, wanted):
    """-> (chosen {limit: version}, required hierarchies, optional hierarchies)."""
    chosen, required = {}, []
    for lim in wanted:
        for strict in (True, False):
            # first a hierarchy that can really give the controller to our
            # cgroup; else the first that has it at all (v2 then fails with
            # the reason, e.g. EBUSY, in _enable_v2)
            for v in _PREFERENCE:
                need = {w.controller for w in _TABLES[v].limits[lim]}
                hs = []
                for c in need:
                    h = next((h for h in hiers if h.version == v and
                              (h.can_delegate(c) if strict else h.offers(c))), None)
                    if h is None:
                        break
                    hs.append(h)
                else:
                    chosen[lim] = v
                    required.extend(h for h in hs if h not in required)
                    break
            if lim in chosen:
                break
        else:
            ctrl = {"memory": "memory", "pids": "pids", "cpus": "cpu"}[lim]
            raise _error(errno.ENOTSUP, _LIMIT_STEP[lim], None,
                         f"no cgroup hierarchy offers the {ctrl} controller to this "
                         f"process's cgroup ({_describe(hiers)}): mount the v1 {ctrl} "
                         f"controller, or enable {ctrl} in cgroup.subtree_control of the "
                         f"parent cgroups (v2), or drop {lim}=")
    optional = []
    for h in hiers:
        if h in required:
            continue
        if h.version == 2 or (h.controllers & _USEFUL_V1):
            optional.append(h)
    # v2 first: what it has (CPU time, cgroup.kill) makes the v1 ones that
    # have only that unneeded (see _Served)
    optional.sort(key=lambda h: _PREFERENCE.index(h.version) if h.version in _PREFERENCE
                  else len(_PREFERENCE))
    return chosen, required, optional


def _enable_v2(h, controllers, step):
    """Make `controllers` reach the children of h.base (cgroup.subtree_control)."""
    sc = os.path.join(h.base, "cgroup.subtree_control")
    try:
        enabled = set(_read(sc).split())
    except OSError as e:
        raise _error(e.errno, step, sc, _advice(e.errno, sc)) from None
    missing = [c for c in controllers if c and c not in enabled]
    if not missing:
        return
    try:
        _write(sc, " ".join("+" + c for c in missing))
    except OSError as e:
        if e.errno == errno.EBUSY:
            why = (f"cgroup v2 cannot enable {' '.join(missing)} for children of {h.base}: it "
                   "holds processes itself (the 'no internal processes' rule). Run the "
                   "caller in a leaf of a delegated cgroup and pass an empty delegated "
                   "cgroup as the cgroup parent")
        elif e.errno == errno.ENOENT:
            why = (f"{h.base} does not offer {' '.join(missing)} (not in its "
                   "cgroup.controllers): enable it in the ancestors' cgroup.subtree_control "
                   "or ask for a delegation that includes it")
        else:
            why = _advice(e.errno, sc)
        raise _error(e.errno, step, sc, why) from None


def _apply_write(w, d, vals, swap, step):
    path = os.path.join(d, w.file)
    value = w.fmt.format(**vals)
    if not os.path.exists(path):
        if w.need == "if_old":
            return  # a kernel without the knob behaves as the value wants
        if w.need == "if_swap" and not swap:
            # no swap active: the RAM limit alone is the whole limit
            return
        if w.alt is not None:
            return _apply_write(w.alt, d, vals, swap, step)
        if w.need == "if_swap":
            raise _error(errno.ENOTSUP, step, path,
                         "swap is active but this kernel does not account swap to cgroups, "
                         "so the limit could be exceeded through swap: boot with "
                         "swapaccount=1 (or CONFIG_MEMCG_SWAP), or turn swap off (swapoff -a)")
        raise _error(errno.ENOTSUP, step, path,
                     f"the kernel has no {w.file}: this limit cannot be enforced here")
    if w.need == "if_old":
        try:
            if _read(path).strip() == value:
                return
        except OSError:
            pass
    try:
        _write(path, value)
    except OSError as e:
        if e.errno == errno.EINVAL and w.controller == "cpu":
            why = (f"the kernel rejected {value!r}: an ancestor cgroup probably has a "
                   "smaller CPU quota (cpu.max / cpu.cfs_quota_us); ask for fewer cpus")
        elif e.errno in (errno.EBUSY, errno.EINVAL):
            why = f"the kernel rejected {value!r} for {w.file}"
        else:
            why = _advice(e.errno, path)
        raise _error(e.errno, step, path, why) from None


def _undo(made):
    for d in reversed(made):
        for p in _subdirs_bottom_up(d) + [d]:
            try:
                os.rmdir(p)
            except OSError:
                pass


def open_sandbox_cgroup(memory=None, pids=None, cpus=None, parent=None, *, _versions=_PREFERENCE):
    """Create the sandbox cgroup "pysandbox-<pid>-<n>" below the caller's own
    cgroup in every hierarchy it needs, apply the limits, and return a
    SandboxCgroup.

    memory: bytes (the cap covers swap too where the kernel accounts it);
    pids: max processes+threads; cpus: CPUs' worth of time (quota/period).
    parent: a cgroup path to create under instead of the caller's own cgroup:
    relative ("a/b": below the caller's cgroup in every hierarchy), an
    absolute cgroup path ("/x/y", the same in every hierarchy), or a
    directory under a cgroup mount (converted to its cgroup path).

    Raises SetupError (errno, step, path, why + what to do) when a requested
    limit cannot be enforced, or when no cgroup at all can be created.
    Leaves nothing behind when it raises.
    """
    try:
        return _open_sandbox_cgroup(memory, pids, cpus, parent, _versions)
    except SetupError:
        _hier_cache.clear()     # what it says may be fixed before a retry: look again
        raise


def _open_sandbox_cgroup(memory, pids, cpus, parent, _versions):
    vals, wanted = _limit_values(memory, pids, cpus)
    hiers = _hierarchies(parent, _versions)
    chosen, required, optional = _plan(hiers, wanted)
    swap = _swap_active()

    for h in required:
        if not os.path.isdir(h.base):
            raise _error(errno.ENOENT, "cgroup create", h.base, _advice(errno.ENOENT, h.base))
    # v2: the limits' controllers must be enabled for the children of base
    for lim, v in chosen.items():
        if v != 2:
            continue
        for w in _V2.limits[lim]:
            h = next(h for h in required if h.version == 2)
            _enable_v2(h, [w.controller], f"cgroup enable {w.controller} controller")

    last_err = None
    for _attempt in range(100):
        name = f"pysandbox-{os.getpid()}-{next(_counter)}"
        made, dirs, retry = [], {}, False
        served = _Served()
        try:
            for h in required + optional:
                if h not in required and not served.wants(h):
                    continue    # nothing of its own to add: no cgroup there
                p = os.path.join(h.base, name)
                # noted first: an interrupt (Ctrl-C) raised as mkdir returns
                # still finds it to undo (a missing one is skipped there)
                made.append(p)
                try:
                    os.mkdir(p, 0o755)
                except FileExistsError:
                    made.pop()      # (not ours)
                    retry = True
                    break
                except OSError as e:
                    made.pop()
                    if h in required:
                        raise _error(e.errno, _required_step(h, chosen), p,
                                     f"cannot create {p}: {_advice(e.errno, p)}") from None
                    last_err = (e.errno, p)
                    continue
                if not _setup_one(h, p, required):
                    made.pop()
                    _undo([p])
                    continue
                dirs[h] = p
                served.add(h, p)
            if retry:
                _undo(made)
                continue
            if not dirs:
                err, p = last_err or (errno.ENOENT, None)
                raise _error(err, "cgroup create", p,
                             f"no cgroup could be created below this process's cgroups "
                             f"({_describe(hiers)}): {_advice(err, p)}")
            # limits, in table order
            for lim, v in chosen.items():
                for w in _TABLES[v].limits[lim]:
                    h = next(h for h in dirs if h.version == v and h.offers(w.controller))
                    _apply_write(w, dirs[h], vals, swap, _LIMIT_STEP[lim])
            # v2: the init's leaf (the sandbox cgroup itself stays empty)
            for h, p in dirs.items():
                leaf = h.table.init_leaf
                if leaf:
                    os.mkdir(os.path.join(p, leaf))
            applied = {}
            if "memory" in chosen:
                applied["memory"] = vals["bytes"]
            if "pids" in chosen:
                applied["pids"] = vals["pids"]
            if "cpus" in chosen:
                applied["cpus"] = vals["quota"] / vals["period"]
            return SandboxCgroup(name, dirs, applied, dict(chosen))
        except SetupError:
            _undo(made)
            raise
        except OSError as e:
            _undo(made)
            raise _error(e.errno, "cgroup create", e.filename, _advice(e.errno, e.filename)) from None
        except BaseException:       # (KeyboardInterrupt: nothing left either)
            _undo(made)
            raise
    raise _error(errno.EEXIST, "cgroup create", None, "could not find a free cgroup name")


class _Janitor:
    """One daemon thread per process (a new one after a fork) that runs the
    sandboxes' SandboxCgroup._housekeeping()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue = None
        self._pid = None

    def submit(self, cg, run=None):
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    q = queue.SimpleQueue()
                    try:
                        threading.Thread(target=self._serve, args=(q,), daemon=True,
                                         name=JANITOR_THREAD).start()
                    except RuntimeError:
                        return      # no thread: runs make their own cgroups
                    self._queue, self._pid = q, os.getpid()
        self._queue.put((cg, run))

    @staticmethod
    def _serve(q):
        while True:
            cg, run = q.get()
            try:
                if run is not None:
                    cg._open_stats_of(run)
                cg._housekeeping()
            except Exception:   # noqa: BLE001 -- left to the path that needs it
                pass
            del cg, run


JANITOR_THREAD = "pysandbox-cgroups"
_JANITOR = _Janitor()


def _kernel_version():
    try:
        return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    except (AttributeError, ValueError):
        return (0, 0)


class _Served:
    """What the hierarchies given a sandbox cgroup so far provide: each
    statistic (from the first of them that has it; v2 is tried first), and
    a way to kill the whole tree (v2 cgroup.kill, else freezers).  A
    hierarchy that would add neither gets no cgroup: on a v1 machine with
    a cgroup2 tree, cpuacct (v2 cpu.stat has the CPU time), freezer (v2
    cgroup.kill) and cpu (without a cpus limit) would only cost a mkdir, a
    join and an rmdir per sandbox.  What a hierarchy might add is read from
    the tables; what it does add, from the files of the cgroup made there
    (cpu.stat and cgroup.kill are younger than cgroup2 itself)."""

    def __init__(self):
        self.stats = set()
        self.kill = False

    @staticmethod
    def _stats_of(h, d=None):
        return {k for k, spec in h.table.stats.items() if h.offers(spec.controller)
                and (d is None or os.path.exists(os.path.join(d, spec.file)))}

    def wants(self, h):
        if self._stats_of(h) - self.stats:
            return True
        return not self.kill and (_can_kill(h) or _can_freeze(h))

    def add(self, h, d):
        self.stats |= self._stats_of(h, d)
        self.kill = self.kill or _can_kill(h, d)


def _required_step(h, chosen):
    """The step named after the limits that need hierarchy h."""
    for lim, v in chosen.items():
        if v == h.version and any(h.offers(w.controller) for w in _TABLES[v].limits[lim]):
            return _LIMIT_STEP[lim]
    return "cgroup create"


def _setup_one(h, p, required):
    """Per-hierarchy setup of a fresh sandbox cgroup.  False: drop this
    (optional) hierarchy; raises for a required one."""
    table = h.table
    try:
        for w in table.ensure:
            if h.offers(w.controller):
                _apply_write(w, p, {}, False, "cgroup create")
        if table.delegates:
            # let the runs see the controllers the sandbox cgroup has (it
            # holds no process itself: the init is in its leaf)
            have = set(_read(os.path.join(p, "cgroup.controllers")).split())
            want = [c for c in _USEFUL_V2 if c in have]
            if want:
                try:
                    _write(os.path.join(p, "cgroup.subtree_control"),
                           " ".join("+" + c for c in want))
                except OSError:
                    pass  # runs then only have the core files
    except (SetupError, OSError):
        if h in required:
            raise
        return False
    return True


# --------------------------------------------------------------------------
# Orphans and probing
# --------------------------------------------------------------------------


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(parent=None):
    """Remove pysandbox-<pid>-* cgroups (below the caller's cgroups, or
    `parent`) whose creator pid is dead, after killing what is inside.
    Returns how many sandbox cgroups were removed.  A cgroup holding a
    process outside our pid namespace (listed as pid 0) is left alone: its
    owner may be alive in another pid namespace."""
    hiers = [h for h in _hierarchies(parent) if os.path.isdir(h.base)]
    names = set()
    for h in hiers:
        try:
            entries = os.listdir(h.base)
        except OSError:
            continue
        for e in entries:
            m = _NAME_RE.match(e)
            if m and not _alive(int(m.group(1))):
                names.add(e)
    removed = 0
    for name in sorted(names):
        dirs = {h: os.path.join(h.base, name) for h in hiers
                if os.path.isdir(os.path.join(h.base, name))}
        g = _Group(dirs)
        if any(pid == 0 for pid, _h, _cg in g._pids()):
            continue
        if not g._kill():
            continue
        if g._rmdir_all(time.monotonic() + 1.0) is None:
            removed += 1
    return removed


def available(memory=False, pids=False, cpus=False):
    """(True, how) when those limits can be enforced here (and a cgroup can
    be created at all), else (False, why and what to do).  It tries for real:
    creates a sandbox cgroup with the limits and removes it."""
    try:
        cg = open_sandbox_cgroup(memory=(1 << 30) if memory else None,
                                 pids=1 << 16 if pids else None,
                                 cpus=1.0 if cpus else None)
    except (SetupError, OSError) as e:
        return False, str(e)
    try:
        how = ", ".join(f"{lim} by cgroup v{v}" for lim, v in cg.drivers.items())
        where = ", ".join(f"v{h.version} {h.label}" for h in cg._dirs)
        how = (how + "; " if how else "") + f"cgroups in: {where}"
    finally:
        cg.remove()
    return True, how
