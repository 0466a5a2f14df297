"""The ctypes bindings against the kernel's uapi (values from <linux/kvm.h>, x86_64)."""
import ctypes

import pytest

from kvmm.ioctl import numbers as n
from kvmm.ioctl import structs as s

IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48, "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42, "KVM_CREATE_IRQCHIP": 0xAE60, "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_SET_GSI_ROUTING": 0x4008AE6A, "KVM_IRQFD": 0x4020AE76, "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_IOEVENTFD": 0x4040AE79, "KVM_SIGNAL_MSI": 0x4020AEA5, "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82, "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84, "KVM_GET_MSRS": 0xC008AE88, "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_FPU": 0x81A0AE8C, "KVM_SET_FPU": 0x41A0AE8D, "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F, "KVM_SET_CPUID2": 0x4008AE90, "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_GET_MP_STATE": 0x8004AE98, "KVM_SET_MP_STATE": 0x4004AE99,
    "KVM_ENABLE_CAP": 0x4068AEA3,
}

SIZES = {
    s.KvmRegs: 144, s.KvmSregs: 312, s.KvmSegment: 24, s.KvmDtable: 16, s.KvmFpu: 416,
    s.KvmMsrEntry: 16, s.KvmCpuidEntry2: 40, s.KvmLapicState: 1024,
    s.KvmUserspaceMemoryRegion: 32, s.KvmIrqfd: 32, s.KvmIoeventfd: 64,
    s.KvmIrqRoutingEntry: 48, s.KvmPitConfig: 64, s.KvmMpState: 4, s.KvmDirtyLog: 16,
    s.KvmIrqLevel: 8, s.KvmMsi: 32, s.KvmEnableCap: 104,
}

OFFSETS = [
    (s.KvmRun, "immediate_exit", 1), (s.KvmRun, "exit_reason", 8), (s.KvmRun, "exit", 32),
    (s.KvmRun, "kvm_valid_regs", 288),
    (s.KvmSregs, "gdt", 192), (s.KvmSregs, "cr0", 224), (s.KvmSregs, "efer", 264),
    (s.KvmSregs, "apic_base", 272), (s.KvmSregs, "interrupt_bitmap", 280),
    (s.KvmFpu, "last_ip", 136), (s.KvmFpu, "xmm", 152), (s.KvmFpu, "mxcsr", 408),
    (s.KvmIoeventfd, "len", 16), (s.KvmIoeventfd, "fd", 20), (s.KvmIoeventfd, "flags", 24),
    (s.KvmIrqRoutingEntry, "u", 16), (s.KvmSegment, "type", 14),
    (s.KvmSegment, "unusable", 22),
]


@pytest.mark.parametrize("name,value", sorted(IOCTLS.items()))
def test_ioctl_numbers(name, value):
    assert getattr(n, name) == value, f"{name} = {getattr(n, name):#x}, kernel has {value:#x}"


@pytest.mark.parametrize("ctype,size", SIZES.items(), ids=lambda v: getattr(v, "__name__", v))
def test_struct_sizes(ctype, size):
    assert ctypes.sizeof(ctype) == size


@pytest.mark.parametrize("ctype,field,offset", OFFSETS,
                         ids=[f"{c.__name__}.{f}" for c, f, _ in OFFSETS])
def test_field_offsets(ctype, field, offset):
    assert getattr(ctype, field).offset == offset


def test_exit_union_members():
    # io and mmio members of kvm_run: offsets of the uapi union members.
    assert s.KvmRun.exit.offset + s.KvmRunIo.data_offset.offset == 40
    assert s.KvmRun.exit.offset + s.KvmRunMmio.data.offset == 40
    assert s.KvmRun.exit.offset + s.KvmRunMmio.len.offset == 48
    assert s.KvmRun.exit.offset + s.KvmRunMmio.is_write.offset == 52
    assert s.KvmRun.exit.offset + s.KvmRunInternal.ndata.offset == 36
    assert s.KvmRun.exit.offset + s.KvmRunFailEntry.cpu.offset == 40


def test_flexible_arrays():
    assert ctypes.sizeof(s.kvm_msrs(0)) == 8
    assert ctypes.sizeof(s.kvm_msrs(3)) == 8 + 3 * 16
    assert ctypes.sizeof(s.kvm_cpuid2(2)) == 8 + 2 * 40
    assert ctypes.sizeof(s.kvm_irq_routing(1)) == 8 + 48


def test_ioc_rejects_oversized_argument():
    with pytest.raises(ValueError):
        n._IOC(n._IOC_READ, n.KVMIO, 1, 1 << 14)


def test_capability_and_exit_constants():
    assert (n.KVM_CAP_IRQCHIP, n.KVM_CAP_IRQFD, n.KVM_CAP_IOEVENTFD, n.KVM_CAP_PIT2) == (
        0, 32, 36, 33)
    assert (n.KVM_CAP_IMMEDIATE_EXIT, n.KVM_CAP_SIGNAL_MSI, n.KVM_CAP_MAX_VCPUS) == (136, 77, 66)
    assert (n.KVM_EXIT_IO, n.KVM_EXIT_HLT, n.KVM_EXIT_MMIO, n.KVM_EXIT_SHUTDOWN,
            n.KVM_EXIT_FAIL_ENTRY, n.KVM_EXIT_INTR, n.KVM_EXIT_INTERNAL_ERROR,
            n.KVM_EXIT_SYSTEM_EVENT) == (2, 5, 6, 8, 9, 10, 17, 24)
