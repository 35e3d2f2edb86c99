"""Spawn latency: pysandbox against subprocess.run, measured in the same run.

Group "spawn" (always): subprocess baselines, warm runs on an open Sandbox,
cold one-shot pysandbox.run, and bwrap / unshare anchors when installed.

Group "spawn-parent-2GB" (PYSANDBOX_BENCH_BIG=1): the subprocess / warm /
cold trio, plus a plain os.fork anchor, while this process holds ~2 GB of
touched memory: the sandbox spawn is vfork-style, so its cost must not grow
with the parent's memory (the fork anchor shows what a real fork costs).

Each benchmarked call's result is checked, so `--benchmark-disable` (one
call each) is a fast smoke test of every path.
"""
import os
import shutil
import subprocess

import pytest

import pysandbox
from pysandbox import Sandbox, SandboxResult


WARM_ROUNDS, WARM_WARMUP = 200, 20
COLD_ROUNDS, COLD_WARMUP = 100, 10
FORK_ROUNDS, FORK_WARMUP = 50, 5

GROUP = "spawn"
BIG_GROUP = "spawn-parent-2GB"

BWRAP = shutil.which("bwrap")
UNSHARE = shutil.which("unshare")


def vm_rss():
    """Resident set size of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _bench(benchmark, fn, *, rounds, warmup, label, baseline=None,
           compare_to_group=None):
    benchmark.extra_info["label"] = label
    benchmark.extra_info["parent_rss_mb"] = vm_rss() >> 20
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    if compare_to_group:
        benchmark.extra_info["compare_to_group"] = compare_to_group
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)


def _subprocess_true():
    return subprocess.run(["/bin/true"])


def _subprocess_echo():
    return subprocess.run(["echo", "hi"], capture_output=True)


def _fork_exec_true():
    pid = os.fork()
    if pid == 0:   # child: exec at once, never return into pytest
        try:
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _ok(result):
    assert result.returncode == 0, result
    return result


def _sandbox_ok(result):
    assert isinstance(result, SandboxResult), type(result)
    assert result.returncode == 0, result
    assert result.wall_time > 0, result
    return result


@pytest.fixture
def warm_sandbox(request):
    """An open Sandbox (param: "tiny" rootfs or None), checked to really be
    a container before it is measured."""
    root = request.getfixturevalue("rootfs") if request.param == "tiny" else None
    with Sandbox(root) as s:
        r = s.run(["hostname"], capture_output=True, timeout=10)
        assert r.stdout == b"sandbox\n", r
        pid = s.pid
        yield s
        # every measured run went to the same init: they really were warm
        assert s.pid == pid and not s.closed


# -- group "spawn" ---------------------------------------------------------

@pytest.mark.benchmark(group=GROUP)
def test_subprocess_true(benchmark):
    _ok(_bench(benchmark, _subprocess_true, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
               label="subprocess.run(['/bin/true'])"))


@pytest.mark.benchmark(group=GROUP)
def test_subprocess_echo_capture(benchmark):
    r = _bench(benchmark, _subprocess_echo, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
               label="subprocess.run(['echo','hi'], capture_output=True)")
    assert _ok(r).stdout == b"hi\n"


@pytest.mark.benchmark(group=GROUP)
def test_fork_exec_true(benchmark):
    rc = _bench(benchmark, _fork_exec_true, rounds=FORK_ROUNDS, warmup=FORK_WARMUP,
                label="anchor: os.fork + execv /bin/true")
    assert rc == 0


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("warm_sandbox", [None, "tiny"], indirect=True,
                         ids=["default_root", "tiny_rootfs"])
def test_warm_true(benchmark, warm_sandbox, request):
    which = request.node.callspec.id
    r = _bench(benchmark, lambda: warm_sandbox.run(["/bin/true"]),
               rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
               label=f"warm s.run(['/bin/true']) [{which}]")
    _sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("warm_sandbox", ["tiny"], indirect=True, ids=["tiny_rootfs"])
def test_warm_echo_capture(benchmark, warm_sandbox):
    r = _bench(benchmark,
               lambda: warm_sandbox.run(["echo", "hi"], capture_output=True),
               rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
               label="warm s.run(['echo','hi'], capture_output=True)",
               baseline="test_subprocess_echo_capture")
    assert _sandbox_ok(r).stdout == b"hi\n"


@pytest.mark.benchmark(group=GROUP)
def test_cold_true(benchmark, rootfs):
    r = _bench(benchmark, lambda: pysandbox.run(["/bin/true"], rootfs),
               rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
               label="cold pysandbox.run(['/bin/true'], rootfs)")
    _sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_cold_true_network_host(benchmark, rootfs):
    r = _bench(benchmark,
               lambda: pysandbox.run(["/bin/true"], rootfs, network="host"),
               rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
               label="cold pysandbox.run(..., rootfs, network='host')")
    _sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_cold_true_default_root(benchmark):
    r = _bench(benchmark, lambda: pysandbox.run(["/bin/true"]),
               rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
               label="cold pysandbox.run(['/bin/true']) [rootfs=None]")
    _sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.skipif(BWRAP is None, reason="bwrap (bubblewrap) not installed")
def test_anchor_bwrap(benchmark, rootfs):
    argv = [BWRAP, "--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc",
            "--dev", "/dev", "/bin/true"]
    r = _bench(benchmark, lambda: subprocess.run(argv, capture_output=True),
               rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
               label="anchor: bwrap --unshare-all --ro-bind rootfs /")
    _ok(r)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) not installed")
def test_anchor_unshare(benchmark, rootfs):
    argv = [UNSHARE, "--user", "--map-root-user", "--mount", "--pid", "--fork",
            "--uts", "--ipc", "--net", "--cgroup", "--mount-proc",
            f"--root={rootfs}", "/bin/true"]
    r = _bench(benchmark, lambda: subprocess.run(argv, capture_output=True),
               rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
               label="anchor: unshare (user,mnt,pid,uts,ipc,net,cgroup) --root")
    _ok(r)


# -- group "spawn-parent-2GB" (PYSANDBOX_BENCH_BIG=1) ----------------------
# The memory is held by a class-scoped fixture, so it is freed when the
# class ends; the warm sandbox is opened while the memory is held.

@pytest.mark.usefixtures("big_parent")
class TestBigParent:

    @pytest.mark.benchmark(group=BIG_GROUP)
    def test_subprocess_true(self, benchmark):
        _ok(_bench(benchmark, _subprocess_true, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                   label="subprocess.run(['/bin/true'])", compare_to_group=GROUP))

    @pytest.mark.benchmark(group=BIG_GROUP)
    def test_fork_exec_true(self, benchmark):
        rc = _bench(benchmark, _fork_exec_true, rounds=FORK_ROUNDS, warmup=FORK_WARMUP,
                    label="anchor: os.fork + execv /bin/true", compare_to_group=GROUP)
        assert rc == 0

    @pytest.mark.benchmark(group=BIG_GROUP)
    @pytest.mark.parametrize("warm_sandbox", ["tiny"], indirect=True, ids=["tiny_rootfs"])
    def test_warm_true(self, benchmark, warm_sandbox):
        r = _bench(benchmark, lambda: warm_sandbox.run(["/bin/true"]),
                   rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                   label="warm s.run(['/bin/true']) [tiny_rootfs]",
                   compare_to_group=GROUP)
        _sandbox_ok(r)

    @pytest.mark.benchmark(group=BIG_GROUP)
    def test_cold_true(self, benchmark, rootfs):
        r = _bench(benchmark, lambda: pysandbox.run(["/bin/true"], rootfs),
                   rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
                   label="cold pysandbox.run(['/bin/true'], rootfs)",
                   compare_to_group=GROUP)
        _sandbox_ok(r)
