"""bzImage loader: the Linux x86 boot protocol, 64-bit entry
(Documentation/arch/x86/boot.rst; after rust-vmm linux-loader's `bzimage`).

A bzImage is the real-mode setup code, `(setup_sects + 1) * 512` bytes that
begin with the setup header at 0x1f1, followed by the protected-mode kernel
(a self-decompressing, relocatable image). kvmm does not run the real-mode
code: it loads the protected-mode kernel at its preferred address, copies
the setup header into the zero page and enters at load address + 0x200
(`startup_64`) in long mode, as boot.rst's "64-bit Boot Protocol" allows.

`parse_bzimage` range-checks every header field it uses before anything is
loaded and returns a `BzImage`; `load_bzimage` copies the kernel into guest
memory.
"""
from __future__ import annotations

import struct

from kvmm.arch.x86_64 import layout
from kvmm.boot.errors import InvalidImage

# Offsets in the image file (= in struct boot_params), boot.rst "The Real-Mode Kernel Header"
SETUP_SECTS = 0x1F1         # u8, 0 means 4
SYSSIZE = 0x1F4             # u32, protected-mode size in 16-byte paragraphs (2.04+)
BOOT_FLAG = 0x1FE           # u16, 0xAA55
JUMP = 0x200                # u16; its second byte gives the header's end
HEADER = 0x202              # u32, "HdrS"
VERSION = 0x206             # u16, boot protocol version
LOADFLAGS = 0x211           # u8
INITRD_ADDR_MAX = 0x22C     # u32 (2.03+), highest address the initrd may occupy
KERNEL_ALIGNMENT = 0x230    # u32 (2.05+)
RELOCATABLE_KERNEL = 0x234  # u8 (2.05+)
MIN_ALIGNMENT = 0x235       # u8 (2.10+), log2
XLOADFLAGS = 0x236          # u16 (2.12+)
CMDLINE_SIZE = 0x238        # u32 (2.06+), maximum command line length without the NUL
PAYLOAD_OFFSET = 0x248      # u32 (2.08+), from the start of the protected-mode code
PAYLOAD_LENGTH = 0x24C      # u32 (2.08+)
PREF_ADDRESS = 0x258        # u64 (2.10+)
INIT_SIZE = 0x260           # u32 (2.10+), memory the kernel needs from its load address

SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4     # "if this field is 0, the real value is 4"
BOOT_FLAG_VALUE = 0xAA55
HDRS_MAGIC = b"HdrS"
HEADER_END_MIN = INIT_SIZE + 4        # every field above must be inside the header
HEADER_END_MAX = 0x290                # struct boot_params continues here (zero-page.rst)
MIN_PROTOCOL = 0x020C       # 2.12: the first with xloadflags, so XLF_KERNEL_64 can be checked
LOADED_HIGH = 0b1           # loadflags bit 0: the protected-mode code loads at 0x100000+
XLF_KERNEL_64 = 0b1         # xloadflags bit 0: a 64-bit entry at load address + 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 0b10
STARTUP_64_OFFSET = 0x200   # boot.rst "64-bit Boot Protocol"
MIN_KERNEL_ALIGNMENT = layout.PAGE_SIZE
MAX_KERNEL_ALIGNMENT = 1 << 30


class BzImage:
    """A parsed, checked bzImage."""
    __slots__ = ("version", "setup_size", "kernel_offset", "kernel_size", "load_addr",
                 "init_size", "cmdline_size", "initrd_addr_max", "xloadflags",
                 "relocatable", "kernel_alignment", "header", "name")

    kind = "bzImage"

    def __init__(self, **fields):
        for key, value in fields.items():
            setattr(self, key, value)

    @property
    def entry(self) -> int:
        """The 64-bit entry point (startup_64 of the decompressor)."""
        return self.load_addr + STARTUP_64_OFFSET

    @property
    def low(self) -> int:
        return self.load_addr

    @property
    def high(self) -> int:
        """One past the memory the kernel uses before it reads the memory map
        (init_size counts from the runtime start address, boot.rst)."""
        return self.load_addr + max(self.init_size, self.kernel_size)

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    def check_fits(self, ram_end: int) -> None:
        if self.high > ram_end:
            raise InvalidImage(
                f"{self.name}: the kernel needs guest RAM up to {self.high:#x} ({_mib(self.high)}: "
                f"loaded at {self.load_addr:#x}, init_size {self.init_size:#x}) but the guest "
                f"has {_mib(ram_end)}: give it more memory with --mem")

    def __repr__(self) -> str:
        return (f"BzImage(version={self.version_text}, load_addr={self.load_addr:#x}, "
                f"kernel_size={self.kernel_size:#x}, init_size={self.init_size:#x})")


