"""Builds the extension (Cython + csrc/spawn.c) and the init program
(csrc/init.c), which is installed beside the extension."""
import os
import subprocess
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"]


class build_ext_with_init(build_ext):
    def run(self):
        super().run()
        out_dir = os.path.dirname(self.get_ext_fullpath("pysandbox._engine"))
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, "pysandbox-init")
        cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
        base = [cc, *CFLAGS, "-Icsrc", "-o", target, "csrc/init.c"]
        # static: no dynamic loader at every sandbox start; fall back if the
        # static libc is missing
        try:
            subprocess.run(base + ["-static"], check=True, stderr=subprocess.PIPE)
        except subprocess.CalledProcessError:
            subprocess.run(base, check=True)
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
