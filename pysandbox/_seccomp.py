"""Seccomp policy: validated at construction, compiled to BPF in the parent.

The parent compiles the policy once (cached per policy) with libseccomp into
raw ``struct sock_filter[]`` for this machine's architecture; the bytes travel
in the plan and the init installs them with seccomp(SECCOMP_SET_MODE_FILTER)
as the last step before each command's execve.  Nothing here hand-types a
system call number: names are resolved by libseccomp.

Policies (the ``seccomp=`` argument of ``Sandbox``)
---------------------------------------------------

``"default"`` (the default)
    Docker's default deny-list for this architecture: every call listed in
    ``DOCKER_DENIED`` fails with EPERM, except ``clone3``, which fails with
    ENOSYS so that the C library falls back to ``clone``; ``clone`` with any
    ``CLONE_NEW*`` flag fails with EPERM (checked on its flags argument), and
    so does ``socket(AF_VSOCK, ...)`` and ``personality()`` outside Docker's
    harmless values (0, PER_LINUX32, UNAME26, both, and the 0xffffffff
    query).  ``unshare`` and ``setns`` are denied outright, as in Docker.
    Beyond Docker: ``ioctl(TIOCSTI)`` and ``ioctl(TIOCLINUX)`` fail with EPERM,
    so a command cannot type into a terminal it was given as stdin (a new
    session alone does not stop it: the command may make a terminal that is
    nobody's controlling terminal its own, then TIOCSTI into it).  System calls newer than this libseccomp's table (numbers above
    the highest it can name, such as the ``lsm_*`` calls on older tables) fail
    with ENOSYS, the way Docker denies calls newer than its profile.  Calls
    of the default list that this libseccomp cannot name are skipped.  A
    call from another architecture or from the x32 ABI kills the process
    (SIGSYS).

``None``
    No filter.

a dict (every key optional)::

    {"base": "default" | None,   # start from the default list, or from nothing
     "deny": ["name", ...],      # further calls to refuse
     "allow": ["name", ...],     # calls of the base to let through again
     "action": "errno" | "kill" | "log",   # what a call in "deny" does
     "errno": 1}                 # the errno for "errno" (default EPERM)

    ``deny`` calls get ``action``: ``"errno"`` fails them with ``errno``,
    ``"kill"`` kills the whole process with SIGSYS, ``"log"`` lets them run
    and logs them to the kernel audit log.  The base's own rules keep their
    actions (EPERM / ENOSYS) unless a name is listed in ``deny``, which
    overrides it.  ``allow`` removes a call from the base deny-list,
    including its argument checks (``"clone"``, ``"socket"``, ``"ioctl"``,
    ``"personality"``); naming a call the base does not deny is an error, as
    is naming a call in both lists.  Unknown call names raise ValueError.
    The base's architecture check always applies.

``validate_policy`` returns ``"default"``, ``None`` or a hashable
``SeccompPolicy``; ``compile_filter`` takes any of these (or a dict).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import functools
import os
import socket
import struct
import sys
import termios
import threading
from dataclasses import dataclass
from typing import Optional

from ._errors import SetupError

__all__ = ["SeccompPolicy", "DOCKER_DENIED", "validate_policy", "compile_filter",
           "filter_text", "resolve_syscall"]

# Docker's default profile, x86_64 (shared/reference/docker-defaults.md): 67 calls
DOCKER_DENIED = (
    "syslog", "uselib", "ustat", "sysfs", "vhangup", "pivot_root", "_sysctl", "acct",
    "settimeofday", "mount", "umount2", "swapon", "swapoff", "reboot", "sethostname",
    "setdomainname", "iopl", "ioperm", "create_module", "init_module", "delete_module",
    "get_kernel_syms", "query_module", "quotactl", "nfsservctl", "getpmsg", "putpmsg",
    "afs_syscall", "tuxcall", "security", "lookup_dcookie", "clock_settime", "vserver",
    "mbind", "set_mempolicy", "get_mempolicy", "kexec_load", "add_key", "request_key",
    "keyctl", "migrate_pages", "unshare", "move_pages", "perf_event_open",
    "fanotify_init", "open_by_handle_at", "setns", "kcmp", "finit_module",
    "kexec_file_load", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "clone3", "pidfd_getfd", "process_madvise", "mount_setattr",
    "quotactl_fd", "set_mempolicy_home_node",
)
# Also denied by name when this libseccomp knows them (Docker: "the lsm_* calls");
# when it does not, they are above its table and fall under the ENOSYS range.
_ALSO_DENIED = ("lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules")
_ENOSYS_CALLS = ("clone3",)

# linux/sched.h: the namespace flags of clone(2).  CLONE_NEWTIME (0x80) is
# left out: in clone(2) that bit belongs to the exit signal (CSIGNAL), and
# clone(2) cannot ask for a time namespace (unshare is denied outright).
_CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_AF_VSOCK = getattr(socket, "AF_VSOCK", 40)
# ioctl requests that push input into a terminal (CVE-2017-5226: a command
# that makes the caller's pty its controlling terminal could type into it)
_TTY_INJECT = (getattr(termios, "TIOCSTI", 0x5412), getattr(termios, "TIOCLINUX", 0x541C))
# personality(2) values Docker lets through: PER_LINUX, PER_LINUX32, UNAME26,
# UNAME26|PER_LINUX32 and the 0xffffffff query
_PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xffffffff)


_ACTIONS = ("errno", "kill", "log")
_MAX_ERRNO = 4095

# --- libseccomp (ctypes) --------------------------------------------------

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_LOG = 0x7FFC0000


def SCMP_ACT_ERRNO(err):
    return 0x00050000 | (err & 0x0000FFFF)


SCMP_ARCH_NATIVE = 0
SCMP_CMP_MASKED_EQ = 7          # (arg & datum_a) == datum_b
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_OPTIMIZE = 8
NR_SCMP_ERROR = -1

_LIB_NAMES = ("libseccomp.so.2", "libseccomp.so")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _Lib:
    """The few libseccomp functions used, with their prototypes."""

    def __init__(self):
        lib = None
        errors = []
        names = list(_LIB_NAMES)
        found = ctypes.util.find_library("seccomp")
        if found and found not in names:
            names.append(found)
        for name in names:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
                break
            except OSError as e:
                errors.append(str(e))
        if lib is None:
            raise SetupError(_errno.ENOENT, "load libseccomp", _LIB_NAMES[0],
                             "needed to compile the seccomp filter; install "
                             "libseccomp2, or pass seccomp=None to run without one ("
                             + "; ".join(errors) + ")")
        vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
        self.lib = lib
        self.init = self._fn("seccomp_init", vp, [u32])
        self.release = self._fn("seccomp_release", None, [vp])
        self.rule_add_array = self._fn("seccomp_rule_add_array", i,
                                       [vp, u32, i, ctypes.c_uint, ctypes.POINTER(_ArgCmp)])
        self.attr_set = self._fn("seccomp_attr_set", i, [vp, i, u32])
        self.export_bpf = self._fn("seccomp_export_bpf", i, [vp, i])
        self.export_pfc = self._fn("seccomp_export_pfc", i, [vp, i])
        self.resolve_name = self._fn("seccomp_syscall_resolve_name", i, [ctypes.c_char_p])
        # returns a malloc'd string: kept as a pointer and freed with libc free
        self.resolve_num = self._fn("seccomp_syscall_resolve_num_arch", vp, [u32, i])
        self.api_get = self._fn("seccomp_api_get", ctypes.c_uint, [])
        self.arch_native = self._fn("seccomp_arch_native", u32, [])
        libc = ctypes.CDLL(None)
        self.free = libc.free
        self.free.restype, self.free.argtypes = None, [vp]
        self.api = self.api_get()
        if self.api < 3:
            # KILL_PROCESS and LOG need API level 3 (libseccomp >= 2.4, kernel >= 4.14)
            raise SetupError(_errno.ENOSYS, "load libseccomp", _LIB_NAMES[0],
                             f"API level {self.api}: libseccomp >= 2.4 and "
                             "Linux >= 4.14 are needed")
        self._names = {}
        self._names_lock = threading.Lock()
        self._max_named = None

    def _fn(self, name, restype, argtypes):
        try:
            f = getattr(self.lib, name)
        except AttributeError:
            raise SetupError(_errno.ENOSYS, "load libseccomp", _LIB_NAMES[0],
                             f"it has no {name}(); libseccomp >= 2.4 is needed") from None
        f.restype, f.argtypes = restype, argtypes
        return f

    def resolve(self, name):
        """The native number of a call, NR_SCMP_ERROR if unknown; numbers
        below -1 are libseccomp's pseudo-calls (the name exists on another
        architecture only)."""
        nr = self._names.get(name)
        if nr is None:
            nr = self.resolve_name(name.encode("ascii"))
            with self._names_lock:
                self._names[name] = nr
        return nr

    def name_of(self, nr):
        p = self.resolve_num(SCMP_ARCH_NATIVE, nr)
        if not p:
            return None
        try:
            return ctypes.string_at(p).decode("ascii", "replace")
        finally:
            self.free(p)

    def max_named(self):
        """The highest native call number this libseccomp can name (-1 if
        it names none).  The scan starts at read(2): some ABIs (MIPS) number
        their calls from 4000 or more."""
        if self._max_named is None:
            start = max(0, self.resolve("read"))
            hi = -1
            for nr in range(start, start + 2048):
                if self.name_of(nr) is not None:
                    hi = nr
            self._max_named = hi
        return self._max_named


_lib = None
_lib_lock = threading.Lock()


def _libseccomp():
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                _lib = _Lib()
    return _lib


def resolve_syscall(name):
    """This architecture's number for a call name (None if unknown here)."""
    nr = _libseccomp().resolve(name)
    return nr if nr >= 0 else None


