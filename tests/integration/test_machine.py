"""The Machine API in-process: several VMs in one process, pause/resume/stop from
another thread, and no leaked file descriptors or threads over many boots."""
import os
import threading
import time

import pytest

from kvmm import machine
from kvmm.config import VmConfig

pytestmark = pytest.mark.kvm


def boot(cmdline: str, vcpus: int = 1, mem: int = 64 << 20, **kw) -> machine.Machine:
    config = VmConfig(cmdline=cmdline, vcpus=vcpus, mem_size=mem, console="none",
                      console_capture=True, **kw)
    return machine.build(config)


def output(m: machine.Machine) -> str:
    return bytes(m.console.captured).decode()


def verdict(m: machine.Machine) -> str:
    lines = [line for line in output(m).splitlines() if line.startswith("RESULT ")]
    assert lines, output(m)
    return lines[-1]


def test_two_vms_in_one_process(guest_kernel):
    a = boot("mode=smp iters=200000", vcpus=2)
    b = boot("mode=hello")
    with a, b:
        a.start()
        b.start()
        ra, rb = a.wait(60), b.wait(60)
    assert (ra.kind, ra.status) == ("exit", 0), (ra, output(a))
    assert (rb.kind, rb.status) == ("exit", 0), (rb, output(b))
    assert verdict(a).startswith("RESULT smp PASS") and "sum=400000" in verdict(a)
    assert verdict(b).startswith("RESULT hello PASS")


def test_pause_resume_stop_from_another_thread(guest_kernel):
    m = boot("mode=timer ticks=1000000 period_us=1000")
    with m:
        m.start()
        time.sleep(0.3)
        result = {}

        def control():
            result["paused"] = m.pause()
            time.sleep(0.2)
            result["regs"] = m.vcpus[0].get_regs().rip
            m.resume()
            time.sleep(0.2)
            m.stop(7, "test stop")

        t = threading.Thread(target=control)
        t.start()
        reason = m.wait(20)
        t.join()
    assert result["paused"] is True
    assert result["regs"] >= 0x100000
    assert (reason.kind, reason.status) == ("stopped", 7)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fifty_boots_leak_nothing(guest_kernel):
    # One warm-up boot: the first creates lazily-made process-wide objects.
    m = boot("mode=hello")
    with m:
        m.start()
        m.wait(20)
    fds, threads = _open_fds(), threading.active_count()
    for i in range(50):
        m = boot("mode=hello")
        with m:
            m.start()
            r = m.wait(20)
        assert (r.kind, r.status) == ("exit", 0), (i, r, output(m))
    assert _open_fds() == fds
    assert threading.active_count() == threads


def test_dirty_log_sees_the_pages_the_guest_wrote(guest_kernel):
    m = boot("mode=mem", mem=32 << 20, dirty_log=True)
    with m:
        m.mem.dirty_pages(m.vm)              # clear what booting wrote
        m.start()
        r = m.wait(60)
        assert (r.kind, r.status) == ("exit", 0), output(m)
        pages = m.mem.dirty_pages(m.vm)
        # mode=mem writes every page of RAM above its own image
        assert len(pages) >= (28 << 20) // 4096
        assert all(p % 4096 == 0 and p < (32 << 20) for p in pages)
        assert m.mem.dirty_pages(m.vm) == []  # reading the log resets it


@pytest.mark.parametrize("options", [
    {"mem_prefault": True}, {"mem_lock": True}, {"mem_backing": "thp"},
])
def test_memory_reservation_options(guest_kernel, options):
    size = 64 << 20
    m = boot("mode=hello", mem=size, **options)
    with m:
        if options.get("mem_prefault") or options.get("mem_lock"):
            assert m.mem.resident_bytes() == size
        m.start()
        r = m.wait(20)
    assert (r.kind, r.status) == ("exit", 0), output(m)


def test_guest_ram_is_not_touched_up_front(guest_kernel):
    size = 256 << 20
    m = boot("mode=hello", mem=size)
    with m:
        m.start()
        m.wait(20)
        assert m.mem.resident_bytes() < 16 << 20
