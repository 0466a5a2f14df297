"""Boot the project's guest kernel under `kvmm run`, one behaviour per mode."""
import os

import pytest

from tests.integration.conftest import kvmm

pytestmark = pytest.mark.kvm


def test_hello(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=hello", "--timeout", "20", check_status=0)
    v = r.verdict()
    assert v["mode"] == "hello" and v["result"] == "PASS"
    assert "boot timer: guest ready" in r.stderr


def test_hello_is_the_default_mode(run_kvmm):
    r = run_kvmm("run", "--timeout", "20", check_status=0)
    assert r.verdict()["mode"] == "hello"


def test_guest_detects_the_world(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=hello", "--timeout", "20", check_status=0)
    banner = next(line for line in r.lines if "world=" in line)
    expected = "pvm" if os.path.exists("/sys/module/kvm_pvm") else "kvm"
    assert f"world={expected}" in banner


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_smp(run_kvmm, vcpus):
    r = run_kvmm("run", "--vcpus", str(vcpus), "--cmdline", "mode=smp iters=100000",
                 "--timeout", "60", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    assert int(v["cpus"]) == vcpus
    assert int(v["sum"]) == vcpus * 100000


def test_timer(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=timer ticks=20 period_us=5000", "--timeout", "30",
                 check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    period = float(v["period_us"])
    assert 0.8 * 5000 <= period <= 1.2 * 5000, v


@pytest.mark.parametrize("mem_mib", [16, 64, 200])
def test_mem_sees_exactly_its_ram(run_kvmm, mem_mib):
    r = run_kvmm("run", "--mem", f"{mem_mib}M", "--cmdline", "mode=mem", "--timeout", "120",
                 check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    assert int(v["size"]) == mem_mib << 20
    assert v["above"] == "not-ram"


def test_triple_fault_stops_the_vm_with_a_register_dump(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=fault", "--timeout", "20", check_status=125)
    assert "triple fault" in r.stderr
    assert "rip=" in r.stderr and "cr3=" in r.stderr
    assert "last console lines" in r.stderr


def test_unexpected_exception_is_reported_by_the_guest(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=exception", "--timeout", "20", check_status=3)
    assert any("RIP" in line.upper() for line in r.lines), r


def test_i8042_reset_stops_cleanly(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=reset", "--timeout", "20", check_status=0)
    assert r.verdict()["mode"] == "reset"


def test_exit_status_is_the_guests(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=hello exit=42", "--timeout", "20")
    assert r.status == 42, r


def test_timeout_stops_a_hung_guest(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=timer ticks=1000000 period_us=100000",
                 "--timeout", "1.5", check_status=124)
    assert "did not finish within 1.5 s" in r.stderr
    assert "rip=" in r.stderr
    assert "last console lines" in r.stderr and "world=" in r.stderr


@pytest.mark.parametrize("mode", ["iobench n=2000", "mmiobench n=2000"])
def test_exit_microbenchmarks_report(run_kvmm, mode):
    r = run_kvmm("run", "--cmdline", f"mode={mode}", "--timeout", "60", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    assert int(v["ns_per_exit"]) > 0


def test_big_guest_boots(run_kvmm):
    r = run_kvmm("run", "--mem", "1G", "--cmdline", "mode=hello", "--timeout", "30",
                 check_status=0)
    assert r.verdict()["result"] == "PASS"