def _check(rc, what, detail=None):
    if rc < 0:
        err = -rc
        raise SetupError(err, "compile the seccomp filter", None,
                         what if detail is None else f"{what}: {detail}")
    return rc


# --- policy ---------------------------------------------------------------

@dataclass(frozen=True)
class SeccompPolicy:
    """A validated custom policy (see the module docstring)."""
    base: Optional[str] = "default"
    deny: tuple = ()
    allow: tuple = ()
    action: str = "errno"
    errno: int = _errno.EPERM


_KEYS = ("base", "deny", "allow", "action", "errno")
_BASE_ARG_RULES = ("clone", "socket", "ioctl", "personality")


def _names(value, what):
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise TypeError(f"seccomp {what} must be a list of system call names, "
                        f"not a single string: {value!r}")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"seccomp {what} must be a list of system call names, "
                        f"not {type(value).__name__}") from None
    out = set()
    lib = _libseccomp()
    for name in items:
        if not isinstance(name, str):
            raise TypeError(f"seccomp {what}: system call names are strings, "
                            f"not {type(name).__name__}")
        if not name.isascii() or not name.replace("_", "a").isalnum():
            raise ValueError(f"seccomp {what}: invalid system call name {name!r}")
        if lib.resolve(name) == NR_SCMP_ERROR:
            raise ValueError(f"seccomp {what}: unknown system call {name!r}")
        out.add(name)
    return tuple(sorted(out))


