"""The Intel MultiProcessor Specification 1.4 table (chapter 4), as Firecracker writes it.

It tells a guest how many CPUs it has, their APIC ids, the IOAPIC and the ISA
interrupt routing. Placed in the last KiB of base memory, where guests search.
"""
import struct

from kvmm.arch.x86_64 import layout

MPF_SIGNATURE = b"_MP_"
MPC_SIGNATURE = b"PCMP"
MP_SPEC_REV = 4                # 1.4
APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
CPU_ENABLED = 0b01
CPU_BOOTPROCESSOR = 0b10
CPU_FEATURES = 0x600           # family 6
CPU_FEATURE_FLAGS = (1 << 9) | (1 << 0)   # APIC, FPU
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_INTSRC, ENTRY_LINTSRC = 0, 1, 2, 3, 4
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
IOAPIC_PINS = 24
MAX_TABLE_SIZE = layout.LOW_RAM_END - layout.MPTABLE


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def ioapic_id(num_cpus: int) -> int:
    return num_cpus + 1


def build_mptable(num_cpus: int, base: int = layout.MPTABLE) -> bytes:
    """The floating pointer followed by the configuration table, for `base`."""
    if not 1 <= num_cpus <= 254:
        raise ValueError(f"the MP table describes 1 to 254 CPUs, not {num_cpus}")
    entries = []
    for cpu in range(num_cpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", ENTRY_PROCESSOR, cpu, APIC_VERSION, flags,
                                   CPU_FEATURES, CPU_FEATURE_FLAGS))
    entries.append(struct.pack("<BB6s", ENTRY_BUS, 0, b"ISA   "))
    ioapic = ioapic_id(num_cpus)
    entries.append(struct.pack("<BBBBI", ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1,
                               layout.IOAPIC_BASE))
    for pin in range(IOAPIC_PINS):
        entries.append(struct.pack("<BBHBBBB", ENTRY_INTSRC, MP_INT, 0, 0, pin, ioapic, pin))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LINTSRC, MP_EXTINT, 0, 0, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LINTSRC, MP_NMI, 0, 0, 0, 0xFF, 1))
    body = b"".join(entries)
    header_size = 44
    length = header_size + len(body)
    header = struct.pack("<4sHBB8s12sIHHII", MPC_SIGNATURE, length, MP_SPEC_REV, 0,
                         b"KVMM    ", b"KVMM-MPTABLE", 0, 0, len(entries),
                         layout.LAPIC_BASE, 0)
    table = header + body
    table = table[:7] + bytes([_checksum(table)]) + table[8:]
    mpf = struct.pack("<4sIBBB5x", MPF_SIGNATURE, base + 16, 1, MP_SPEC_REV, 0)
    mpf = mpf[:10] + bytes([_checksum(mpf)]) + mpf[11:]
    out = mpf + table
    if len(out) > MAX_TABLE_SIZE:
        raise ValueError(f"the MP table for {num_cpus} CPUs does not fit below 640 KiB")
    return out
