"""ELF64 kernel loader (System V ABI, ELF-64 Object File Format; after linux-loader).

`parse_elf` checks every header field it uses before anything is loaded and
returns an `ElfKernel`; `load_elf` copies its segments into guest memory.
Also reads the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) where present, and
any other note through `find_note`.
"""
from __future__ import annotations

import struct

from kvmm.arch.x86_64 import layout
from kvmm.boot.errors import InvalidImage

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
XEN_ELFNOTE_PHYS32_ENTRY = 18   # include/xen/interface/elfnote.h
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")              # Elf64_Phdr, 56 bytes
NHDR = struct.Struct("<III")                   # Elf64_Nhdr
MAX_PHNUM = 64


class Segment:
    """One PT_LOAD segment, checked."""
    __slots__ = ("file_offset", "file_size", "paddr", "mem_size", "executable")

    def __init__(self, file_offset: int, file_size: int, paddr: int, mem_size: int,
                 executable: bool):
        self.file_offset = file_offset
        self.file_size = file_size
        self.paddr = paddr
        self.mem_size = mem_size
        self.executable = executable

    def __repr__(self) -> str:
        return (f"Segment(paddr={self.paddr:#x}, mem_size={self.mem_size:#x}, "
                f"file_size={self.file_size:#x})")


class ElfKernel:
    """A parsed, checked ELF kernel."""
    __slots__ = ("entry", "segments", "pvh_entry", "low", "high")

    def __init__(self, entry: int, segments: tuple, pvh_entry: int | None, low: int,
                 high: int):
        self.entry = entry              # the 64-bit entry point
        self.segments = segments
        self.pvh_entry = pvh_entry      # 32-bit PVH entry, if the image has the note
        self.low = low                  # lowest loaded address
        self.high = high                # one past the highest loaded address

    def check_fits(self, ram_end: int) -> None:
        """Raise InvalidImage if a segment lies outside [1 MiB, ram_end)."""
        if self.high > ram_end:
            raise InvalidImage(
                f"the kernel needs guest RAM up to {self.high:#x} ({_mib(self.high)}) but the "
                f"guest has {_mib(ram_end)}: give it more memory with --mem")


def _mib(n: int) -> str:
    return f"{(n + (1 << 20) - 1) >> 20} MiB"


def parse_elf(image: bytes | memoryview, name: str = "kernel") -> ElfKernel:
    e_entry, phdrs = _program_headers(image, name)
    segments = []
    pvh_entry = None
    for i, (p_type, p_flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, p_align) in \
            enumerate(phdrs):
        if p_type == PT_NOTE:
            pvh_entry = _find_pvh_note(image, p_offset, p_filesz, p_align, name) or pvh_entry
            continue
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise InvalidImage(f"{name}: segment {i} has more file bytes ({p_filesz:#x}) than "
                               f"memory bytes ({p_memsz:#x})")
        if p_offset + p_filesz > len(image):
            raise InvalidImage(f"{name}: truncated: segment {i} ends at "
                               f"{p_offset + p_filesz:#x} past the file end {len(image):#x}")
        if p_paddr < layout.HIMEM_START:
            raise InvalidImage(f"{name}: segment {i} loads at {p_paddr:#x}, below 1 MiB where "
                               "kvmm keeps its boot structures; link the kernel at or above "
                               "0x100000")
        if p_paddr + p_memsz > layout.MMIO_GAP_START:
            raise InvalidImage(f"{name}: segment {i} [{p_paddr:#x}, +{p_memsz:#x}) reaches the "
                               f"MMIO hole at {layout.MMIO_GAP_START:#x}; it is outside "
                               "guest RAM")
        segments.append(Segment(p_offset, p_filesz, p_paddr, p_memsz, bool(p_flags & PF_X)))
    if not segments:
        raise InvalidImage(f"{name}: no loadable segment")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:]):
        if a.paddr + a.mem_size > b.paddr:
            raise InvalidImage(f"{name}: segments at {a.paddr:#x} and {b.paddr:#x} overlap")
    if not any(s.executable and s.paddr <= e_entry < s.paddr + s.mem_size for s in segments):
        raise InvalidImage(f"{name}: entry point {e_entry:#x} is not inside an executable "
                           "segment")
    low = ordered[0].paddr
    high = max(s.paddr + s.mem_size for s in segments)
    return ElfKernel(e_entry, tuple(ordered), pvh_entry, low, high)


