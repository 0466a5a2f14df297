"""Build hook: a wheel of kvmm carries the guest kernel, built from
guest-kernel/ with the machine's gcc and ld while the wheel is built, at
kvmm/_guest/kvmm-guest.elf (found by kvmm.guest_image.default_kernel).

The package's metadata is in pyproject.toml. An editable install builds
nothing here: it uses guest-kernel/build/kvmm-guest.elf (`make -C guest-kernel`).
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_KERNEL_DIR = os.path.join(HERE, "guest-kernel")
KERNEL_NAME = "kvmm-guest.elf"
PACKAGED_KERNEL = os.path.join("kvmm", "_guest", KERNEL_NAME)
BUILD_TOOLS = ("make", "gcc", "ld")


class BuildPyWithGuestKernel(build_py):
    """build_py, then the guest kernel (built under build_temp, so the source
    tree is only read) copied into the package."""

    def initialize_options(self):
        super().initialize_options()
        self.build_temp = None

    def finalize_options(self):
        super().finalize_options()
        self.set_undefined_options("build", ("build_temp", "build_temp"))

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
        if missing:
            raise SystemExit(f"building kvmm's guest kernel needs {', '.join(missing)}: "
                             "install gcc, make and binutils (Debian: apt-get install gcc "
                             "make binutils)")
        objects = os.path.abspath(os.path.join(self.build_temp, "guest-kernel"))
        subprocess.run(["make", "-s", "-C", GUEST_KERNEL_DIR, f"-j{os.cpu_count() or 1}",
                        f"BUILD={objects}"], check=True)
        dest = os.path.join(self.build_lib, PACKAGED_KERNEL)
        self.mkpath(os.path.dirname(dest))
        self.copy_file(os.path.join(objects, KERNEL_NAME), dest)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PACKAGED_KERNEL))
        return outputs


setup(cmdclass={"build_py": BuildPyWithGuestKernel})
