"""Capabilities: names, the default set, and the mask the init applies."""

# linux/capability.h (a stable ABI: the numbers never change)
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
    "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
CAP_NUMBER = {name: i for i, name in enumerate(CAPABILITIES)}

# Docker's default set (shared/reference/docker-defaults.md)
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
    "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
    "AUDIT_WRITE",
)


def parse_capabilities(caps):
    """None -> the default set; an iterable of names ("CAP_SYS_ADMIN" or
    "sys_admin") -> that set.  Returns a sorted tuple of canonical names."""
    if caps is None:
        return tuple(sorted(DEFAULT_CAPABILITIES))
    if isinstance(caps, (str, bytes)):
        raise TypeError("capabilities must be a list of names, e.g. ['CHOWN', 'KILL']")
    out = set()
    for c in caps:
        if not isinstance(c, str):
            raise TypeError(f"capability names are strings, not {type(c).__name__}")
        name = c.upper()
        if name.startswith("CAP_"):
            name = name[4:]
        if name not in CAP_NUMBER:
            raise ValueError(f"unknown capability {c!r}")
        out.add(name)
    return tuple(sorted(out))


def cap_mask(names):
    mask = 0
    for n in names:
        mask |= 1 << CAP_NUMBER[n]
    return mask
