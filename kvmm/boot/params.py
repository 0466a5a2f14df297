"""The Linux zero page, struct boot_params (Documentation/arch/x86/zero-page.rst
and boot.rst), as kvmm fills it for ELF and bzImage kernels."""
from __future__ import annotations

import struct

from kvmm.arch.x86_64 import layout

ZERO_PAGE_SIZE = 4096
# Offsets in struct boot_params
ACPI_RSDP_ADDR = 0x070      # u64 (boot protocol 2.14; read by Linux whatever the version)
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
SETUP_HEADER = 0x1F1
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
CMDLINE_SIZE = 0x238
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")
BOOT_FLAG = 0x1FE
HEADER_MAGIC = 0x202
BOOT_FLAG_VALUE = 0xAA55
HDRS_MAGIC = b"HdrS"
LOADER_TYPE_UNDEFINED = 0xFF


def build_zero_page(e820: list[tuple[int, int, int]], cmdline_addr: int, cmdline_len: int,
                    setup_header: bytes | None = None, initrd: tuple[int, int] | None = None,
                    acpi_rsdp: int = 0) -> bytearray:
    """A boot_params page. `setup_header` (bzImage) is copied to 0x1f1 first;
    `initrd` is (address, size); `acpi_rsdp` the RSDP's address (0: none)."""
    page = bytearray(ZERO_PAGE_SIZE)
    if setup_header is not None:
        page[SETUP_HEADER:SETUP_HEADER + len(setup_header)] = setup_header
    else:
        struct.pack_into("<H", page, BOOT_FLAG, BOOT_FLAG_VALUE)
        page[HEADER_MAGIC:HEADER_MAGIC + 4] = HDRS_MAGIC
    page[TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    if len(e820) > E820_MAX_ENTRIES:
        raise ValueError(f"{len(e820)} e820 entries, at most {E820_MAX_ENTRIES}")
    page[E820_ENTRIES] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, addr, size, kind)
    struct.pack_into("<I", page, CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", page, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if setup_header is None:
        # kvmm's own protocol: the length of the command line. A bzImage's
        # cmdline_size is the kernel's limit, a field the loader only reads (boot.rst).
        struct.pack_into("<I", page, CMDLINE_SIZE, cmdline_len)
    struct.pack_into("<Q", page, ACPI_RSDP_ADDR, acpi_rsdp)
    if initrd is not None:
        addr, size = initrd
        struct.pack_into("<I", page, RAMDISK_IMAGE, addr & 0xFFFFFFFF)
        struct.pack_into("<I", page, RAMDISK_SIZE, size & 0xFFFFFFFF)
        struct.pack_into("<I", page, EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", page, EXT_RAMDISK_SIZE, size >> 32)
    return page


def encode_cmdline(cmdline: str, limit: int = layout.CMDLINE_MAX_SIZE) -> bytes:
    """The NUL-terminated command line; ValueError if it is too long or not ASCII."""
    try:
        data = cmdline.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("the kernel command line must be ASCII") from None
    if b"\0" in data:
        raise ValueError("the kernel command line contains a NUL byte")
    if len(data) + 1 > limit:
        raise ValueError(f"the kernel command line is {len(data)} bytes; this kernel accepts "
                         f"at most {limit - 1}")
    return data + b"\0"
