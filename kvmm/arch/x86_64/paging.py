"""Boot page tables: an identity map with 2 MiB pages (Intel SDM vol. 3, 4.5).

Every present entry at every level has U/S=1: the software-virtualization KVM
runs a guest natively only then (shared/platform/README.md), and it is valid
on hardware as long as the guest does not enable SMEP/SMAP.
"""
import struct

from kvmm.arch.x86_64 import layout

PTE_PRESENT = 0b1
PTE_WRITE = 0b10
PTE_USER = 0b100
PTE_PAGE_SIZE = 0b1000_0000    # PS: this PDE maps a 2 MiB page
TABLE_FLAGS = PTE_PRESENT | PTE_WRITE | PTE_USER          # 0x7
LARGE_PAGE_FLAGS = TABLE_FLAGS | PTE_PAGE_SIZE            # 0x87


def identity_map_size(ram_end: int) -> int:
    """How much the boot map covers: at least 4 GiB, rounded up to 1 GiB."""
    size = max(layout.IDENTITY_MAP_MIN, ram_end)
    return (size + layout.GiB - 1) // layout.GiB * layout.GiB


def build_identity_map(ram_end: int) -> list[tuple[int, bytes]]:
    """The page-table pages as (guest address, contents) pairs."""
    gib = identity_map_size(ram_end) // layout.GiB
    if gib > layout.PD_MAX_PAGES:
        raise ValueError(f"guest RAM ends at {ram_end:#x}; the boot page tables map at most "
                         f"{layout.PD_MAX_PAGES} GiB")
    pml4 = struct.pack("<Q", layout.PDPT | TABLE_FLAGS) + bytes(4096 - 8)
    pdpt = b"".join(struct.pack("<Q", (layout.PD_START + i * layout.PAGE_SIZE) | TABLE_FLAGS)
                    for i in range(gib)) + bytes(8 * (512 - gib))
    pages = [(layout.PML4, pml4), (layout.PDPT, pdpt)]
    for i in range(gib):
        base = i * layout.GiB
        pd = struct.pack("<512Q", *((base + j * layout.LARGE_PAGE_SIZE) | LARGE_PAGE_FLAGS
                                    for j in range(512)))
        pages.append((layout.PD_START + i * layout.PAGE_SIZE, pd))
    return pages
