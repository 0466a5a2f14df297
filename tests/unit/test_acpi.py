"""ACPI tables and the AML encoder, parsed back byte for byte; the DSDT also
through `iasl -d` (Debian's acpica-tools) where it is installed."""
import shutil
import struct
import subprocess

import pytest

from kvmm.arch.x86_64 import acpi, aml, layout, mptable
from kvmm.devices.acpi_sleep import AcpiSleep

VIRTIO_1 = [(layout.virtio_mmio_base(0), layout.VIRTIO_MMIO_SIZE, layout.VIRTIO_IRQ_BASE)]


def unpack_header(table: bytes) -> dict:
    sig, length, rev, csum, oem, table_id, oem_rev, creator, creator_rev = \
        acpi.HEADER.unpack_from(table, 0)
    return dict(sig=sig, length=length, rev=rev, oem=oem, table_id=table_id, oem_rev=oem_rev,
                creator=creator, creator_rev=creator_rev)


def check_table(table: bytes, sig: bytes) -> dict:
    h = unpack_header(table)
    assert h["sig"] == sig
    assert h["length"] == len(table)
    assert sum(table) % 256 == 0, f"{sig} checksum"
    assert h["oem"] == b"KVMM  " and h["creator"] == b"KVMM"
    return h


@pytest.fixture
def tables():
    t = acpi.build_tables(2, VIRTIO_1)
    return t, {data[:4]: (addr, data) for addr, data in t.pieces}


def test_layout(tables):
    t, by_sig = tables
    assert t.rsdp_addr == layout.ACPI_RSDP == 0xE0000
    spans = sorted((addr, addr + len(data)) for addr, data in t.pieces)
    assert spans[0][0] >= layout.ACPI_START and spans[-1][1] <= layout.ACPI_END
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "tables overlap"
    assert t.rsdp_addr % 16 == 0        # Linux scans 0xe0000-0xfffff on 16-byte boundaries
    assert set(by_sig) == {b"RSD ", b"XSDT", b"FACP", b"APIC", b"DSDT"}


def test_rsdp(tables):
    t, by_sig = tables
    _, rsdp = by_sig[b"RSD "]
    sig, csum, oem, rev, rsdt, length, xsdt, ext = acpi.RSDP.unpack(rsdp)
    assert sig == b"RSD PTR " and rev == 2 and oem == b"KVMM  "
    assert rsdt == 0 and length == len(rsdp) == 36
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    assert xsdt == t.addresses["XSDT"]


def test_xsdt(tables):
    t, by_sig = tables
    _, xsdt = by_sig[b"XSDT"]
    h = check_table(xsdt, b"XSDT")
    assert h["rev"] == 1 and h["table_id"] == b"KVMMXSDT"
    entries = struct.unpack_from("<2Q", xsdt, 36)
    assert entries == (t.addresses["FACP"], t.addresses["APIC"]) and len(xsdt) == 36 + 16


def test_fadt(tables):
    t, by_sig = tables
    _, fadt = by_sig[b"FACP"]
    h = check_table(fadt, b"FACP")
    assert h["rev"] == 6 and len(fadt) == 276 and fadt[131] == 5      # ACPI 6.5
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags == (1 << 20) | (1 << 10) | (1 << 4) | (1 << 5)   # HW_REDUCED, RESET_REG, buttons
    iapc = struct.unpack_from("<H", fadt, 109)[0]
    assert iapc == 0b111100            # no VGA, no MSI, no ASPM, no CMOS RTC; no 8042, no legacy
    assert struct.unpack_from("<I", fadt, 40)[0] == 0          # 32-bit DSDT unused ...
    assert struct.unpack_from("<Q", fadt, 140)[0] == t.addresses["DSDT"]   # ... X_DSDT
    assert struct.unpack_from("<H", fadt, 46)[0] == 0           # no SCI
    # Every legacy PM block is absent: PM1a..GPE1 and their lengths.
    assert fadt[56:96] == bytes(40)
    assert acpi.GAS.unpack_from(fadt, 116) == (1, 8, 0, 1, layout.PORT_I8042_CMD)  # reset reg
    assert fadt[128] == 0xFE
    for offset in (244, 256):          # sleep control and status registers
        assert acpi.GAS.unpack_from(fadt, offset) == (1, 8, 0, 1, layout.PORT_ACPI_SLEEP)
    assert fadt[268:276] == b"KVMMKVMM"


def test_madt_bytes():
    madt = acpi.build_madt(2)
    check_table(madt, b"APIC")
    assert madt[36:] == bytes.fromhex(
        "0000e0fe" "00000000"                       # LAPIC address, flags (no 8259 set-up)
        "0008" "00" "00" "01000000"                 # local APIC: uid 0, id 0, enabled
        "0008" "01" "01" "01000000"                 # local APIC: uid 1, id 1, enabled
        "010c" "03" "00" "0000c0fe" "00000000"      # IOAPIC id 3, 0xfec00000, GSI base 0
        "0406" "ff" "0000" "01")                    # NMI on LINT1, all processors
    assert unpack_header(madt)["rev"] == 5


