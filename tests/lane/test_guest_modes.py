"""ci/lane/guest_modes.py (the guest-kernel modes the lane runs inside L1) and
bench/linux.py's timed boot, without L1: against a stand-in monitor script,
and the modes that do not depend on the kind of KVM against the real kvmm
here."""
import os
import subprocess
import sys

import pytest

from bench import linux

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "ci", "lane", "guest_modes.py")

FAKE_KVMM = r"""#!/bin/sh
# A stand-in for `python -S -m kvmm run ... --cmdline C`: canned guest output.
while [ $# -gt 0 ]; do
    case $1 in --cmdline) cmdline=$2; shift;; --vcpus) vcpus=$2; shift;; esac
    shift
done
echo "kvmm-guest: world=${FAKE_WORLD:-kvm} cpus=$vcpus mem=66714624 boot=zeropage tsc_khz=1"
case $cmdline in
    mode=hello*) echo "RESULT hello PASS virtio_mmio=0"; exit 0;;
    mode=smp*) echo "RESULT smp PASS cpus=$vcpus iters=100000 sum=${FAKE_SUM:-200000}"; exit 0;;
    mode=exception*)
        echo "EXCEPTION #PF vector=14 error=0x0 rip=0x10a1af cr2=0x8000000000 rsp=0x1 cpu=0"
        echo "RESULT exception FAIL exception=14"; exit ${FAKE_EXC_STATUS:-3};;
    mode=reset*) echo "RESULT reset PASS action=i8042-reset"; exit 0;;
    mode=mem*) echo "oops" >&2; exit 126;;
    mode=timer*)
        n=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_COUNT"
        masked=ok
        [ "$n" -lt "${FAKE_LATE:-0}" ] && masked=late
        r=PASS; [ $masked = ok ] || r=FAIL
        echo "RESULT timer $r ticks=20 period_us=10000 mean_us=${FAKE_MEAN:-10010.5} masked=$masked"
        [ $r = PASS ]; exit $?;;
esac
"""


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake-python"
    path.write_text(FAKE_KVMM)
    path.chmod(0o755)
    return str(path)


def drive(python, *modes, env=None, kernel="k"):
    return subprocess.run([sys.executable, "-I", DRIVER, "--python", python, "--kernel", kernel,
                           "--repo", REPO, *modes], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def mode_lines(out):
    return {ln.split()[2]: ln for ln in out.splitlines() if ln.startswith("LANE-GK MODE ")}


def test_passing_modes(fake):
    r = drive(fake, "hello", "smp", "exception", "reset")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = mode_lines(r.stdout)
    assert all(" PASS " in ln for ln in lines.values()), r.stdout
    assert "world=kvm" in lines["hello"]
    assert "vector=14" in lines["exception"]
    assert r.stdout.splitlines()[-1] == "LANE-GK RESULT PASS"


def test_wrong_world_wrong_sum_and_status_fail_with_the_console(fake):
    r = drive(fake, "hello", "smp", "exception", "mem",
              env={"FAKE_WORLD": "pvm", "FAKE_SUM": "7", "FAKE_EXC_STATUS": "0"})
    assert r.returncode == 1
    lines = mode_lines(r.stdout)
    assert "FAIL" in lines["hello"] and "not world=kvm" in lines["hello"]
    assert "FAIL" in lines["smp"] and "sum=7" in lines["smp"]
    assert "FAIL" in lines["exception"] and "exit 0, expected 3" in lines["exception"]
    assert "FAIL" in lines["mem"] and "no verdict line" in lines["mem"]
    assert "LANE-GK | stderr: oops" in r.stdout
    assert "LANE-GK | console: kvmm-guest: world=pvm" in r.stdout
    assert r.stdout.splitlines()[-1] == "LANE-GK RESULT FAIL hello,smp,exception,mem"


@pytest.mark.parametrize("late,mean,passes,note", [
    (0, "10010.5", True, False),
    (1, "10010.5", True, True),         # one late delivery: tried again, and said so
    (2, "10010.5", False, False),       # twice: a failure
    (1, "15000", False, False),         # late and a wrong period: no second try
])
def test_timer_gets_one_more_try_only_for_a_late_masked_delivery(fake, tmp_path, late, mean,
                                                                 passes, note):
    r = drive(fake, "timer", env={"FAKE_COUNT": str(tmp_path / "count"), "FAKE_LATE": str(late),
                                  "FAKE_MEAN": mean})
    line = mode_lines(r.stdout)["timer"]
    assert (" PASS " in line) == passes, r.stdout
    assert ("first try: masked=late" in line) == note, line
    runs = int((tmp_path / "count").read_text())
    assert runs == (2 if late and mean == "10010.5" else 1)


def test_unknown_mode_is_refused(fake):
    r = drive(fake, "nosuchmode")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.mark.kvm
def test_modes_against_kvmm_here(guest_kernel):
    """The modes whose checks do not depend on the kind of KVM, with the real
    kvmm on this machine's /dev/kvm (hello is left out: it must say world=kvm,
    which only the lane's L1 gives)."""
    modes = ["smp", "timer", "mem", "exception", "reset", "blktest"]
    r = drive(os.path.join(REPO, ".venv", "bin", "python"), *modes, kernel=guest_kernel)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(mode_lines(r.stdout)) == set(modes)


# bench/linux.py: one timed boot inside L1. ----------------------------------------------
def _monitor(tmp_path, script):
    path = tmp_path / "monitor"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return [str(path)]


def test_bench_boot_times_the_marker_and_reads_the_guest_clocks(tmp_path):
    argv = _monitor(tmp_path, "sleep 0.3; echo LANE-BENCH-INIT; echo LANE-BENCH-UPTIME 0.20\n"
                    "echo 'LANE-BENCH-CLOCK offset_ns=50000000 init_s=0.21'; sleep 0.2\n")
    r = linux._boot(argv, 30)
    assert 0.3 <= r["init"] < r["exit"] and r["exit"] - r["init"] >= 0.2
    assert r["uptime"] == 0.2
    assert r["load"] == pytest.approx(r["init"] - 0.2)
    assert r["shutdown"] == pytest.approx(r["exit"] - r["init"])
    assert r["early"] == pytest.approx(0.05)
    assert r["clock_zero"] == pytest.approx(r["init"] - 0.05 - 0.21)


def test_bench_boot_without_clock_line_still_measures(tmp_path):
    argv = _monitor(tmp_path, "echo LANE-BENCH-INIT; echo LANE-BENCH-UPTIME 1.5\n")
    r = linux._boot(argv, 30)
    assert r["uptime"] == 1.5 and "early" not in r


@pytest.mark.parametrize("script,why", [
    ("echo LANE-BENCH-UPTIME 1\n", "no init marker"),
    ("echo LANE-BENCH-INIT\n", "no uptime line"),
    ("echo LANE-BENCH-INIT; echo LANE-BENCH-UPTIME 1; exit 5\n", "exit status 5"),
    ("echo LANE-BENCH-INIT; sleep 30\n", "did not exit within 1 s"),
])
def test_bench_boot_failures_say_why(tmp_path, script, why):
    with pytest.raises(RuntimeError, match=why):
        linux._boot(_monitor(tmp_path, script), 1)
