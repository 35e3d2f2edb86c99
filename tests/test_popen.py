"""s.popen: the Popen-like SandboxProcess."""
import os
import select
import signal
import subprocess

import pytest
from sbxutil import gone_inside as _gone, open_fds

import pysandbox
from pysandbox import DEVNULL, PIPE, STDOUT, Sandbox

pytestmark = pytest.mark.timeout(120)


def sh(script):
    return ["sh", "-c", script]


def _finish(p):
    """Leave nothing running whatever the test did."""
    if p.returncode is None:
        p.kill()
        p.wait(timeout=30)


def test_popen_returns_sandbox_process_with_inside_pid(tiny):
    p = tiny.popen(["sleep", "1000"])
    try:
        assert isinstance(p, pysandbox.SandboxProcess)
        assert isinstance(p.pid, int) and p.pid > 1
        # the pid is the one inside: /proc/<pid> there is our sleep
        r = tiny.run(["cat", f"/proc/{p.pid}/cmdline"], capture_output=True)
        assert r.stdout == b"sleep\x001000\x00"
        assert p.args == ["sleep", "1000"]
    finally:
        _finish(p)


def test_poll_none_then_returncode(tiny):
    p = tiny.popen(sh("read x; exit 7"), stdin=PIPE)
    try:
        assert p.poll() is None
        assert p.returncode is None
        p.stdin.write(b"go\n")
        p.stdin.close()
        assert p.wait(timeout=30) == 7
        assert p.poll() == 7
        assert p.returncode == 7
    finally:
        _finish(p)


def test_wait_timeout_then_success(tiny):
    p = tiny.popen(sh("read x; exit 0"), stdin=PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired) as ei:
            p.wait(timeout=0.2)
        assert ei.value.timeout == 0.2
        assert p.returncode is None and p.poll() is None
        p.stdin.close()   # EOF: read returns, the shell exits
        assert p.wait(timeout=30) == 0
        assert p.wait() == 0   # idempotent
    finally:
        _finish(p)


def test_wait_and_poll_from_two_threads(tiny):
    # as subprocess.Popen: one thread in wait(), another polling; both see
    # the command's own status (not the -9 of a pipe read from under them)
    import threading
    for _ in range(100):
        p = tiny.popen(["sh", "-c", "exit 3"])
        polled = []

        def poller():
            while (rc := p.poll()) is None:
                pass
            polled.append(rc)
        t = threading.Thread(target=poller)
        t.start()
        assert p.wait(timeout=30) == 3
        t.join(30)
        assert polled == [3] and p.returncode == 3


def test_wait_rejects_bad_timeout(tiny):
    p = tiny.popen(["true"])
    try:
        with pytest.raises(ValueError):
            p.wait(timeout=-1)
        assert p.wait(timeout=30) == 0
    finally:
        _finish(p)


def test_communicate_with_input(tiny):
    p = tiny.popen(sh("cat; echo done >&2"), stdin=PIPE, stdout=PIPE, stderr=PIPE)
    out, err = p.communicate(b"payload\n", timeout=30)
    assert (out, err) == (b"payload\n", b"done\n")
    assert p.returncode == 0


def test_communicate_text(tiny):
    p = tiny.popen(["cat"], stdin=PIPE, stdout=PIPE, text=True)
    out, err = p.communicate("h\u00e9\r\n", timeout=30)
    assert out == "h\u00e9\n"
    assert err is None
    assert p.returncode == 0


