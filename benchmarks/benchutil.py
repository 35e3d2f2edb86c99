"""Helpers shared by the benchmark files (imported by name: pytest puts this
directory on sys.path)."""
import os
import subprocess

from pysandbox import SandboxResult

TRUE = "/bin/true"

BIG_ENV = "PYSANDBOX_BENCH_BIG"
BIG_GB_ENV = "PYSANDBOX_BENCH_BIG_GB"


def big_sizes_gb():
    """Parent sizes for the big-parent groups (PYSANDBOX_BENCH_BIG=1):
    PYSANDBOX_BENCH_BIG_GB, a comma-separated list of GB (default 0.5,2)."""
    return [float(x) for x in os.environ.get(BIG_GB_ENV, "0.5,2").split(",") if x.strip()]


def big_group(gb):
    return f"spawn-parent-{gb:g}GB"


def vm_rss():
    """Resident set size of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def bench(benchmark, fn, *, rounds, warmup, label, baseline=None,
          compare_to_group=None, batch=None, setup=None, group=None):
    """benchmark.pedantic with fixed rounds, and what the summary in
    conftest.py prints: `label`; `baseline`, the test name (in the same
    group) the ratio is taken against; `batch`, the number of runs one round
    makes (the summary then prints runs/s); `compare_to_group`, a group
    whose row of the same name gives a second ratio."""
    if group is not None:
        benchmark.group = group
    benchmark.extra_info["label"] = label
    benchmark.extra_info["parent_rss_mb"] = vm_rss() >> 20
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    if compare_to_group:
        benchmark.extra_info["compare_to_group"] = compare_to_group
    if batch:
        benchmark.extra_info["batch"] = batch
    if setup is not None:
        user_setup = setup

        def setup():   # pedantic takes a truthy return value as the arguments
            user_setup()
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1,
                              setup=setup)


def subprocess_true():
    return subprocess.run([TRUE])


def fork_exec_true():
    pid = os.fork()
    if pid == 0:   # child: exec at once, never return into pytest
        try:
            os.execv(TRUE, [TRUE])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def ok(result):
    assert result.returncode == 0, result
    return result


def sandbox_ok(result):
    assert isinstance(result, SandboxResult), type(result)
    assert result.returncode == 0, result
    assert result.wall_time > 0, result
    return result
