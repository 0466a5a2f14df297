"""The initial RAM disk: checked and placed before the VM exists, read straight
into guest memory when it is built (Documentation/arch/x86/boot.rst, "initrd").

Placement follows boot.rst and what linux-loader/Firecracker do: as high as
possible in the RAM below the 32-bit MMIO hole, page aligned, ending at or
below the kernel's `initrd_addr_max`, and above everything the kernel
occupies before it reads its memory map (load address + init_size).
"""
from __future__ import annotations

import os
import stat

from kvmm.arch.x86_64 import layout
from kvmm.boot.errors import BootError

INITRD_ALIGN = layout.PAGE_SIZE


class InitrdError(BootError):
    """The initrd cannot be read or does not fit."""


class Initrd:
    """An initrd file, checked, and where it goes in guest memory."""
    __slots__ = ("path", "size", "addr")

    def __init__(self, path: str, size: int, addr: int):
        self.path = path
        self.size = size
        self.addr = addr

    def __repr__(self) -> str:
        return f"Initrd({self.path!r}, size={self.size:#x}, addr={self.addr:#x})"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def initrd_size(path: str) -> int:
    """The size of a readable, non-empty regular file; InitrdError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InitrdError(f"initrd {path} does not exist") from None
    except PermissionError:
        raise InitrdError(f"initrd {path} is not readable: check its permissions") from None
    except OSError as e:
        raise InitrdError(f"initrd {path}: cannot open it ({e.strerror})") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise InitrdError(f"initrd {path} is a directory; give a cpio archive (compressed "
                          "or not)")
    if not stat.S_ISREG(st.st_mode):
        raise InitrdError(f"initrd {path} is not a regular file")
    if st.st_size == 0:
        raise InitrdError(f"initrd {path} is empty")
    return st.st_size


def place_initrd(size: int, kernel, ram_low_end: int, name: str = "initrd") -> int:
    """The guest address for an initrd of `size` bytes: the highest page-aligned
    spot that ends within both `ram_low_end` (RAM below the MMIO hole) and the
    kernel's initrd_addr_max, and starts above the kernel (`kernel.high`)."""
    if size <= 0:
        raise InitrdError(f"{name} is empty")
    limit = min(ram_low_end, kernel.initrd_addr_max + 1, layout.MMIO_GAP_START)
    floor = max(kernel.high, layout.HIMEM_START)
    floor = (floor + INITRD_ALIGN - 1) // INITRD_ALIGN * INITRD_ALIGN
    addr = (limit - size) // INITRD_ALIGN * INITRD_ALIGN
    if addr < floor:
        room = max(0, (limit - floor) // INITRD_ALIGN * INITRD_ALIGN)
        why = (f"the kernel ends at {kernel.high:#x} and the initrd must end by {limit:#x} "
               f"(RAM below {ram_low_end:#x}, initrd_addr_max {kernel.initrd_addr_max:#x})")
        raise InitrdError(f"{name} ({_mib(size)}) does not fit: {_mib(room)} free for it; "
                          f"{why}: give the guest more memory with --mem or use a smaller "
                          "initrd")
    return addr


def prepare_initrd(path: str, kernel, ram_low_end: int) -> Initrd:
    size = initrd_size(path)
    return Initrd(path, size, place_initrd(size, kernel, ram_low_end, f"initrd {path}"))


def load_initrd(initrd: Initrd, mem) -> None:
    """Read the file into guest memory at its place; InitrdError if it changed size."""
    dest = mem.view(initrd.addr, initrd.size)
    try:
        with open(initrd.path, "rb", buffering=0) as f:
            done = 0
            while done < initrd.size:
                n = f.readinto(dest[done:])
                if not n:
                    break
                done += n
            extra = f.read(1)
    except OSError as e:
        raise InitrdError(f"initrd {initrd.path}: cannot read it ({e.strerror})") from None
    if done != initrd.size or extra:
        raise InitrdError(f"initrd {initrd.path} changed size while kvmm was reading it")
