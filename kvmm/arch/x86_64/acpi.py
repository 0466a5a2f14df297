"""ACPI tables for a stock Linux guest (ACPI 6.5; the set Firecracker writes).

    RSDP  (5.2.5)  at layout.ACPI_RSDP, in the BIOS area Linux scans, and in
                   the zero page (boot_params.acpi_rsdp_addr, boot protocol 2.14)
    XSDT  (5.2.8)  -> FADT, MADT
    FADT  (5.2.9)  hardware-reduced ACPI (no PM timer, no SCI, no legacy PIC
                   set-up by the guest), reset register = the i8042 reset
                   (port 0x64, value 0xfe), sleep control/status registers =
                   kvmm's power port, so the guest's poweroff (S5) ends kvmm
    DSDT  (5.2.11) COM1 (PNP0501), one LNRO0005 device per virtio-mmio slot
                   with its registers and interrupt, and \\_S5 for poweroff
    MADT  (5.2.12) one local APIC per vCPU (ids 0..n-1), the IOAPIC with GSI
                   base 0, LINT1 as NMI; no interrupt source overrides: KVM's
                   default routing sends ISA IRQ n to IOAPIC pin n, which is
                   what ACPI assumes where no override exists

The virtio-mmio devices come in as (base, size, irq) triples. Everything is
written into [layout.ACPI_START, layout.ACPI_END), which the e820 map reports
reserved.
"""
from __future__ import annotations

import struct

from kvmm.arch.x86_64 import aml, layout, mptable
from kvmm.devices.acpi_sleep import SLEEP_TYPE_S5   # the SLP_TYP value \_S5 announces

OEM_ID = b"KVMM  "
OEM_REVISION = 1
CREATOR_ID = b"KVMM"
CREATOR_REVISION = 1
HEADER = struct.Struct("<4sIBB6s8sI4sI")      # 5.2.6 System Description Table Header, 36 bytes
GAS = struct.Struct("<BBBBQ")                  # 5.2.3.2 Generic Address Structure, 12 bytes

RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2
RSDP_V1_LENGTH = 20
RSDP_LENGTH = 36
RSDP = struct.Struct("<8sB6sBIIQB3x")

XSDT_REVISION = 1
FADT_REVISION = 6
FADT_MINOR_REVISION = 5
FADT_LENGTH = 276
MADT_REVISION = 5
DSDT_REVISION = 2          # 64-bit integers in AML
TABLE_ALIGN = 16

# FADT offsets (ACPI 6.5, Table 5.9)
FADT_SCI_INT = 46
FADT_IAPC_BOOT_ARCH = 109
FADT_FLAGS = 112
FADT_RESET_REG = 116
FADT_RESET_VALUE = 128
FADT_MINOR_VERSION = 131
FADT_X_DSDT = 140
FADT_SLEEP_CONTROL_REG = 244
FADT_SLEEP_STATUS_REG = 256
FADT_HYPERVISOR_VENDOR = 268
HYPERVISOR_VENDOR_ID = b"KVMMKVMM"

# FADT fixed feature flags (Table 5.10)
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_PWR_BUTTON = 1 << 4        # set: no fixed-feature power button
FADT_F_SLP_BUTTON = 1 << 5
FADT_F_HW_REDUCED_ACPI = 1 << 20
# IA-PC boot architecture flags (Table 5.11); 8042 and LEGACY_DEVICES left clear
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_MSI_NOT_SUPPORTED = 1 << 3
IAPC_PCIE_ASPM_CONTROLS = 1 << 4
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5

# Generic Address Structure
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1

# MADT (5.2.12)
MADT_LOCAL_APIC = 0
MADT_IOAPIC = 1
MADT_LOCAL_APIC_NMI = 4
MADT_LAPIC_ENABLED = 0b1
MADT_ALL_PROCESSORS = 0xFF
MPS_INTI_FLAGS_CONFORMS = 0
APIC_LINT1 = 1

