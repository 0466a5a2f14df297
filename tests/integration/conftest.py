"""Integration tests boot real guests on /dev/kvm (fixtures in tests/conftest.py)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import _kvm_problem, require  # noqa: F401  (re-exported for tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
