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
    r = run_kvmm("run", "--cmdline", "mode=timer ticks=200 period_us=2000", "--timeout", "30",
                 check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    period = float(v["mean_us"])
    assert 0.8 * 2000 <= period <= 1.2 * 2000, v


@pytest.mark.parametrize("mem_mib", [16, 64, 200])
def test_mem_sees_exactly_its_ram(run_kvmm, mem_mib):
    r = run_kvmm("run", "--mem", f"{mem_mib}M", "--cmdline", "mode=mem", "--timeout", "120",
                 check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS" and v["bad"] == "0"
    # the top of RAM is exactly the reservation; the e820 RAM total leaves out
    # the legacy hole [0x9fc00, 1 MiB)
    assert int(v["top"], 16) == mem_mib << 20
    assert int(v["ram"]) == (mem_mib << 20) - (0x100000 - 0x9FC00)
    assert int(v["above"], 16) == mem_mib << 20
    assert int(v["above_read"], 16) == 0xFFFFFFFFFFFFFFFF   # unbacked reads are all ones


def test_triple_fault_stops_the_vm_with_a_register_dump(run_kvmm):
    r = run_kvmm("run", "--cmdline", "mode=fault", "--timeout", "20", check_status=125)
    assert "triple fault" in r.stderr
    assert "rip=" in r.stderr and "cr3=" in r.stderr
    assert "last console lines" in r.stderr


@pytest.mark.parametrize("kind,vector", [("ud", 6), ("pf", 14), ("gp", 13), ("de", 0)])
def test_unexpected_exception_is_reported_by_the_guest(run_kvmm, kind, vector):
    r = run_kvmm("run", "--cmdline", f"mode=exception kind={kind}", "--timeout", "20",
                 check_status=3)
    report = next(line for line in r.lines if line.startswith("EXCEPTION"))
    assert f"vector={vector}" in report and "rip=" in report and "cr2=" in report


def test_device_interrupt_reaches_the_guest(run_kvmm):
    # The UART raises IRQ 4 through an irqfd when THR-empty interrupts are enabled.
    r = run_kvmm("run", "--cmdline", "mode=irq gsi=4", "--timeout", "20", check_status=0)
    assert int(r.verdict()["count"]) >= 1


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


@pytest.mark.parametrize("mode,keys", [("iobench n=2000", ["ns_per_exit"]),
                                       ("mmiobench n=2000",
                                        ["write_ns_per_exit", "read_ns_per_exit"])])
def test_exit_microbenchmarks_report(run_kvmm, mode, keys):
    r = run_kvmm("run", "--cmdline", f"mode={mode}", "--timeout", "60", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    for key in keys:
        assert 1000 < int(v[key]) < 10_000_000, v     # microseconds, not nothing


def test_big_guest_boots(run_kvmm):
    r = run_kvmm("run", "--mem", "1G", "--cmdline", "mode=hello", "--timeout", "30",
                 check_status=0)
    assert r.verdict()["result"] == "PASS"
