"""Fixtures shared by every test directory.

Tests that need /dev/kvm are skipped, with the reason, where it is missing or
not usable; with KVMM_REQUIRE_KVM=1 (as in .ci/run) that is a failure instead.
With KVMM_NO_SKIPS=1 (also .ci/run) any skip at all fails the run.
"""
import os

import pytest

from kvmm.guest_image import default_kernel


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("KVMM_NO_SKIPS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, and KVMM_NO_SKIPS=1 forbids skips: {report.longrepr}"
