"""Kernel images kvmm boots, behind one interface.

`parse_kernel(image, name)` tells an ELF executable (vmlinux, the project's
guest kernel) from a bzImage (Documentation/arch/x86/boot.rst) by its magic,
checks it, and returns a `BootImage`:

    check_fits(ram_end)     InvalidImage if the kernel needs more RAM than given
    load(image, mem)        copy it into guest memory -> LoadResult(entry, setup_header)
    low, high               the guest-physical span the kernel occupies before it
                            reads its memory map (the initrd must stay clear of it)
    initrd_addr_max         highest address an initrd may occupy
    cmdline_max             longest command line the kernel accepts (without the NUL)

Both kinds are entered at their 64-bit entry point with RSI = the zero page.
"""
from __future__ import annotations

from kvmm.arch.x86_64 import layout
from kvmm.boot import bzimage, elf
from kvmm.boot.errors import InvalidImage

# boot.rst: "If this field is not present [protocol < 2.03], the maximum address is 0x37FFFFFF."
# An ELF kernel has no setup header, so the same conservative default applies.
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
# Linux's COMMAND_LINE_SIZE on x86 (arch/x86/include/asm/setup.h) is 2048; an ELF
# kernel does not say, so kvmm's own buffer is the limit there.
ELF_CMDLINE_MAX = layout.CMDLINE_MAX_SIZE - 1


class LoadResult:
    """What the builder needs after loading: where to start the BSP, and the
    setup header to copy into the zero page at 0x1f1 (None for ELF)."""
    __slots__ = ("entry", "setup_header")

    def __init__(self, entry: int, setup_header: bytes | None):
        self.entry = entry
        self.setup_header = setup_header

    def __repr__(self) -> str:
        return f"LoadResult(entry={self.entry:#x}, setup_header={self.setup_header is not None})"


class ElfImage:
    """An ELF kernel (kvmm/boot/elf.py) behind the BootImage interface."""
    __slots__ = ("elf",)
    kind = "ELF"

    def __init__(self, parsed: elf.ElfKernel):
        self.elf = parsed

    entry = property(lambda self: self.elf.entry)
    low = property(lambda self: self.elf.low)
    high = property(lambda self: self.elf.high)
    pvh_entry = property(lambda self: self.elf.pvh_entry)
    initrd_addr_max = DEFAULT_INITRD_ADDR_MAX
    cmdline_max = ELF_CMDLINE_MAX

    def check_fits(self, ram_end: int) -> None:
        self.elf.check_fits(ram_end)

    def load(self, image, mem) -> LoadResult:
        elf.load_elf(image, self.elf, mem)
        return LoadResult(self.elf.entry, None)

    def __repr__(self) -> str:
        return f"ElfImage(entry={self.entry:#x}, low={self.low:#x}, high={self.high:#x})"


class BzImageBoot:
    """A bzImage (kvmm/boot/bzimage.py) behind the BootImage interface."""
    __slots__ = ("bz",)
    kind = "bzImage"

    def __init__(self, parsed: bzimage.BzImage):
        self.bz = parsed

    entry = property(lambda self: self.bz.entry)
    low = property(lambda self: self.bz.low)
    high = property(lambda self: self.bz.high)
    pvh_entry = None
    cmdline_max = property(lambda self: min(self.bz.cmdline_size, ELF_CMDLINE_MAX))

    @property
    def initrd_addr_max(self) -> int:
        return self.bz.initrd_addr_max

    def check_fits(self, ram_end: int) -> None:
        self.bz.check_fits(ram_end)

    def load(self, image, mem) -> LoadResult:
        bzimage.load_bzimage(image, self.bz, mem)
        return LoadResult(self.bz.entry, self.bz.header)

    def __repr__(self) -> str:
        return f"BzImageBoot({self.bz!r})"


def parse_kernel(image: bytes | memoryview, name: str = "kernel"):
    """An ElfImage or a BzImageBoot; InvalidImage (one line) if it is neither or
    is malformed."""
    if bytes(image[:4]) == elf.ELF_MAGIC:
        return ElfImage(elf.parse_elf(image, name=name))
    if bzimage.is_bzimage(image):
        return BzImageBoot(bzimage.parse_bzimage(image, name=name))
    if len(image) < bzimage.HEADER + len(bzimage.HDRS_MAGIC):
        raise InvalidImage(f"{name}: not an ELF file (bad magic), and at {len(image)} bytes too "
                           "short for a bzImage's setup header (truncated?)")
    raise InvalidImage(f"{name}: not an ELF file (bad magic) nor a bzImage (no \"HdrS\" at "
                       "0x202); give a 64-bit ELF kernel or a bzImage")
