"""vCPU register, CPUID and MSR setup for the 64-bit boot (Intel SDM vol. 3, 9.8.5;
Firecracker `arch/x86_64/regs.rs`, `cpuid`, `msr.rs`)."""
from __future__ import annotations

from kvmm.arch.x86_64 import gdt, layout
from kvmm.ioctl.structs import KvmCpuidEntry2, KvmRegs

# Control register bits
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1

BOOT_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
BOOT_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
BOOT_EFER = EFER_SCE | EFER_LME | EFER_LMA

# MSRs (Intel SDM vol. 4)
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_IA32_TSC = 0x10
MSR_IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRING = 1 << 0

# The software-virtualization ("PVM") KVM module's MSRs (shared/platform/README.md)
MSR_PVM_VIF_PAGE = 0x4B564D10
MSR_PVM_SIGNATURE = 0x4B564D11
PVM_SIGNATURE = 0x4D5650           # "PVM"
PVM_HOST_WRITE_VALID = 1 << 10     # marks a VMM-written VIF page as valid

# CPUID
CPUID_LEAF_FEATURES = 1
CPUID_LEAF_CACHE = 4
CPUID_LEAF_XSAVE = 0xD
CPUID_LEAF_TOPOLOGY = 0xB
CPUID_LEAF_TOPOLOGY_V2 = 0x1F      # Intel SDM: V2 extended topology, x2APIC id in EDX too
CPUID_LEAF_AMD_TOPOLOGY = 0x8000001E   # AMD APM vol. 3: extended APIC id, core and node ids
CPUID_1_ECX_XSAVE = 1 << 26
CPUID_1_ECX_OSXSAVE = 1 << 27
CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_ECX_X2APIC = 1 << 21
CPUID_1_EDX_HTT = 1 << 28
CPUID_7_EBX_AVX512F = 1 << 16

HIDEABLE = {
    # name: (leaf, register, bit mask); leaf 0xD is dropped whole with xsave
    "xsave": (CPUID_LEAF_FEATURES, "ecx", CPUID_1_ECX_XSAVE | CPUID_1_ECX_OSXSAVE),
    "x2apic": (CPUID_LEAF_FEATURES, "ecx", CPUID_1_ECX_X2APIC),
}


def boot_sregs(sregs) -> None:
    """Long mode, paging on the boot identity map, flat segments, empty IDT."""
    code = gdt.segment_from_entry(gdt.SELECTOR_CODE64)
    data = gdt.segment_from_entry(gdt.SELECTOR_DATA)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = gdt.segment_from_entry(gdt.SELECTOR_TSS)
    sregs.gdt.base = layout.BOOT_GDT
    sregs.gdt.limit = len(gdt.ENTRIES) * 8 - 1
    sregs.idt.base = layout.BOOT_IDT
    sregs.idt.limit = 0
    sregs.cr0 = BOOT_CR0
    sregs.cr3 = layout.PML4
    sregs.cr4 = BOOT_CR4
    sregs.efer = BOOT_EFER


def boot_regs(entry: int, boot_params: int) -> KvmRegs:
    return KvmRegs(rip=entry, rsp=layout.BOOT_STACK, rbp=layout.BOOT_STACK,
                   rsi=boot_params, rflags=RFLAGS_RESERVED)


def boot_msrs() -> dict[int, int]:
    return {
        MSR_IA32_SYSENTER_CS: 0, MSR_IA32_SYSENTER_ESP: 0, MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0, MSR_CSTAR: 0, MSR_KERNEL_GS_BASE: 0, MSR_SYSCALL_MASK: 0, MSR_LSTAR: 0,
        MSR_IA32_TSC: 0, MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
    }


# Leaf 0xB/0x1F subleaf level types (Intel SDM vol. 2A, CPUID leaf 0BH: ECX[15:8]).
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2


