"""Every sandbox lives in eight new namespaces: checked from inside (what
readlink /proc/self/ns/*, ps, hostname and /proc/net/dev show) against the
host's view."""
import os
import socket
import subprocess
import sys

import pytest

import pysandbox
from pysandbox import Sandbox
from pysandbox._caps import DEFAULT_CAPABILITIES

pytestmark = pytest.mark.timeout(60)

HOST_COMPARED = ("user", "pid", "mnt", "uts", "ipc", "net", "cgroup")


def sh(s, script, **kw):
    kw.setdefault("timeout", 20)
    return s.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def inside_ns(s, names):
    script = "; ".join(f"readlink /proc/self/ns/{n}" for n in names)
    r = sh(s, script)
    assert r.returncode == 0, r.stderr
    links = r.stdout.split()
    assert len(links) == len(names), r.stdout
    return dict(zip(names, links))


def net_interfaces(proc_net_dev_text):
    """Interface names from the text of /proc/net/dev."""
    names = set()
    for line in proc_net_dev_text.splitlines()[2:]:
        if ":" in line:
            names.add(line.split(":", 1)[0].strip())
    return names


@pytest.mark.parametrize("ns", HOST_COMPARED)
def test_namespace_differs_from_host(rootfs, ns):
    host = os.readlink(f"/proc/self/ns/{ns}")
    with Sandbox(rootfs) as s:
        inside = inside_ns(s, [ns])[ns]
    assert inside.startswith(f"{ns}:[")
    assert inside != host


def test_command_time_namespace_differs_from_host(rootfs):
    host = os.readlink("/proc/self/ns/time")
    with Sandbox(rootfs) as s:
        inside = inside_ns(s, ["time"])["time"]
    assert inside.startswith("time:[")
    assert inside != host


def test_two_sandboxes_do_not_share_namespaces(rootfs):
    names = HOST_COMPARED + ("time",)
    with Sandbox(rootfs) as a, Sandbox(rootfs) as b:
        na, nb = inside_ns(a, names), inside_ns(b, names)
    for n in names:
        assert na[n] != nb[n], n