# i8042 reset, the same line kvmm's I8042 device implements
I8042_RESET_VALUE = 0xFE

HID_VIRTIO_MMIO = "LNRO0005"      # drivers/virtio/virtio_mmio.c, virtio_mmio_acpi_match
HID_COM = "PNP0501"               # 16550A-compatible COM port
COM1_UID = 1
SERIAL_REGISTERS = 8


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` sum to zero mod 256 (5.2.6)."""
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, table_id: bytes, body: bytes) -> bytes:
    """A table with its header and checksum."""
    if len(signature) != 4 or len(table_id) != 8:
        raise ValueError("ACPI signatures are 4 bytes and table ids 8")
    length = HEADER.size + len(body)
    header = HEADER.pack(signature, length, revision, 0, OEM_ID, table_id, OEM_REVISION,
                         CREATOR_ID, CREATOR_REVISION)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def gas_io(port: int, width_bits: int = 8) -> bytes:
    return GAS.pack(GAS_SYSTEM_IO, width_bits, 0, GAS_ACCESS_BYTE, port)


def build_rsdp(xsdt_addr: int) -> bytes:
    data = bytearray(RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, 0, RSDP_LENGTH,
                               xsdt_addr, 0))
    data[8] = checksum(data[:RSDP_V1_LENGTH])
    data[32] = checksum(data)
    return bytes(data)


def build_xsdt(tables: list[int]) -> bytes:
    return sdt(b"XSDT", XSDT_REVISION, b"KVMMXSDT", struct.pack(f"<{len(tables)}Q", *tables))


def build_fadt(dsdt_addr: int, power_port: int) -> bytes:
    body = bytearray(FADT_LENGTH - HEADER.size)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into(fmt, body, offset - HEADER.size, *values)

    put(FADT_SCI_INT, "<H", 0)
    put(FADT_IAPC_BOOT_ARCH, "<H", IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED
        | IAPC_PCIE_ASPM_CONTROLS | IAPC_CMOS_RTC_NOT_PRESENT)
    put(FADT_FLAGS, "<I", FADT_F_HW_REDUCED_ACPI | FADT_F_RESET_REG_SUP | FADT_F_PWR_BUTTON
        | FADT_F_SLP_BUTTON)
    body[FADT_RESET_REG - HEADER.size:FADT_RESET_REG - HEADER.size + GAS.size] = \
        gas_io(layout.PORT_I8042_CMD)
    put(FADT_RESET_VALUE, "<B", I8042_RESET_VALUE)
    put(FADT_MINOR_VERSION, "<B", FADT_MINOR_REVISION)
    put(FADT_X_DSDT, "<Q", dsdt_addr)
    for offset in (FADT_SLEEP_CONTROL_REG, FADT_SLEEP_STATUS_REG):
        body[offset - HEADER.size:offset - HEADER.size + GAS.size] = gas_io(power_port)
    body[FADT_HYPERVISOR_VENDOR - HEADER.size:] = HYPERVISOR_VENDOR_ID
    return sdt(b"FACP", FADT_REVISION, b"KVMMFACP", bytes(body))


def build_madt(num_cpus: int) -> bytes:
    if not 1 <= num_cpus <= 255:
        raise ValueError(f"the MADT describes 1 to 255 local APICs with 8-bit ids, "
                         f"not {num_cpus}")
    body = struct.pack("<II", layout.LAPIC_BASE, 0)
    for cpu in range(num_cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, MADT_LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, mptable.ioapic_id(num_cpus), 0,
                        layout.IOAPIC_BASE, 0)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, MADT_ALL_PROCESSORS,
                        MPS_INTI_FLAGS_CONFORMS, APIC_LINT1)
    return sdt(b"APIC", MADT_REVISION, b"KVMMMADT", body)


def dsdt_aml(virtio: list[tuple[int, int, int]]) -> bytes:
    """The DSDT's definition block body."""
    devices = [aml.device("COM1", [
        aml.name("_HID", aml.eisa_id(HID_COM)),
        aml.name("_UID", aml.integer(COM1_UID)),
        aml.name("_CRS", aml.resource_template([
            aml.io_port(layout.PORT_COM1, SERIAL_REGISTERS),
            aml.interrupt(layout.IRQ_COM1),
        ])),
    ])]
    for slot, (base, size, irq) in enumerate(virtio):
        devices.append(aml.device(f"VR{slot:02d}", [
            aml.name("_HID", aml.string(HID_VIRTIO_MMIO)),
            aml.name("_UID", aml.integer(slot)),
            aml.name("_CCA", aml.integer(1)),
            aml.name("_CRS", aml.resource_template([
                aml.memory32_fixed(base, size),
                aml.interrupt(irq),     # edge: an irqfd pulses the line
            ])),
        ]))
    s5 = aml.name("\\_S5", aml.package([aml.integer(SLEEP_TYPE_S5), aml.integer(0),
                                         aml.integer(0), aml.integer(0)]))
    return aml.scope("\\_SB", devices) + s5


def build_dsdt(virtio: list[tuple[int, int, int]]) -> bytes:
    return sdt(b"DSDT", DSDT_REVISION, b"KVMMDSDT", dsdt_aml(virtio))


class AcpiTables:
    """The tables and where each goes; `rsdp_addr` for the zero page."""
    __slots__ = ("pieces", "rsdp_addr", "addresses")

    def __init__(self, pieces: list[tuple[int, bytes]], rsdp_addr: int, addresses: dict):
        self.pieces = pieces
        self.rsdp_addr = rsdp_addr
        self.addresses = addresses


def _align(n: int) -> int:
    return (n + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN


def _check_virtio(virtio: list[tuple[int, int, int]]) -> None:
    spans = []
    for base, size, irq in virtio:
        if not layout.MMIO_GAP_START <= base or base + size > layout.IOAPIC_BASE or size <= 0:
            raise ValueError(f"virtio-mmio device at {base:#x}+{size:#x} is outside the MMIO "
                             f"hole below the IOAPIC")
        if not layout.VIRTIO_IRQ_BASE <= irq <= layout.VIRTIO_IRQ_MAX:
            raise ValueError(f"virtio-mmio interrupt {irq} outside "
                             f"{layout.VIRTIO_IRQ_BASE}..{layout.VIRTIO_IRQ_MAX}")
        spans.append((base, base + size))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"virtio-mmio devices overlap at {start:#x}")


def build_tables(num_cpus: int, virtio: list[tuple[int, int, int]] = (),
                 power_port: int = layout.PORT_ACPI_SLEEP) -> AcpiTables:
    """All tables, laid out from layout.ACPI_TABLES upwards, the RSDP at
    layout.ACPI_RSDP."""
    virtio = list(virtio)
    _check_virtio(virtio)
    addr = layout.ACPI_TABLES
    pieces = []
    addresses = {}

    def place(key: str, data: bytes) -> int:
        nonlocal addr
        at = addr
        pieces.append((at, data))
        addresses[key] = at
        addr = _align(at + len(data))
        return at

    dsdt = place("DSDT", build_dsdt(virtio))
    fadt = place("FACP", build_fadt(dsdt, power_port))
    madt = place("APIC", build_madt(num_cpus))
    xsdt = place("XSDT", build_xsdt([fadt, madt]))
    if addr > layout.ACPI_END:
        raise ValueError(f"the ACPI tables end at {addr:#x}, past {layout.ACPI_END:#x}")
    rsdp = build_rsdp(xsdt)
    pieces.append((layout.ACPI_RSDP, rsdp))
    addresses["RSDP"] = layout.ACPI_RSDP
    return AcpiTables(pieces, layout.ACPI_RSDP, addresses)

