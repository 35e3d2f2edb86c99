"""What cgroups and the privilege drop cost.

- cgroups: memory="256M" (the sandbox gets a cgroup, each run its own
  child cgroup) against no limit, warm and cold.  Skipped where this
  process cannot create cgroups (e.g. not root on a cgroup v1 host).
- seccomp and capabilities, warm: the default (Docker's seccomp deny-list
  and capability set) against seccomp=None, seccomp=None with every
  capability kept, and capabilities=[] (all dropped)."""
import pytest

import pysandbox
from pysandbox import Sandbox
from pysandbox._caps import CAPABILITIES
from benchutil import TRUE, bench, sandbox_ok

WARM_ROUNDS, WARM_WARMUP = 200, 20
COLD_ROUNDS, COLD_WARMUP = 60, 6


@pytest.fixture(scope="module")
def cgroups_usable(rootfs):
    """Skip unless a memory-limited sandbox can be built here."""
    try:
        with Sandbox(rootfs, memory="256M") as s:
            r = s.run([TRUE], timeout=20)
    except (OSError, NotImplementedError, ImportError, pysandbox.SandboxError) as exc:
        pytest.skip(f"cgroups unavailable here: {type(exc).__name__}: {exc}")
    assert r.returncode == 0


LIMITS = {"none": {}, "memory": {"memory": "256M"}}


@pytest.mark.benchmark(group="cost-cgroups-warm")
@pytest.mark.parametrize("limit", list(LIMITS))
def test_warm_cgroup(benchmark, rootfs, cgroups_usable, limit):
    with Sandbox(rootfs, **LIMITS[limit]) as s:
        r = bench(benchmark, lambda: s.run([TRUE]), rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                  label=f"warm s.run(['/bin/true']), {'memory=256M' if LIMITS[limit] else 'no limit'}",
                  baseline="test_warm_cgroup[none]")
        if LIMITS[limit]:
            assert s.stats() != {}          # really had a cgroup
    sandbox_ok(r)


@pytest.mark.benchmark(group="cost-cgroups-cold")
@pytest.mark.parametrize("limit", list(LIMITS))
def test_cold_cgroup(benchmark, rootfs, cgroups_usable, limit):
    r = bench(benchmark, lambda: pysandbox.run([TRUE], rootfs, **LIMITS[limit]),
              rounds=COLD_ROUNDS, warmup=COLD_WARMUP,
              label=f"cold pysandbox.run(['/bin/true']), {'memory=256M' if LIMITS[limit] else 'no limit'}",
              baseline="test_cold_cgroup[none]")
    sandbox_ok(r)


PRIV = {
    "default": ({}, "default (seccomp deny-list, Docker capability set)"),
    "no-seccomp": ({"seccomp": None}, "seccomp=None"),
    "no-seccomp-all-caps": ({"seccomp": None, "capabilities": list(CAPABILITIES)},
                            "seccomp=None, every capability kept"),
    "no-caps": ({"capabilities": []}, "capabilities=[] (seccomp default)"),
}


@pytest.mark.benchmark(group="cost-seccomp-caps-warm")
@pytest.mark.parametrize("priv", list(PRIV))
def test_warm_privileges(benchmark, rootfs, priv):
    kwargs, what = PRIV[priv]
    with Sandbox(rootfs, **kwargs) as s:
        status = s.run(["grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"],
                       capture_output=True, text=True, timeout=20).stdout
        r = bench(benchmark, lambda: s.run([TRUE]), rounds=WARM_ROUNDS, warmup=WARM_WARMUP,
                  label=f"warm s.run(['/bin/true']), {what}",
                  baseline="test_warm_privileges[default]")
    benchmark.extra_info["proc_status"] = status.split("\n")
    sandbox_ok(r)
