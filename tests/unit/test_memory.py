"""GuestMemory: the one checked path from guest addresses to host bytes."""
import ctypes

import pytest
from hypothesis import given, settings, strategies as st

from kvmm.arch.x86_64 import layout
from kvmm.memory import GuestMemory, GuestMemoryError, MemoryReservationError

SIZE = 1 << 20


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory([(0, SIZE), (0x200000, SIZE)])
    yield m
    m.close()


def test_round_trip(mem):
    mem.write(0x1000, b"hello")
    assert mem.read(0x1000, 5) == b"hello"
    mem.write_u64(0x2000, 0x1122334455667788)
    assert mem.read_u32(0x2000) == 0x55667788
    assert mem.read_u16(0x2006) == 0x1122
    v = mem.view(0x3000, 16)
    v[:4] = b"abcd"
    assert mem.read(0x3000, 4) == b"abcd"


def test_read_obj(mem):
    mem.write(0x4000, (7).to_bytes(8, "little"))
    assert mem.read_obj(0x4000, ctypes.c_uint64).value == 7


@pytest.mark.parametrize("addr,length,reason", [
    (SIZE - 2, 4, "runs past"), (SIZE, 1, "not guest RAM"), (0x180000, 1, "not guest RAM"),
    (0x200000 + SIZE - 1, 2, "runs past"), (-1, 1, "outside"), ((1 << 64) - 2, 4, "outside"),
])
def test_rejects_out_of_range(mem, addr, length, reason):
    with pytest.raises(GuestMemoryError) as e:
        mem.read(addr, length)
    assert reason in str(e.value)
    assert e.value.addr == addr and e.value.length == length


def test_span_cannot_straddle_regions():
    with GuestMemory([(0, 0x1000), (0x1000, 0x1000)]) as m:
        with pytest.raises(GuestMemoryError):
            m.view(0xFF0, 0x20)


def test_bad_layouts():
    with pytest.raises(MemoryReservationError):
        GuestMemory([(0, 100)])
    with pytest.raises(MemoryReservationError):
        GuestMemory([(0, 0x2000), (0x1000, 0x1000)])
    with pytest.raises(MemoryReservationError):
        GuestMemory([(0, 0x1000)], backing="magic")


def test_ram_regions_split_around_the_mmio_hole():
    assert layout.ram_regions(64 << 20) == [(0, 64 << 20)]
    big = layout.ram_regions(4 << 30)
    assert big == [(0, layout.MMIO_GAP_START),
                   (layout.MMIO_GAP_END, (4 << 30) - layout.MMIO_GAP_START)]


@settings(max_examples=300, deadline=None)
@given(addr=st.integers(min_value=-(1 << 10), max_value=(1 << 64) + (1 << 10)),
       length=st.integers(min_value=0, max_value=1 << 22))
def test_any_access_is_inside_or_rejected(mem, addr, length):
    inside = any(a <= addr and addr + length <= a + s for a, s in
                 ((0, SIZE), (0x200000, SIZE)))
    try:
        view = mem.view(addr, length)
    except GuestMemoryError:
        assert not inside
    else:
        assert inside and len(view) == length


def test_resident_bytes_counts_touched_pages():
    with GuestMemory([(0, 64 * 4096)]) as m:
        before = m.resident_bytes()
        for page in range(8):
            m.write(page * 4096, b"x")
        assert m.resident_bytes() - before >= 8 * 4096


def test_boot_structures_do_not_overlap():
    """Every fixed low-memory area of layout.py, at its largest, apart from the others."""
    areas = [
        ("gdt", layout.BOOT_GDT, 6 * 8), ("idt", layout.BOOT_IDT, 16),
        ("zero page", layout.ZERO_PAGE, layout.PAGE_SIZE),
        ("page tables", layout.PML4, layout.PD_END - layout.PML4),
        ("cmdline", layout.CMDLINE, layout.CMDLINE_MAX_SIZE),
        ("mptable", layout.MPTABLE, layout.LOW_RAM_END - layout.MPTABLE),
        ("vif pages", layout.VIF_START, layout.VIF_END - layout.VIF_START),
        ("acpi", layout.ACPI_START, layout.HIMEM_START - layout.ACPI_START),
    ]
    areas.sort(key=lambda a: a[1])
    for (n1, a1, s1), (n2, a2, _s2) in zip(areas, areas[1:]):
        assert a1 + s1 <= a2, f"{n1} [{a1:#x}, +{s1:#x}) runs into {n2} at {a2:#x}"
    assert layout.BOOT_STACK < layout.PML4
