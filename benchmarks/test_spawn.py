"""Spawn latency: pysandbox against subprocess.run, measured in the same run.

Group "spawn" (always): subprocess baselines, warm runs on an open Sandbox,
cold one-shot pysandbox.run (full isolation, and network="host"), a
SandboxPool checkout + run, and the anchors (bwrap, unshare, crun, runc)
when installed, on the busybox rootfs of setup-anchors.sh next to a cold
pysandbox run on that same rootfs.

Groups "spawn-parent-<N>GB" (PYSANDBOX_BENCH_BIG=1; sizes from
PYSANDBOX_BENCH_BIG_GB, default 0.5,2): the subprocess / warm / cold / pool
rows, plus a plain os.fork anchor, while this process holds that much
touched memory: the sandbox spawn is vfork-style, so its cost must not grow
with the parent's memory (the fork anchor shows what a real fork costs).

Each benchmarked call's result is checked, so `--benchmark-disable` (one
call each) is a fast smoke test of every path.
"""
import os
import subprocess

import pytest

import pysandbox
from pysandbox import Sandbox, SandboxPool
from benchutil import (TRUE, bench, big_group, fork_exec_true, ok, sandbox_ok,
                       subprocess_true)

WARM_ROUNDS, WARM_WARMUP = 200, 20
COLD_ROUNDS, COLD_WARMUP = 100, 10
FORK_ROUNDS, FORK_WARMUP = 50, 5
RUNC_ROUNDS, RUNC_WARMUP = 40, 4

GROUP = "spawn"
POOL_SIZE = 2


def _subprocess_echo():
    return subprocess.run(["echo", "hi"], capture_output=True)


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


@pytest.fixture
def pool(rootfs):
    with SandboxPool(POOL_SIZE, rootfs) as p:
        with p.sandbox(timeout=30) as s:
            assert s.run(["hostname"], capture_output=True, timeout=10).stdout == b"sandbox\n"
        assert p.wait_ready(30)
        yield p


def _pool_run(pool):
    pids = []

    def run():
        with pool.sandbox(timeout=30) as s:
            pids.append(s.pid)
            return s.run([TRUE])
    return run, pids


# -- group "spawn" ---------------------------------------------------------

@pytest.mark.benchmark(group=GROUP)
def test_subprocess_true(benchmark):
    ok(bench(benchmark, subprocess_true, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
             label="subprocess.run(['/bin/true'])"))


@pytest.mark.benchmark(group=GROUP)
def test_subprocess_echo_capture(benchmark):
    r = bench(benchmark, _subprocess_echo, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
              label="subprocess.run(['echo','hi'], capture_output=True)")
    assert ok(r).stdout == b"hi\n"


@pytest.mark.benchmark(group=GROUP)
def test_fork_exec_true(benchmark):
    rc = bench(benchmark, fork_exec_true, rounds=FORK_ROUNDS, warmup=FORK_WARMUP,
               label="anchor: os.fork + execv /bin/true")
    assert rc == 0


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("warm_sandbox", [None, "tiny"], indirect=True,
                         ids=["default_root", "tiny_rootfs"])
def test_warm_true(benchmark, warm_sandbox, request):
    which = request.node.callspec.id
    r = bench(benchmark, lambda: warm_sandbox.run([TRUE]),
              rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
              label=f"warm s.run(['/bin/true']) [{which}]")
    sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("warm_sandbox", ["tiny"], indirect=True, ids=["tiny_rootfs"])
def test_warm_echo_capture(benchmark, warm_sandbox):
    r = bench(benchmark,
              lambda: warm_sandbox.run(["echo", "hi"], capture_output=True),
              rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
              label="warm s.run(['echo','hi'], capture_output=True)",
              baseline="test_subprocess_echo_capture")
    assert sandbox_ok(r).stdout == b"hi\n"


@pytest.mark.benchmark(group=GROUP)
def test_cold_true(benchmark, rootfs):
    r = bench(benchmark, lambda: pysandbox.run([TRUE], rootfs),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label="cold pysandbox.run(['/bin/true'], rootfs)")
    sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_cold_true_network_host(benchmark, rootfs):
    r = bench(benchmark,
              lambda: pysandbox.run([TRUE], rootfs, network="host"),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label="cold pysandbox.run(..., rootfs, network='host')")
    sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_cold_true_default_root(benchmark):
    r = bench(benchmark, lambda: pysandbox.run([TRUE]),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label="cold pysandbox.run(['/bin/true']) [rootfs=None]")
    sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_cold_true_anchor_rootfs(benchmark, anchor_rootfs):
    path, what = anchor_rootfs
    r = bench(benchmark, lambda: pysandbox.run([TRUE], path),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label=f"cold pysandbox.run(['/bin/true']) [{what}, as anchors]")
    sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_pool_checkout_run(benchmark, pool):
    """A checkout from a ready pool, one run, the check-in (the sandbox is
    killed; reaping and the replacement happen in the pool's thread, after
    the round: the setup waits for the pool to be full again, untimed)."""
    run, pids = _pool_run(pool)
    r = bench(benchmark, run, rounds=COLD_ROUNDS, warmup=COLD_WARMUP, setup=pool.wait_ready,
              label=f"pool checkout + run + check-in (pool of {POOL_SIZE} ready)")
    sandbox_ok(r)
    assert len(set(pids)) == len(pids)     # a fresh sandbox every round


