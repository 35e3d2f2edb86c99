"""Errors: bad configuration fails before anything is created; commands that
cannot start raise what subprocess raises; a container that cannot be built
raises SetupError naming the step and the path, and leaves nothing behind."""
import errno
import math
import os
import subprocess
import time

import pytest

import pysandbox
from pysandbox import Bind, Sandbox, SandboxError, SetupError, Tmpfs

from sbxutil import IS_ROOT, child_pids, init_pids, open_fds, tree_snapshot, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, scope="module")
def _warm():
    """The engine keeps two fds per process (the sealed init, /dev/null),
    opened by the first sandbox: open them before any fd is counted."""
    Sandbox().close()


def _my_inits():
    """Sandbox inits started by this process (its direct children): other
    processes of this user may run sandboxes of their own meanwhile."""
    return set(init_pids()) & set(child_pids())


@pytest.fixture
def unchanged():
    """Asserts that no sandbox init was started (or left) and no child made."""
    before_inits = _my_inits()
    before_children = set(child_pids())
    yield
    assert _my_inits() == before_inits
    assert set(child_pids()) == before_children


def sh(script):
    return ["sh", "-c", script]


# -- construction: before anything is created --------------------------------

def test_missing_rootfs(tmp_path, unchanged, no_leaks):
    missing = str(tmp_path / "no-such-rootfs")
    with pytest.raises(FileNotFoundError) as ei:
        Sandbox(missing)
    assert ei.value.filename == missing
    assert missing in str(ei.value)
    with pytest.raises(FileNotFoundError):
        pysandbox.run(["true"], missing)


def test_rootfs_is_a_file(tmp_path, unchanged, no_leaks):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError) as ei:
        Sandbox(f)
    assert ei.value.filename == str(f)


@pytest.mark.parametrize("kind", ["absent", "dangling-symlink"])
def test_missing_bind_source(tmp_path, rootfs, unchanged, no_leaks, kind):
    missing = str(tmp_path / "no-such-source")
    if kind == "dangling-symlink":
        os.symlink(tmp_path / "nowhere", missing)
    with pytest.raises(FileNotFoundError) as ei:
        Sandbox(rootfs, mounts=[Bind(missing, "/mnt/x")])
    assert ei.value.filename == missing


@pytest.mark.parametrize("what", ["rootfs", "bind source"])
def test_unreachable_path_says_why(tmp_path, rootfs, unchanged, no_leaks, what):
    """A path that exists no further than a file on the way (ENOTDIR), or
    below a directory the caller cannot search (EACCES, as uid 65534), is
    not reported as missing: the error carries the real errno."""
    f = tmp_path / "file"
    f.write_text("x")
    cases = [(str(f / "below"), NotADirectoryError)]
    if os.geteuid() != 0:                  # (root searches any directory)
        locked = tmp_path / "locked"
        (locked / "inside").mkdir(parents=True)
        locked.chmod(0)
        cases.append((str(locked / "inside"), PermissionError))
    try:
        for path, exc in cases:
            with pytest.raises(exc) as ei:
                if what == "rootfs":
                    Sandbox(path)
                else:
                    Sandbox(rootfs, mounts=[Bind(path, "/mnt/x")])
            assert ei.value.filename == path
            assert f"{what} cannot be reached" in str(ei.value), ei.value
    finally:
        if os.geteuid() != 0:
            (tmp_path / "locked").chmod(0o755)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(network="bridge"), ValueError),
    (dict(network="NONE"), ValueError),
    (dict(network=None), ValueError),
    (dict(hostname=""), ValueError),
    (dict(hostname="-leading-dash"), ValueError),
    (dict(hostname="has space"), ValueError),
    (dict(hostname="a/b"), ValueError),
    (dict(hostname="x" * 64), ValueError),
    (dict(hostname="nul\0byte"), ValueError),
    (dict(hostname="h\u00e9"), ValueError),
    (dict(hostname=42), (ValueError, TypeError)),
    (dict(env={"A": "x\0y"}), ValueError),
    (dict(env={"A\0B": "x"}), ValueError),
    (dict(env={"A=B": "x"}), ValueError),
    (dict(env={"": "x"}), ValueError),
    (dict(env=["A=1"]), TypeError),
    (dict(cwd="/tm\0p"), ValueError),
    (dict(cwd="relative"), ValueError),
    (dict(cwd="/a/../b"), ValueError),
    (dict(rlimits={"bogus": 1}), ValueError),
    (dict(rlimits={"nofile": (100, 50)}), ValueError),
    (dict(rlimits={"nofile": -2}), ValueError),
    (dict(rlimits={"nofile": (1, 2, 3)}), ValueError),
    (dict(rlimits={"fsize": "12Q"}), ValueError),
    (dict(rlimits=[("nofile", 1)]), TypeError),
    (dict(mounts=["/tmp"]), TypeError),
    (dict(read_only="yes"), TypeError),
    (dict(memory="12Q"), ValueError),
    (dict(memory=-1), ValueError),
    (dict(pids=0), ValueError),
    (dict(cpus=float("nan")), ValueError),
    (dict(cpus=0), ValueError),
    (dict(seccomp="bogus"), ValueError),
])
def test_bad_config_raises_before_anything_is_created(rootfs, kwargs, exc, unchanged,
                                                      no_leaks):
    with pytest.raises(exc):
        Sandbox(rootfs, **kwargs)


