"""A small AML encoder: just what kvmm's DSDT needs (ACPI 6.5, chapter 20
"ACPI Machine Language (AML) Specification"; resource descriptors from
section 6.4 "Resource Data Types for ACPI").

Each function returns the encoded bytes of one term; terms nest by passing
bytes in. Names are single NameSegs (four characters, padded with '_'), or
a root path starting with '\\'.
"""
from __future__ import annotations

import struct

# 20.3 AML byte encoding
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82            # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C            # '\'
DUAL_NAME_PREFIX = 0x2E

# 6.4 resource descriptors
SMALL_IO = 0x47             # I/O port descriptor, type 0x08, length 7
SMALL_END_TAG = 0x79        # end tag, type 0x0F, length 1
LARGE_MEMORY32_FIXED = 0x86
LARGE_EXTENDED_IRQ = 0x89
IO_DECODE_16 = 0b1
MEMORY_READ_WRITE = 0b1
IRQ_CONSUMER = 0b1          # extended interrupt flags (6.4.3.6)
IRQ_EDGE = 0b10
IRQ_ACTIVE_LOW = 0b100
IRQ_SHARED = 0b1000

PKG_LENGTH_MAX = (1 << 28) - 1


def pkg_length(body_len: int) -> bytes:
    """20.2.4 PkgLength for a body of `body_len` bytes; the encoded length
    counts the PkgLength bytes themselves."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 1 << 6:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0xF)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest
    raise ValueError(f"an AML package of {body_len} bytes is too long (max {PKG_LENGTH_MAX})")


def name_seg(name: str) -> bytes:
    """A NameSeg: a lead character A-Z or '_', then A-Z, 0-9 or '_', padded to 4."""
    if not 1 <= len(name) <= 4 or not name.isascii():
        raise ValueError(f"AML name {name!r}: 1 to 4 ASCII characters")
    seg = name.upper().ljust(4, "_")
    if not (seg[0].isalpha() or seg[0] == "_") or not all(c.isalnum() or c == "_" for c in seg):
        raise ValueError(f"AML name {name!r}: letters, digits and '_', not starting with a digit")
    return seg.encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString: `NAME`, `\\NAME` or `\\_SB_.NAME` (two segments)."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segs = path.split(".")
    if len(segs) == 1:
        return prefix + name_seg(segs[0])
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + name_seg(segs[0]) + name_seg(segs[1])
    raise ValueError(f"AML path {path!r}: at most two segments")


def integer(value: int) -> bytes:
    """The shortest ComputationalData for a non-negative integer."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} outside 0..2**64-1")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value < 1 << 8:
        return bytes([BYTE_PREFIX, value])
    if value < 1 << 16:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value < 1 << 32:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    data = text.encode("ascii")
    if b"\0" in data:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + data + b"\0"


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0501"): three letters and four hex digits packed into a
    big-endian-ish DWORD (19.6.35)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"EISA id {text!r}: three capital letters and four hex digits")
    c = [ord(ch) - 0x40 for ch in text[:3]]
    hexpart = int(text[3:], 16)
    value = (c[0] << 26) | (c[1] << 21) | (c[2] << 16) | hexpart
    # The id is stored with its bytes in big-endian order.
    return integer(struct.unpack("<I", struct.pack(">I", value))[0])


def name(path: str, data: bytes) -> bytes:
    """Name(PATH, data)"""
    return bytes([NAME_OP]) + name_string(path) + data


def package(elements: list[bytes]) -> bytes:
    if len(elements) > 255:
        raise ValueError("an AML Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, terms: list[bytes]) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, terms: list[bytes]) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# Resource descriptors (6.4) ----------------------------------------------------
def io_port(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length): a fixed range of ports."""
    if not 0 <= base <= 0xFFFF or not 1 <= length <= 0xFF or base + length > 0x10000:
        raise ValueError(f"I/O range {base:#x}+{length} outside the 16-bit port space")
    return struct.pack("<BBHHBB", SMALL_IO, IO_DECODE_16, base, base, 1, length)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    if not 0 <= base < 1 << 32 or not 0 < length < 1 << 32 or base + length > 1 << 32:
        raise ValueError(f"memory range {base:#x}+{length:#x} outside the 32-bit space")
    return struct.pack("<BHBII", LARGE_MEMORY32_FIXED, 9,
                       MEMORY_READ_WRITE if writable else 0, base, length)


def interrupt(gsi: int, edge: bool = True, active_low: bool = False,
              shared: bool = False) -> bytes:
    """Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){gsi}"""
    if not 0 <= gsi < 1 << 32:
        raise ValueError(f"interrupt {gsi} outside 0..2**32-1")
    flags = IRQ_CONSUMER | (IRQ_EDGE if edge else 0) | (IRQ_ACTIVE_LOW if active_low else 0) \
        | (IRQ_SHARED if shared else 0)
    return struct.pack("<BHBBI", LARGE_EXTENDED_IRQ, 6, flags, 1, gsi)


def resource_template(descriptors: list[bytes]) -> bytes:
    """ResourceTemplate(){...}: a Buffer of descriptors closed by an end tag
    (checksum 0: "the checksum is treated as correct", 6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes([SMALL_END_TAG, 0]))
