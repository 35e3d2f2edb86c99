"""The init program's build: musl when musl-gcc is there (glibc's static
start-up costs ~0.2 ms of CPUID VM exits per sandbox), static glibc as the
fallback -- which must keep working, so it is built and run here too."""
import os
import shutil
import subprocess
import sys

import pytest

from pysandbox import _engine

pytestmark = pytest.mark.timeout(120)

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE", "-Werror"]


def _init_bytes():
    with open(_engine.INIT_PATH, "rb") as f:
        return f.read()


def test_init_is_static():
    data = _init_bytes()
    assert data[:4] == b"\x7fELF"
    assert b"/ld-linux" not in data and b"ld-musl" not in data, "init has an interpreter"


@pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc not installed")
def test_init_is_built_with_musl_when_available():
    # glibc's static start-up code carries its tunables parser
    assert b"GLIBC_TUNABLES" not in _init_bytes()


USE_INIT = """
import sys, pysandbox
from pysandbox import _engine
_engine.INIT_PATH = sys.argv[1]
for net in ("none", "host"):
    r = pysandbox.run(["sh", "-c", "echo ok; ls /proc/1/fd | wc -l"], sys.argv[2],
                      network=net, capture_output=True, text=True, timeout=20)
    print(net, r.returncode, " ".join(r.stdout.split()))
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_glibc_static_fallback_builds_and_runs(tmp_path, rootfs):
    target = str(tmp_path / "pysandbox-init-glibc")
    cmd = ["gcc", *CFLAGS, "-I", CSRC, "-static", "-o", target,
           os.path.join(CSRC, "init.c")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "cannot find -lc" in r.stderr:
        pytest.skip("no static glibc (libc6-dev's libc.a)")
    assert r.returncode == 0, r.stderr
    assert b"GLIBC_TUNABLES" in open(target, "rb").read()
    os.chmod(target, 0o755)
    r = subprocess.run([sys.executable, "-c", USE_INIT, target, rootfs],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [l.split()[:3] for l in lines] == [["none", "0", "ok"], ["host", "0", "ok"]], lines
    assert lines[0].split()[3] == lines[1].split()[3], lines   # init's fds: no helper leak