@pytest.mark.parametrize("size", ["12Q", -1, 0, "0", "", "abc", "-5M", "1.5.5G"])
def test_tmpfs_bad_sizes(size):
    with pytest.raises(ValueError):
        Tmpfs("/scratch", size=size)


@pytest.mark.parametrize("size", [True, 1.5, [1]])
def test_tmpfs_size_types(size):
    with pytest.raises(TypeError):
        Tmpfs("/scratch", size=size)


@pytest.mark.parametrize("make", [
    lambda: Tmpfs("/"),
    lambda: Tmpfs("relative"),
    lambda: Tmpfs("/a/../b"),
    lambda: Tmpfs("/a\0b"),
    lambda: Bind("/tmp", "/"),
    lambda: Bind("/tmp", "rel"),
    lambda: Bind("/tmp", "/x/../../etc"),
    lambda: Bind("/t\0mp", "/x"),
])
def test_bad_mount_targets(make):
    with pytest.raises(ValueError):
        make()


def test_tmpfs_good_sizes_parse():
    assert Tmpfs("/a", size="1M").size == 1 << 20
    assert Tmpfs("/a", size="2g").size == 2 << 30
    assert Tmpfs("/a", size=4096).size == 4096


@pytest.mark.skipif(IS_ROOT, reason="root has writable cgroups here (tests/test_limits.py)")
@pytest.mark.parametrize("kwargs", [dict(memory="256M"), dict(pids=64), dict(cpus=0.5)])
def test_cgroup_limits_not_silently_ignored(rootfs, kwargs, unchanged, no_leaks):
    # a limit that cannot be enforced is refused, never dropped
    with pytest.raises(SetupError) as ei:
        Sandbox(rootfs, **kwargs)
    assert ei.value.errno


# -- run arguments: rejected before the command runs -------------------------

@pytest.fixture
def tiny(rootfs):
    with Sandbox(rootfs) as s:
        yield s


def _ran(s):
    return s.run(["stat", "/tmp/ran"], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL).returncode == 0


TOUCH = ["touch", "/tmp/ran"]