def find_note(image: bytes | memoryview, owner: bytes, note_type: int,
              name: str = "kernel") -> bytes | None:
    """The descriptor of the first ELF note named `owner` (without its NUL) of
    type `note_type` in the image's PT_NOTE segments, or None. The ELF header
    and every note are checked as `parse_elf` checks them; a malformed image
    raises InvalidImage."""
    _entry, phdrs = _program_headers(image, name)
    for p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, _memsz, p_align in phdrs:
        if p_type != PT_NOTE:
            continue
        for ntype, nname, desc in _notes(image, p_offset, p_filesz, p_align, name):
            if ntype == note_type and nname == owner:
                return desc
    return None


def _program_headers(image, name: str) -> tuple[int, list[tuple]]:
    """Check the ELF header; return e_entry and the program headers (PHDR tuples)."""
    if len(image) < EHDR.size:
        raise InvalidImage(f"{name}: truncated ({len(image)} bytes), not an ELF kernel")
    (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, _flags, e_ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, _shstrndx) = EHDR.unpack_from(image, 0)
    if ident[:4] != ELF_MAGIC:
        raise InvalidImage(f"{name}: not an ELF file (bad magic); give a 64-bit ELF kernel")
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise InvalidImage(f"{name}: not a 64-bit little-endian ELF; kvmm boots x86-64 kernels")
    if e_machine != EM_X86_64:
        raise InvalidImage(f"{name}: ELF machine {e_machine} is not x86-64 ({EM_X86_64})")
    if e_type != ET_EXEC:
        raise InvalidImage(f"{name}: ELF type {e_type} is not an executable (ET_EXEC)")
    if e_version != EV_CURRENT or e_ehsize != EHDR.size:
        raise InvalidImage(f"{name}: unsupported ELF header (version {e_version}, "
                           f"size {e_ehsize})")
    if e_phentsize != PHDR.size:
        raise InvalidImage(f"{name}: program header size {e_phentsize}, expected {PHDR.size}")
    if not 1 <= e_phnum <= MAX_PHNUM:
        raise InvalidImage(f"{name}: {e_phnum} program headers (1 to {MAX_PHNUM} allowed)")
    if e_phoff + e_phnum * PHDR.size > len(image):
        raise InvalidImage(f"{name}: truncated: program headers end at "
                           f"{e_phoff + e_phnum * PHDR.size:#x} past the file end "
                           f"{len(image):#x}")
    if e_shoff and e_shoff + e_shnum * e_shentsize > len(image):
        raise InvalidImage(f"{name}: truncated: the section headers end at "
                           f"{e_shoff + e_shnum * e_shentsize:#x} past the file end "
                           f"{len(image):#x}")
    return e_entry, [PHDR.unpack_from(image, e_phoff + i * PHDR.size) for i in range(e_phnum)]


def _notes(image, offset: int, size: int, align: int, name: str):
    """Yield (type, owner, descriptor) for each note of the PT_NOTE segment
    [offset, offset + size), every bound checked. Names and descriptors are
    padded to 8 bytes in a segment aligned to 8, else to 4 (gABI "Note Section")."""
    pad = 7 if align == 8 else 3
    end = offset + size
    if end > len(image):
        raise InvalidImage(f"{name}: truncated: a note segment ends past the file end")
    while offset + NHDR.size <= end:
        namesz, descsz, ntype = NHDR.unpack_from(image, offset)
        name_off = offset + NHDR.size
        desc_off = name_off + ((namesz + pad) & ~pad)
        next_off = desc_off + ((descsz + pad) & ~pad)
        if next_off > end:
            raise InvalidImage(f"{name}: malformed ELF note at {offset:#x}")
        owner = bytes(image[name_off:name_off + namesz]).rstrip(b"\0")
        yield ntype, owner, bytes(image[desc_off:desc_off + descsz])
        offset = next_off


def _find_pvh_note(image, offset: int, size: int, align: int, name: str) -> int | None:
    for ntype, owner, desc in _notes(image, offset, size, align, name):
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY and owner == b"Xen":
            if len(desc) == 4:
                return struct.unpack("<I", desc)[0]
            if len(desc) == 8:
                return struct.unpack("<Q", desc)[0]
            raise InvalidImage(f"{name}: PVH entry note of {len(desc)} bytes")
    return None


def load_elf(image: bytes | memoryview, kernel: ElfKernel, mem) -> None:
    """Copy the segments of a parsed kernel into guest memory, zeroing the BSS.
    The builder has checked that they fit (`check_fits`); a segment outside
    guest memory still cannot be written (GuestMemory checks every span)."""
    for seg in kernel.segments:
        dest = mem.view(seg.paddr, seg.mem_size)
        dest[:seg.file_size] = image[seg.file_offset:seg.file_offset + seg.file_size]
        if seg.mem_size > seg.file_size:
            dest[seg.file_size:] = bytes(seg.mem_size - seg.file_size)
