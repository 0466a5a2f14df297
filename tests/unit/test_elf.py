"""The ELF loader on good images and on one bad image per check."""
import struct

import pytest

from kvmm.boot import elf
from kvmm.boot.errors import InvalidImage
from kvmm.memory import GuestMemory
from kvmm.memory.errors import GuestMemoryError
from tests import elfimage


def test_good_image_parses_and_loads():
    bss = 0x2000
    image = elfimage.build([(0x100000, elfimage.CODE, len(elfimage.CODE), elf.PF_X | 4),
                            (0x101000, b"data", 4 + bss, 6)])
    k = elf.parse_elf(image)
    assert k.entry == 0x100000 and k.low == 0x100000 and k.high == 0x101004 + bss
    with GuestMemory([(0, 4 << 20)]) as mem:
        mem.write(0x101004, b"\xff" * 16)          # stale bytes in the BSS
        elf.load_elf(image, k, mem)
        assert mem.read(0x100000, 16) == elfimage.CODE
        assert mem.read(0x101000, 8) == b"data\0\0\0\0"


def test_pvh_note():
    notes = elfimage.note(b"Xen\0", elf.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x100004))
    notes = elfimage.note(b"GNU\0", 3, b"abcd") + notes
    assert elf.parse_elf(elfimage.build(notes=notes)).pvh_entry == 0x100004
    assert elf.parse_elf(elfimage.build()).pvh_entry is None


def _truncate(image, n):
    return image[:n]


BAD = {
    "empty": (b"", "truncated"),
    "short header": (elfimage.build()[:40], "truncated"),
    "not elf": (b"MZ" + bytes(100), "not an ELF"),
    "32-bit": (elfimage.build(klass=1), "64-bit"),
    "wrong machine": (elfimage.build(machine=3), "x86-64"),
    "shared object": (elfimage.build(e_type=3), "ET_EXEC"),
    "phentsize": (elfimage.build(phentsize=32), "program header size"),
    "no phdrs": (elfimage.build(phnum=0), "program headers"),
    "too many phdrs": (elfimage.build(phnum=1000), "program headers"),
    "phdrs past end": (elfimage.build()[:elf.EHDR.size + 10], "truncated"),
    "segment past end": (elfimage.build()[:-4], "truncated"),
    "filesz > memsz": (elfimage.build([(0x100000, elfimage.CODE, 4, 5)]), "more file bytes"),
    "below 1 MiB": (elfimage.build([(0x8000, elfimage.CODE, 16, 5)], entry=0x8000),
                    "below 1 MiB"),
    "into the MMIO hole": (elfimage.build([(0xBFFFFFF0, elfimage.CODE, 0x100, 5)],
                                          entry=0xBFFFFFF0), "outside guest RAM"),
    "overlap": (elfimage.build([(0x100000, elfimage.CODE, 0x2000, 5),
                                (0x101000, b"x", 1, 6)]), "overlap"),
    "entry outside": (elfimage.build(entry=0x200000), "entry point"),
    "entry in data": (elfimage.build([(0x100000, elfimage.CODE, 16, 6)]), "entry point"),
    "no loadable": (elfimage.build([], notes=elfimage.note(b"GNU\0", 3, b"abcd")),
                    "no loadable"),
    "section headers past end": (
        elfimage.build()[:16 + 24] + struct.pack("<Q", 0x10000) + elfimage.build()[48:],
        "section headers"),
    "bad note": (elfimage.build(notes=struct.pack("<III", 4, 4000, 18) + b"Xen\0"),
                 "malformed ELF note"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images(name):
    image, message = BAD[name]
    with pytest.raises(InvalidImage) as e:
        elf.parse_elf(image)
    assert message in str(e.value)


def test_kernel_larger_than_ram():
    image = elfimage.build([(0x100000, elfimage.CODE, 8 << 20, 5)])
    k = elf.parse_elf(image)
    with pytest.raises(InvalidImage, match="give it more memory with --mem"):
        k.check_fits(4 << 20)
    with GuestMemory([(0, 4 << 20)]) as mem:
        with pytest.raises(GuestMemoryError):       # the checked access path refuses
            elf.load_elf(image, k, mem)