@pytest.mark.parametrize("args, kwargs, exc", [
    ([], {}, ValueError),
    ((), {}, ValueError),
    (TOUCH + ["a\0b"], {}, ValueError),
    ([b"touch", b"/tmp/ran", b"a\0b"], {}, ValueError),
    (TOUCH, dict(env={"A": "x\0"}), ValueError),
    (TOUCH, dict(env={"A\0": "x"}), ValueError),
    (TOUCH, dict(cwd="/tm\0p"), ValueError),
    (TOUCH, dict(cwd="tmp"), ValueError),
    (TOUCH, dict(timeout=-1), ValueError),
    (TOUCH, dict(timeout=-0.001), ValueError),
    (TOUCH, dict(timeout=math.nan), ValueError),
    (TOUCH, dict(timeout="5"), TypeError),
    (TOUCH, dict(rlimits={"bogus": 1}), ValueError),
    (TOUCH, dict(rlimits={"nofile": (10, 5)}), ValueError),
    (TOUCH, dict(max_output="12Q"), ValueError),
    (TOUCH, dict(max_output=-1), ValueError),
    (TOUCH, dict(input=b"x", stdin=subprocess.PIPE), ValueError),
    (TOUCH, dict(capture_output=True, stdout=subprocess.PIPE), ValueError),
    (TOUCH, dict(capture_output=True, stderr=subprocess.DEVNULL), ValueError),
    (TOUCH, dict(stdin=subprocess.STDOUT), ValueError),
    (TOUCH, dict(stdout=-5), ValueError),
    (TOUCH, dict(stdout="file"), TypeError),
    ([1, 2], {}, TypeError),
    (None, {}, TypeError),
])
def test_bad_run_arguments_run_nothing(tiny, args, kwargs, exc):
    fds = open_fds()
    with pytest.raises(exc):
        tiny.run(args, **kwargs)
    assert open_fds() == fds
    assert not _ran(tiny), "the command ran despite the error"
    assert tiny.run(TOUCH).returncode == 0   # the sandbox still works
    assert _ran(tiny)


def test_bad_popen_arguments(tiny):
    with pytest.raises(ValueError):
        tiny.popen([])
    with pytest.raises(ValueError):
        tiny.popen(TOUCH, env={"X": "\0"})
    assert not _ran(tiny)


# -- commands that cannot start inside ----------------------------------------

def _only_init_left(s):
    """Nothing left over from earlier (failed) runs: besides ps itself, only
    init and supervisors -- the one running ps and at most one idle spare
    (a third, forked while a busy machine let a request find none idle,
    leaves after a second without a run)."""
    def look():
        out = s.run(["ps", "-e", "-o", "pid=,comm="], capture_output=True, text=True).stdout
        procs = [line.split(None, 1) for line in out.splitlines()]
        others = [p for p in procs if p[1] not in ("pysandbox-init", "pysandbox-run", "ps")]
        return others, [p for p in procs if p[1] == "pysandbox-run"]
    others, _ = look()
    return others == [] and wait_until(lambda: len(look()[1]) <= 2, 10)


def test_command_missing_inside(tiny):
    # python3 exists on the host, not in the tiny rootfs
    for cmd in ("python3", "pysandbox-no-such-command"):
        with pytest.raises(FileNotFoundError) as ei:
            tiny.run([cmd, "-c", "pass"])
        assert ei.value.filename == cmd
        assert ei.value.errno == errno.ENOENT
        assert isinstance(ei.value, OSError)
        assert cmd in str(ei.value)
    with pytest.raises(FileNotFoundError) as ei:
        tiny.run(["/usr/bin/python3"])
    assert ei.value.filename == "/usr/bin/python3"
    with pytest.raises(FileNotFoundError) as ei:
        tiny.popen(["/bin/nope"], stdout=subprocess.PIPE)
    assert ei.value.filename == "/bin/nope"
    assert _only_init_left(tiny)


def test_command_missing_in_path(tiny):
    with pytest.raises(FileNotFoundError) as ei:
        tiny.run(["sh"], env={"PATH": "/nonexistent:/also-not"})
    assert ei.value.filename == "sh"


