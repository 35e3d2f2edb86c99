"""Scaling: throughput with threads.  Each round is a fixed batch of runs
(BATCH) split evenly over the threads; the summary prints runs/s.

Rows: subprocess.run with 1 and 8 threads (the baselines), one Sandbox
shared by 1, 2 and 8 threads, and 8 Sandboxes each used by its own thread.
Runs wait with the GIL released, so threads overlap; on a 2-CPU machine
the CPUs, not the threads, are the limit."""
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from pysandbox import Sandbox
from benchutil import TRUE, bench

BATCH = 48            # runs per round, divisible by every thread count
ROUNDS, WARMUP = 15, 2
GROUP = "scaling-concurrency"


def _batched(executor, threads, per_thread_fn):
    """One round: `threads` tasks, each making BATCH/threads runs."""
    per = BATCH // threads

    def task(i):
        rcs = [per_thread_fn(i) for _ in range(per)]
        assert rcs == [0] * per, rcs
        return per

    def round_():
        done = sum(f.result() for f in [executor.submit(task, i) for i in range(threads)])
        assert done == BATCH
        return done
    return round_


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=8) as ex:
        yield ex


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("threads", [1, 8])
def test_subprocess_threads(benchmark, executor, threads):
    fn = _batched(executor, threads, lambda i: subprocess.run([TRUE]).returncode)
    bench(benchmark, fn, rounds=ROUNDS, warmup=WARMUP, batch=BATCH,
          label=f"subprocess.run(['/bin/true']), {threads} thread(s)",
          baseline="test_subprocess_threads[1]")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_shared_sandbox_threads(benchmark, rootfs, executor, threads):
    with Sandbox(rootfs) as s:
        fn = _batched(executor, threads, lambda i: s.run([TRUE]).returncode)
        bench(benchmark, fn, rounds=ROUNDS, warmup=WARMUP, batch=BATCH,
              label=f"one Sandbox shared by {threads} thread(s)",
              baseline="test_subprocess_threads[1]")


@pytest.mark.benchmark(group=GROUP)
def test_sandbox_per_thread(benchmark, rootfs, executor):
    sandboxes = [Sandbox(rootfs) for _ in range(8)]
    try:
        fn = _batched(executor, 8, lambda i: sandboxes[i].run([TRUE]).returncode)
        bench(benchmark, fn, rounds=ROUNDS, warmup=WARMUP, batch=BATCH,
              label="8 Sandboxes, one per thread (8 threads)",
              baseline="test_subprocess_threads[1]")
        assert len({s.pid for s in sandboxes}) == 8
    finally:
        for s in sandboxes:
            s.close()
