"""Test helpers shared by tests/ and benchmarks/: a tiny rootfs made from
host binaries, and leak probes."""
import glob
import os
import shutil
import subprocess
import time

IS_ROOT = os.geteuid() == 0
ROOTFS_TOOLS = ("sh", "cat", "ls", "id", "true", "false", "sleep", "echo", "mkdir",
                "touch", "rm", "hostname", "ps", "env", "pwd", "head", "dd", "stat",
                "readlink", "kill", "uname", "grep", "wc", "tr", "setsid", "mount",
                "chmod", "yes")


def _libs(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        for part in line.split():
            if part.startswith("/"):
                yield part


def build_rootfs(dest):
    """Copy a few host programs and the libraries they need into dest."""
    for d in ("bin", "etc", "tmp", "proc", "dev", "root"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    seen = set()
    for tool in ROOTFS_TOOLS:
        src = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if src is None:
            continue
        real = os.path.realpath(src)
        shutil.copy2(real, os.path.join(dest, "bin", tool))
        for lib in _libs(real):
            if lib in seen:
                continue
            seen.add(lib)
            target = os.path.join(dest, lib.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), target)
    # dash as sh when present (faster, smaller)
    with open(os.path.join(dest, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
                "user:x:1000:1000::/tmp:/bin/sh\n")
    with open(os.path.join(dest, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n")
    with open(os.path.join(dest, "canary"), "w") as f:
        f.write("original\n")
    return dest


def tree_snapshot(root):
    """(path, size, mtime_ns, mode) of everything below root: proof that a
    sandbox did not write to it."""
    snap = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            snap.append((p, st.st_size, st.st_mtime_ns, st.st_mode))
    return sorted(snap)


def init_pids(parent=None):
    """Host pids of the running sandbox inits started by this process (or by
    `parent`): other test sessions on the machine do not count."""
    parent = os.getpid() if parent is None else parent
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm == "pysandbox-init" and ppid == parent:
            pids.append(int(d))
    return pids


def open_fds():
    """This process's fds (less the one of the listing itself)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        out.append(int(fd))
    return sorted(out)


def fds_under(dirs):
    """Targets of this process's fds inside any of `dirs`, sorted."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(t.startswith(d + "/") for d in dirs):
            out.append(t)
    return sorted(out)


def child_pids():
    """Direct children of this process (zombies included)."""
    out = []
    me = str(os.getpid())
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append(int(d))
    return out


def sh_run(s, script, **kw):
    """Run a shell script in sandbox s: the result, output as text."""
    kw.setdefault("timeout", 20)
    return s.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def sh_ok(s, script, **kw):
    """sh_run that must succeed: its stdout."""
    r = sh_run(s, script, **kw)
    assert r.returncode == 0, f"{script!r} -> {r.returncode}: {r.stderr}"
    return r.stdout


def gone_inside(sandbox, pid):
    """True once pid (a pid inside) no longer exists in the sandbox (bounded
    wait: a killed process may still be a zombie for a moment)."""
    r = sandbox.run(["sh", "-c", f"for i in $(seq 250); do [ -d /proc/{pid} ] || exit 0; "
                                 f"sleep 0.02; done; exit 1"], timeout=30)
    return r.returncode == 0


def wait_until(cond, timeout=5.0):
    """Poll cond() until it is true or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.01)


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# -- finding our cgroups (independently of the driver) ----------------------

def _cgroup_bases():
    """Directories of this process's own cgroups, one per mounted hierarchy
    (from /proc/self/cgroup and /proc/self/mountinfo)."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(rf) >= 3 and rf[0] in ("cgroup", "cgroup2"):
                mounts.append((rf[0], set(rf[2].split(",")), lf[3], lf[4]))
    bases = set()
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            for fstype, opts, root, mnt in mounts:
                if hid == "0" and ctrls == "":
                    if fstype != "cgroup2":
                        continue
                elif fstype != "cgroup" or not set(ctrls.split(",")) <= opts:
                    continue
                r = root.rstrip("/")
                if path != root and not path.startswith(r + "/"):
                    continue
                bases.add(os.path.normpath(mnt + "/" + path[len(r):]))
    return sorted(bases)


BASES = _cgroup_bases()


def cg_dirs(pid=None):
    """Every pysandbox-<pid>-* cgroup directory below our own cgroups (pid:
    the process that made them, this one by default)."""
    pid = os.getpid() if pid is None else pid
    out = set()
    for b in BASES:
        out.update(glob.glob(os.path.join(b, f"pysandbox-{pid}-*")))
        out.update(glob.glob(os.path.join(b, "*", f"pysandbox-{pid}-*")))
    return out


def pid_ns_of(sb):
    """The pid namespace of sandbox sb, as /proc/PID/ns/pid links name it."""
    ns = sb.run(["readlink", "/proc/self/ns/pid"], capture_output=True,
                text=True).stdout.strip()
    assert ns.startswith("pid:["), ns
    return ns


def pids_in_ns(ns):
    """Host pids (strings) of the processes whose /proc/PID/ns/pid is ns."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{d}/ns/pid") == ns:
                yield d
        except OSError:
            continue


def commands_in(ns):
    """Host pids and names of the live processes in pid namespace ns other
    than its init and supervisors, seen from the host at once (no waiting:
    a process still alive when the call comes is counted)."""
    out = []
    for d in pids_in_ns(ns):
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat.rsplit(")", 1)[1].split()[0]
        if not comm.startswith("pysandbox") and state not in ("Z", "X"):
            out.append((int(d), comm))
    return out