def test_non_executable_file(no_leaks, tiny):
    r = tiny.run(sh("printf '#!/bin/sh\\necho hi\\n' > /tmp/script; chmod 644 /tmp/script"))
    assert r.returncode == 0
    with pytest.raises(PermissionError) as ei:
        tiny.run(["/tmp/script"], capture_output=True)
    assert ei.value.filename == "/tmp/script"
    assert ei.value.errno == errno.EACCES
    # found through PATH but not executable: EACCES too, as execvp does
    with pytest.raises(PermissionError) as ei:
        tiny.run(["script"], env={"PATH": "/tmp"})
    assert ei.value.filename == "script"
    # a directory cannot be executed either
    with pytest.raises(PermissionError):
        tiny.run(["/tmp"])
    # the same file made executable runs: the error was really about the mode
    tiny.run(["chmod", "755", "/tmp/script"], check=True)
    assert tiny.run(["/tmp/script"], capture_output=True).stdout == b"hi\n"
    assert _only_init_left(tiny)


def test_non_executable_file_in_bind(tmp_path, rootfs, no_leaks):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(d / "tool", 0o644)
    with Sandbox(rootfs, mounts=[Bind(str(d), "/opt/bin")]) as s:
        with pytest.raises(PermissionError) as ei:
            s.run(["/opt/bin/tool"])
        assert ei.value.filename == "/opt/bin/tool"
        assert s.run(["cat", "/opt/bin/tool"], capture_output=True).stdout.startswith(b"#!")


def test_missing_cwd_inside(tiny):
    with pytest.raises(FileNotFoundError) as ei:
        tiny.run(["true"], cwd="/no/such/dir")
    assert ei.value.filename == "/no/such/dir"
    with pytest.raises(NotADirectoryError) as ei:
        tiny.run(["true"], cwd="/canary")
    assert ei.value.filename == "/canary"
    assert _only_init_left(tiny)


def test_missing_sandbox_cwd(rootfs, no_leaks):
    with Sandbox(rootfs, cwd="/no-such-default") as s:
        with pytest.raises(FileNotFoundError) as ei:
            s.run(["true"])
        assert ei.value.filename == "/no-such-default"
        assert s.run(["pwd"], cwd="/", capture_output=True).stdout == b"/\n"


def test_exec_error_with_check_and_capture(tiny):
    # the exec error wins: no CalledProcessError, no returncode 127
    with pytest.raises(FileNotFoundError):
        tiny.run(["nope"], check=True, capture_output=True, input=b"x", timeout=10)


# -- closed sandbox ------------------------------------------------------------

def test_run_on_closed_sandbox(rootfs, no_leaks):
    s = Sandbox(rootfs)
    assert not s.closed
    s.close()
    assert s.closed
    fds = open_fds()
    with pytest.raises(SandboxError):
        s.run(["true"])
    with pytest.raises(SandboxError):
        s.popen(["true"], stdout=subprocess.PIPE)
    with pytest.raises(SandboxError):
        s.run(["cat"], input=b"x", capture_output=True)
    assert open_fds() == fds
    s.close()   # idempotent
    assert s.closed


def test_run_after_with_block(rootfs, no_leaks):
    with Sandbox(rootfs) as s:
        assert s.run(["true"]).returncode == 0
    with pytest.raises(SandboxError):
        s.run(["true"])


# -- SetupError: the container cannot be built ---------------------------------

@pytest.mark.parametrize("mount, step_words, path, err", [
    # a mount target below a regular file
    ("bind-under-file", "mount target", "/canary/x", errno.ENOTDIR),
    ("tmpfs-under-file", "mount target", "/canary/x", errno.ENOTDIR),
    # a directory mounted onto a regular file
    ("bind-dir-on-file", "mount", "/canary", None),
    ("tmpfs-on-file", "mount", "/canary", None),
    # proc does not let anyone create directories
    ("tmpfs-in-proc", "mount target", "/proc/sys/pysandbox", None),
])
def test_setup_error(tmp_path, rootfs, mount, step_words, path, err, unchanged, no_leaks):
    src = tmp_path / "src"
    src.mkdir()
    m = {
        "bind-under-file": Bind(str(src), "/canary/x"),
        "tmpfs-under-file": Tmpfs("/canary/x"),
        "bind-dir-on-file": Bind(str(src), "/canary"),
        "tmpfs-on-file": Tmpfs("/canary"),
        "tmpfs-in-proc": Tmpfs("/proc/sys/pysandbox"),
    }[mount]
    snap = tree_snapshot(rootfs)
    with pytest.raises(SetupError) as ei:
        Sandbox(rootfs, mounts=[m])
    e = ei.value
    assert isinstance(e, OSError) and isinstance(e, SandboxError)
    assert isinstance(e.errno, int) and e.errno > 0
    if err is not None:
        assert e.errno == err
        assert os.strerror(err) in str(e)
    assert step_words in e.step
    assert e.step in str(e)
    assert path in str(e)
    assert path in e.filename
    # the rootfs on disk is untouched by the failed build
    assert tree_snapshot(rootfs) == snap


