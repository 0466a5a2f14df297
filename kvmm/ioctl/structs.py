"""ctypes mirrors of the KVM uapi structures (include/uapi/linux/kvm.h, x86_64).

Every struct here names the uapi struct it mirrors; tests/unit/test_bindings.py
pins sizes and offsets to the kernel's values.
"""
import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

__all__ = [
    "KvmRegs", "KvmSegment", "KvmDtable", "KvmSregs", "KvmFpu", "KvmMsrEntry",
    "KvmCpuidEntry2", "KvmLapicState", "KvmUserspaceMemoryRegion", "KvmIrqfd",
    "KvmIoeventfd", "KvmIrqRoutingIrqchip", "KvmIrqRoutingMsi", "KvmIrqRoutingEntry",
    "KvmPitConfig", "KvmMpState", "KvmDirtyLog", "KvmIrqLevel", "KvmMsi", "KvmRun",
    "KvmRunIo", "KvmRunMmio", "KvmRunFailEntry", "KvmRunInternal", "KvmRunSystemEvent",
    "KvmEnableCap", "kvm_msrs", "kvm_cpuid2", "kvm_irq_routing",
]


class KvmRegs(ctypes.Structure):
    """struct kvm_regs (arch/x86/include/uapi/asm/kvm.h)."""
    _fields_ = [(name, c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class KvmSegment(ctypes.Structure):
    """struct kvm_segment."""
    _fields_ = [
        ("base", c_uint64), ("limit", c_uint32), ("selector", c_uint16),
        ("type", c_uint8), ("present", c_uint8), ("dpl", c_uint8), ("db", c_uint8),
        ("s", c_uint8), ("l", c_uint8), ("g", c_uint8), ("avl", c_uint8),
        ("unusable", c_uint8), ("padding", c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    """struct kvm_dtable."""
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class KvmSregs(ctypes.Structure):
    """struct kvm_sregs."""
    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64),
        ("cr8", c_uint64), ("efer", c_uint64), ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * 4),
    ]


class KvmFpu(ctypes.Structure):
    """struct kvm_fpu."""
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8), ("fcw", c_uint16), ("fsw", c_uint16),
        ("ftwx", c_uint8), ("pad1", c_uint8), ("last_opcode", c_uint16),
        ("last_ip", c_uint64), ("last_dp", c_uint64), ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32), ("pad2", c_uint32),
    ]


class KvmMsrEntry(ctypes.Structure):
    """struct kvm_msr_entry."""
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class KvmCpuidEntry2(ctypes.Structure):
    """struct kvm_cpuid_entry2."""
    _fields_ = [
        ("function", c_uint32), ("index", c_uint32), ("flags", c_uint32),
        ("eax", c_uint32), ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class KvmLapicState(ctypes.Structure):
    """struct kvm_lapic_state (KVM_APIC_REG_SIZE = 0x400)."""
    _fields_ = [("regs", ctypes.c_char * 0x400)]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """struct kvm_userspace_memory_region."""
    _fields_ = [
        ("slot", c_uint32), ("flags", c_uint32), ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64), ("userspace_addr", c_uint64),
    ]


class KvmIrqfd(ctypes.Structure):
    """struct kvm_irqfd."""
    _fields_ = [
        ("fd", c_uint32), ("gsi", c_uint32), ("flags", c_uint32),
        ("resamplefd", c_uint32), ("pad", c_uint8 * 16),
    ]


class KvmIoeventfd(ctypes.Structure):
    """struct kvm_ioeventfd."""
    _fields_ = [
        ("datamatch", c_uint64), ("addr", c_uint64), ("len", c_uint32),
        ("fd", c_int32), ("flags", c_uint32), ("pad", c_uint8 * 36),
    ]


