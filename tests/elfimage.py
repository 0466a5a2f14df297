"""Builds small ELF64 kernel images for loader tests, good and deliberately bad."""
import struct

from kvmm.boot import elf

CODE = b"\xf4" * 16          # hlt


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def build(segments=None, entry=0x100000, machine=elf.EM_X86_64, e_type=elf.ET_EXEC,
          klass=elf.ELFCLASS64, magic=elf.ELF_MAGIC, phentsize=elf.PHDR.size, notes=b"",
          phnum=None):
    """segments: list of (paddr, data, mem_size, flags)."""
    if segments is None:
        segments = [(0x100000, CODE, len(CODE), elf.PF_X | 4)]
    nseg = len(segments) + (1 if notes else 0)
    phoff = elf.EHDR.size
    data_off = phoff + nseg * elf.PHDR.size
    body = b""
    phdrs = b""
    for paddr, data, memsz, flags in segments:
        phdrs += elf.PHDR.pack(elf.PT_LOAD, flags, data_off + len(body), paddr, paddr,
                               len(data), memsz, 0x1000)
        body += data
    if notes:
        phdrs += elf.PHDR.pack(elf.PT_NOTE, 4, data_off + len(body), 0, 0, len(notes),
                               len(notes), 4)
        body += notes
    ident = magic + bytes([klass, elf.ELFDATA2LSB, 1]) + bytes(9)
    ehdr = elf.EHDR.pack(ident, e_type, machine, elf.EV_CURRENT, entry, phoff, 0, 0,
                         elf.EHDR.size, phentsize, nseg if phnum is None else phnum, 0, 0, 0)
    return ehdr + phdrs + body