def test_madt_ids_match_the_mp_table():
    for n in (1, 4, 64):
        madt = acpi.build_madt(n)
        check_table(madt, b"APIC")
        ids = [madt[44 + i * 8 + 3] for i in range(n)]
        assert ids == list(range(n))
        assert madt[44 + n * 8 + 2] == mptable.ioapic_id(n)
    with pytest.raises(ValueError):
        acpi.build_madt(0)
    with pytest.raises(ValueError):
        acpi.build_madt(256)


GOLDEN_DSDT_AML = bytes.fromhex(
    # Scope (\_SB) { ... }: ScopeOp, PkgLength 125 (2 bytes), \_SB_
    "10" "4d07" "5c5f53425f"
    # Device (COM1): ExtOpPrefix DeviceOp, PkgLength 49, COM1
    "5b82" "31" "434f4d31"
    "08" "5f484944" "0c41d00501"                    # Name (_HID, EisaId ("PNP0501"))
    "08" "5f554944" "01"                            # Name (_UID, One)
    "08" "5f435253" "11" "16" "0a13"                # Name (_CRS, Buffer (19) {
    "47" "01" "f803" "f803" "01" "08"               #   IO (Decode16, 0x3f8, 0x3f8, 1, 8)
    "890600" "03" "01" "04000000"                   #   Interrupt (Consumer, Edge, High) {4}
    "7900"                                          #   EndTag })
    # Device (VR00): PkgLength 65 (2 bytes)
    "5b82" "4104" "56523030"
    "08" "5f484944" "0d" "4c4e524f30303035" "00"    # Name (_HID, "LNRO0005")
    "08" "5f554944" "00"                            # Name (_UID, Zero)
    "08" "5f434341" "01"                            # Name (_CCA, One)
    "08" "5f435253" "11" "1a" "0a17"                # Name (_CRS, Buffer (23) {
    "860900" "01" "000000d0" "00100000"             #   Memory32Fixed (ReadWrite, 0xd0000000, 4K)
    "890600" "03" "01" "05000000"                   #   Interrupt (Consumer, Edge, High) {5}
    "7900"                                          #   EndTag })
    # Name (\_S5, Package (4) {5, 0, 0, 0})
    "08" "5c5f53355f" "12" "07" "04" "0a05" "00" "00" "00")


def test_dsdt_bytes():
    dsdt = acpi.build_dsdt(VIRTIO_1)
    h = check_table(dsdt, b"DSDT")
    assert h["rev"] == 2 and h["table_id"] == b"KVMMDSDT"
    assert dsdt[36:] == GOLDEN_DSDT_AML
    assert len(dsdt) == 0xB0


def test_dsdt_many_devices_and_no_devices():
    many = [(layout.virtio_mmio_base(i), layout.VIRTIO_MMIO_SIZE, layout.VIRTIO_IRQ_BASE + i)
            for i in range(layout.VIRTIO_IRQ_MAX - layout.VIRTIO_IRQ_BASE + 1)]
    dsdt = acpi.build_dsdt(many)
    check_table(dsdt, b"DSDT")
    assert dsdt.count(b"LNRO0005") == len(many)
    assert b"VR18" in dsdt and b"VR19" not in dsdt
    none = acpi.build_dsdt([])
    check_table(none, b"DSDT")
    assert b"LNRO0005" not in none and b"COM1" in none and b"_S5_" in none