def _base_denied_names():
    return set(DOCKER_DENIED) | set(_ALSO_DENIED) | set(_BASE_ARG_RULES)


def validate_policy(policy):
    """"default", None, a dict or a SeccompPolicy -> "default", None or a
    SeccompPolicy (hashable).  Raises TypeError/ValueError (and SetupError
    when a custom policy's names cannot be checked without libseccomp)."""
    if policy is None:
        return None
    if isinstance(policy, SeccompPolicy):      # re-checked: it may be hand-made
        d = {"base": policy.base, "deny": policy.deny, "allow": policy.allow,
             "action": policy.action}
        if policy.action == "errno":
            d["errno"] = policy.errno
        return validate_policy(d)
    if isinstance(policy, str):
        if policy == "default":
            return policy
        raise ValueError(f"seccomp must be 'default', None or a policy dict, not {policy!r}")
    if not isinstance(policy, dict):
        raise TypeError("seccomp must be 'default', None or a policy dict, "
                        f"not {type(policy).__name__}")
    unknown = [k for k in policy if k not in _KEYS]
    if unknown:
        raise ValueError(f"seccomp policy: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(_KEYS)}")
    base = policy.get("base", "default")
    if base not in ("default", None):
        raise ValueError(f"seccomp base must be 'default' or None, not {base!r}")
    action = policy.get("action", "errno")
    if action not in _ACTIONS:
        raise ValueError(f"seccomp action must be one of {', '.join(_ACTIONS)}, not {action!r}")
    if "errno" in policy:
        err = policy["errno"]
        if action != "errno":
            raise ValueError(f"seccomp errno is only used with action 'errno', not {action!r}")
        if isinstance(err, bool) or not isinstance(err, int):
            raise TypeError(f"seccomp errno must be an int, not {type(err).__name__}")
        if not 1 <= err <= _MAX_ERRNO:
            raise ValueError(f"seccomp errno must be between 1 and {_MAX_ERRNO}, got {err}")
    else:
        err = _errno.EPERM
    deny = _names(policy.get("deny"), "deny")
    allow = _names(policy.get("allow"), "allow")
    both = sorted(set(deny) & set(allow))
    if both:
        raise ValueError(f"seccomp: {', '.join(both)} both denied and allowed")
    if allow:
        denied = _base_denied_names() if base == "default" else set()
        extra = [n for n in allow if n not in denied]
        if extra:
            raise ValueError(
                f"seccomp allow: {', '.join(extra)} not denied by base {base!r} "
                "('allow' only lifts the base's rules; everything else is allowed already)")
    return SeccompPolicy(base, deny, allow, action, err)


