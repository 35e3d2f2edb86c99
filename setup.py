"""Builds the extension (Cython + csrc/spawn.c) and the init program
(csrc/init.c), which is installed beside the extension."""
import os
import shutil
import subprocess
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"]


def _musl_kernel_headers(build_temp):
    """musl-gcc searches musl's headers only: give it the kernel's uapi
    headers (linux/, asm/, asm-generic/) from the system, nothing else."""
    inc = os.path.join(build_temp, "musl-kernel-headers")
    os.makedirs(inc, exist_ok=True)
    try:
        multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True,
                                   text=True).stdout.strip()
    except OSError:
        multiarch = ""
    links = {"linux": "/usr/include/linux", "asm-generic": "/usr/include/asm-generic",
             "asm": os.path.join("/usr/include", multiarch, "asm")}
    for name, src in links.items():
        if not os.path.isdir(src):
            return None
        dst = os.path.join(inc, name)
        if os.path.islink(dst):
            os.unlink(dst)
        os.symlink(src, dst)
    return inc


class build_ext_with_init(build_ext):
    def run(self):
        super().run()
        out_dir = os.path.dirname(self.get_ext_fullpath("pysandbox._engine"))
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, "pysandbox-init")
        cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
        tail = ["-Icsrc", "-o", target, "csrc/init.c"]
        # Preferred: static with musl (Debian: musl-tools).  glibc's static
        # start-up probes the CPU with ~60 CPUID instructions, each a VM exit
        # on a virtual machine: ~0.2 ms at every sandbox start here.  Then
        # static glibc (no dynamic loader), then a plain build.
        attempts = []
        musl = shutil.which("musl-gcc")
        if musl and not os.environ.get("PYSANDBOX_NO_MUSL"):
            inc = _musl_kernel_headers(self.build_temp)
            if inc:
                attempts.append([musl, *CFLAGS, "-isystem", inc, "-static", *tail])
        attempts.append([cc, *CFLAGS, "-static", *tail])
        attempts.append([cc, *CFLAGS, *tail])
        for i, cmd in enumerate(attempts):
            last = i == len(attempts) - 1
            r = subprocess.run(cmd, stderr=None if last else subprocess.PIPE)
            if r.returncode == 0:
                break
            if last:
                raise SystemExit(f"building the sandbox init failed: {' '.join(cmd)}")
        os.chmod(target, 0o755)


ext = Extension(
    "pysandbox._engine",
    sources=["pysandbox/_engine.pyx", "csrc/spawn.c"],
    include_dirs=["csrc"],
    extra_compile_args=CFLAGS,
    depends=["csrc/spawn.h", "csrc/proto.h"],
)

setup(
    ext_modules=cythonize([ext], language_level=3),
    cmdclass={"build_ext": build_ext_with_init},
)
