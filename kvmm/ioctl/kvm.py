"""Kvm, Vm and Vcpu: one class per KVM file descriptor (after kvm-ioctls).

Each object owns its fd (opened O_CLOEXEC); close() may be called twice;
children are made only by their parents (`Kvm().create_vm()`,
`vm.create_vcpu(i)`). This is the only module that issues KVM ioctls.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os

from kvmm.ioctl import numbers as n
from kvmm.ioctl import structs as s
from kvmm.ioctl.errors import HostNotSupported, KvmError
from kvmm.ioctl.exits import decode_exit

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
_ioctl.restype = ctypes.c_int

KVM_DEVICE = "/dev/kvm"

# Capabilities kvmm cannot run without, each with what it is used for.
REQUIRED_CAPS = (
    (n.KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM memslots"),
    (n.KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel interrupt controllers"),
    (n.KVM_CAP_PIT2, "KVM_CAP_PIT2", "the in-kernel timer (PIT)"),
    (n.KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts without a user-space exit"),
    (n.KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "device notifications without a user-space exit"),
    (n.KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", "GSI routing"),
    (n.KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE", "starting and stopping vCPUs"),
    (n.KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "CPUID setup"),
    (n.KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "pausing vCPUs from another thread"),
)


def ioctl(fd: int, request: int, arg=0, op: str = "ioctl") -> int:
    """Issue one ioctl; raise KvmError with `op` on failure."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(op, ctypes.get_errno())
    return ret


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Kvm:
    """The /dev/kvm system fd."""

    def __init__(self, path: str = KVM_DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostNotSupported(
                f"open {path}", errno.ENOENT,
                "this host has no KVM: load the kvm module (kvm_intel, kvm_amd or kvm_pvm) "
                "or run on a machine or VM with virtualization enabled") from None
        except PermissionError:
            raise HostNotSupported(
                f"open {path}", errno.EACCES,
                f"no permission to use {path}: add this user to the group that owns it "
                "(usually 'kvm') or run as root") from None
        except OSError as e:
            raise HostNotSupported(f"open {path}", e.errno or errno.EIO) from None
        self.path = path
        version = ioctl(self.fd, n.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != n.KVM_API_VERSION:
            self.close()
            raise HostNotSupported("KVM_GET_API_VERSION", errno.ENOTSUP,
                                   f"the kernel speaks KVM API {version}, kvmm needs "
                                   f"{n.KVM_API_VERSION}")
        self._mmap_size = 0

    def close(self) -> None:
        if self.fd >= 0:
            _close_fd(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, n.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def check_required_caps(self) -> None:
        """Raise HostNotSupported naming the first capability kvmm needs and lacks."""
        for cap, name, purpose in REQUIRED_CAPS:
            if self.check_extension(cap) <= 0:
                raise HostNotSupported(
                    "KVM_CHECK_EXTENSION", errno.ENOTSUP,
                    f"this kernel's KVM lacks {name}, needed for {purpose}; "
                    "use a newer kernel")

    def max_vcpus(self) -> int:
        return self.check_extension(n.KVM_CAP_MAX_VCPUS) or self.check_extension(
            n.KVM_CAP_NR_VCPUS) or 4

    def vcpu_mmap_size(self) -> int:
        if not self._mmap_size:
            self._mmap_size = ioctl(self.fd, n.KVM_GET_VCPU_MMAP_SIZE, 0,
                                    "KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def supported_cpuid(self) -> list[s.KvmCpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID: the entries KVM can expose to a guest."""
        buf = s.kvm_cpuid2(n.KVM_MAX_CPUID_ENTRIES)()
        buf.nent = n.KVM_MAX_CPUID_ENTRIES
        ioctl(self.fd, n.KVM_GET_SUPPORTED_CPUID, ctypes.byref(buf), "KVM_GET_SUPPORTED_CPUID")
        return [s.KvmCpuidEntry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def create_vm(self) -> Vm:
        fd = ioctl(self.fd, n.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return Vm(self, fd)


class Vm:
    """A VM fd. Made by Kvm.create_vm()."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        os.set_inheritable(fd, False)

    def close(self) -> None:
        if self.fd >= 0:
            _close_fd(self.fd)
            self.fd = -1

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create_vcpu(self, index: int) -> Vcpu:
        fd = ioctl(self.fd, n.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU({index})")
        try:
            return Vcpu(self, fd, index, self.kvm.vcpu_mmap_size())
        except BaseException:
            _close_fd(fd)
            raise

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        region = s.KvmUserspaceMemoryRegion(slot=slot, flags=flags,
                                            guest_phys_addr=guest_phys_addr,
                                            memory_size=memory_size,
                                            userspace_addr=userspace_addr)
        ioctl(self.fd, n.KVM_SET_USER_MEMORY_REGION, ctypes.byref(region),
              f"KVM_SET_USER_MEMORY_REGION(slot {slot})")

    def get_dirty_log(self, slot: int, bitmap: ctypes.Array) -> None:
        """Fill `bitmap` (one bit per 4 KiB page of the slot) and reset the log."""
        log = s.KvmDirtyLog(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        ioctl(self.fd, n.KVM_GET_DIRTY_LOG, ctypes.byref(log), f"KVM_GET_DIRTY_LOG(slot {slot})")

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, n.KVM_SET_TSS_ADDR, ctypes.c_ulong(addr), "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        value = ctypes.c_uint64(addr)
        ioctl(self.fd, n.KVM_SET_IDENTITY_MAP_ADDR, ctypes.byref(value),
              "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        ioctl(self.fd, n.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = n.KVM_PIT_SPEAKER_DUMMY) -> None:
        config = s.KvmPitConfig(flags=flags)
        ioctl(self.fd, n.KVM_CREATE_PIT2, ctypes.byref(config), "KVM_CREATE_PIT2")

    def set_gsi_routing(self, entries: list[s.KvmIrqRoutingEntry]) -> None:
        table = s.kvm_irq_routing(len(entries))()
        table.nr = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        ioctl(self.fd, n.KVM_SET_GSI_ROUTING, ctypes.byref(table), "KVM_SET_GSI_ROUTING")

    def irq_line(self, irq: int, level: int) -> None:
        line = s.KvmIrqLevel(irq=irq, level=level)
        ioctl(self.fd, n.KVM_IRQ_LINE, ctypes.byref(line), f"KVM_IRQ_LINE({irq})")

    def signal_msi(self, address: int, data: int) -> int:
        msi = s.KvmMsi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return ioctl(self.fd, n.KVM_SIGNAL_MSI, ctypes.byref(msi), "KVM_SIGNAL_MSI")

    def register_irqfd(self, fd: int, gsi: int) -> None:
        req = s.KvmIrqfd(fd=fd, gsi=gsi)
        ioctl(self.fd, n.KVM_IRQFD, ctypes.byref(req), f"KVM_IRQFD(gsi {gsi})")

    def unregister_irqfd(self, fd: int, gsi: int) -> None:
        req = s.KvmIrqfd(fd=fd, gsi=gsi, flags=n.KVM_IRQFD_FLAG_DEASSIGN)
        ioctl(self.fd, n.KVM_IRQFD, ctypes.byref(req), f"KVM_IRQFD(gsi {gsi}, deassign)")

    def _ioeventfd(self, fd: int, addr: int, length: int, datamatch: int | None,
                   pio: bool, deassign: bool) -> None:
        flags = n.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= n.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= n.KVM_IOEVENTFD_FLAG_DEASSIGN
        req = s.KvmIoeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd,
                             flags=flags)
        ioctl(self.fd, n.KVM_IOEVENTFD, ctypes.byref(req),
              f"KVM_IOEVENTFD({'pio' if pio else 'mmio'} {addr:#x})")

    def register_ioeventfd(self, fd: int, addr: int, length: int,
                           datamatch: int | None = None, pio: bool = False) -> None:
        """Make guest writes of `length` bytes at `addr` (matching `datamatch`, if
        given) signal the eventfd `fd` inside the kernel, with no exit to kvmm."""
        self._ioeventfd(fd, addr, length, datamatch, pio, deassign=False)

    def unregister_ioeventfd(self, fd: int, addr: int, length: int,
                             datamatch: int | None = None, pio: bool = False) -> None:
        self._ioeventfd(fd, addr, length, datamatch, pio, deassign=True)


class Vcpu:
    """A vCPU fd and its kvm_run mapping. Made by Vm.create_vcpu()."""

    def __init__(self, vm: Vm, fd: int, index: int, mmap_size: int):
        self.vm = vm
        self.fd = fd
        self.index = index
        os.set_inheritable(fd, False)
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map)
        self.run_struct = s.KvmRun.from_buffer(self._map)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.run_struct = None
        self._view.release()
        try:
            self._map.close()
        except BufferError:
            pass
        _close_fd(self.fd)
        self.fd = -1

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # The run call and its exit. ------------------------------------------
    def run(self):
        """KVM_RUN once; return the typed exit (kvmm.ioctl.exits)."""
        if _ioctl(self.fd, n.KVM_RUN, 0) < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return decode_exit(self.run_struct, self._view, interrupted=True)
            raise KvmError(f"KVM_RUN(vcpu {self.index})", err)
        return decode_exit(self.run_struct, self._view)

    def set_immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    # Register state. -------------------------------------------------------
    def _get(self, request: int, ctype, op: str):
        value = ctype()
        ioctl(self.fd, request, ctypes.byref(value), op)
        return value

    def get_regs(self) -> s.KvmRegs:
        return self._get(n.KVM_GET_REGS, s.KvmRegs, "KVM_GET_REGS")

    def set_regs(self, regs: s.KvmRegs) -> None:
        ioctl(self.fd, n.KVM_SET_REGS, ctypes.byref(regs), "KVM_SET_REGS")

    def get_sregs(self) -> s.KvmSregs:
        return self._get(n.KVM_GET_SREGS, s.KvmSregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: s.KvmSregs) -> None:
        ioctl(self.fd, n.KVM_SET_SREGS, ctypes.byref(sregs), "KVM_SET_SREGS")

    def get_fpu(self) -> s.KvmFpu:
        return self._get(n.KVM_GET_FPU, s.KvmFpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: s.KvmFpu) -> None:
        ioctl(self.fd, n.KVM_SET_FPU, ctypes.byref(fpu), "KVM_SET_FPU")

    def get_lapic(self) -> s.KvmLapicState:
        return self._get(n.KVM_GET_LAPIC, s.KvmLapicState, "KVM_GET_LAPIC")

    def set_lapic(self, lapic: s.KvmLapicState) -> None:
        ioctl(self.fd, n.KVM_SET_LAPIC, ctypes.byref(lapic), "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        return self._get(n.KVM_GET_MP_STATE, s.KvmMpState, "KVM_GET_MP_STATE").mp_state

    def set_mp_state(self, state: int) -> None:
        value = s.KvmMpState(mp_state=state)
        ioctl(self.fd, n.KVM_SET_MP_STATE, ctypes.byref(value), "KVM_SET_MP_STATE")

    def set_cpuid2(self, entries: list[s.KvmCpuidEntry2]) -> None:
        table = s.kvm_cpuid2(len(entries))()
        table.nent = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        ioctl(self.fd, n.KVM_SET_CPUID2, ctypes.byref(table), "KVM_SET_CPUID2")

    def set_msrs(self, msrs: dict[int, int]) -> int:
        """KVM_SET_MSRS; returns how many were set (KVM stops at the first it rejects)."""
        table = s.kvm_msrs(len(msrs))()
        table.nmsrs = len(msrs)
        for i, (index, data) in enumerate(msrs.items()):
            table.entries[i].index = index
            table.entries[i].data = data
        return ioctl(self.fd, n.KVM_SET_MSRS, ctypes.byref(table), "KVM_SET_MSRS")

    def get_msrs(self, indexes: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM does not know are left out of the result."""
        table = s.kvm_msrs(len(indexes))()
        table.nmsrs = len(indexes)
        for i, index in enumerate(indexes):
            table.entries[i].index = index
        count = ioctl(self.fd, n.KVM_GET_MSRS, ctypes.byref(table), "KVM_GET_MSRS")
        return {table.entries[i].index: table.entries[i].data for i in range(count)}
