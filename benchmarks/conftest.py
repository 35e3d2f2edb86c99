"""Fixtures for the spawn benchmarks, and the ratio summary printed after
pytest-benchmark's table.

The tiny rootfs is the one the tests use (tests/sbxutil.py:build_rootfs).
"""
import gc
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))
from sbxutil import build_rootfs, child_pids, init_pids  # noqa: E402

BIG_ENV = "PYSANDBOX_BENCH_BIG"
BIG_GB_ENV = "PYSANDBOX_BENCH_BIG_GB"


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory):
    return build_rootfs(str(tmp_path_factory.mktemp("bench-rootfs")))


@pytest.fixture(autouse=True)
def _nothing_left_behind(request):
    """Every benchmark must clean up after itself: hundreds of cold runs
    that each left an init (or a zombie) behind would also skew the rows
    measured after them.  Checked after the test's own fixtures (the warm
    sandbox) are torn down."""
    def check():
        gc.collect()
        assert init_pids() == [], "sandbox init left running"
        assert child_pids() == [], "child process (or zombie) left behind"
    request.addfinalizer(check)


def vm_rss():
    """Resident set size of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="class")
def big_parent():
    """Make this (the parent) process hold ~2 GB of touched memory for the
    duration of a test class.  Off unless PYSANDBOX_BENCH_BIG=1."""
    if os.environ.get(BIG_ENV) != "1":
        pytest.skip(f"set {BIG_ENV}=1 to measure with a big parent process")
    size = int(float(os.environ.get(BIG_GB_ENV, "2")) * (1 << 30))
    before = vm_rss()
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(range(0, size, 4096))   # touch every page
    grown = vm_rss() - before
    assert grown >= 0.9 * size, f"parent RSS grew by {grown} bytes, wanted ~{size}"
    yield buf
    del buf
    gc.collect()


# -- ratios after the table -------------------------------------------------

def _fmt_ms(seconds):
    return f"{seconds * 1e3:8.3f} ms"


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
    tr.section("pysandbox: median ratios against subprocess.run (same run)", sep="-")
    for group in sorted(by_group, key=lambda g: (g != "spawn", g)):
        rows = by_group[group]
        first = next(iter(rows.values()))
        rss = first.extra_info.get("parent_rss_mb")
        tr.write_line(f"[{group}]" + (f"  parent RSS ~{rss} MB" if rss is not None else ""))
        for name, b in sorted(rows.items(), key=lambda kv: kv[1].stats.median):
            label = b.extra_info.get("label", name)
            base_name = b.extra_info.get("baseline", "test_subprocess_true")
            base = rows.get(base_name)
            line = f"  {label:<56} {_fmt_ms(b.stats.median)}"
            if base is not None and base is not b:
                base_label = base.extra_info.get("label", base_name)
                line += f"   {b.stats.median / base.stats.median:6.2f}x  {base_label}"
            elif base is b:
                line += "    1.00x  (baseline)"
            other_group = b.extra_info.get("compare_to_group")
            other = by_group.get(other_group, {}).get(name) if other_group else None
            if other is not None:
                line += (f"   | {b.stats.median / other.stats.median:5.2f}x"
                         f" vs [{other_group}]")
            tr.write_line(line)
