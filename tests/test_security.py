"""Adversarial tests: each one tries a door out of the sandbox from inside and
asserts that it stays shut, and that the host is unchanged afterwards (the
no_leaks fixture also checks the host's mounts, processes and fds after every
test).  Where a probe could be silently broken, a control run shows that the
same probe does see the door open when the guard is removed (seccomp=None,
network="host").

System call numbers are never hand-typed: the C probes take them from
<sys/syscall.h> (compiled with gcc at test time), the Python probes from
libseccomp's resolver on this machine."""
import ctypes
import errno
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import termios
import textwrap
import uuid

import pytest

from sbxutil import IS_ROOT, init_pids, tree_snapshot
from pysandbox import Bind, Sandbox, SetupError
from pysandbox import _seccomp

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

X86_64 = platform.machine() == "x86_64"

# Docker's default capability set (shared/reference/docker-defaults.md)
DOCKER_CAPS = 0x00000000A80425FB

# Docker's default seccomp deny-list, x86_64 (shared/reference/docker-defaults.md)
DOCKER_DENIED = """
syslog uselib ustat sysfs vhangup pivot_root _sysctl acct settimeofday mount
umount2 swapon swapoff reboot sethostname setdomainname iopl ioperm
create_module init_module delete_module get_kernel_syms query_module quotactl
nfsservctl getpmsg putpmsg afs_syscall tuxcall security lookup_dcookie
clock_settime vserver mbind set_mempolicy get_mempolicy kexec_load add_key
request_key keyctl migrate_pages unshare move_pages perf_event_open
fanotify_init open_by_handle_at setns kcmp finit_module kexec_file_load bpf
userfaultfd io_uring_setup io_uring_enter io_uring_register open_tree
move_mount fsopen fsconfig fsmount fspick clone3 pidfd_getfd process_madvise
mount_setattr quotactl_fd set_mempolicy_home_node
""".split()


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """The first sandbox of a process makes its process-wide fds (the sealed
    init); made here so that no_leaks compares like with like."""
    with Sandbox() as s:
        s.run(["true"], timeout=20)
    _seccomp.compile_filter("default")


def NR(name):
    nr = _seccomp.resolve_syscall(name)
    assert nr is not None, f"libseccomp does not know {name}"
    return nr


def py(s, code, *args, **kw):
    """Run a Python probe inside (the default root has the host's python3)."""
    kw.setdefault("timeout", 20)
    kw.setdefault("stdin", subprocess.DEVNULL)
    if code.startswith(PY_SC):
        code = PY_SC + textwrap.dedent(code[len(PY_SC):])
    else:
        code = textwrap.dedent(code)
    return s.run(["python3", "-c", code, *map(str, args)],
                 capture_output=True, text=True, **kw)


def sh(s, script, **kw):
    kw.setdefault("timeout", 20)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return s.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def ok(r):
    assert r.returncode == 0, f"{r.args!r} -> {r.returncode}: {r.stderr}"
    return r.stdout


def results(stdout):
    """'name value' lines -> {name: value}"""
    out = {}
    for line in stdout.splitlines():
        if line.strip():
            name, _, value = line.partition(" ")
            out[name] = value.strip()
    return out


def status(s, **kw):
    """/proc/self/status of a command inside, as a dict."""
    text = ok(sh(s, "cat /proc/self/status", **kw))
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


# Python-side syscall helper used by the probes: prints "label result" where
# result is "ok" or the errno name.
PY_SC = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(label, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *args)
    e = ctypes.get_errno()
    print(label, "ok" if r >= 0 else errno.errorcode.get(e, str(e)), flush=True)
    return r
"""


# --- C probes, compiled once per session ------------------------------------

PROBE_SYSCALLS = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#define TRY(name) do { errno = 0; long r_ = syscall(SYS_##name, 0, 0, 0, 0, 0, 0); \
    printf("%s %d\n", #name, r_ < 0 ? errno : 0); } while (0)
int main(void)
{
@TRIES@
    return 0;
}
"""

