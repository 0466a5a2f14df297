"""The boot GDT and the segment registers that match it (Intel SDM vol. 3, 3.4.5)."""
import struct

from kvmm.ioctl.structs import KvmSegment

# Access byte bits
_P = 0b1000_0000     # present
_S = 0b0001_0000     # code/data (not system)
_CODE = 0b1010       # execute/read
_DATA = 0b0010       # read/write
# Flags nibble
_G = 0b1000          # 4 KiB granularity
_DB = 0b0100         # 32-bit default size
_L = 0b0010          # 64-bit code

SELECTOR_CODE64 = 0x08
SELECTOR_DATA = 0x10
SELECTOR_CODE32 = 0x18
SELECTOR_TSS = 0x20
TSS_TYPE_BUSY64 = 0b1011


def gdt_entry(flags: int, access: int, base: int, limit: int) -> int:
    return ((base & 0xFF000000) << 32) | ((flags & 0xF) << 52) | ((limit & 0xF0000) << 32) | (
        (access & 0xFF) << 40) | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF)


ENTRIES = (
    0,                                                          # null
    gdt_entry(_G | _L, _P | _S | _CODE | 0b1, 0, 0xFFFFF),      # 0x08 code64 (accessed)
    gdt_entry(_G | _DB, _P | _S | _DATA | 0b1, 0, 0xFFFFF),     # 0x10 data
    gdt_entry(_G | _DB, _P | _S | _CODE | 0b1, 0, 0xFFFFF),     # 0x18 code32
    gdt_entry(0, _P | TSS_TYPE_BUSY64, 0, 0x67),                # 0x20 TSS (low half)
    0,                                                          # TSS (high half)
)


def gdt_bytes() -> bytes:
    return struct.pack(f"<{len(ENTRIES)}Q", *ENTRIES)


def segment_from_entry(selector: int) -> KvmSegment:
    """The KvmSegment whose cached state matches GDT entry `selector`."""
    e = ENTRIES[selector >> 3]
    base = ((e >> 16) & 0xFFFFFF) | ((e >> 32) & 0xFF000000)
    limit = (e & 0xFFFF) | ((e >> 32) & 0xF0000)
    access = (e >> 40) & 0xFF
    flags = (e >> 52) & 0xF
    g = (flags >> 3) & 1
    return KvmSegment(
        base=base, limit=(limit << 12) | 0xFFF if g else limit, selector=selector,
        type=access & 0xF, present=(access >> 7) & 1, dpl=(access >> 5) & 3,
        db=(flags >> 2) & 1, s=(access >> 4) & 1, l=(flags >> 1) & 1, g=g, avl=flags & 1,
        unusable=0 if (access >> 7) & 1 else 1)
