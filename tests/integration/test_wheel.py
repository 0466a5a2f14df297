"""`pip install .` anywhere: the wheel and the sdist carry the guest kernel
(setup.py builds it with gcc and ld), and a wheel installed into a fresh
virtualenv boots it from outside the source tree.

Building uses pip's isolated build environment (setuptools from PyPI, or
pip's cache); the fresh virtualenv gets kvmm's dependencies from PyPI too.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from kvmm.boot import native
from kvmm.version import __version__, version_lines
from tests.integration.conftest import REPO, Run

pytestmark = pytest.mark.slow

PACKAGED_KERNEL = "kvmm/_guest/kvmm-guest.elf"
BUILD_SECONDS = 60


def clean_env() -> dict:
    """The environment without anything that would point the installed kvmm
    back at this source tree."""
    env = dict(os.environ)
    for name in ("KVMM_GUEST_KERNEL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def run(args: list, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n" \
                                 f"{proc.stderr}"
    return proc


def pip(*args, cwd) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd)


# Left out of the copy of the source tree: what a fresh checkout does not have.
NOT_SOURCES = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
               ".hypothesis", "results")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    """An sdist, a wheel built from a copy of the source tree (what `pip
    install .` does in a fresh checkout; setuptools' build/ directory keeps
    files from earlier builds) and a wheel built from the sdist; with the
    seconds each took."""
    out = tmp_path_factory.mktemp("dist")
    tree = out / "src"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    start = time.monotonic()
    pip("wheel", "--no-deps", "-w", out / "tree", tree, cwd=out)
    tree_seconds = time.monotonic() - start
    start = time.monotonic()
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    name = run([sys.executable, "-c", code, out / "sdist"], tree).stdout.split()[-1]
    sdist = out / "sdist" / name
    pip("wheel", "--no-deps", "-w", out / "from-sdist", sdist, cwd=out)
    sdist_seconds = time.monotonic() - start
    wheel = out / "tree" / f"kvmm-{__version__}-py3-none-any.whl"
    assert wheel.exists(), os.listdir(out / "tree")
    return {"wheel": wheel, "sdist": sdist,
            "wheel_from_sdist": out / "from-sdist" / wheel.name,
            "tree_seconds": tree_seconds, "sdist_seconds": sdist_seconds}


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory):
    """A fresh virtualenv with the wheel installed; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], root)
    python = root / "bin" / "python"
    pip("--python", python, "install", "-q", dists["wheel"], cwd=root)
    return root / "bin"


def test_builds_are_quick(dists):
    assert dists["tree_seconds"] < BUILD_SECONDS, dists
    assert dists["sdist_seconds"] < BUILD_SECONDS, dists


def test_the_wheel_carries_the_guest_kernel(dists):
    with zipfile.ZipFile(dists["wheel"]) as z:
        names = set(z.namelist())
        kernel = z.read(PACKAGED_KERNEL)
        entry_points = z.read(f"kvmm-{__version__}.dist-info/entry_points.txt").decode()
    assert native.runs_natively_on_pvm(kernel)
    assert "kvmm = kvmm.cli:entry" in entry_points
    assert "kvmm-firecracker = kvmm.cli:firecracker_entry" in entry_points
    assert "kvmm/version.py" in names and "kvmm/guest_image.py" in names
    with zipfile.ZipFile(dists["wheel_from_sdist"]) as z:
        assert set(z.namelist()) == names
        assert native.runs_natively_on_pvm(z.read(PACKAGED_KERNEL))


def test_the_sdist_carries_the_guest_kernel_sources(dists):
    top = f"kvmm-{__version__}/"
    with tarfile.open(dists["sdist"]) as t:
        names = {n.removeprefix(top) for n in t.getnames()}
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "guest-kernel/Makefile",
            "guest-kernel/kernel.ld", "guest-kernel/src/kvmm_note.S",
            "guest-kernel/src/main.c"} <= names
    assert not any(n.startswith("guest-kernel/build") or n.endswith(".elf") for n in names)


def test_the_installed_kvmm_finds_the_packaged_kernel(venv, tmp_path):
    code = "from kvmm.guest_image import default_kernel; print(default_kernel())"
    path = run([venv / "python", "-c", code], tmp_path).stdout.strip()
    assert path.endswith(PACKAGED_KERNEL) and not path.startswith(REPO), path
    assert os.path.exists(path)


def test_the_installed_kvmm_boots_its_guest(venv, tmp_path, kvm_available):
    proc = subprocess.run([str(venv / "kvmm"), "run", "--cmdline", "mode=hello", "--console",
                           "stdout", "--timeout", "20"], cwd=tmp_path, env=clean_env(),
                          text=True, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    r = Run(proc)
    assert r.status == 0, r
    v = r.verdict()
    assert v["mode"] == "hello" and v["result"] == "PASS"


def test_the_installed_kvmm_version(venv, tmp_path):
    out = run([venv / "kvmm", "--version"], tmp_path).stdout
    assert out.splitlines() == version_lines(False)


def test_the_installed_firecracker_entry_version(venv, tmp_path):
    out = run([venv / "kvmm-firecracker", "--version"], tmp_path).stdout
    assert out.splitlines()[0] == version_lines(True)[0]