# --- compilation ----------------------------------------------------------

def _rules(policy):
    """{name or number: (action, ((arg, op, a, b), ...) alternatives)} for
    the policy.  Each entry is a list of rules: (action, comparisons)."""
    rules = {}
    lib = _libseccomp()
    if policy.base == "default":
        eperm = SCMP_ACT_ERRNO(_errno.EPERM)
        for name in DOCKER_DENIED + _ALSO_DENIED:
            act = SCMP_ACT_ERRNO(_errno.ENOSYS) if name in _ENOSYS_CALLS else eperm
            rules[name] = [(act, ())]
        flags_arg = 1 if os.uname().machine.startswith("s390") else 0
        rules["clone"] = [(eperm, ((flags_arg, SCMP_CMP_MASKED_EQ, f, f),))
                          for f in _CLONE_NEW_FLAGS]
        # socket(int domain, ...): the kernel reads the low 32 bits only
        rules["socket"] = [(eperm, ((0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, _AF_VSOCK),))]
        # ioctl(int fd, unsigned int request, ...): low 32 bits
        rules["ioctl"] = [(eperm, ((1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, r),)) for r in _TTY_INJECT]
        # personality() and the calls newer than libseccomp are checked by
        # the hand-made prefix (_prefix), not by libseccomp rules
        for name in policy.allow:
            rules.pop(name, None)
    if policy.deny:
        act = {"errno": SCMP_ACT_ERRNO(policy.errno), "kill": SCMP_ACT_KILL_PROCESS,
               "log": SCMP_ACT_LOG}[policy.action]
        for name in policy.deny:
            rules[name] = [(act, ())]
    return rules


def _build(policy, export):
    lib = _libseccomp()
    ctx = lib.init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SetupError(_errno.ENOMEM, "compile the seccomp filter", None, "seccomp_init")
    try:
        _check(lib.attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
               "set the bad-architecture action")
        # the init sets no_new_privs itself; a binary tree keeps lookups short
        _check(lib.attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "clear the NNP attribute")
        rc = lib.attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        if rc not in (0, -_errno.EINVAL, -_errno.EOPNOTSUPP):   # < 2.5: linear list
            _check(rc, "choose the binary-tree layout")
        for key, alternatives in _rules(policy).items():
            if isinstance(key, int):
                nr, label = key, f"system call {key}"
            else:
                nr, label = lib.resolve(key), key
                if nr == NR_SCMP_ERROR:
                    continue        # unknown to this libseccomp: nothing to filter
            for act, cmps in alternatives:
                arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
                _check(lib.rule_add_array(ctx, act, nr, len(cmps), arr),
                       "add a rule", label)
        return _export(lib, ctx, export)
    finally:
        lib.release(ctx)


def _export(lib, ctx, export):
    fd = os.memfd_create("pysandbox-seccomp", os.MFD_CLOEXEC)
    try:
        _check(export(ctx, fd), "export the filter")
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0:
            b = os.read(fd, size)
            if not b:
                break
            chunks.append(b)
            size -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


# The default base's personality() values and its calls newer than
# libseccomp, as a short hand-made prefix of libseccomp's program.  As
# libseccomp rules they were 370 of the filter's 505 instructions (82 masked
# comparisons for the personality values, 128 single-number rules), and the
# kernel converts and JIT-compiles every instruction of a filter when it is
# installed: ~95 us per sandbox, against ~40 us for the 150 of this form.
_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGT, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x25, 0x35, 0x06
_SECCOMP_DATA_NR, _SECCOMP_DATA_ARCH = 0, 4
_SECCOMP_DATA_ARG0_LOW = 16 if sys.byteorder == "little" else 20
_X32_SYSCALL_BIT = 0x40000000


