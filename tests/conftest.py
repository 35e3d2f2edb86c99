"""Fixtures: the tiny rootfs and the leak check (helpers: sbxutil.py)."""

import pytest

from sbxutil import build_rootfs, child_pids, init_pids, open_fds


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory):
    return build_rootfs(str(tmp_path_factory.mktemp("rootfs")))


@pytest.fixture
def sb():
    """A sandbox on the default root (the host's /usr: python3, ps, seq...)."""
    from pysandbox import Sandbox
    with Sandbox() as s:
        yield s


@pytest.fixture
def tiny(rootfs):
    """A sandbox on the tiny rootfs."""
    from pysandbox import Sandbox
    with Sandbox(rootfs) as s:
        yield s


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a sandbox process, a child, an fd or a
    mount of this process's namespace behind."""
    before_fds = open_fds()
    before_inits = set(init_pids())
    with open("/proc/self/mountinfo") as f:
        before_mounts = f.read()
    yield
    import gc
    gc.collect()
    assert set(init_pids()) - before_inits == set(), "sandbox init left running"
    assert child_pids() == [], "child process (or zombie) left behind"
    assert open_fds() == before_fds, "file descriptors leaked"
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before_mounts, "host mount table changed"
