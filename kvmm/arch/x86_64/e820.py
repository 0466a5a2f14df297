"""The BIOS e820 memory map kvmm reports (ACPI spec, "System Address Map Interfaces")."""
from kvmm.arch.x86_64 import layout

E820_RAM = 1
E820_RESERVED = 2


def e820_map(ram: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(address, size, type) entries for guest RAM laid out as `ram`.

    The legacy hole [640 KiB, 1 MiB) holds the EBDA, kvmm's VIF pages and the
    ACPI area and is reported reserved.
    """
    entries = [(0, layout.EBDA_START, E820_RAM),
               (layout.EBDA_START, layout.HIMEM_START - layout.EBDA_START, E820_RESERVED)]
    for addr, size in ram:
        start = max(addr, layout.HIMEM_START)
        end = addr + size
        if end > start:
            entries.append((start, end - start, E820_RAM))
    return entries
