"""Integration tests boot real guests on /dev/kvm.

They are skipped, with the reason, where /dev/kvm is missing or not usable;
with KVMM_REQUIRE_KVM=1 (as in .ci/run) that is a failure instead.
"""
import os
import subprocess
import sys

import pytest

from kvmm.config import default_kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kvm_problem() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm is missing: integration tests boot real guests"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission to use /dev/kvm (run as root or join the kvm group)"
    return None


def require(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("KVMM_REQUIRE_KVM") == "1":
        pytest.fail(f"{problem} (KVMM_REQUIRE_KVM=1: not skipping)")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def kvm_available():
    require(_kvm_problem())


@pytest.fixture(scope="session")
def guest_kernel(kvm_available):
    path = default_kernel()
    if not os.path.exists(path):
        pytest.fail(f"the guest kernel {path} is not built: run `make -C guest-kernel` "
                    "(ci/setup does)")
    return path


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.status = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.lines = proc.stdout.splitlines()

    def verdict(self) -> dict:
        """The guest's `RESULT mode PASS|FAIL key=value...` line, parsed."""
        for line in reversed(self.lines):
            if line.startswith("RESULT "):
                words = line.split()
                out = {"mode": words[1], "result": words[2]}
                for w in words[3:]:
                    if "=" in w:
                        k, v = w.split("=", 1)
                        out[k] = v
                return out
        raise AssertionError(f"no verdict line in the guest's output:\n{self.stdout}\n"
                             f"stderr:\n{self.stderr}")

    def __repr__(self) -> str:
        return f"Run(status={self.status}, stdout={self.stdout[-2000:]!r}, " \
               f"stderr={self.stderr[-2000:]!r})"


def kvmm(*args, timeout: float = 60, check_status: int | None = None) -> Run:
    """Run `python -m kvmm ARGS` and return its status and output."""
    proc = subprocess.run([sys.executable, "-m", "kvmm", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    run = Run(proc)
    if check_status is not None:
        assert run.status == check_status, run
    return run


@pytest.fixture
def run_kvmm(guest_kernel):
    return kvmm