def test_bad_virtio_devices():
    base = layout.virtio_mmio_base(0)
    for bad in ([(base, 4096, 4)], [(base, 4096, 24)], [(0x1000, 4096, 5)],
                [(base, 4096, 5), (base + 2048, 4096, 6)]):
        with pytest.raises(ValueError):
            acpi.build_tables(1, bad)


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl is not installed (apt-get install acpica-tools)")
def test_iasl_disassembles_every_table(tmp_path):
    t = acpi.build_tables(2, VIRTIO_1 + [(layout.virtio_mmio_base(1), 4096, 6)])
    names = {}
    for _, data in t.pieces:
        if data[:4] == b"RSD ":
            continue
        name = data[:4].decode()
        (tmp_path / f"{name}.dat").write_bytes(data)
        names[name] = tmp_path / f"{name}.dsl"
    r = subprocess.run([IASL, "-d", *(f"{n}.dat" for n in names)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    dsl = names["DSDT"].read_text()
    for needle in ('Device (COM1)', 'EisaId ("PNP0501")', 'Device (VR00)', 'Device (VR01)',
                   'Name (_HID, "LNRO0005")', 'Name (_CCA, One)',
                   'Memory32Fixed (ReadWrite,\n                    0xD0000000,',
                   '0xD0001000,', 'Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive',
                   '0x00000005,', '0x00000006,', 'Name (\\_S5, Package (0x04)'):
        assert needle in dsl, f"{needle!r} not in:\n{dsl}"
    fadt = names["FACP"].read_text()
    assert "Hardware Reduced (V5) : 1" in fadt and "Value to cause reset : FE" in fadt
    madt = names["APIC"].read_text()
    assert madt.count("Processor Local APIC") == 2 and "I/O APIC" in madt
    for text in (dsl, fadt, madt):
        assert "Invalid" not in text and "checksum is incorrect" not in text.lower()


# AML encoder -------------------------------------------------------------------------
def test_pkg_length_boundaries():
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"                     # 63 fits in 6 bits
    assert aml.pkg_length(63) == bytes([0x40 | 1, 4])         # 65 = 0x41: two bytes
    assert aml.pkg_length(4092) == bytes([0x40 | 0xE, 0xFF])  # 4094, the 2-byte maximum 4095
    assert aml.pkg_length(4094) == bytes([0x80 | 1, 0, 1])    # 4097: three bytes
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


def test_integers_and_names():
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(5) == b"\x0a\x05"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0xD0000000) == b"\x0c\x00\x00\x00\xd0"
    assert aml.integer(1 << 40) == b"\x0e" + struct.pack("<Q", 1 << 40)
    assert aml.eisa_id("PNP0501") == b"\x0c\x41\xd0\x05\x01"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    assert aml.name_seg("s5") == b"S5__" and aml.name_string("\\_SB.PCI0") == \
        b"\\\x2e_SB_PCI0"
    for bad in ("", "TOOLONG", "1ABC", "A-B"):
        with pytest.raises(ValueError):
            aml.name_seg(bad)
    with pytest.raises(ValueError):
        aml.integer(-1)
    with pytest.raises(ValueError):
        aml.io_port(0xFFFF, 8)
    with pytest.raises(ValueError):
        aml.memory32_fixed(0xFFFFF000, 0x2000)


# The sleep registers the FADT names ----------------------------------------------------
def test_acpi_sleep_register():
    calls = []
    dev = AcpiSleep(lambda: calls.append(1))
    dev.write(0, bytes([0x80]))                       # clearing WAK_STS: nothing
    dev.write(0, bytes([(1 << 2) | 0x20]))           # S1: not offered, ignored
    dev.write(0, bytes([5 << 2]))                     # SLP_TYP 5 without SLP_EN
    assert calls == []
    dev.write(0, bytes([(acpi.SLEEP_TYPE_S5 << 2) | 0x20]))   # what Linux writes for S5
    assert calls == [1]
    buf = bytearray(b"\xff")
    dev.read(0, memoryview(buf))
    assert buf == b"\x00"


# The CPUID side of the CPU description must agree with the MADT ---------------------
def test_cpuid_apic_ids_match_the_madt():
    from kvmm.ioctl.structs import KvmCpuidEntry2
    from kvmm.vcpu import setup
    supported = [KvmCpuidEntry2(function=f, index=0, eax=0, ebx=0, ecx=0, edx=0)
                 for f in (1, 0xB, 0x1F, 0x8000001E)]
    n = 3
    madt = acpi.build_madt(n)
    madt_ids = [madt[44 + i * 8 + 3] for i in range(n)]
    for i in range(n):
        leaves = {e.function: e for e in setup.vcpu_cpuid(supported, i, n)}
        assert leaves[1].ebx >> 24 == madt_ids[i]                  # initial APIC id
        assert (leaves[1].ebx >> 16) & 0xFF == n                    # logical processors
        assert leaves[0xB].edx == leaves[0x1F].edx == madt_ids[i]   # x2APIC id
        assert leaves[0x8000001E].eax == madt_ids[i]                # AMD extended APIC id
        assert leaves[0x8000001E].ebx & 0xFF == i                   # AMD core id


def test_cpuid_smt_pairs_threads_into_cores():
    """With smt, vCPUs 2n and 2n+1 are the threads of core n (leaf 0xB levels
    and AMD's core ids); without, every vCPU is a core of one thread."""
    from kvmm.ioctl.structs import KvmCpuidEntry2
    from kvmm.vcpu import setup
    supported = [KvmCpuidEntry2(function=f, index=sub, eax=0, ebx=0, ecx=0, edx=0)
                 for f, sub in ((0xB, 0), (0xB, 1), (0x8000001E, 0))]
    for smt, threads in ((True, 2), (False, 1)):
        for i in range(4):
            leaves = {(e.function, e.index): e for e in setup.vcpu_cpuid(supported, i, 4,
                                                                          smt=smt)}
            smt_level, core_level = leaves[(0xB, 0)], leaves[(0xB, 1)]
            assert (smt_level.ebx, smt_level.ecx >> 8) == (threads, setup.TOPOLOGY_LEVEL_SMT)
            assert smt_level.eax == threads.bit_length() - 1      # x2APIC id shift
            assert (core_level.ebx, core_level.ecx >> 8) == (4, setup.TOPOLOGY_LEVEL_CORE)
            assert core_level.eax == 2
            amd = leaves[(0x8000001E, 0)]
            assert amd.ebx & 0xFF == i // threads
            assert (amd.ebx >> 8) & 0xFF == threads - 1
