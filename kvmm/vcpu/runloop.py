"""The vCPU thread: run, dispatch the exit to a bus, repeat (after Firecracker's
`vstate/vcpu` and kvmtool's `kvm-cpu.c`).

The loop only dispatches: port I/O to the PIO bus, MMIO to the MMIO bus,
interruptions to the machine's control (pause/stop); every other exit is fatal
and stops the VM with a register dump.
"""
from __future__ import annotations

import os
import threading

from kvmm.ioctl import KvmError
from kvmm.ioctl import exits as x
from kvmm.procname import set_thread_name


class VcpuThread(threading.Thread):
    """Runs one vCPU. `machine` provides pio_bus, mmio_bus, stopping,
    vcpu_interrupted(vcpu) and fatal(vcpu, reason)."""

    def __init__(self, machine, vcpu, name: str | None = None):
        super().__init__(name=name or f"kvmm-vcpu{vcpu.index}", daemon=True)
        self.machine = machine
        self.vcpu = vcpu
        self.exits = 0
        self.affinity: set = set()     # host CPUs this vCPU may run on

    def run(self) -> None:
        m = self.machine
        vcpu = self.vcpu
        pio, mmio = m.pio_bus, m.mmio_bus
        IoOut, IoIn, MmioWrite, MmioRead, Interrupted = (
            x.IoOut, x.IoIn, x.MmioWrite, x.MmioRead, x.Interrupted)
        run = vcpu.run
        exits = 0
        set_thread_name(self.name)     # what ps and pgrep see (e.g. "fc_vcpu 0")
        pin = m.cpu_pin
        if pin is not None:
            os.sched_setaffinity(0, {pin[vcpu.index]})     # 0: this thread
        self.affinity = os.sched_getaffinity(0)
        from kvmm.jail.seccomp import seal_thread
        seal_thread("vcpu")           # docs/seal.md: before the first KVM_RUN
        try:
            while not m.stopping:
                ex = run()
                exits += 1
                kind = ex.__class__
                if kind is IoOut:
                    if ex.count == 1:
                        pio.write(ex.port, ex.data)
                    else:
                        pio.write_string(ex.port, ex.size, ex.data)
                elif kind is MmioWrite:
                    mmio.write(ex.addr, ex.data)
                elif kind is MmioRead:
                    mmio.read(ex.addr, ex.data)
                elif kind is IoIn:
                    if ex.count == 1:
                        pio.read(ex.port, ex.data)
                    else:
                        pio.read_string(ex.port, ex.size, ex.data)
                elif kind is Interrupted:
                    if not m.vcpu_interrupted(vcpu):
                        break
                elif kind is x.Shutdown:
                    m.fatal(vcpu, "the guest shut down the CPU (triple fault)")
                    break
                elif kind is x.FailEntry:
                    m.fatal(vcpu, "KVM could not enter the guest (FAIL_ENTRY, hardware "
                                  f"reason {ex.hardware_entry_failure_reason:#x})")
                    break
                elif kind is x.InternalError:
                    m.fatal(vcpu, f"KVM internal error (suberror {ex.suberror}, data "
                                  f"{' '.join(hex(d) for d in ex.data)})")
                    break
                elif kind is x.SystemEvent:
                    m.system_event(vcpu, ex.type)
                    break
                elif kind is x.Hlt:
                    m.fatal(vcpu, "the vCPU halted with no interrupt controller to wake it")
                    break
                else:
                    m.fatal(vcpu, f"unhandled exit {ex!r}")
                    break
        except x.UnknownExit as e:
            m.fatal(vcpu, str(e))
        except KvmError as e:
            m.fatal(vcpu, str(e))
        except Exception as e:  # a device bug must stop this VM, visibly
            import logging
            logging.getLogger(__name__).exception("vcpu%d: device error", vcpu.index)
            m.fatal(vcpu, f"internal error in kvmm handling an exit: {e!r}")
        finally:
            self.exits = exits