def _prefix_handles_personality(policy):
    return "personality" not in policy.allow and "personality" not in policy.deny


def _prefix(policy, lib):
    """Raw instructions to put before libseccomp's program (b"" for none).
    Every path either returns or jumps to the instruction right after the
    prefix, where libseccomp's program starts (and checks the architecture
    itself: a call from another one goes there untouched)."""
    if policy.base != "default":
        return b""
    hi = lib.max_named()
    pers = lib.resolve("personality") if _prefix_handles_personality(policy) else -1
    native = lib.arch_native()
    x86_64 = os.uname().machine == "x86_64"
    # (code, target-or-None, target-or-None, k): targets are labels
    code = [("ld", _SECCOMP_DATA_ARCH), ("jeq", native, None, "main")]
    code.append(("ld", _SECCOMP_DATA_NR))
    if x86_64:
        code.append(("jge", _X32_SYSCALL_BIT, "main", None))   # x32: libseccomp kills it
    if hi >= 0:
        code.append(("jgt", hi, "enosys", None if pers >= 0 else "main"))
    elif pers < 0:
        return b""
    if pers >= 0:
        code.append(("jeq", pers, None, "main"))
        code.append(("ld", _SECCOMP_DATA_ARG0_LOW))             # the kernel reads 32 bits
        for i, v in enumerate(_PERSONALITY_OK):
            last = i == len(_PERSONALITY_OK) - 1
            code.append(("jeq", v, "allow", "eperm" if last else None))
    labels = {}
    body = code
    rets = [("enosys", SCMP_ACT_ERRNO(_errno.ENOSYS)), ("eperm", SCMP_ACT_ERRNO(_errno.EPERM)),
            ("allow", SCMP_ACT_ALLOW)]
    for i, (name, _) in enumerate(rets):
        labels[name] = len(body) + i
    labels["main"] = len(body) + len(rets)
    out = []
    for i, ins in enumerate(body):
        if ins[0] == "ld":
            out.append(struct.pack("=HBBI", _BPF_LD_W_ABS, 0, 0, ins[1]))
            continue
        op = {"jeq": _BPF_JEQ, "jgt": _BPF_JGT, "jge": _BPF_JGE}[ins[0]]
        jt = 0 if ins[2] is None else labels[ins[2]] - (i + 1)
        jf = 0 if ins[3] is None else labels[ins[3]] - (i + 1)
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise SetupError(_errno.EINVAL, "compile the seccomp filter", None,
                             "prefix jump out of range")
        out.append(struct.pack("=HBBI", op, jt, jf, ins[1] & 0xFFFFFFFF))
    for _, action in rets:
        out.append(struct.pack("=HBBI", _BPF_RET, 0, 0, action))
    return b"".join(out)


@functools.lru_cache(maxsize=64)
def _compile_cached(policy):
    lib = _libseccomp()
    prog = _prefix(policy, lib) + _build(policy, lib.export_bpf)
    if not prog or len(prog) % 8 or len(prog) // 8 > 4096:
        raise SetupError(_errno.EINVAL, "compile the seccomp filter", None,
                         f"libseccomp produced {len(prog)} bytes, not a BPF program")
    return prog


_DEFAULT = SeccompPolicy()


def _normalize(policy):
    policy = validate_policy(policy)
    if policy == "default":
        return _DEFAULT
    return policy


def compile_filter(policy):
    """The filter as raw struct sock_filter[] bytes (b"" = no filter)."""
    if policy is None:
        return b""
    return _compile_cached(_normalize(policy))


def filter_text(policy):
    """The filter in libseccomp's readable pseudo-C (for debugging); the
    hand-made prefix, if any, is listed first as raw instructions."""
    if policy is None:
        return ""
    lib = _libseccomp()
    policy = _normalize(policy)
    head = "".join(f"# prefix {i}: code=0x{c:02x} jt={jt} jf={jf} k=0x{k:x}\n"
                   for i, (c, jt, jf, k) in enumerate(instructions(_prefix(policy, lib))))
    return head + _build(policy, lib.export_pfc).decode("utf-8", "replace")


def instructions(prog):
    """Decode raw filter bytes into (code, jt, jf, k) tuples."""
    return [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