def test_communicate_timeout_then_retry_keeps_output(tiny):
    p = tiny.popen(sh("echo first; exec sleep 1000"), stdout=PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            p.communicate(timeout=0.5)
        assert p.poll() is None
        p.kill()
        out, err = p.communicate(timeout=30)
        assert out == b"first\n"
        assert p.returncode == -signal.SIGKILL
    finally:
        _finish(p)


def test_streams_usable_directly(tiny):
    p = tiny.popen(["cat"], stdin=PIPE, stdout=PIPE)
    try:
        p.stdin.write(b"line one\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"line one\n"
        p.stdin.write(b"line two\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"line two\n"
        p.stdin.close()
        assert p.stdout.read() == b""
        assert p.wait(timeout=30) == 0
    finally:
        p.stdout.close()
        _finish(p)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_streams_text_line_buffered(tiny):
    # as subprocess.Popen: bufsize=1 in text mode is line buffering, no warning
    p = tiny.popen(["cat"], stdin=PIPE, stdout=PIPE, text=True, bufsize=1)
    try:
        p.stdin.write("caf\u00e9\n")   # line buffering: no flush needed
        ready, _, _ = select.select([p.stdout], [], [], 10)
        assert ready, "the line was not sent without a flush"
        assert p.stdout.readline() == "caf\u00e9\n"
        p.stdin.close()
        assert p.wait(timeout=30) == 0
    finally:
        p.stdout.close()
        _finish(p)


def test_stderr_to_stdout_stream(tiny):
    with tiny.popen(sh("echo a; echo b >&2"), stdout=PIPE, stderr=STDOUT) as p:
        assert p.stderr is None
        assert p.stdout.read() == b"a\nb\n"
    assert p.returncode == 0


def test_devnull_streams(tiny):
    p = tiny.popen(sh("echo x; cat"), stdin=DEVNULL, stdout=DEVNULL)
    assert p.stdin is None and p.stdout is None and p.stderr is None
    assert p.wait(timeout=30) == 0


@pytest.mark.parametrize("how, code", [
    ("send_signal", -signal.SIGTERM),
    ("terminate", -signal.SIGTERM),
    ("kill", -signal.SIGKILL),
    ("sigusr1", -signal.SIGUSR1),
])
def test_signals(tiny, how, code):
    p = tiny.popen(["sleep", "1000"])
    try:
        if how == "send_signal":
            p.send_signal(signal.SIGTERM)
        elif how == "sigusr1":
            p.send_signal(signal.SIGUSR1)
        else:
            getattr(p, how)()
        assert p.wait(timeout=30) == code
    finally:
        _finish(p)


def test_signal_after_exit_is_harmless(tiny):
    p = tiny.popen(["true"])
    assert p.wait(timeout=30) == 0
    p.terminate()
    p.kill()
    p.send_signal(signal.SIGTERM)
    assert p.returncode == 0
    assert tiny.run(["true"]).returncode == 0


def test_signal_reaches_only_that_process(tiny):
    a = tiny.popen(["sleep", "1000"])
    b = tiny.popen(["sleep", "1000"])
    try:
        a.terminate()
        assert a.wait(timeout=30) == -signal.SIGTERM
        assert b.poll() is None
        assert tiny.run(["kill", "-0", str(b.pid)]).returncode == 0
    finally:
        _finish(a)
        _finish(b)


def test_background_processes_share_pid_fs_and_run_namespaces(sb):
    writer = sb.popen(sh("echo $$ > /tmp/writer.pid; echo hello > /tmp/shared; exec sleep 1000"),
                      stdout=DEVNULL)
    other = sb.popen(["sleep", "1000"])
    try:
        r = sb.run(sh("for i in $(seq 500); do [ -s /tmp/writer.pid ] && exit 0; sleep 0.01; "
                      "done; exit 1"), timeout=30)
        assert r.returncode == 0
        assert int(sb.run(["cat", "/tmp/writer.pid"], capture_output=True).stdout) == writer.pid
        assert sb.run(["cat", "/tmp/shared"], capture_output=True).stdout == b"hello\n"
        ps = sb.run(["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True).stdout
        pids = {int(line.split()[0]): line.split(None, 1)[1] for line in ps.splitlines()}
        assert pids.get(writer.pid) == "sleep 1000"
        assert pids.get(other.pid) == "sleep 1000"
        # the background processes see each other too
        r = sb.popen(["kill", "-0", str(other.pid)])
        assert r.wait(timeout=30) == 0
    finally:
        _finish(writer)
        _finish(other)


def test_background_listener_reachable_from_later_run(sb):
    server = ("import socket, sys\n"
              "s = socket.socket()\n"
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "s.bind(('127.0.0.1', 0)); s.listen(1)\n"
              "print(s.getsockname()[1], flush=True)\n"
              "c, _ = s.accept()\n"
              "c.sendall(b'hello from popen\\n'); c.close()\n")
    client = ("import socket, sys\n"
              "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
              "sys.stdout.buffer.write(c.recv(100))\n")
    p = sb.popen(["python3", "-c", server], stdout=PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        r = sb.run(["python3", "-c", client, str(port)], capture_output=True, timeout=30)
        assert r.stdout == b"hello from popen\n", r.stderr
        assert p.wait(timeout=30) == 0
    finally:
        p.stdout.close()
        _finish(p)


def _shm_rows(out):
    return [line.split() for line in out.splitlines() if line.startswith("0x")]


def test_ipc_namespace_shared_between_runs(sb):
    r = sb.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    shmid = r.stdout.split(":")[-1].strip()
    rows = _shm_rows(sb.run(["ipcs", "-m"], capture_output=True, text=True, timeout=30).stdout)
    assert [row[1] for row in rows] == [shmid]
    with Sandbox() as other:
        out = other.run(["ipcs", "-m"], capture_output=True, text=True, timeout=30).stdout
        assert _shm_rows(out) == []


def test_context_manager(tiny):
    with tiny.popen(sh("echo out; exit 5"), stdout=PIPE) as p:
        line = p.stdout.readline()
    assert line == b"out\n"
    assert p.returncode == 5   # __exit__ waited
    assert p.stdout.closed


def test_context_manager_closes_stdin_so_child_ends(tiny):
    with tiny.popen(["cat"], stdin=PIPE, stdout=DEVNULL) as p:
        p.stdin.write(b"data\n")
    assert p.stdin.closed
    assert p.returncode == 0


def test_kill_tree(sb):
    p = sb.popen(sh("setsid sh -c 'sleep 1001 & echo $! > /tmp/tree.gc' & "
                    "sleep 1002 & echo $! > /tmp/tree.child; "
                    "while [ ! -s /tmp/tree.gc ]; do sleep 0.01; done; echo ready; wait"),
                 stdout=PIPE)
    bystander = sb.popen(["sleep", "1003"])
    try:
        assert p.stdout.readline() == b"ready\n"
        gc = int(sb.run(["cat", "/tmp/tree.gc"], capture_output=True).stdout)
        child = int(sb.run(["cat", "/tmp/tree.child"], capture_output=True).stdout)
        assert sb.run(["kill", "-0", str(gc)]).returncode == 0
        p.kill_tree()
        assert p.wait(timeout=30) == -signal.SIGKILL
        assert _gone(sb, gc) and _gone(sb, child)
        ps = sb.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout
        assert "sleep 1001" not in ps and "sleep 1002" not in ps
        assert "sleep 1003" in ps
        assert bystander.poll() is None
    finally:
        p.stdout.close()
        _finish(p)
        _finish(bystander)


def test_many_popens_at_once(tiny):
    procs = [tiny.popen(["sh", "-c", f"read x; echo {i}$x"], stdin=PIPE, stdout=PIPE)
             for i in range(20)]
    try:
        outs = [p.communicate(b"!\n", timeout=30)[0] for p in procs]
        assert outs == [f"{i}!\n".encode() for i in range(20)]
        assert all(p.returncode == 0 for p in procs)
    finally:
        for p in procs:
            _finish(p)


def test_close_sandbox_ends_popen(rootfs):
    s = Sandbox(rootfs)
    p = s.popen(["sleep", "1000"])
    s.close()
    assert p.wait(timeout=30) == -signal.SIGKILL
    assert s.closed


def test_popen_fds_closed_after_wait(tiny):
    import gc
    gc.collect()
    before = open_fds()
    for _ in range(5):
        p = tiny.popen(["cat"], stdin=PIPE, stdout=PIPE, stderr=PIPE)
        p.communicate(b"x", timeout=30)
        p = tiny.popen(["true"])
        p.wait(timeout=30)
    del p
    gc.collect()
    assert open_fds() == before


def test_kill_tree_wait_returns_once_the_whole_tree_is_gone(sb):
    """After kill_tree(), wait() returns when every process of the run is
    dead, not as soon as the command is."""
    from sbxutil import commands_in, pid_ns_of
    from test_run import CHAIN
    ns = pid_ns_of(sb)
    p = sb.popen(sh(CHAIN), stdout=PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        tree = commands_in(ns)
        assert len(tree) > 100
        # the last generation: the last to come back to the supervisor
        last = [pid for pid, comm in tree if comm == "sleep"]
        assert len(last) == 1, tree
        p.kill_tree()
        assert p.wait(timeout=30) == -signal.SIGKILL
        assert not os.path.exists(f"/proc/{last[0]}"), "the tree outlived wait()"
        left = commands_in(ns)
        assert left == [], left
    finally:
        p.stdout.close()
        _finish(p)