@pytest.mark.parametrize("io", [{}, {"capture_output": True}, {"input": b"x" * 100000},
                                {"stdout": subprocess.PIPE, "timeout": 5}])
def test_setup_error_one_shot_run(rootfs, io, unchanged, no_leaks):
    # pysandbox.run() queues its request (with the run's pipes) while init
    # is still building: a build that fails raises the setup error, not a
    # run error, and the queued request takes nothing with it
    with pytest.raises(SetupError) as ei:
        pysandbox.run(["cat"], rootfs, mounts=[Tmpfs("/canary/x")], **io)
    assert ei.value.errno == errno.ENOTDIR
    assert "/canary/x" in str(ei.value)


def test_setup_error_one_shot_run_init_gone_before_the_send(rootfs, monkeypatch, unchanged,
                                                            no_leaks):
    # the request is built while init builds: an init whose build failed
    # and that is gone before the request is sent still has its error read
    # (not "the sandbox init is gone")
    real_argv = pysandbox._runner._argv

    def slow_argv(args):
        time.sleep(0.3)
        return real_argv(args)
    monkeypatch.setattr(pysandbox._runner, "_argv", slow_argv)
    with pytest.raises(SetupError) as ei:
        pysandbox.run(["true"], rootfs, mounts=[Tmpfs("/canary/x")])
    assert ei.value.errno == errno.ENOTDIR
    assert "/canary/x" in str(ei.value)


def test_id_map_refused_is_a_setup_error(monkeypatch, no_leaks):
    # the kernel refuses the id map: the parent gives up on the child that
    # waits for it, which must see EOF and exit (it held a copy of the pipe's
    # write end and waited for ever), and the error names the file
    monkeypatch.setattr(pysandbox._plan, "id_maps", lambda: (b"0 0 0\n", b"0 0 0\n", False))
    with pytest.raises(SetupError) as ei:
        Sandbox()
    assert ei.value.errno == errno.EINVAL
    assert "gid_map" in str(ei.value)


def test_setup_error_on_default_root(unchanged, no_leaks):
    # /etc/passwd is a file bound into the default root
    with pytest.raises(SetupError) as ei:
        Sandbox(mounts=[Tmpfs("/etc/passwd/x")])
    assert ei.value.errno == errno.ENOTDIR
    assert "/etc/passwd/x" in str(ei.value)


def test_setup_errors_repeated_do_not_accumulate(rootfs, unchanged, no_leaks):
    fds = open_fds()
    for _ in range(10):
        with pytest.raises(SetupError):
            Sandbox(rootfs, mounts=[Tmpfs("/canary/x")])
    assert open_fds() == fds
    with Sandbox(rootfs) as s:   # and a good one still builds
        assert s.run(["cat", "/canary"], capture_output=True).stdout == b"original\n"


def test_plan_too_large_for_one_message_is_refused_first(unchanged, no_leaks):
    """The mount plan travels to init in one message: one larger than a
    socket can carry is a ValueError before anything is made (it was an
    OSError EMSGSIZE once init existed)."""
    mounts = [Tmpfs(f"/m/{i:060d}") for i in range(3000)]
    with pytest.raises(ValueError, match="more than one message to its init can carry"):
        Sandbox(mounts=mounts)
    with pytest.raises(ValueError, match="more than one message"):
        pysandbox.run(["true"], mounts=mounts)
