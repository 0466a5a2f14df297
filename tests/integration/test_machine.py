"""The lifecycle (kvmm.vmm.Vmm) in-process: several VMs in one process,
pause/resume/stop from another thread, and no leaked file descriptors or
threads over many boots."""
import os
import threading
import time

import pytest

from kvmm import builder
from kvmm.spec import BootSourceSpec, HostSpec, MachineSpec, VmSpec
from kvmm.vmm import NOT_STARTED, PAUSED, RUNNING, STOPPED, ActionError, Vmm

pytestmark = pytest.mark.kvm


def vm_spec(kernel: str, cmdline: str, vcpus: int = 1, mem_mib: int = 64,
            dirty_log: bool = False, **host) -> VmSpec:
    return VmSpec(boot_source=BootSourceSpec(kernel_image_path=kernel, boot_args=cmdline),
                  machine=MachineSpec(vcpu_count=vcpus, mem_size_mib=mem_mib,
                                      track_dirty_pages=dirty_log),
                  host=HostSpec(console="none", **host))


def boot(kernel: str, cmdline: str, **kw) -> Vmm:
    """A started guest whose console is captured; close() it."""
    vmm = Vmm(vm_spec(kernel, cmdline, **kw), console_capture=True)
    try:
        vmm.instance_start()
    except BaseException:
        vmm.close()
        raise
    return vmm


def output(vmm: Vmm) -> str:
    return bytes(vmm.machine.console.captured).decode()


def verdict(vmm: Vmm) -> str:
    lines = [line for line in output(vmm).splitlines() if line.startswith("RESULT ")]
    assert lines, output(vmm)
    return lines[-1]


def test_two_vms_in_one_process(guest_kernel):
    with boot(guest_kernel, "mode=smp iters=200000", vcpus=2) as a, \
            boot(guest_kernel, "mode=hello") as b:
        assert a.state == b.state == RUNNING
        ra, rb = a.wait(60), b.wait(60)
        assert a.state == b.state == STOPPED
        assert (ra.kind, ra.status) == ("exit", 0), (ra, output(a))
        assert (rb.kind, rb.status) == ("exit", 0), (rb, output(b))
        assert verdict(a).startswith("RESULT smp PASS") and "sum=400000" in verdict(a)
        assert verdict(b).startswith("RESULT hello PASS")
        assert a.machine.loop is not b.machine.loop        # each its own event loop


def test_pause_resume_stop_from_another_thread(guest_kernel):
    with boot(guest_kernel, "mode=timer ticks=1000000 period_us=1000") as vmm:
        time.sleep(0.3)
        result = {}

        def control():
            vmm.pause()
            result["state"] = vmm.state
            result["info"] = vmm.instance_info()["state"]
            time.sleep(0.2)
            result["rip"] = vmm.machine.vcpus[0].get_regs().rip
            vmm.resume()
            result["resumed"] = vmm.state
            time.sleep(0.2)
            vmm.stop(7, "test stop")

        t = threading.Thread(target=control)
        t.start()
        reason = vmm.wait(20)
        t.join()
        with pytest.raises(ActionError, match="not running"):
            vmm.pause()
    assert result == {"state": PAUSED, "info": "Paused", "rip": result["rip"],
                      "resumed": RUNNING}
    assert result["rip"] >= 0x100000
    assert (reason.kind, reason.status, reason.message) == ("stopped", 7, "test stop")


def test_start_twice_is_refused(guest_kernel):
    vmm = Vmm(vm_spec(guest_kernel, "mode=hello"), console_capture=True)
    with vmm:
        assert vmm.state == NOT_STARTED
        vmm.instance_start()
        with pytest.raises(ActionError, match="already running"):
            vmm.instance_start()
        assert vmm.wait(20).kind == "exit"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fifty_boots_leak_nothing(guest_kernel):
    # One warm-up boot: the first creates lazily-made process-wide objects.
    with boot(guest_kernel, "mode=hello") as vmm:
        vmm.wait(20)
    fds, threads = _open_fds(), threading.active_count()
    for i in range(50):
        with boot(guest_kernel, "mode=hello") as vmm:
            r = vmm.wait(20)
            assert (r.kind, r.status) == ("exit", 0), (i, r, output(vmm))
    assert _open_fds() == fds
    assert threading.active_count() == threads


def test_dirty_log_sees_the_pages_the_guest_wrote(guest_kernel):
    """Built with the builder directly: the log is read once between building
    and starting (Vmm.instance_start does both at once)."""
    from kvmm.eventloop import EventLoop
    spec = vm_spec(guest_kernel, "mode=mem", mem_mib=32, dirty_log=True)
    loop = EventLoop("kvmm-io")
    try:
        with builder.build(spec, builder.prepare(spec), loop, console_capture=True) as m:
            m.mem.dirty_pages(m.vm)              # clear what booting wrote
            loop.start()
            m.start()
            r = m.wait(60)
            assert (r.kind, r.status) == ("exit", 0), bytes(m.console.captured).decode()
            pages = m.mem.dirty_pages(m.vm)
            # mode=mem writes every page of RAM above its own image
            assert len(pages) >= (28 << 20) // 4096
            assert all(p % 4096 == 0 and p < (32 << 20) for p in pages)
            assert m.mem.dirty_pages(m.vm) == []  # reading the log resets it
    finally:
        loop.close()


@pytest.mark.parametrize("options", [
    {"mem_prefault": True}, {"mem_lock": True}, {"mem_backing": "thp"},
])
def test_memory_reservation_options(guest_kernel, options):
    size = 64 << 20
    with boot(guest_kernel, "mode=hello", mem_mib=size >> 20, **options) as vmm:
        if options.get("mem_prefault") or options.get("mem_lock"):
            assert vmm.machine.mem.resident_bytes() == size
        r = vmm.wait(20)
        assert (r.kind, r.status) == ("exit", 0), output(vmm)


def test_guest_ram_is_not_touched_up_front(guest_kernel):
    size = 256 << 20
    with boot(guest_kernel, "mode=hello", mem_mib=size >> 20) as vmm:
        vmm.wait(20)
        assert vmm.machine.mem.resident_bytes() < 16 << 20
        assert vmm.stats()["memory"]["guest_ram"] == size