PROBE_CLONE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
static void try_clone(const char *name, unsigned long flags)
{
    errno = 0;
    long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        _exit(0);
    if (r > 0) {
        waitpid((pid_t)r, NULL, 0);
        printf("%s 0\n", name);
    } else {
        printf("%s %d\n", name, errno);
    }
    fflush(stdout);
}
int main(void)
{
    try_clone("fork", 0);
    try_clone("CLONE_NEWUSER", CLONE_NEWUSER);
    try_clone("CLONE_NEWNS", CLONE_NEWNS);
    try_clone("CLONE_NEWPID", CLONE_NEWPID);
    try_clone("CLONE_NEWNET", CLONE_NEWNET);
    try_clone("CLONE_NEWUTS", CLONE_NEWUTS);
    try_clone("CLONE_NEWIPC", CLONE_NEWIPC);
    try_clone("CLONE_NEWCGROUP", CLONE_NEWCGROUP);
    try_clone("CLONE_NEWUSER|CLONE_NEWNS", CLONE_NEWUSER | CLONE_NEWNS);
    return 0;
}
"""

# the x32 ABI: a 64-bit call number with __X32_SYSCALL_BIT set
PROBE_X32 = r"""
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <asm/unistd.h>
#include <sys/syscall.h>
int main(void)
{
    printf("before\n");
    fflush(stdout);
    long r = syscall(__X32_SYSCALL_BIT | SYS_getpid);
    printf("after %ld %d\n", r, r < 0 ? errno : 0);
    return 0;
}
"""

# the i386 ABI from a 64-bit process: int $0x80 with an i386 call number
PROBE_I386 = r"""
#include <stdio.h>
#include <asm/unistd_32.h>
int main(void)
{
    long r;
    printf("before\n");
    fflush(stdout);
    __asm__ volatile ("int $0x80" : "=a"(r) : "a"((long)__NR_getpid)
                      : "memory", "r8", "r9", "r10", "r11");
    printf("after %ld\n", r);
    return 0;
}
"""


@pytest.fixture(scope="session")
def probes(tmp_path_factory):
    """Directory of compiled C probes (bind it at /probe)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the probes")
    d = tmp_path_factory.mktemp("probes")
    tries = "\n".join(f"#ifdef SYS_{n}\n    TRY({n});\n#else\n    printf(\"{n} -\\n\");\n#endif"
                      for n in DOCKER_DENIED)
    sources = {"syscalls": PROBE_SYSCALLS.replace("@TRIES@", tries), "clone": PROBE_CLONE}
    if X86_64:
        sources.update(x32=PROBE_X32, i386=PROBE_I386)
    for name, src in sources.items():
        (d / f"{name}.c").write_text(src)
        r = subprocess.run([gcc, "-O0", "-o", str(d / name), str(d / f"{name}.c")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"building probe {name}: {r.stderr}"
    os.chmod(d, 0o755)
    return str(d)


def probe_box(probes, **kw):
    return Sandbox(mounts=[Bind(probes, "/probe")], **kw)


def run_probe(s, name, **kw):
    kw.setdefault("timeout", 20)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return s.run([f"/probe/{name}"], capture_output=True, text=True, **kw)


# --- capabilities, no_new_privs, seccomp mode -------------------------------

def test_default_capability_sets_are_dockers():
    with Sandbox() as s:
        st = status(s)
    assert int(st["CapEff"], 16) == DOCKER_CAPS
    assert int(st["CapPrm"], 16) == DOCKER_CAPS
    assert int(st["CapBnd"], 16) == DOCKER_CAPS
    assert int(st["CapInh"], 16) == 0
    assert int(st["CapAmb"], 16) == 0


def test_capabilities_empty_drops_everything():
    with Sandbox(capabilities=[]) as s:
        st = status(s)
    for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(st[k], 16) == 0, k


def test_custom_capability_list_is_exact():
    with Sandbox(capabilities=["CHOWN", "cap_kill"]) as s:
        st = status(s)
    want = (1 << 0) | (1 << 5)      # CAP_CHOWN, CAP_KILL
    for k in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[k], 16) == want, k
    assert int(st["CapInh"], 16) == 0
    assert int(st["CapAmb"], 16) == 0


def test_dropped_capability_has_effect():
    """DAC_OVERRIDE is in Docker's set: root reads a mode-000 file; without
    it the same read is refused."""
    script = ("mkdir /tmp/locked && echo secret > /tmp/locked/f && "
              "chmod 000 /tmp/locked/f /tmp/locked && cat /tmp/locked/f")
    with Sandbox() as s:
        assert ok(sh(s, script)) == "secret\n"
    with Sandbox(capabilities=[]) as s:
        r = sh(s, script)
    assert r.returncode != 0 and "secret" not in r.stdout
    assert "Permission denied" in r.stderr


@pytest.mark.parametrize("caps, exc", [
    (["CHOWN", "NOT_A_CAP"], ValueError),
    (["cap_sys_admiin"], ValueError),
    ("CHOWN", TypeError),
    ([5], TypeError),
])
def test_bad_capability_refused_before_anything_starts(caps, exc):
    before = set(init_pids())
    with pytest.raises(exc):
        Sandbox(capabilities=caps)
    assert set(init_pids()) == before


def test_no_new_privs_is_set():
    with Sandbox() as s:
        assert status(s)["NoNewPrivs"] == "1"


def test_seccomp_filter_installed_by_default(rootfs):
    with Sandbox() as s:
        st = status(s)
    assert st["Seccomp"] == "2"
    assert st["Seccomp_filters"] == "1"
    with Sandbox(rootfs) as s:                  # any rootfs, not only the default one
        assert status(s)["Seccomp"] == "2"


def test_seccomp_none_installs_no_filter():
    with Sandbox(seccomp=None) as s:
        st = status(s)
    assert st["Seccomp"] == "0"
    assert st["NoNewPrivs"] == "1"


@pytest.mark.skipif(not IS_ROOT, reason="a setuid-root file needs a root caller")
def test_setuid_root_binary_does_not_raise_euid(tmp_path):
    d = tmp_path / "suid"
    d.mkdir()
    d.chmod(0o755)
    target = d / "id"
    shutil.copy2("/usr/bin/id", target)
    os.chown(target, 0, 0)
    os.chmod(target, 0o4755)
    with Sandbox(mounts=[Bind(str(d), "/suid", read_only=False)], user=1000) as s:
        # the bit survives the (suid-permitting) bind: the test can fail
        assert ok(sh(s, "stat -c %A /suid/id")).startswith("-rwsr-xr-x")
        out = ok(s.run(["/suid/id"], capture_output=True, text=True, timeout=20))
        euid = ok(s.run(["/suid/id", "-u"], capture_output=True, text=True, timeout=20))
    assert "euid=" not in out, out
    assert euid.strip() == "1000"
    assert os.stat(target).st_mode & 0o7777 == 0o4755


# --- the default seccomp deny-list ------------------------------------------

def test_policy_list_is_dockers():
    assert sorted(_seccomp.DOCKER_DENIED) == sorted(DOCKER_DENIED)
    assert len(DOCKER_DENIED) == 67


def test_every_docker_blocked_syscall_gets_eperm(probes):
    """Each call of the list, with zero arguments: EPERM (clone3: ENOSYS)."""
    with probe_box(probes) as s:
        got = results(ok(run_probe(s, "syscalls")))
    known = {n: int(v) for n, v in got.items() if v != "-"}
    assert set(got) == set(DOCKER_DENIED)
    assert len(known) >= 60, f"too few calls known to <sys/syscall.h>: {sorted(known)}"
    want = {n: errno.ENOSYS if n == "clone3" else errno.EPERM for n in known}
    assert known == want


def test_syscall_probe_sees_the_kernel_without_the_filter(probes):
    """Control: without a filter the same probe gets the kernel's own
    answers (EINVAL, EFAULT, ENOSYS...), so EPERM above is the filter's."""
    with probe_box(probes, seccomp=None) as s:
        got = results(ok(run_probe(s, "syscalls")))
    known = {n: int(v) for n, v in got.items() if v != "-"}
    differs = [n for n, v in known.items() if v != errno.EPERM]
    assert len(differs) >= 20, known
    assert known["clone3"] == errno.EINVAL       # a real clone3, not ENOSYS


def test_clone_with_namespace_flags_denied(probes):
    with probe_box(probes) as s:
        got = results(ok(run_probe(s, "clone")))
    assert got.pop("fork") == "0"               # a plain fork still works
    assert got and all(v == str(errno.EPERM) for v in got.values()), got


def test_clone_probe_creates_user_namespace_without_filter(probes):
    """Control: without the filter, clone(CLONE_NEWUSER) succeeds inside."""
    with probe_box(probes, seccomp=None) as s:
        got = results(ok(run_probe(s, "clone")))
    assert got["fork"] == "0"
    assert got["CLONE_NEWUSER"] == "0"


def test_threads_and_subprocesses_still_work():
    """clone3 -> ENOSYS makes the C library fall back to clone."""
    with Sandbox() as s:
        r = py(s, """
            import subprocess, threading
            out = []
            t = threading.Thread(target=out.append, args=("thread",))
            t.start(); t.join()
            print(out[0], subprocess.run(["true"]).returncode)
        """)
    assert ok(r) == "thread 0\n"


def test_unshare_and_setns_fail():
    with Sandbox() as s:
        r1 = sh(s, "unshare -Ur true")
        r2 = sh(s, "unshare -U true")
        r3 = py(s, PY_SC + f"""
            for ns in ("user", "net", "mnt", "pid", "uts"):
                fd = os.open("/proc/self/ns/" + ns, os.O_RDONLY)
                sc("setns-" + ns, {NR("setns")}, fd, 0)
            sc("unshare-user", {NR("unshare")}, 0x10000000)
        """)
    assert r1.returncode != 0 and "Operation not permitted" in r1.stderr
    assert r2.returncode != 0
    assert set(results(ok(r3)).values()) == {"EPERM"}


def test_keyctl_cannot_read_a_host_key():
    """A key the host adds to its session keyring, which the sandbox
    inherits: without the filter the command could read it (control)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    payload = b"host-secret-" + uuid.uuid4().hex.encode()
    desc = b"pysandbox-test-" + uuid.uuid4().hex.encode()
    kid = libc.syscall(ctypes.c_long(NR("add_key")), b"user", desc, payload,
                       ctypes.c_size_t(len(payload)), ctypes.c_int(-3))  # KEY_SPEC_SESSION_KEYRING
    if kid < 0:
        pytest.skip(f"cannot add a key on the host: {os.strerror(ctypes.get_errno())}")
    code = f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        buf = ctypes.create_string_buffer(256)
        r = libc.syscall(ctypes.c_long({NR("keyctl")}), 11, {kid}, buf, 256)   # KEYCTL_READ
        print(buf.raw[:r].decode() if r > 0 else "error " + str(ctypes.get_errno()))
        print("proc-keys", len(open("/proc/keys").read()))
    """
    try:
        with Sandbox() as s:
            inside = ok(py(s, code))
        with Sandbox(seccomp=None) as s:
            control = ok(py(s, code))
    finally:
        libc.syscall(ctypes.c_long(NR("keyctl")), 21, kid)    # KEYCTL_INVALIDATE
    assert payload.decode() not in inside
    assert f"error {errno.EPERM}" in inside
    assert "proc-keys 0" in inside                            # /proc/keys is masked
    assert payload.decode() in control


def test_privileged_calls_fail_with_real_arguments():
    code = PY_SC + f"""
        import struct
        sc("mount", {NR("mount")}, b"none", b"/mnt", b"tmpfs", 0, None)
        sc("umount2", {NR("umount2")}, b"/proc", 2)
        sc("pivot_root", {NR("pivot_root")}, b"/tmp", b"/tmp")
        sc("reboot", {NR("reboot")}, 0xfee1dead, 672274793, 0, None)   # CAD_OFF
        image = ctypes.create_string_buffer(64)
        sc("init_module", {NR("init_module")}, image, 64, b"")
        fh = ctypes.create_string_buffer(8 + 128)
        struct.pack_into("=I", fh, 0, 128)
        mount_id = ctypes.c_int()
        assert libc.syscall({NR("name_to_handle_at")}, -100, b"/etc/passwd", fh,
                            ctypes.byref(mount_id), 0) == 0
        sc("open_by_handle_at", {NR("open_by_handle_at")}, -100, fh, 0)
        prog = struct.pack("=BBhI", 0xb7, 0, 0, 0) + struct.pack("=BBhI", 0x95, 0, 0, 0)
        insns = ctypes.create_string_buffer(prog)
        lic = ctypes.create_string_buffer(b"GPL")
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("=IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
        sc("bpf", {NR("bpf")}, 5, attr, 128)                       # BPF_PROG_LOAD
        sc("userfaultfd", {NR("userfaultfd")}, os.O_CLOEXEC | 1)    # UFFD_USER_MODE_ONLY
        params = ctypes.create_string_buffer(120)
        sc("io_uring_setup", {NR("io_uring_setup")}, 4, params)
        pattr = ctypes.create_string_buffer(128)
        struct.pack_into("=IIQ", pattr, 0, 1, 128, 1)               # SOFTWARE, TASK_CLOCK
        struct.pack_into("=Q", pattr, 40, 1 | 1 << 5 | 1 << 6)     # disabled, excl. kernel, hv
        sc("perf_event_open", {NR("perf_event_open")}, pattr, 0, -1, -1, 0)
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
    with Sandbox(seccomp=None) as s:
        control = results(ok(py(s, code)))
    assert len(got) == 10
    assert set(got.values()) == {"EPERM"}, got
    # control: some of these are open to an unprivileged process, so the
    # probe's EPERM above is the filter's doing
    opened = {k for k, v in control.items() if v == "ok"}
    assert opened & {"userfaultfd", "io_uring_setup", "perf_event_open"}, control


def test_syscalls_newer_than_libseccomp_get_enosys():
    hi = _seccomp._libseccomp().max_named()
    code = PY_SC + f"""
        for nr in ({hi + 1}, {hi + 2}, {hi + 9}):
            sc(str(nr), nr, 0, 0, 0, 0)
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
    assert set(got.values()) == {"ENOSYS"}, got


@pytest.mark.skipif(not X86_64, reason="x32 exists on x86_64 only")
def test_x32_abi_is_killed(probes):
    with probe_box(probes) as s:
        r = run_probe(s, "x32")
    assert r.stdout == "before\n"
    assert r.returncode == -signal.SIGSYS


@pytest.mark.skipif(not X86_64, reason="i386 compat calls exist on x86_64 only")
def test_i386_abi_is_killed(probes):
    with probe_box(probes, seccomp=None) as s:
        control = run_probe(s, "i386")
    if control.returncode != 0:
        pytest.skip("this kernel has no i386 emulation")
    assert control.stdout.startswith("before\nafter ")
    with probe_box(probes) as s:
        r = run_probe(s, "i386")
    assert r.stdout == "before\n"
    assert r.returncode == -signal.SIGSYS


def test_af_vsock_denied():
    code = PY_SC + f"""
        import socket
        for domain, label in ((socket.AF_VSOCK, "vsock"), (1 << 32 | socket.AF_VSOCK, "vsock-hi")):
            fd = sc(label, {NR("socket")}, ctypes.c_long(domain), socket.SOCK_STREAM, 0)
        sc("unix", {NR("socket")}, socket.AF_UNIX, socket.SOCK_STREAM, 0)
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
    assert got == {"vsock": "EPERM", "vsock-hi": "EPERM", "unix": "ok"}
    if os.path.exists("/dev/vsock"):
        with Sandbox(seccomp=None) as s:
            control = results(ok(py(s, code)))
        assert control["vsock"] == "ok", control


def test_personality_limited_to_harmless_values():
    code = PY_SC + f"""
        P = {NR("personality")}
        sc("query", P, 0xffffffff)
        sc("linux32", P, 0x0008)
        sc("linux", P, 0)
        sc("addr_no_randomize", P, 0x0040000)
        sc("read_implies_exec", P, 0x0400000)
        sc("hi-bits", P, ctypes.c_long(1 << 32 | 0x0040000))
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
    assert got == {"query": "ok", "linux32": "ok", "linux": "ok",
                   "addr_no_randomize": "EPERM", "read_implies_exec": "EPERM",
                   "hi-bits": "EPERM"}
    with Sandbox(seccomp={"allow": ["personality"]}) as s:
        allowed = results(ok(py(s, code)))
    assert set(allowed.values()) == {"ok"}, allowed


# --- /proc and /sys ----------------------------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def test_proc_and_sys_writes_fail_and_host_unchanged():
    paths = ("/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern",
             "/sys/kernel/uevent_helper")
    before = {p: _read(p) for p in paths[1:]}
    code = """
        import sys
        for path, data in (("/proc/sysrq-trigger", "h"),
                           ("/proc/sys/kernel/core_pattern", "|/tmp/pysandbox-pwned %p"),
                           ("/sys/kernel/uevent_helper", "/tmp/pysandbox-pwned")):
            try:
                with open(path, "w") as f:
                    f.write(data)
                print(path, "written")
            except OSError as e:
                print(path, e.errno)
    """
    try:
        with Sandbox() as s:
            got = results(ok(py(s, code)))
    finally:
        after = {p: _read(p) for p in paths[1:]}
        if IS_ROOT and after["/proc/sys/kernel/core_pattern"] != before["/proc/sys/kernel/core_pattern"]:
            with open("/proc/sys/kernel/core_pattern", "w") as f:   # repair the host
                f.write(before["/proc/sys/kernel/core_pattern"])
    assert "written" not in got.values(), got
    if os.path.exists("/proc/sysrq-trigger"):
        assert got["/proc/sysrq-trigger"] == str(errno.EROFS)    # the read-only bind
    assert got["/proc/sys/kernel/core_pattern"] == str(errno.EROFS)
    assert after == before


def test_masked_proc_files_read_empty():
    files = [p for p in ("/proc/timer_list", "/proc/sched_debug", "/proc/keys",
                         "/proc/latency_stats", "/proc/interrupts", "/proc/kcore",
                         "/proc/timer_stats") if os.path.isfile(p)]
    if not files:
        pytest.skip("none of the masked files exists on this host")
    code = """
        import sys
        points = {line.split()[4] for line in open("/proc/self/mountinfo")}
        for p in sys.argv[1:]:
            with open(p, "rb") as f:
                print(p, len(f.read(65536)), p in points)
    """
    with Sandbox() as s:
        got = results(ok(py(s, code, *files)))
    # empty, and covered by a mount whatever the host's file holds
    assert got == {p: "0 True" for p in files}
    host = _read("/proc/timer_list")        # root only: mode 0400
    if host is not None:
        assert host                         # masking is what empties it


def test_masked_proc_dirs_are_empty_and_read_only():
    dirs = [p for p in ("/proc/acpi", "/proc/asound", "/proc/scsi") if os.path.isdir(p)]
    if not dirs:
        pytest.skip("none of the masked directories exists on this host")
    code = """
        import os, sys
        mounts = {}
        for line in open("/proc/self/mountinfo"):
            left, right = line.split(" - ")
            mounts[left.split()[4]] = (right.split()[0], left.split()[5].split(",")[0])
        for p in sys.argv[1:]:
            try:
                open(os.path.join(p, "x"), "w")
                w = "written"
            except OSError as e:
                w = str(e.errno)
            print(p, len(os.listdir(p)), w, *mounts.get(p, ("-", "-")))
    """
    with Sandbox() as s:
        got = results(ok(py(s, code, *dirs)))
    for p in dirs:
        n, w, fstype, ro = got[p].split()
        assert n == "0", (p, got[p])
        assert w != "written"
        # covered by an empty read-only tmpfs, whatever the host's holds
        assert (fstype, ro) == ("tmpfs", "ro"), (p, got[p])


def test_read_only_proc_paths_refuse_writes_remount_and_umount():
    code = PY_SC + f"""
        for p in ("/proc/sys/kernel/domainname", "/proc/sys/vm/drop_caches"):
            try:
                with open(p, "w") as f:
                    f.write("1")
                print(p, "written")
            except OSError as e:
                print(p, errno.errorcode[e.errno])
        sc("umount-proc-sys", {NR("umount2")}, b"/proc/sys", 0)
        sc("umount-proc-sys-detach", {NR("umount2")}, b"/proc/sys", 2)
        sc("remount-rw", {NR("mount")}, None, b"/proc/sys", None, 32 | 4096, None)  # REMOUNT|BIND
        opts = {{}}
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            opts[f[4]] = f[5]
        for p in ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq"):
            if p in opts:
                print("mount" + p, opts[p].split(",")[0])
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
        r = sh(s, "mount -o remount,rw /proc/sys; umount /proc/sys")
    assert got.pop("/proc/sys/kernel/domainname") == "EROFS"
    assert got.pop("/proc/sys/vm/drop_caches") == "EROFS"
    for k in ("umount-proc-sys", "umount-proc-sys-detach", "remount-rw"):
        assert got.pop(k) == "EPERM", k
    assert got.pop("mount/proc/sys") == "ro"
    assert all(v == "ro" for v in got.values()), got
    assert r.returncode != 0


# --- filesystem escapes --------------------------------------------------------

def test_chroot_fchdir_escape_stays_inside(tmp_path):
    secret = "canary-" + uuid.uuid4().hex
    canary = tmp_path / "host-only" / "canary"
    canary.parent.mkdir()
    canary.write_text(secret)
    code = """
        import os, sys
        canary = sys.argv[1]
        fd = os.open("/", os.O_RDONLY)
        os.makedirs("/tmp/jail", exist_ok=True)
        os.chroot("/tmp/jail")
        os.fchdir(fd)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        print("escaped-to-sandbox-root", os.path.exists("/etc/passwd"), os.path.isdir("/tmp/jail"))
        for path in (canary, "/proc/1/root" + canary, "/proc/1/cwd" + canary):
            try:
                print("read", open(path).read())
            except OSError as e:
                print("error", path, e.errno)
    """
    with Sandbox() as s:
        r = py(s, code, canary)
    out = ok(r)
    assert "escaped-to-sandbox-root True True" in out     # the dance itself worked
    assert secret not in out
    assert "read " not in out
    assert canary.read_text() == secret


def test_inherited_host_fd_is_absent(tmp_path):
    (tmp_path / "canary").write_text("host")
    dfd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    ffd = os.open(str(tmp_path / "canary"), os.O_RDONLY)
    try:
        os.set_inheritable(dfd, True)
        os.set_inheritable(ffd, True)
        with Sandbox() as s:
            ls = ok(sh(s, "ls /proc/self/fd"))
            links = ok(py(s, """
                import os
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        print(fd, os.readlink("/proc/self/fd/" + fd))
                    except OSError:
                        pass
            """))
            # CVE-2024-21626: a leaked directory fd used as the working directory
            try:
                r = s.run(["ls"], cwd=f"/proc/self/fd/{dfd}", capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)
                leaked_cwd = r.stdout
            except OSError:
                leaked_cwd = ""
    finally:
        os.close(dfd)
        os.close(ffd)
    assert ls.split() == ["0", "1", "2", "3"]       # 3: ls's own directory fd
    assert str(tmp_path) not in links
    assert "canary" not in leaked_cwd


# --- terminal injection (CVE-2017-5226) ------------------------------------------

TIOCSTI_PROBE = """
    import fcntl, sys, termios
    def attempt(label, req, arg):
        try:
            fcntl.ioctl(0, req, arg)
            print(label, "ok", flush=True)
        except OSError as e:
            print(label, e.errno, flush=True)
    attempt("sti", termios.TIOCSTI, b"X")
    if "--steal" in sys.argv:
        attempt("sctty", termios.TIOCSCTTY, 0)     # make the pty our controlling tty
        for c in b"id\\n":
            attempt("sti-ctty", termios.TIOCSTI, bytes([c]))
"""


def _pty():
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.ECHO                   # injected input would echo to the master
    attrs[3] &= ~termios.ICANON                # and be readable from the slave at once
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def _drain(fd):
    data = b""
    os.set_blocking(fd, False)
    while select.select([fd], [], [], 0.3)[0]:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _inject(steal, **kw):
    master, slave = _pty()
    try:
        with Sandbox(**kw) as s:
            r = py(s, TIOCSTI_PROBE, *(["--steal"] if steal else []), stdin=slave)
        echoed = _drain(master)
        queued = _drain(slave)
    finally:
        os.close(master)
        os.close(slave)
    return results(ok(r)), echoed, queued


@pytest.mark.parametrize("steal", [False, True], ids=["plain", "after-TIOCSCTTY"])
def test_tiocsti_into_callers_pty_fails(steal):
    got, echoed, queued = _inject(steal)
    assert got["sti"] == str(errno.EPERM)
    if steal:
        assert got["sti-ctty"] == str(errno.EPERM)
    assert echoed == b"" and queued == b""


def test_tiocsti_probe_detects_injection_without_filter():
    """Control: a new session alone does not stop a command that takes the
    pty as its controlling terminal; the filter does."""
    if _read("/proc/sys/dev/tty/legacy_tiocsti") not in (None, "1\n"):
        pytest.skip("TIOCSTI is disabled on this kernel (dev.tty.legacy_tiocsti=0)")
    got, echoed, queued = _inject(True, seccomp=None)
    if got.get("sctty") != "ok":
        pytest.skip(f"the pty could not be made a controlling terminal: {got}")
    assert got["sti"] == str(errno.EPERM)       # setsid: not our terminal yet
    assert got["sti-ctty"] == "ok"
    assert b"id" in echoed + queued


# --- network ---------------------------------------------------------------------

@pytest.fixture
def host_listeners():
    name = "pysandbox-test-" + uuid.uuid4().hex
    ux = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        ux.bind("\0" + name)
        ux.listen(8)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        yield name, tcp.getsockname()[1]
    finally:
        ux.close()
        tcp.close()


NET_PROBE = """
    import socket, sys
    name, port = sys.argv[1], int(sys.argv[2])
    for label, family, addr in (("abstract", socket.AF_UNIX, "\\0" + name),
                                ("tcp", socket.AF_INET, ("127.0.0.1", port))):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(addr)
            print(label, "connected")
        except OSError as e:
            print(label, e.errno)
        finally:
            s.close()
"""


def test_host_sockets_unreachable_with_network_none(host_listeners):
    with Sandbox(network="none") as s:
        got = results(ok(py(s, NET_PROBE, *host_listeners)))
    assert got == {"abstract": str(errno.ECONNREFUSED), "tcp": str(errno.ECONNREFUSED)}


def test_host_sockets_reachable_with_network_host(host_listeners):
    """Control: the probe does reach the listeners when it may."""
    with Sandbox(network="host") as s:
        got = results(ok(py(s, NET_PROBE, *host_listeners)))
    assert got == {"abstract": "connected", "tcp": "connected"}


# --- the sandbox's own processes (CVE-2019-5736, CVE-2016-9962) ---------------------

PROC_PROBE = PY_SC + """
    pids = ["1"]
    for d in os.listdir("/proc"):
        if d.isdigit() and d != str(os.getpid()):
            try:
                if open(f"/proc/{d}/comm").read().strip().startswith("pysandbox"):
                    pids.append(d)
            except OSError:
                pass
    for pid in sorted(set(pids)):
        def attempt(label, fn):
            try:
                fn()
                print(f"{label}@{pid}", "ok")
            except OSError as e:
                print(f"{label}@{pid}", errno.errorcode[e.errno])
        attempt("exe-write", lambda: os.close(os.open(f"/proc/{pid}/exe", os.O_WRONLY)))
        def via_opath():
            fd = os.open(f"/proc/{pid}/exe", os.O_PATH)
            try:
                os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))
            finally:
                os.close(fd)
        attempt("exe-opath-reopen", via_opath)
        attempt("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
        def follow_fds():
            # the kernel lets the owner list the fd numbers of a non-dumpable
            # process; none of them may be followed or opened
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                names = []
            for n in names:
                for fn in (os.readlink, lambda p: os.close(os.open(p, os.O_RDONLY))):
                    try:
                        fn(f"/proc/{pid}/fd/{n}")
                        return
                    except OSError:
                        pass
            raise PermissionError(errno.EACCES, "no fd could be followed")
        attempt("fd", follow_fds)
        attempt("cwd", lambda: os.listdir(f"/proc/{pid}/cwd"))
        attempt("root", lambda: os.listdir(f"/proc/{pid}/root"))
        attempt("mem", lambda: open(f"/proc/{pid}/mem", "rb").read(1))
        sc(f"ptrace-attach@{pid}", PTRACE_NR, 16, int(pid), 0, 0)
"""


def test_init_and_supervisor_are_out_of_reach():
    code = PROC_PROBE.replace("PTRACE_NR", str(NR("ptrace")))
    with Sandbox() as s:
        got = results(ok(py(s, code)))
        init_host_pid = s.pid
    pids = {k.split("@")[1] for k in got}
    assert "1" in pids and len(pids) >= 2, got     # init and the run's supervisor
    opened = {k: v for k, v in got.items() if v == "ok"}
    assert opened == {}, opened
    assert not os.path.exists(f"/proc/{init_host_pid}")


def test_cgroupfs_out_of_reach():
    """CVE-2022-0492: no writable cgroupfs (release_agent) inside."""
    code = PY_SC + f"""
        os.makedirs("/tmp/cg", exist_ok=True)
        sc("mount-cgroup", {NR("mount")}, b"cgroup", b"/tmp/cg", b"cgroup", 0, b"rdma")
        sc("mount-cgroup2", {NR("mount")}, b"cgroup2", b"/tmp/cg", b"cgroup2", 0, None)
        found = []
        for root in ("/sys/fs/cgroup", "/tmp/cg"):
            for dirpath, dirs, files in os.walk(root):
                for f in files:
                    if f in ("release_agent", "notify_on_release", "cgroup.procs"):
                        p = os.path.join(dirpath, f)
                        try:
                            open(p, "w").close()
                            found.append(p)
                        except OSError:
                            pass
        print("writable", len(found), *found[:5])
    """
    with Sandbox() as s:
        got = results(ok(py(s, code)))
    assert got == {"mount-cgroup": "EPERM", "mount-cgroup2": "EPERM", "writable": "0"}


# --- rootfs with a symlinked /proc or /dev (CVE-2019-16884 and later) ------------

@pytest.mark.parametrize("link, target", [
    ("proc", "/fake"), ("proc", "/tmp"), ("proc", "/dev"),
    ("dev", "/fake"), ("dev", "/tmp"), ("dev", "/proc"),
])
def test_rootfs_with_symlinked_proc_or_dev(rootfs, tmp_path, link, target):
    """Either refused at construction, or the command still gets the real,
    masked /proc and the real /dev/null."""
    root = str(tmp_path / "rootfs")
    shutil.copytree(rootfs, root, symlinks=True)
    shutil.rmtree(os.path.join(root, link))
    os.makedirs(os.path.join(root, "fake", "sys"))
    for name in ("null", "timer_list", "status"):
        with open(os.path.join(root, "fake", name), "w") as f:
            f.write("FAKE\n")
    os.symlink(target, os.path.join(root, link))
    before = tree_snapshot(root)
    with pytest.raises(NotADirectoryError) as ei:
        Sandbox(root)   # refused before anything is created
    assert ei.value.filename == os.path.join(root, link)
    assert tree_snapshot(root) == before
    # the same symlink inside a directory the sandbox never mounts on is fine
    os.unlink(os.path.join(root, link))
    os.makedirs(os.path.join(root, link))
    os.symlink(target, os.path.join(root, "elsewhere"))
    before = tree_snapshot(root)
    with Sandbox(root) as s:
        r = sh(s, "echo seccomp $(grep -c '^Seccomp:' /proc/self/status 2>&1); "
                  "echo timer_list $(wc -c < /proc/timer_list 2>&1); "
                  "echo null_type $(stat -c %F /dev/null 2>&1); "
                  "echo x > /dev/null; echo null_size $(wc -c < /dev/null 2>&1); "
                  "echo proc_sys $( (echo x > /proc/sys/kernel/domainname) 2>&1)")
    got = results(r.stdout)
    assert got["seccomp"] == "1", got                       # a real procfs
    if os.path.exists("/proc/timer_list"):
        assert got["timer_list"] == "0", got                # masked
    assert got["null_type"] == "character special file", got
    assert got["null_size"] == "0", got
    assert "Read-only file system" in got["proc_sys"], got  # /proc/sys read-only
    assert tree_snapshot(root) == before


# --- read-only mounts ------------------------------------------------------------

def test_read_only_bind_cannot_be_remounted_rw(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("original\n")
    before = tree_snapshot(str(data))
    code = PY_SC + f"""
        sc("remount-rw", {NR("mount")}, None, b"/data", None, 32 | 4096, None)   # MS_REMOUNT|MS_BIND
        sc("umount", {NR("umount2")}, b"/data", 2)
        for p in ("/data/file", "/data/new"):
            try:
                open(p, "w").write("changed")
                print(p, "written")
            except OSError as e:
                print(p, errno.errorcode[e.errno])
    """
    with Sandbox(mounts=[Bind(str(data), "/data", read_only=True)]) as s:
        r = sh(s, "mount -o remount,rw,bind /data")
        got = results(ok(py(s, code)))
    assert r.returncode != 0
    assert got == {"remount-rw": "EPERM", "umount": "EPERM",
                   "/data/file": "EROFS", "/data/new": "EROFS"}
    assert tree_snapshot(str(data)) == before
    assert (data / "file").read_text() == "original\n"


def test_default_root_usr_cannot_be_remounted_rw():
    name = "pysandbox-" + uuid.uuid4().hex
    with Sandbox() as s:
        r1 = sh(s, "mount -o remount,rw /usr")
        r2 = sh(s, "mount -o remount,rw,bind /usr")
        r3 = sh(s, f"touch /usr/{name}")
        r4 = py(s, PY_SC + f"""
            sc("remount", {NR("mount")}, None, b"/usr", None, 32 | 4096, None)
        """)
    assert r1.returncode != 0 and r2.returncode != 0
    assert r3.returncode != 0 and "Read-only file system" in r3.stderr
    assert results(ok(r4)) == {"remount": "EPERM"}
    assert not os.path.exists(f"/usr/{name}")


# --- custom policies ---------------------------------------------------------------

def test_custom_errno_without_base():
    policy = {"base": None, "deny": ["chdir"], "errno": errno.EACCES}
    code = PY_SC + f"""
        try:
            os.chdir("/tmp")
            print("chdir ok")
        except OSError as e:
            print("chdir", errno.errorcode[e.errno])
        sc("clone3", {NR("clone3")}, None, 0)
    """
    with Sandbox(seccomp=policy) as s:
        got = results(ok(py(s, code)))
        assert status(s)["Seccomp"] == "2"
    assert got["chdir"] == "EACCES"
    assert got["clone3"] == "EINVAL"            # base None: not the default list


def test_custom_kill_action():
    with Sandbox(seccomp={"deny": ["mkdir", "mkdirat"], "action": "kill"}) as s:
        r = py(s, "import os; print('before', flush=True); os.mkdir('/tmp/x'); print('after')")
        r2 = py(s, PY_SC + f"sc('clone3', {NR('clone3')}, None, 0)")
    assert r.returncode == -signal.SIGSYS
    assert r.stdout == "before\n"
    assert results(ok(r2)) == {"clone3": "ENOSYS"}     # the base list still applies


def test_custom_log_action_lets_the_call_run():
    with Sandbox(seccomp={"deny": ["getcwd"], "action": "log"}) as s:
        assert ok(py(s, "import os; print(os.getcwd())", cwd="/tmp")) == "/tmp\n"


def test_custom_allow_lifts_a_base_rule():
    code = PY_SC + f"sc('setns', {NR('setns')}, -1, 0)\nsc('mount', {NR('mount')}, None, None, None, 0, None)"
    with Sandbox(seccomp={"allow": ["setns"]}) as s:
        got = results(ok(py(s, code)))
    assert got == {"setns": "EBADF", "mount": "EPERM"}


def test_custom_policies_keep_the_prefix_rules_they_do_not_name():
    # personality() values and the calls newer than libseccomp are checked
    # by a hand-made prefix of the filter: a custom policy over the default
    # base keeps them, and one that names personality() decides it alone
    hi = _seccomp._libseccomp().max_named()
    code = PY_SC + f"""
        sc("future", {hi + 1}, 0, 0, 0)
        sc("linux", {NR("personality")}, 0)
        sc("addr_no_randomize", {NR("personality")}, 0x0040000)
        sc("getppid", {NR("getppid")})
    """
    got = {}
    for name, policy in (("deny-chroot", {"deny": ["chroot"]}),
                         ("deny-personality", {"deny": ["personality"], "errno": errno.EACCES}),
                         ("allow-personality", {"allow": ["personality"]}),
                         ("no-base", {"base": None, "deny": ["chroot"]}),
                         ("none", None)):
        with Sandbox(seccomp=policy) as s:
            got[name] = results(ok(py(s, code)))
    assert got["deny-chroot"] == {"future": "ENOSYS", "linux": "ok",
                                  "addr_no_randomize": "EPERM", "getppid": "ok"}
    assert got["deny-personality"] == {"future": "ENOSYS", "linux": "EACCES",
                                       "addr_no_randomize": "EACCES", "getppid": "ok"}
    assert got["allow-personality"] == {"future": "ENOSYS", "linux": "ok",
                                        "addr_no_randomize": "ok", "getppid": "ok"}
    # without the default base, the kernel's own answers (the control: no filter)
    assert got["no-base"] == got["none"]
    assert got["none"]["addr_no_randomize"] == "ok"


def test_default_filter_is_small():
    # installing a filter converts and JIT-compiles all of it, for every
    # sandbox: the default list stays well under the 505 instructions it
    # took as plain libseccomp rules
    assert len(_seccomp.compile_filter("default")) // 8 < 250


@pytest.mark.parametrize("policy, exc", [
    ("strict", ValueError),
    ({"deny": ["not_a_syscall"]}, ValueError),
    ({"deny": ["getpid"], "allow": ["getpid"]}, ValueError),
    ({"allow": ["getpid"]}, ValueError),               # not denied by the base
    ({"base": None, "allow": ["mount"]}, ValueError),
    ({"deny": "mount"}, TypeError),
    ({"deny": [1]}, TypeError),
    ({"deny": ["mount"], "action": "trap"}, ValueError),
    ({"deny": ["mount"], "errno": 0}, ValueError),
    ({"deny": ["mount"], "errno": 5000}, ValueError),
    ({"deny": ["mount"], "errno": "EPERM"}, TypeError),
    ({"deny": ["mount"], "action": "kill", "errno": 1}, ValueError),
    ({"base": "docker"}, ValueError),
    ({"denny": ["mount"]}, ValueError),
    (["mount"], TypeError),
])
def test_bad_policy_refused_before_anything_starts(policy, exc):
    before = set(init_pids())
    with pytest.raises(exc):
        Sandbox(seccomp=policy)
    assert set(init_pids()) == before


def test_policies_compile_once_and_differ():
    assert _seccomp.compile_filter(None) == b""
    default = _seccomp.compile_filter("default")
    assert default and len(default) % 8 == 0
    assert _seccomp.compile_filter("default") is default          # cached
    custom = {"deny": ["getcwd"], "errno": errno.EACCES}
    a = _seccomp.compile_filter(custom)
    assert a is _seccomp.compile_filter(dict(custom))
    assert a != default
    assert _seccomp.compile_filter({"base": None, "deny": ["getcwd"]}) not in (a, default)
    norm = _seccomp.validate_policy(custom)
    assert hash(norm) == hash(_seccomp.validate_policy(dict(custom)))


def test_missing_libseccomp_is_a_setup_error(monkeypatch):
    monkeypatch.setattr(_seccomp, "_lib", None)
    monkeypatch.setattr(_seccomp, "_LIB_NAMES", ("libseccomp-absent.so.9",))
    monkeypatch.setattr(_seccomp.ctypes.util, "find_library", lambda name: None)
    _seccomp._compile_cached.cache_clear()
    try:
        before = set(init_pids())
        with pytest.raises(SetupError, match="libseccomp"):
            Sandbox()
        with pytest.raises(SetupError):
            Sandbox(seccomp={"deny": ["mount"]})
        assert set(init_pids()) == before
        with Sandbox(seccomp=None) as s:            # no filter needs no libseccomp
            assert status(s)["Seccomp"] == "0"
    finally:
        _seccomp._compile_cached.cache_clear()


def test_orphans_cannot_hide_from_init_behind_a_new_proc():
    """A command allowed to mount (CAP_SYS_ADMIN, no seccomp filter) covers
    /proc with a tmpfs, starts a daemon and kills its supervisor: init,
    which kills a dead supervisor's orphans, reads its children from a list
    it opened before any command ran, and the new /proc does not hide
    them (it opened the list when it swept: nothing was killed, the
    orphans stayed until close)."""
    from pysandbox._caps import DEFAULT_CAPABILITIES
    from sbxutil import commands_in, pid_ns_of, wait_until
    caps = sorted(set(DEFAULT_CAPABILITIES) | {"SYS_ADMIN"})
    with Sandbox(capabilities=caps, seccomp=None) as s:
        ns = pid_ns_of(s)
        try:
            r = s.run(["sh", "-c", "mount -t tmpfs none /proc || exit 3; "
                                   "sleep 1000 & kill -9 $PPID; sleep 1000"],
                      capture_output=True, text=True, timeout=10)
            assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
        except subprocess.TimeoutExpired:
            pass
        assert wait_until(lambda: commands_in(ns) == [], 5), commands_in(ns)


def test_sandbox_root_cannot_change_the_hosts_device_nodes():
    """/dev/null, /dev/zero... inside are not the host's nodes bound in
    when the host's root is mapped (a root caller): the sandbox's root has
    CAP_FOWNER and CAP_CHOWN over what that id owns, and its chmod of the
    bound host /dev/null changed the host's.  It gets private nodes of the
    same devices; the host's stay as they were, the devices still work."""
    nodes = ("null", "zero", "full", "random", "urandom", "tty")

    def host_state():
        out = {}
        for n in nodes:
            st = os.stat("/dev/" + n)
            out[n] = (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns, st.st_rdev)
        return out
    before = host_state()
    # (harmless if it does reach the host's nodes: each is given the mode
    # and owner it has, which still changes its ctime)
    attack = "; ".join(f"chmod $(stat -c %a /dev/{n}) /dev/{n}; "
                       f"chown $(stat -c %u:%g /dev/{n}) /dev/{n}" for n in nodes)
    with Sandbox() as s:
        r = s.run(["sh", "-c", attack + " 2>/dev/null; echo x > /dev/null; "
                   "head -c 3 /dev/zero | wc -c; head -c 3 /dev/urandom | wc -c"],
                  capture_output=True, text=True)
    assert host_state() == before
    assert r.stdout.split() == ["3", "3"], (r.stdout, r.stderr)


NODE_PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pysandbox import Sandbox
nodes = ("null", "zero", "full", "random", "urandom", "tty")
attack = "; ".join(f"chmod $(stat -c %a /dev/{n}) /dev/{n}; "
                   f"chown $(stat -c %u:%g /dev/{n}) /dev/{n}" for n in nodes)
with Sandbox() as s:
    r = s.run(["sh", "-c", attack + " 2>/dev/null; echo x > /dev/null && echo wrote; "
               "head -c 3 /dev/zero | wc -c"], capture_output=True, text=True)
print(r.stdout.split())
"""


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"),
                    reason="needs the host's root, to map it in a user namespace")
def test_host_device_nodes_bound_read_only_where_none_can_be_made():
    """A caller that maps the host's root but can make no device nodes
    (the root of a one-id user namespace: no fsopen, no mknod there) gets
    the host's nodes bound read-only: the devices work, their mode, owner
    and times cannot be changed from inside (they could, read-write)."""
    import sys
    nodes = ("null", "zero", "full", "random", "urandom", "tty")
    before = {n: os.stat("/dev/" + n).st_ctime_ns for n in nodes}
    here = os.path.dirname(os.path.dirname(os.path.abspath(_seccomp.__file__)))
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c",
                        NODE_PROBE, here], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "['wrote', '3']", (r.stdout, r.stderr)
    assert {n: os.stat("/dev/" + n).st_ctime_ns for n in nodes} == before