@pytest.mark.benchmark(group=GROUP)
def test_warm_after_pool_refill(benchmark, pool, rootfs):
    """The pool row's baseline: a warm run in a long-lived sandbox, timed in
    the state the pool row is timed in -- right after the pool has rebuilt a
    sandbox (untimed setup: one checkout and check-in, then the wait).  On a
    VM a run that follows a pause or another process's burst of work is
    slower than one in a tight loop (subprocess.run too), so the tight-loop
    warm row alone would charge that to the pool."""
    with Sandbox(rootfs) as s:
        for _ in range(WARM_WARMUP):
            s.run([TRUE])

        def refilled():
            with pool.sandbox(timeout=30):
                pass
            pool.wait_ready(30)
        r = bench(benchmark, lambda: s.run([TRUE]), rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
                  setup=refilled, label="warm s.run(['/bin/true']) after the pool's refill wait")
        sandbox_ok(r)


@pytest.mark.benchmark(group=GROUP)
def test_pool_checkout_run_back_to_back(benchmark, pool):
    """The same, back to back: the pool's one thread must rebuild a sandbox
    per round, so this is bound by the cold build (throughput, not latency)."""
    run, pids = _pool_run(pool)
    r = bench(benchmark, run, rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label=f"pool checkout + run + check-in, back to back (pool of {POOL_SIZE})")
    sandbox_ok(r)
    assert len(set(pids)) == len(pids)


def _anchor_test(benchmark, anchor_set, anchor_rootfs, name):
    found, skipped = anchor_set
    if name not in found:
        pytest.skip(skipped.get(name, f"{name} not available"))
    a = found[name]
    rounds, warmup = (RUNC_ROUNDS, RUNC_WARMUP) if name == "runc" else (COLD_ROUNDS, COLD_WARMUP)
    rc = bench(benchmark, a.run_once, rounds=rounds, warmup=warmup,
               label=f"anchor: {a.label} [{anchor_rootfs[1]}]")
    if a.note:
        benchmark.extra_info["note"] = a.note
    assert rc == 0


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", ["bwrap", "unshare", "crun", "runc"])
def test_anchor(benchmark, anchor_set, anchor_rootfs, name):
    _anchor_test(benchmark, anchor_set, anchor_rootfs, name)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_crun_launcher_round_trip(benchmark, anchor_set):
    """What the crun workaround adds to each crun round: the launcher's pipe
    round trip plus its subprocess.run, here of a plain /bin/true."""
    found, skipped = anchor_set
    a = found.get("crun")
    if a is None:
        pytest.skip(skipped.get("crun", "crun not available"))
    if a.launcher is None:
        pytest.skip("crun runs directly here (no hybrid-cgroup launcher)")
    rc = bench(benchmark, lambda: a.launcher.run([TRUE])[0], rounds=WARM_ROUNDS,
               warmup=WARM_WARMUP,
               label="  (crun launcher overhead: round trip running /bin/true)")
    assert rc == 0


# -- groups "spawn-parent-<N>GB" (PYSANDBOX_BENCH_BIG=1) ---------------------
# The memory is held by a class-scoped fixture, so it is freed when the
# class ends; the warm sandbox and the pool are made while it is held.

@pytest.mark.usefixtures("big_parent")
class TestBigParent:

    @pytest.fixture(autouse=True)
    def _group(self, big_parent, benchmark):
        benchmark.group = big_group(big_parent)

    def test_subprocess_true(self, benchmark):
        ok(bench(benchmark, subprocess_true, rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                 label="subprocess.run(['/bin/true'])", compare_to_group=GROUP))

    @pytest.mark.parametrize("warm_sandbox", ["tiny"], indirect=True, ids=["tiny_rootfs"])
    def test_warm_true(self, benchmark, warm_sandbox):
        r = bench(benchmark, lambda: warm_sandbox.run([TRUE]),
                  rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                  label="warm s.run(['/bin/true']) [tiny_rootfs]",
                  compare_to_group=GROUP)
        sandbox_ok(r)

    def test_cold_true(self, benchmark, rootfs):
        r = bench(benchmark, lambda: pysandbox.run([TRUE], rootfs),
                  rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
                  label="cold pysandbox.run(['/bin/true'], rootfs)",
                  compare_to_group=GROUP)
        sandbox_ok(r)

    def test_pool_checkout_run(self, benchmark, pool):
        run, pids = _pool_run(pool)
        r = bench(benchmark, run, rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
                  setup=pool.wait_ready,
                  label=f"pool checkout + run + check-in (pool of {POOL_SIZE} ready)",
                  compare_to_group=GROUP)
        sandbox_ok(r)
        assert len(set(pids)) == len(pids)

    # last: forking a big parent leaves work behind (copied page tables,
    # copy-on-write faults) that would disturb the rows measured after it
    def test_fork_exec_true(self, benchmark):
        rc = bench(benchmark, fork_exec_true, rounds=FORK_ROUNDS, warmup=FORK_WARMUP,
                   label="anchor: os.fork + execv /bin/true", compare_to_group=GROUP)
        assert rc == 0


