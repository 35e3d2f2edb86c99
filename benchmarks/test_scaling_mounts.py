"""Scaling: latency against the number of bind mounts (0, 10, 100 read-only
Binds of small directories), cold (open + run + close: the mounts are made
at open) and warm (a run in a sandbox that has them: should not move)."""

import pytest

import pysandbox
from pysandbox import Bind, Sandbox
from benchutil import TRUE, bench, sandbox_ok

COLD_ROUNDS, COLD_WARMUP = 60, 6
WARM_ROUNDS, WARM_WARMUP = 200, 20
COUNTS = (0, 10, 100)


@pytest.fixture(scope="module")
def bind_dirs(tmp_path_factory):
    """100 small directories (one file each) to bind."""
    base = tmp_path_factory.mktemp("binds")
    binds = []
    for i in range(max(COUNTS)):
        d = base / f"d{i}"
        d.mkdir()
        (d / "f").write_text(f"{i}\n")
        binds.append(Bind(str(d), f"/mnt/b{i}"))
    return binds


def _check_mounted(rootfs, binds):
    """The binds really are there (what the benchmark measures)."""
    n = len(binds)
    r = pysandbox.run(["sh", "-c", "ls /mnt 2>/dev/null | wc -l; "
                       + (f"cat /mnt/b{n - 1}/f" if n else "true")],
                      rootfs, mounts=binds, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r
    assert r.stdout.split() == ([str(n), str(n - 1)] if n else ["0"]), r.stdout


@pytest.mark.benchmark(group="scaling-bind-mounts-cold")
@pytest.mark.parametrize("n", COUNTS)
def test_cold_bind_mounts(benchmark, rootfs, bind_dirs, n):
    binds = bind_dirs[:n]
    _check_mounted(rootfs, binds)
    r = bench(benchmark, lambda: pysandbox.run([TRUE], rootfs, mounts=binds),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label=f"cold pysandbox.run(['/bin/true'], rootfs), {n:3d} binds",
              baseline="test_cold_bind_mounts[0]")
    sandbox_ok(r)


@pytest.mark.benchmark(group="scaling-bind-mounts-warm")
@pytest.mark.parametrize("n", (0, 100))
def test_warm_bind_mounts(benchmark, rootfs, bind_dirs, n):
    binds = bind_dirs[:n]
    _check_mounted(rootfs, binds)
    with Sandbox(rootfs, mounts=binds) as s:
        r = bench(benchmark, lambda: s.run([TRUE]), rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                  label=f"warm s.run(['/bin/true']), {n:3d} binds",
                  baseline="test_warm_bind_mounts[0]")
    sandbox_ok(r)
