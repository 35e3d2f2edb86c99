"""The spawn's fast paths, checked by their effects rather than by timing:
the clone shares the parent's memory (vfork-style: nothing of a big parent
is copied or made copy-on-write), every sandbox of a process execs the one
sealed copy of the init, and the plan is packed once per sandbox, not per
run."""
import fcntl
import mmap
import os
import resource

import pytest

import pysandbox
from pysandbox import Sandbox, _engine, _plan, _runner

pytestmark = pytest.mark.timeout(120)

PAGE = mmap.PAGESIZE
BALLAST = 64 << 20


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def write_every_page(m, value):
    for off in range(0, len(m), PAGE):
        m[off] = value


@pytest.mark.parametrize("how", ["open", "one-shot"])
def test_spawn_does_not_make_the_parent_copy_on_write(rootfs, how):
    """A fork (even one that execs at once) write-protects every page of
    the parent: its next write to each faults.  The spawn clones with
    CLONE_VM, so rewriting 64 MB after it costs (almost) no fault."""
    m = mmap.mmap(-1, BALLAST, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_NOHUGEPAGE)   # one fault a 4 KiB page, countable
        write_every_page(m, 1)            # all present and writable now
        if how == "open":
            with Sandbox(rootfs) as s:
                assert s.run(["true"], timeout=20).returncode == 0
        else:
            assert pysandbox.run(["true"], rootfs, timeout=20).returncode == 0
        before = minor_faults()
        write_every_page(m, 2)
        faults = minor_faults() - before
    finally:
        m.close()
    pages = BALLAST // PAGE
    # a fork-based spawn gives ~`pages` faults here; others may fault a few
    assert faults < pages // 16, (faults, pages)


def exe_identity(pid):
    st = os.stat(f"/proc/{pid}/exe")
    return st.st_dev, st.st_ino


def test_every_sandbox_runs_the_one_sealed_init(rootfs):
    """One sealed memfd per process: two sandboxes' inits are the same
    file, and it can be neither written, grown, shrunk nor unsealed."""
    fd = _engine.sealed_init_fd()
    with Sandbox(rootfs) as a, Sandbox(rootfs) as b:
        ids = {exe_identity(a.pid), exe_identity(b.pid)}
        link = os.readlink(f"/proc/{a.pid}/exe")
    mine = os.fstat(fd)
    assert ids == {(mine.st_dev, mine.st_ino)}, (ids, mine)
    assert link.startswith("/memfd:pysandbox-init"), link
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK,
                 fcntl.F_SEAL_SEAL):
        assert seals & seal, (seal, seals)
    assert _engine.sealed_init_fd() == fd      # made once, not per sandbox


def test_plan_is_packed_once_per_sandbox(rootfs, monkeypatch):
    """The plan and the run defaults' wire form are made when the sandbox
    is; a run with the defaults adds neither."""
    calls = {"plan": 0, "tail": 0}
    pack_plan, request_tail = _plan.pack_plan, _runner._request_tail

    def counting_pack_plan(*args, **kwargs):
        calls["plan"] += 1
        return pack_plan(*args, **kwargs)

    def counting_request_tail(*args, **kwargs):
        calls["tail"] += 1
        return request_tail(*args, **kwargs)
    monkeypatch.setattr(_plan, "pack_plan", counting_pack_plan)
    monkeypatch.setattr(_runner, "_request_tail", counting_request_tail)
    with Sandbox(rootfs) as s:
        made = dict(calls)
        for _ in range(3):
            assert s.run(["true"], timeout=20).returncode == 0
    assert made == {"plan": 1, "tail": 1}, made
    assert calls == made, calls
