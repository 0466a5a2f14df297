"""The lane's cgroup v2 part, without QEMU: L1 boots with cgroup_no_v1=all and
mounts cgroup2 at the chroot's /sys/fs/cgroup, the lane runs
ci/lane/cgroup_v2.py last, and its verdict names the cgroup test that failed.
The runner's report lines are checked on a small test file run in-process."""
import os
import shlex
import subprocess
import sys

from tests.lane.test_lane_tools import GOOD, MODES, RUNS, fake_qemu, lane

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CG_PASS = ["LANE-CG TEST l1_cgroup_v2.py::test_the_hierarchy_is_pure_v2 PASS 0.0 s",
           "LANE-CG TEST test_quota.py::test_monitor_memory_stays_inside_its_cgroup PASS 5.5 s",
           "LANE-CG RESULT PASS 2 tests in 16.1 s (pytest exit 0)",
           f"LANE-L1 run {lane.CGROUP_RUN} exit=0"]


def with_cgroup(lines):
    done = GOOD.index("LANE-L1 done")
    return GOOD[:done] + lines + GOOD[done:]


def test_lane_command_runs_the_cgroup_tests_last():
    cmd = lane.lane_command("/r/py", RUNS, "i", l2_timeout=300, modes=MODES, cgroup=True)
    parts = cmd.split("; ")
    argv = shlex.split(parts[-2])
    assert argv[:2] == ["/r/py", os.path.join(REPO, "ci", "lane", "cgroup_v2.py")]
    assert argv[argv.index("--repo") + 1] == REPO
    assert parts[-1] == f'echo "LANE-L1 run {lane.CGROUP_RUN} exit=$?"'
    assert "cgroup_v2.py" not in lane.lane_command("/r/py", RUNS, "i", l2_timeout=300)


def test_verdict_with_cgroup():
    assert lane.verdict(with_cgroup(CG_PASS), RUNS, MODES, cgroup=True) == (True, [])
    # a run without the cgroup part does not pass when it was asked for
    ok, problems = lane.verdict(GOOD, RUNS, MODES, cgroup=True)
    assert not ok and problems == [f"the {lane.CGROUP_RUN} run did not finish"]
    failed = [CG_PASS[0],
              "LANE-CG TEST l1_cgroup_v2.py::test_the_monitor_sits_in_a_v2_cgroup_with_its_"
              "limits FAIL 2.3 s (call) AssertionError: /sys/fs/cgroup/kvmm-1-1/memory.max: max",
              "LANE-CG | E   AssertionError: ...",
              "LANE-CG RESULT FAIL 2 tests in 9.0 s (pytest exit 1)",
              f"LANE-L1 run {lane.CGROUP_RUN} exit=1"]
    ok, problems = lane.verdict(with_cgroup(failed), RUNS, MODES, cgroup=True)
    assert not ok
    assert problems == [
        f"the {lane.CGROUP_RUN} run failed (exit=1; see above)",
        "cgroup v2 test l1_cgroup_v2.py::test_the_monitor_sits_in_a_v2_cgroup_with_its_limits "
        "failed: (call) AssertionError: /sys/fs/cgroup/kvmm-1-1/memory.max: max",
        "the cgroup v2 tests did not report LANE-CG RESULT PASS (see the LANE-CG lines above)"]


def test_l1_is_pure_cgroup_v2(tmp_path, monkeypatch, capsysbinary):
    with open(os.path.join(REPO, "ci", "lane", "l1-init.sh")) as f:
        init = f.read()
    assert "mount -t cgroup2 -o nsdelegate cgroup2 /host/sys/fs/cgroup" in init
    assert init.index("mount -t sysfs sysfs /host/sys") < init.index("mount -t cgroup2")
    fake_qemu(tmp_path, monkeypatch, 'for a in "$@"; do echo "ARG $a"; done\n')
    _status, lines, _s, _stopped = lane.run_qemu("vmlinuz", "initrd", 30,
                                                 str(tmp_path / "log"), 2)
    append = lines[lines.index("ARG -append") + 1][len("ARG "):]
    assert "cgroup_no_v1=all" in append.split()


def test_the_runners_report(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "sample.py").write_text(
        "import pytest\n"
        "def test_good():\n    pass\n"
        "def test_bad():\n    assert 1 == 2, 'memory.max is 7'\n"
        "def test_skipped():\n    pytest.skip('no cgroup')\n")
    runner = os.path.join(REPO, "ci", "lane", "cgroup_v2.py")
    r = subprocess.run([sys.executable, runner, "--repo", str(tmp_path), "--basetemp",
                        str(tmp_path / "bt"), "tests/sample.py"], capture_output=True,
                       text=True, timeout=60)
    lines = r.stdout.splitlines()
    verdicts = {ln.split()[2]: ln.split()[3] for ln in lines if ln.startswith("LANE-CG TEST ")}
    assert verdicts == {"sample.py::test_good": "PASS", "sample.py::test_bad": "FAIL",
                        "sample.py::test_skipped": "FAIL"}, r.stdout
    bad = next(ln for ln in lines if "test_bad FAIL" in ln)
    assert bad.endswith("(call) AssertionError: memory.max is 7"), bad
    assert any("(setup, skipped)" in ln or "(call, skipped)" in ln for ln in lines), r.stdout
    assert lines[-1].startswith("LANE-CG RESULT FAIL 3 tests") and r.returncode == 1