def _mib(n: int) -> str:
    return f"{(n + (1 << 20) - 1) >> 20} MiB"


def is_bzimage(image: bytes | memoryview) -> bool:
    """True if the image looks like one (the "HdrS" magic at 0x202, or the boot
    flag at 0x1fe): parse_bzimage then says what is wrong with it."""
    if len(image) >= HEADER + 4 and bytes(image[HEADER:HEADER + 4]) == HDRS_MAGIC:
        return True
    return len(image) >= BOOT_FLAG + 2 and _u16(image, BOOT_FLAG) == BOOT_FLAG_VALUE


def _u8(image, off: int) -> int:
    return image[off]


def _u16(image, off: int) -> int:
    return struct.unpack_from("<H", image, off)[0]


def _u32(image, off: int) -> int:
    return struct.unpack_from("<I", image, off)[0]


def _u64(image, off: int) -> int:
    return struct.unpack_from("<Q", image, off)[0]


def parse_bzimage(image: bytes | memoryview, name: str = "kernel") -> BzImage:
    """Check the setup header and the file's layout; raise InvalidImage naming
    the first problem."""
    size = len(image)
    if size < JUMP + 2:
        raise InvalidImage(f"{name}: truncated ({size} bytes), not a bzImage")
    if _u16(image, BOOT_FLAG) != BOOT_FLAG_VALUE:
        raise InvalidImage(f"{name}: boot flag {_u16(image, BOOT_FLAG):#06x} at 0x1fe is not "
                           f"{BOOT_FLAG_VALUE:#06x}: not a bzImage")
    header_end = HEADER + image[JUMP + 1]
    if size < HEADER + 4 or bytes(image[HEADER:HEADER + 4]) != HDRS_MAGIC:
        raise InvalidImage(f"{name}: no \"HdrS\" magic at 0x202: not a Linux bzImage (or a "
                           "kernel older than boot protocol 2.00)")
    if size < VERSION + 2:
        raise InvalidImage(f"{name}: truncated in the setup header ({size} bytes)")
    version = _u16(image, VERSION)
    text = f"{version >> 8}.{version & 0xFF:02d}"
    if version < MIN_PROTOCOL:
        raise InvalidImage(f"{name}: boot protocol {text} is older than 2.12, the oldest kvmm "
                           "boots (it needs xloadflags for the 64-bit entry; Linux 3.8+)")
    if not HEADER_END_MIN <= header_end <= HEADER_END_MAX:
        raise InvalidImage(f"{name}: the setup header ends at {header_end:#x} (byte 0x201), "
                           f"outside {HEADER_END_MIN:#x}..{HEADER_END_MAX:#x}")
    if size < header_end:
        raise InvalidImage(f"{name}: truncated in the setup header ({size} bytes, the header "
                           f"ends at {header_end:#x})")
    setup_sects = _u8(image, SETUP_SECTS) or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    kernel_size = _u32(image, SYSSIZE) * 16
    if kernel_size == 0:
        raise InvalidImage(f"{name}: syssize is 0: no protected-mode kernel")
    if setup_size + kernel_size > size:
        raise InvalidImage(f"{name}: truncated: the setup code ({setup_size:#x} bytes) and the "
                           f"kernel (syssize {kernel_size:#x} bytes) end at "
                           f"{setup_size + kernel_size:#x}, past the file end {size:#x}")
    loadflags = _u8(image, LOADFLAGS)
    if not loadflags & LOADED_HIGH:
        raise InvalidImage(f"{name}: loadflags {loadflags:#04x} lack LOADED_HIGH: a zImage "
                           "that loads at 0x10000 is not supported")
    xloadflags = _u16(image, XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise InvalidImage(f"{name}: xloadflags {xloadflags:#06x} lack XLF_KERNEL_64: not a "
                           "64-bit kernel (kvmm enters at the 64-bit entry)")
    cmdline_size = _u32(image, CMDLINE_SIZE)
    if cmdline_size == 0:
        raise InvalidImage(f"{name}: cmdline_size is 0")
    initrd_addr_max = _u32(image, INITRD_ADDR_MAX)
    if initrd_addr_max < layout.HIMEM_START:
        raise InvalidImage(f"{name}: initrd_addr_max {initrd_addr_max:#x} is below 1 MiB")
    relocatable = bool(_u8(image, RELOCATABLE_KERNEL))
    kernel_alignment = _u32(image, KERNEL_ALIGNMENT)
    if relocatable and (kernel_alignment & (kernel_alignment - 1) or
                        not MIN_KERNEL_ALIGNMENT <= kernel_alignment <= MAX_KERNEL_ALIGNMENT):
        raise InvalidImage(f"{name}: kernel_alignment {kernel_alignment:#x} is not a power of "
                           f"two from {MIN_KERNEL_ALIGNMENT:#x} to {MAX_KERNEL_ALIGNMENT:#x}")
    payload_offset = _u32(image, PAYLOAD_OFFSET)
    payload_length = _u32(image, PAYLOAD_LENGTH)
    if payload_offset + payload_length > kernel_size:
        raise InvalidImage(f"{name}: the compressed payload [{payload_offset:#x}, "
                           f"+{payload_length:#x}) lies outside the protected-mode kernel "
                           f"({kernel_size:#x} bytes)")
    load_addr = _u64(image, PREF_ADDRESS)
    if load_addr < layout.HIMEM_START:
        raise InvalidImage(f"{name}: pref_address {load_addr:#x} is below 1 MiB where kvmm "
                           "keeps its boot structures")
    if relocatable and load_addr % kernel_alignment:
        raise InvalidImage(f"{name}: pref_address {load_addr:#x} is not a multiple of "
                           f"kernel_alignment {kernel_alignment:#x}")
    if load_addr % layout.PAGE_SIZE:
        raise InvalidImage(f"{name}: pref_address {load_addr:#x} is not page aligned")
    init_size = _u32(image, INIT_SIZE)
    if init_size < kernel_size:
        raise InvalidImage(f"{name}: init_size {init_size:#x} is smaller than the kernel it "
                           f"must hold ({kernel_size:#x} bytes)")
    if load_addr + init_size > layout.MMIO_GAP_START:
        raise InvalidImage(f"{name}: the kernel at pref_address {load_addr:#x} with init_size "
                           f"{init_size:#x} reaches the MMIO hole at "
                           f"{layout.MMIO_GAP_START:#x}; it is outside guest RAM")
    return BzImage(version=version, setup_size=setup_size, kernel_offset=setup_size,
                   kernel_size=kernel_size, load_addr=load_addr, init_size=init_size,
                   cmdline_size=cmdline_size, initrd_addr_max=initrd_addr_max,
                   xloadflags=xloadflags, relocatable=relocatable,
                   kernel_alignment=kernel_alignment,
                   header=bytes(image[SETUP_SECTS:header_end]), name=name)


def load_bzimage(image: bytes | memoryview, kernel: BzImage, mem) -> None:
    """Copy the protected-mode kernel to its load address (the builder has
    checked that it fits; GuestMemory checks the span again)."""
    start = kernel.kernel_offset
    mem.write(kernel.load_addr, image[start:start + kernel.kernel_size])
