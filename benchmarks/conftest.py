"""Fixtures for the benchmarks, and the ratio summary printed after
pytest-benchmark's table.

The tiny rootfs is the one the tests use (tests/sbxutil.py:build_rootfs).
The anchors (bwrap, unshare, crun, runc) and the row that compares with them
run on the busybox rootfs that benchmarks/setup-anchors.sh builds, when it
is there (pysandbox/bench.py finds it), else on the tiny rootfs.
"""
import gc
import os
import shutil
import sys
import tempfile

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))

sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))
from sbxutil import build_rootfs, child_pids, init_pids  # noqa: E402

from benchutil import BIG_ENV, big_sizes_gb, vm_rss  # noqa: E402


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory):
    return build_rootfs(str(tmp_path_factory.mktemp("bench-rootfs")))


@pytest.fixture(scope="session")
def anchor_rootfs(rootfs):
    """(path, name): the busybox rootfs of setup-anchors.sh, or the tiny
    rootfs when that was not built."""
    from pysandbox.bench import anchor_rootfs as find
    path = find()
    return (path, "busybox rootfs") if path else (rootfs, "tiny rootfs")


@pytest.fixture(scope="session")
def anchor_set(anchor_rootfs):
    """{name: Anchor} of the installed anchors, and {name: why} of the
    others; their state (OCI bundles, crun/runc state) is removed at the end."""
    from pysandbox.bench import anchors
    workdir = tempfile.mkdtemp(prefix="pysandbox-bench-")
    found, skipped = anchors(anchor_rootfs[0], workdir)
    yield {a.name: a for a in found}, skipped
    for a in found:
        a.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _nothing_left_behind(request):
    """Every benchmark must clean up after itself: hundreds of cold runs
    that each left an init (or a zombie) behind would also skew the rows
    measured after them.  Checked after the test's own fixtures (the warm
    sandbox) are torn down."""
    def check():
        gc.collect()
        assert init_pids() == [], "sandbox init left running"
        kids = [p for p in child_pids() if not _is_session_helper(p)]
        assert kids == [], "child process (or zombie) left behind"
    request.addfinalizer(check)


def _is_session_helper(pid):
    """The crun launcher (pysandbox/bench.py) lives for the whole session."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"/sys/fs/cgroup/unified" in b" ".join(argv) or (
        argv[0].endswith(b"unshare") and b"--propagation" in argv)


@pytest.fixture(scope="class", params=big_sizes_gb() if os.environ.get(BIG_ENV) == "1"
                else [None], ids=lambda gb: f"{gb:g}GB" if gb else "off")
def big_parent(request):
    """Make this (the parent) process hold that much touched memory for the
    duration of a test class.  Off unless PYSANDBOX_BENCH_BIG=1."""
    gb = request.param
    if gb is None:
        pytest.skip(f"set {BIG_ENV}=1 to measure with a big parent process")
    size = int(gb * (1 << 30))
    before = vm_rss()
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(range(0, size, 4096))   # touch every page
    grown = vm_rss() - before
    assert grown >= 0.9 * size, f"parent RSS grew by {grown} bytes, wanted ~{size}"
    yield gb
    del buf
    gc.collect()


# -- ratios after the table -------------------------------------------------

def _fmt_ms(seconds):
    return f"{seconds * 1e3:8.3f} ms"


def _group_key(group):
    order = ("spawn", "spawn-parent", "scaling", "cost")
    for i, prefix in enumerate(order):
        if group == prefix or group.startswith(prefix + "-"):
            return (i, group)
    return (len(order), group)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    benches = [b for b in bs.benchmarks if b and not b.has_error]
    if not benches:
        return
    by_group = {}
    for b in benches:
        by_group.setdefault(b.group, {})[b.name] = b

    tr = terminalreporter
    tr.ensure_newline()
    tr.section("pysandbox: medians and ratios (each against a row of the same run)", sep="-")
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    tr.write_line(f"{os.cpu_count()} CPUs, load average now {load}")
    for group in sorted(by_group, key=_group_key):
        rows = by_group[group]
        first = next(iter(rows.values()))
        rss = first.extra_info.get("parent_rss_mb")
        tr.write_line(f"[{group}]" + (f"  parent RSS ~{rss} MB" if rss is not None else ""))
        for name, b in sorted(rows.items(), key=lambda kv: (
                kv[1].stats.median / kv[1].extra_info.get("batch", 1))):
            label = b.extra_info.get("label", name)
            batch = b.extra_info.get("batch")
            base = _find_baseline(rows, b.extra_info.get("baseline", "test_subprocess_true"))
            if batch:
                per_run = b.stats.median / batch
                line = (f"  {label:<62} {_fmt_ms(per_run)}/run "
                        f"{batch / b.stats.median:7.0f} runs/s")
            else:
                line = f"  {label:<62} {_fmt_ms(b.stats.median)}"
            if base is not None and base is not b:
                base_label = base.extra_info.get("label", base.name)
                ratio = _per_run(b) / _per_run(base)
                line += f"   {ratio:6.2f}x  {base_label}"
            elif base is b:
                line += "    1.00x  (baseline)"
            other_group = b.extra_info.get("compare_to_group")
            if other_group:
                other = next((o for o in by_group.get(other_group, {}).values()
                              if o.extra_info.get("label") == label), None)
                if other is not None:
                    line += f"   | {_per_run(b) / _per_run(other):5.2f}x vs [{other_group}]"
            tr.write_line(line)
            if b.extra_info.get("note"):
                tr.write_line(f"      note: {b.extra_info['note']}")


def _per_run(b):
    return b.stats.median / b.extra_info.get("batch", 1)


def _find_baseline(rows, name):
    """The row called `name` in this group, or the only row whose test
    function is `name` (the big-parent rows carry the size as a param)."""
    if name in rows:
        return rows[name]
    same = [b for n, b in rows.items() if n.split("[", 1)[0] == name]
    return same[0] if len(same) == 1 else None
