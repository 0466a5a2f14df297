"""KVM ioctl request numbers and constants (include/uapi/linux/kvm.h).

Numbers are computed the way <asm-generic/ioctl.h> does, from the sizes of the
ctypes structs in `structs`, so a wrong struct shows up as a wrong number in
the unit tests.
"""
import ctypes

from kvmm.ioctl import structs as s

# asm-generic/ioctl.h
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(ctype))


def _IOW(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def _IOWR(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


KVMIO = 0xAE
KVM_API_VERSION = 12

# System ioctls (on /dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, s.kvm_cpuid2(0))
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, ctypes.c_uint32)

# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, s.KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, s.KvmIrqLevel)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, s.kvm_irq_routing(0))
KVM_IRQFD = _IOW(KVMIO, 0x76, s.KvmIrqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, s.KvmPitConfig)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, s.KvmIoeventfd)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, s.KvmMsi)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, s.KvmEnableCap)

# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, s.KvmRegs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, s.KvmRegs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, s.KvmSregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, s.KvmSregs)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, s.kvm_msrs(0))
KVM_SET_MSRS = _IOW(KVMIO, 0x89, s.kvm_msrs(0))
KVM_GET_FPU = _IOR(KVMIO, 0x8C, s.KvmFpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, s.KvmFpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, s.KvmLapicState)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, s.KvmLapicState)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, s.kvm_cpuid2(0))
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, s.kvm_cpuid2(0))
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, s.KvmMpState)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, s.KvmMpState)

# Capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# Exit reasons (kvm_run.exit_reason)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# Flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_PIT_SPEAKER_DUMMY = 1
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

KVM_MAX_CPUID_ENTRIES = 256  # arch/x86/include/asm/kvm_host.h