def _topology_level(e, num_vcpus: int, threads: int) -> None:
    """Leaf 0xB/0x1F subleaf `e.index`: SMT (threads per core), then core (the
    package: every vCPU); EAX the x2APIC id shift to the next level."""
    if e.index == 0:
        e.eax, e.ebx, e.ecx = threads.bit_length() - 1, threads, TOPOLOGY_LEVEL_SMT << 8
    elif e.index == 1:
        e.eax = max(num_vcpus - 1, 0).bit_length()
        e.ebx, e.ecx = num_vcpus, TOPOLOGY_LEVEL_CORE << 8 | 1
    else:
        e.eax = e.ebx = 0
        e.ecx = e.index         # an invalid level ends the enumeration


def vcpu_cpuid(supported: list[KvmCpuidEntry2], index: int, num_vcpus: int,
               hide: frozenset[str] = frozenset(), smt: bool = False
               ) -> list[KvmCpuidEntry2]:
    """The CPUID table for vCPU `index`: KVM's supported set with this vCPU's
    APIC id and topology (with `smt`, vCPUs 2n and 2n+1 are the two threads of
    core n, as Firecracker presents them), the hypervisor bit, and the features
    in `hide` cleared."""
    threads = 2 if smt and num_vcpus > 1 else 1
    unknown = set(hide) - set(HIDEABLE)
    if unknown:
        raise ValueError(f"cannot hide CPU feature(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(HIDEABLE))}")
    out = []
    for src in supported:
        e = KvmCpuidEntry2.from_buffer_copy(src)
        if e.function == CPUID_LEAF_FEATURES:
            # EBX[31:24] initial APIC id, EBX[23:16] logical processors per package
            e.ebx = (e.ebx & 0x0000FFFF) | (index << 24) | (min(num_vcpus, 255) << 16)
            e.ecx |= CPUID_1_ECX_HYPERVISOR
            if num_vcpus > 1:
                e.edx |= CPUID_1_EDX_HTT
        elif e.function in (CPUID_LEAF_TOPOLOGY, CPUID_LEAF_TOPOLOGY_V2):
            _topology_level(e, num_vcpus, threads)
            e.edx = index           # x2APIC id
        elif e.function == CPUID_LEAF_AMD_TOPOLOGY:
            # KVM reports zeros; Linux reads core ids here when TOPOEXT is set.
            # EAX extended APIC id, EBX[7:0] core id, EBX[15:8] threads per
            # core - 1, ECX node 0 of one node per package.
            e.eax = index
            e.ebx = ((index // threads) & 0xFF) | ((threads - 1) << 8)
            e.ecx = 0
        elif e.function == CPUID_LEAF_CACHE:
            # EAX[31:26]: cores per package - 1
            e.eax = (e.eax & 0x03FFFFFF) | ((max(num_vcpus, 1) - 1) << 26)
        elif e.function == CPUID_LEAF_XSAVE and "xsave" in hide:
            continue
        for name in hide:
            leaf, reg, mask = HIDEABLE[name]
            if e.function == leaf:
                setattr(e, reg, getattr(e, reg) & ~mask)
        out.append(e)
    return out


APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_EXTINT = 0b111 << 8
APIC_MODE_NMI = 0b100 << 8


def setup_lapic(vcpu) -> None:
    """LINT0 as ExtINT and LINT1 as NMI, as a BIOS leaves them (Firecracker `interrupts.rs`)."""
    import struct

    from kvmm.ioctl.structs import KvmLapicState
    regs = bytearray(bytes(vcpu.get_lapic()))
    for offset, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", regs, offset)[0]
        struct.pack_into("<I", regs, offset, (value & ~0x700) | mode)
    vcpu.set_lapic(KvmLapicState.from_buffer_copy(regs))


def detect_pvm(vcpu) -> bool:
    """The software-virtualization KVM answers its signature MSR; hardware KVM
    does not know it."""
    try:
        values = vcpu.get_msrs([MSR_PVM_SIGNATURE])
    except OSError:
        return False
    return values.get(MSR_PVM_SIGNATURE) == PVM_SIGNATURE
