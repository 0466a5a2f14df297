#!/usr/bin/env python3
"""kvmm's cgroup tests on a pure cgroup v2 host: runs inside L1 (in
ci/lane/l1-init.sh's chroot of the host's root, where /sys/fs/cgroup is a
cgroup2 hierarchy and L1's kernel has cgroup_no_v1=all).

    .venv/bin/python ci/lane/cgroup_v2.py --repo REPO [NODEID...]

Runs pytest in-process on the given tests (default TESTS: the hierarchy and
the monitor's own v2 files, tests/lane/l1_cgroup_v2.py, then the memory-limit
and CPU-quota tests of tests/integration/test_quota.py), with no skips
allowed, and prints per test `LANE-CG TEST <name> PASS|FAIL <seconds> s
<first line of the failure>` (a failure followed by its report, each line
prefixed `LANE-CG |`), and at the end `LANE-CG RESULT PASS|FAIL`. Exit
status 0 when every test passed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Not among them, from tests/integration/test_quota.py: test_cpu_quota_caps_a_spinning_guest
# divides the process's whole CPU time by the wall time, and in L1 kvmm's
# start-up before it enters its cgroup (~1.5 s of CPU under TCG) alone exceeds
# the bound (l1_cgroup_v2.py measures the quota with the cgroup's own cpu.stat);
# test_device_hammering_stays_inside_the_cgroup needs its disk image on a disk:
# L1 has only tmpfs, whose pages are charged to the monitor's cgroup and cannot
# be reclaimed, so the kernel rightly OOM-kills the monitor.
TESTS = ("tests/lane/l1_cgroup_v2.py",
         "tests/integration/test_quota.py::test_monitor_memory_stays_inside_its_cgroup",
         "tests/integration/test_quota.py::test_cpu_quota_caps_a_spinning_guest")
TAIL = 30
BASETEMP = "/dev/shm/kvmm-cgroup-v2"   # /tmp in L1 is a small tmpfs


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def short(nodeid: str) -> str:
    return nodeid.rsplit("/", 1)[-1]


class Report:
    """A pytest plugin: one LANE-CG line per test."""

    def __init__(self):
        self.results: dict[str, str] = {}
        self.start: dict[str, float] = {}

    def pytest_runtest_logstart(self, nodeid, location):
        self.start[nodeid] = time.monotonic()

    def pytest_runtest_logreport(self, report):
        failed = report.failed or (report.skipped and report.when != "teardown")
        if report.when != "call" and not failed:
            return
        if report.nodeid in self.results and self.results[report.nodeid] != "PASS":
            return                                # the first failure of a test says it
        verdict = "PASS" if report.passed else "FAIL"
        seconds = time.monotonic() - self.start.get(report.nodeid, time.monotonic())
        detail = ""
        text = str(report.longrepr or "")
        if verdict == "FAIL":
            errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
            lines = text.strip().splitlines()
            detail = errors[0] if errors else (lines[-1] if lines else "")
            detail = f"({report.when}{', skipped' if report.skipped else ''}) {detail}"
        self.results[report.nodeid] = verdict
        say(f"LANE-CG TEST {short(report.nodeid)} {verdict} {seconds:.1f} s {detail}".rstrip())
        if verdict == "FAIL":
            for line in text.splitlines()[-TAIL:]:
                say(f"LANE-CG | {line}")

    def pytest_collectreport(self, report):
        if report.failed:
            say(f"LANE-CG TEST {short(report.nodeid) or 'collection'} FAIL 0.0 s "
                f"(collection) {str(report.longrepr).strip().splitlines()[-1]}")
            self.results[report.nodeid or "collection"] = "FAIL"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=os.getcwd())
    ap.add_argument("--basetemp", default=BASETEMP)
    ap.add_argument("tests", nargs="*", default=list(TESTS))
    args = ap.parse_args(argv)
    os.chdir(args.repo)
    sys.path.insert(0, args.repo)
    # As in .ci/run: a missing /dev/kvm or root fails; no test may skip. The
    # installed plugins cost ~20 s to import in L1 and none is needed.
    # Scratch space next to the base temp directory: /tmp in L1 is the host's,
    # read-only, when the repository itself lives there (ci/lane/l1-init.sh).
    os.environ.update(KVMM_REQUIRE_KVM="1", KVMM_NO_SKIPS="1",
                      PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                      TMPDIR=os.path.dirname(os.path.abspath(args.basetemp)))
    report = Report()
    t0 = time.monotonic()
    try:
        import pytest
        status = pytest.main(["-p", "no:cacheprovider", "-p", "no:terminal",
                              "-o", "addopts=", "--basetemp", args.basetemp, *args.tests],
                             plugins=[report])
    except Exception as e:            # pytest itself could not start: say so in one line
        say(f"LANE-CG TEST pytest FAIL 0.0 s (start) {type(e).__name__}: {e}")
        report.results["pytest"] = "FAIL"
        status = 3
    ok = status == 0 and bool(report.results) and \
        all(v == "PASS" for v in report.results.values())
    say(f"LANE-CG RESULT {'PASS' if ok else 'FAIL'} {len(report.results)} tests in "
        f"{time.monotonic() - t0:.1f} s (pytest exit {int(status)})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