def test_bench_command_table():
    """`pysandbox bench` (not timed here): every row measured, the pool row
    with its baseline, ratios against subprocess.run."""
    from pysandbox import bench as bench_cli
    rows, skipped = bench_cli.run_bench(2)
    names = {r["name"] for r in rows}
    assert {"subprocess", "warm", "cold", "cold-net-host", "pool",
            "warm-after-refill", "subprocess-echo", "warm-echo"} <= names, (names, skipped)
    assert all(r["ratio"] and r["median"] > 0 and r["rounds"] >= 1 for r in rows)
    assert not [k for k, why in skipped.items() if why.startswith("failed")], skipped
    table = bench_cli.format_table(rows, skipped)
    assert "pool checkout + run" in table
    assert "x subprocess.run(['echo','hi'], capture_output=True), timed in turn" in table, table


def test_bench_command_a_failing_row_spares_its_pair(monkeypatch):
    """Rows measured in turn with another (warm with subprocess.run): one
    that fails is reported failed alone; the other is still measured."""
    from pysandbox import bench as bench_cli
    real = bench_cli._cases

    def cases(*args, **kwargs):
        rows, skipped = real(*args, **kwargs)

        def fails():
            raise RuntimeError("this row fails")
        return [(r[0], r[1], fails) + tuple(r[3:]) if r[0] == "warm" else r
                for r in rows], skipped
    monkeypatch.setattr(bench_cli, "_cases", cases)
    rows, skipped = bench_cli.run_bench(2)
    names = {r["name"] for r in rows}
    assert "subprocess" in names and "warm" not in names, (names, skipped)
    assert skipped["warm"] == "failed: this row fails"
    assert all(r["ratio"] for r in rows)
    table = bench_cli.format_table(rows, skipped)
    assert "(subprocess: timed alone: warm, timed in turn with it, failed)" in table, table
    bench_cli.NOTES.pop("subprocess", None)


def test_bench_command_writes_the_chart(tmp_path, capsys):
    """`pysandbox bench --png FILE`: a PNG with a bar per row, pysandbox's
    rows in their own colour (the pool's baseline row included), the
    baseline and the anchors in theirs."""
    pytest.importorskip("matplotlib")
    from pysandbox import bench as bench_cli
    png = tmp_path / "bench.png"
    assert bench_cli.main(["--rounds", "1", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"chart: {png}" in out, out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, len(data)
    rows, _ = bench_cli.run_bench(1)
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["subprocess"] == kinds["subprocess-echo"] == "baseline"
    assert {n for n, k in kinds.items() if k == "pysandbox"} >= {
        "warm", "warm-echo", "cold", "cold-net-host", "pool", "warm-after-refill"}, kinds
    assert all(k == "anchor" for n, k in kinds.items()
               if n in ("bwrap", "crun", "runc", "unshare")), kinds
    assert all(r["kind"] == "pysandbox" for r in rows
               if r["label"].startswith("pysandbox")), rows


def test_bench_command_without_matplotlib_measures_nothing(monkeypatch, tmp_path, capsys):
    """--png without matplotlib is refused before any row is measured."""
    from pysandbox import bench as bench_cli
    monkeypatch.setattr(bench_cli, "_have_matplotlib", lambda: False)

    def measured(*args, **kwargs):
        raise AssertionError("a row was measured")
    monkeypatch.setattr(bench_cli, "run_bench", measured)
    png = tmp_path / "bench.png"
    assert bench_cli.main(["--rounds", "1", "--png", str(png)]) == 2
    assert "--png needs matplotlib" in capsys.readouterr().err
    assert not png.exists()


def test_bench_file_runs_without_the_package(tmp_path):
    """setup-anchors.sh runs bench.py as a file with root's python3, which
    may not import pysandbox (installed in a venv, or a checkout not
    built): bench.py needs only the standard library until it measures."""
    import shutil
    import sys
    from pysandbox import bench as bench_cli
    alone = tmp_path / "bench.py"
    shutil.copy(bench_cli.__file__, alone)
    env = dict(os.environ, PYSANDBOX_BENCH_ROOTFS=str(tmp_path / "none"))
    env.pop("PYTHONPATH", None)
    # (the package made unimportable, installed or not)
    run_alone = ("import runpy, sys; sys.modules['pysandbox'] = None; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-I", "-c", run_alone, str(alone), "--check-anchors"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "no busybox rootfs at" in r.stderr, r


def test_bench_through_the_cli():
    """`pysandbox bench` (the console script's route) measures and prints
    the rows; --json gives them with their kind and ratio."""
    import json
    import sys
    r = subprocess.run([sys.executable, "-m", "pysandbox", "bench", "--rounds", "1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    assert {"subprocess", "warm", "cold", "pool"} <= set(rows), rows
    assert rows["subprocess"]["ratio"] == 1.0 and rows["warm"]["kind"] == "pysandbox"