def test_init_host_pid_is_in_a_new_pid_namespace(rootfs):
    with Sandbox(rootfs) as s:
        assert s.pid is not None and s.pid != os.getpid()
        assert os.readlink(f"/proc/{s.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        # inside, the shell has a small pid of its own, not its host pid
        r = sh(s, "echo $$")
        assert int(r.stdout) < 10


def test_ps_shows_only_sandbox_processes(rootfs):
    host_pids = [d for d in os.listdir("/proc") if d.isdigit()]
    with Sandbox(rootfs) as s:
        bg = s.popen(["sleep", "1000"])
        try:
            r = sh(s, "ps -e -o pid= -o comm=")
        finally:
            bg.kill()
            bg.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    procs = {}
    for line in r.stdout.splitlines():
        pid, comm = line.split(None, 1)
        procs[int(pid)] = comm.strip()
    assert procs[1] == "pysandbox-init"
    assert bg.pid in procs and procs[bg.pid] == "sleep"
    # init, one supervisor per live run (and maybe a spare one forked ahead,
    # briefly still named like init), the two commands and ps itself
    assert set(procs.values()) <= {"pysandbox-init", "pysandbox-run", "sleep", "sh", "ps"}
    assert len(procs) <= 8
    assert len(host_pids) > len(procs)  # the host has more: they are hidden


def test_pid1_comm_is_init(rootfs):
    with Sandbox(rootfs) as s:
        r = sh(s, "cat /proc/1/comm")
    assert r.stdout == "pysandbox-init\n"


def test_default_hostname_is_sandbox(rootfs):
    host = socket.gethostname()
    with Sandbox(rootfs) as s:
        r = sh(s, "hostname; uname -n")
        assert socket.gethostname() == host
    assert r.stdout.split() == ["sandbox", "sandbox"]
    assert host != "sandbox"


def test_custom_hostname_leaves_host_unchanged(rootfs):
    host = socket.gethostname()
    with Sandbox(rootfs, hostname="judge-7.example") as s:
        r = sh(s, "hostname")
        assert socket.gethostname() == host
    assert r.stdout.strip() == "judge-7.example"
    assert socket.gethostname() == host


def test_network_none_has_only_loopback(rootfs):
    host_ifaces = net_interfaces(open("/proc/net/dev").read())
    with Sandbox(rootfs, network="none") as s:
        r = sh(s, "cat /proc/net/dev")
    assert r.returncode == 0, r.stderr
    assert net_interfaces(r.stdout) == {"lo"}
    assert host_ifaces - {"lo"}, "host has no interface but lo: test proves nothing"


def test_network_default_is_none(rootfs):
    with Sandbox(rootfs) as s:
        r = sh(s, "readlink /proc/self/ns/net; cat /proc/net/dev")
    first, rest = r.stdout.split("\n", 1)
    assert first != os.readlink("/proc/self/ns/net")
    assert net_interfaces(rest) == {"lo"}


LOOPBACK_ECHO = r"""
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=5)
conn, _ = srv.accept()
c.sendall(b"ping over lo")
print(conn.recv(100).decode())
"""


def test_loopback_works_with_network_none():
    with Sandbox(network="none") as s:
        r = s.run(["python3", "-c", LOOPBACK_ECHO], capture_output=True, text=True,
                  timeout=20)
        links = s.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ping over lo"
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    assert names == ["lo"]
    assert "UP" in links.stdout.split("<", 1)[1].split(">", 1)[0].split(",")


def test_network_none_when_init_has_one_cpu():
    """With a second CPU the init's first supervisor makes the network
    namespace while init builds the mounts; with one, init makes it itself
    after the build.  That path gives the same network."""
    mask = os.sched_getaffinity(0)
    host_net = os.readlink("/proc/self/ns/net")
    os.sched_setaffinity(0, {min(mask)})   # this thread: the init inherits it
    try:
        with Sandbox(network="none") as s:
            os.sched_setaffinity(0, mask)
            r = s.run(["python3", "-c", LOOPBACK_ECHO], capture_output=True, text=True,
                      timeout=20)
            links = s.run(["sh", "-c", "readlink /proc/self/ns/net; ip -o link"],
                          capture_output=True, text=True, timeout=20)
    finally:
        os.sched_setaffinity(0, mask)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ping over lo"
    net, rest = links.stdout.split("\n", 1)
    assert net.startswith("net:[") and net != host_net, links.stdout
    names = [line.split(":")[1].strip() for line in rest.splitlines()]
    assert names == ["lo"], rest
    assert "UP" in rest.split("<", 1)[1].split(">", 1)[0].split(",")


def test_network_host_sees_host_interfaces(rootfs):
    host_ifaces = net_interfaces(open("/proc/net/dev").read())
    host_net = os.readlink("/proc/self/ns/net")
    with Sandbox(rootfs, network="host") as s:
        r = sh(s, "readlink /proc/self/ns/net; cat /proc/net/dev")
    assert r.returncode == 0, r.stderr
    first, rest = r.stdout.split("\n", 1)
    assert first == host_net
    assert net_interfaces(rest) == host_ifaces
    assert host_ifaces - {"lo"}, "host has no interface but lo: test proves nothing"


def test_network_host_keeps_other_namespaces_private(rootfs):
    names = ("user", "pid", "mnt", "uts", "ipc", "cgroup")
    with Sandbox(rootfs, network="host") as s:
        inside = inside_ns(s, names)
    for n in names:
        assert inside[n] != os.readlink(f"/proc/self/ns/{n}"), n


def test_network_value_is_validated(rootfs):
    with pytest.raises(ValueError):
        Sandbox(rootfs, network="bridge")


def test_network_capabilities_apply_in_the_sandboxs_own_namespace():
    # the network namespace belongs to the sandbox's user namespace, so the
    # default capabilities (NET_BIND_SERVICE, NET_RAW) work in it, sandbox
    # after sandbox; with capabilities=[] the same bind is refused
    code = ("import socket\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 80)); print('bound')\n")
    for _ in range(3):
        with pysandbox.Sandbox() as s:
            r = s.run(["python3", "-c", code], capture_output=True, text=True)
            assert r.stdout == "bound\n", r.stderr
    with pysandbox.Sandbox(capabilities=[]) as s:
        r = s.run(["python3", "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr


PROCS_AND_FDS = "echo $$; cat /proc/[0-9]*/comm; echo fds $(ls /proc/1/fd | wc -l)"


def test_network_namespace_helper_leaves_nothing(rootfs):
    # network="none": the first supervisor makes the namespace while init
    # builds the mounts; nothing of that may outlive setup (first run of a
    # fresh sandbox: init, the supervisor, this shell -- the same with
    # network="host")
    out = {}
    for net in ("none", "host"):
        with Sandbox(rootfs, network=net) as s:
            r = sh(s, PROCS_AND_FDS)
        assert r.returncode == 0, r.stderr
        pid, rest = r.stdout.split("\n", 1)
        out[net] = rest.split()
        assert pid == "3", pid         # no other process was ever made
    assert out["none"][:3] == ["pysandbox-init", "pysandbox-run", "sh"], out["none"]
    assert out["none"] == out["host"]


# what a command inherits from the supervisor that started it
SUPERVISOR_VIEW = ("echo ppid $PPID; for n in net time mnt pid uts ipc cgroup user; do "
                   "readlink /proc/self/ns/$n; done; grep -E '^(Cpus_allowed_list|Seccomp|"
                   "Seccomp_filters|CapBnd|CapPrm|CapEff|NoNewPrivs|Uid|Gid):' /proc/self/status;"
                   " readlink /proc/self/root; pwd")


@pytest.mark.parametrize("network", ["none", "host"])
def test_first_supervisor_is_set_up_like_the_others(rootfs, network):
    # the first supervisor is forked before the container is built (it works
    # alongside init); the ones forked later come from the finished init.  A
    # command must not tell them apart: same namespaces, CPUs, filter,
    # capabilities, root.
    with Sandbox(rootfs, network=network) as s:
        first = sh(s, SUPERVISOR_VIEW)
        busy = s.popen(["sleep", "30"])         # keeps that supervisor busy
        try:
            later = sh(s, SUPERVISOR_VIEW)
        finally:
            busy.kill()
            busy.wait(timeout=10)
    assert first.returncode == 0 and later.returncode == 0, (first.stderr, later.stderr)
    f_ppid, f_rest = first.stdout.split("\n", 1)
    l_ppid, l_rest = later.stdout.split("\n", 1)
    assert f_ppid != l_ppid, (f_ppid, l_ppid)   # two different supervisors
    if len(os.sched_getaffinity(0)) > 1:
        assert f_ppid == "ppid 2", f_ppid         # the early one (pid 2)
    assert f_rest == l_rest
    fields = dict(line.split(":", 1) for line in f_rest.splitlines() if ":" in line
                  and not line.startswith(("net:", "time:", "mnt:", "pid:", "uts:", "ipc:",
                                           "cgroup:", "user:")))
    cpus = sorted(os.sched_getaffinity(0))
    want = ",".join(str(c) for c in cpus)
    got = fields["Cpus_allowed_list"].strip()
    if "-" in got:
        lo, hi = got.split("-")
        got = ",".join(str(c) for c in range(int(lo), int(hi) + 1))
    assert got == want                              # not left pinned off init's CPU
    assert fields["Seccomp"].strip() == "2"         # filtered
    assert fields["NoNewPrivs"].strip() == "1"
    assert f_rest.endswith("\n/\n/\n")         # root and cwd pivoted
    host_net = os.readlink("/proc/self/ns/net")
    net_link = f_rest.splitlines()[0]
    assert (net_link == host_net) == (network == "host"), (net_link, host_net)


def test_supervisors_work_inside_the_root():
    # every supervisor's root and working directory are the sandbox's "/":
    # the first one was forked while init still had Python's working
    # directory, on the host (the pivot moves roots, not working
    # directories), and must have left it.  Looking at another process's
    # cwd takes SYS_PTRACE here (the supervisors are not dumpable).
    caps = list(DEFAULT_CAPABILITIES) + ["SYS_PTRACE"]
    look = 'stat -L -c %d:%i / /proc/$PPID/root /proc/$PPID/cwd /proc/1/cwd; echo $PPID'
    with Sandbox(capabilities=caps) as s:
        first = sh(s, look)
        busy = s.popen(["sleep", "30"])
        try:
            later = sh(s, look)
        finally:
            busy.kill()
            busy.wait(timeout=10)
    for r in (first, later):
        assert r.returncode == 0, r.stderr
        *ids, ppid = r.stdout.split()
        assert len(set(ids)) == 1, r.stdout
    assert first.stdout.split()[-1] != later.stdout.split()[-1]


def test_first_supervisor_kills_the_whole_tree():
    # the early supervisor lists its children in the sandbox's /proc (opened
    # after the pivot, not in the host's): a timeout in the first run kills
    # a setsid'd orphan too
    script = ("setsid sh -c 'sleep 1000 & echo $! > /tmp/orphan' & "
              "while [ ! -s /tmp/orphan ]; do sleep 0.01; done; echo $PPID; exec sleep 1000")
    with Sandbox() as s:
        with pytest.raises(pysandbox.TimeoutExpired) as ei:
            s.run(["sh", "-c", script], capture_output=True, text=True, timeout=2)
        if len(os.sched_getaffinity(0)) > 1:
            assert ei.value.stdout.split() == ["2"], ei.value.stdout
        left = sh(s, "ps -e -o comm=").stdout.split()
    assert "sleep" not in left, left


INLINE_NETNS = """
import os, sys, pysandbox
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
with pysandbox.Sandbox(sys.argv[1], network="none") as s:
    r = s.run(["sh", "-c", "echo $$; readlink /proc/self/ns/net; cat /proc/net/dev; "
               "cat /proc/1/status"], capture_output=True, text=True)
print(os.readlink("/proc/self/ns/net"))
print(r.stdout)
"""


def test_network_none_on_one_cpu(rootfs):
    # with a single CPU allowed there is no helper: init makes the namespace
    # itself; the result is the same
    r = subprocess.run([sys.executable, "-c", INLINE_NETNS, rootfs],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    host_net, shell_pid, inside_net, rest = r.stdout.split("\n", 3)
    assert shell_pid == "3"   # supervisor 2 (forked after setup here), this shell 3
    assert inside_net.startswith("net:[") and inside_net != host_net
    assert net_interfaces(rest.split("Name:", 1)[0]) == {"lo"}
    allowed = [l for l in rest.splitlines() if l.startswith("Cpus_allowed_list:")]
    assert len(allowed) == 1 and "-" not in allowed[0] and "," not in allowed[0], allowed