class KvmIrqRoutingIrqchip(ctypes.Structure):
    """struct kvm_irq_routing_irqchip."""
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class KvmIrqRoutingMsi(ctypes.Structure):
    """struct kvm_irq_routing_msi."""
    _fields_ = [
        ("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32),
        ("devid", c_uint32),
    ]


class _KvmIrqRoutingUnion(ctypes.Union):
    _fields_ = [("irqchip", KvmIrqRoutingIrqchip), ("msi", KvmIrqRoutingMsi),
                ("pad", c_uint32 * 8)]


class KvmIrqRoutingEntry(ctypes.Structure):
    """struct kvm_irq_routing_entry."""
    _fields_ = [
        ("gsi", c_uint32), ("type", c_uint32), ("flags", c_uint32), ("pad", c_uint32),
        ("u", _KvmIrqRoutingUnion),
    ]


class KvmPitConfig(ctypes.Structure):
    """struct kvm_pit_config."""
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class KvmMpState(ctypes.Structure):
    """struct kvm_mp_state."""
    _fields_ = [("mp_state", c_uint32)]


class KvmDirtyLog(ctypes.Structure):
    """struct kvm_dirty_log (the bitmap pointer shares a union with a u64)."""
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class KvmIrqLevel(ctypes.Structure):
    """struct kvm_irq_level."""
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class KvmMsi(ctypes.Structure):
    """struct kvm_msi."""
    _fields_ = [
        ("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32),
        ("flags", c_uint32), ("devid", c_uint32), ("pad", c_uint8 * 12),
    ]


class KvmEnableCap(ctypes.Structure):
    """struct kvm_enable_cap."""
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4),
                ("pad", c_uint8 * 64)]


class KvmRunIo(ctypes.Structure):
    """struct kvm_run, member io (KVM_EXIT_IO)."""
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16),
                ("count", c_uint32), ("data_offset", c_uint64)]


class KvmRunMmio(ctypes.Structure):
    """struct kvm_run, member mmio (KVM_EXIT_MMIO)."""
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32),
                ("is_write", c_uint8)]


class KvmRunFailEntry(ctypes.Structure):
    """struct kvm_run, member fail_entry (KVM_EXIT_FAIL_ENTRY)."""
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class KvmRunInternal(ctypes.Structure):
    """struct kvm_run, member internal (KVM_EXIT_INTERNAL_ERROR)."""
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class KvmRunSystemEvent(ctypes.Structure):
    """struct kvm_run, member system_event (KVM_EXIT_SYSTEM_EVENT)."""
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _KvmRunExit(ctypes.Union):
    _fields_ = [
        ("io", KvmRunIo), ("mmio", KvmRunMmio), ("fail_entry", KvmRunFailEntry),
        ("internal", KvmRunInternal), ("system_event", KvmRunSystemEvent),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(ctypes.Structure):
    """struct kvm_run: the header and the exit union (the rest of the mapping,
    the synced registers, is not used)."""
    _fields_ = [
        ("request_interrupt_window", c_uint8), ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6), ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8), ("if_flag", c_uint8),
        ("flags", c_uint16), ("cr8", c_uint64), ("apic_base", c_uint64),
        ("exit", _KvmRunExit),
        ("kvm_valid_regs", c_uint64), ("kvm_dirty_regs", c_uint64),
    ]


def _flexible(name: str, header: str, entry_type: type, count: int) -> type:
    """A uapi struct with a u32 count, a u32 pad and a flexible entry array."""
    return type(name, (ctypes.Structure,), {
        "_fields_": [(header, c_uint32), ("pad", c_uint32), ("entries", entry_type * count)],
        "__doc__": f"struct {name} with room for {count} entries.",
    })


def kvm_msrs(count: int) -> type:
    """struct kvm_msrs with `count` struct kvm_msr_entry."""
    return _flexible("kvm_msrs", "nmsrs", KvmMsrEntry, count)


def kvm_cpuid2(count: int) -> type:
    """struct kvm_cpuid2 with `count` struct kvm_cpuid_entry2."""
    return _flexible("kvm_cpuid2", "nent", KvmCpuidEntry2, count)


def kvm_irq_routing(count: int) -> type:
    """struct kvm_irq_routing with `count` struct kvm_irq_routing_entry."""
    return _flexible("kvm_irq_routing", "nr", KvmIrqRoutingEntry, count)
