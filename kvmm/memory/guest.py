"""Guest RAM: a fixed reservation, mapped once, registered as memslots.

`GuestMemory` is the one choke point between guest-physical addresses and host
buffers (after rust-vmm's vm-memory and Solo5's HVT_CHECKED_GPA_P): every
access is checked over its whole span against the region that holds its
start, and against 2**64, before a host byte is touched.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

from kvmm.memory.errors import GuestMemoryError, MemoryReservationError

PAGE_SIZE = 4096
HUGE_PAGE_SIZE = 2 << 20
ADDRESS_LIMIT = 1 << 64

# mman.h
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_PRIVATE = 0x02
_MAP_ANONYMOUS = 0x20
_MAP_NORESERVE = 0x4000
_MAP_HUGETLB = 0x40000
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_DONTFORK = 10
_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23  # Linux 5.14
_MLOCK_ONFAULT = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

BACKINGS = ("normal", "thp", "hugetlb")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _errno_text() -> str:
    import os
    return os.strerror(ctypes.get_errno())


class GuestRegion:
    """One contiguous piece of guest RAM and its host mapping."""
    __slots__ = ("guest_addr", "size", "host_addr", "view", "slot")

    def __init__(self, guest_addr: int, size: int, host_addr: int, view: memoryview,
                 slot: int):
        self.guest_addr = guest_addr
        self.size = size
        self.host_addr = host_addr
        self.view = view
        self.slot = slot

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


class GuestMemory:
    """Guest RAM as a fixed set of regions.

    `layout` is a list of (guest address, size) pairs, page-aligned and not
    overlapping. `backing` is "normal", "thp" (transparent huge pages) or
    "hugetlb" (pages from the hugetlbfs pool, which must be reserved).
    `prefault` populates every page before the guest runs; `lock` keeps it
    resident (mlock), so the reservation cannot be overcommitted.
    """

    def __init__(self, layout: list[tuple[int, int]], *, backing: str = "normal",
                 prefault: bool = False, lock: bool = False):
        if backing not in BACKINGS:
            raise MemoryReservationError(f"unknown memory backing {backing!r}; use one of "
                                         f"{', '.join(BACKINGS)}")
        align = HUGE_PAGE_SIZE if backing == "hugetlb" else PAGE_SIZE
        self.regions: list[GuestRegion] = []
        self._starts: list[int] = []
        prev_end = 0
        for guest_addr, size in sorted(layout):
            if size <= 0 or size % align or guest_addr % align:
                raise MemoryReservationError(
                    f"guest RAM region [{guest_addr:#x}, +{size:#x}) is not a positive "
                    f"multiple of {align // 1024} KiB")
            if guest_addr < prev_end or guest_addr + size > ADDRESS_LIMIT:
                raise MemoryReservationError(f"guest RAM region at {guest_addr:#x} overlaps "
                                             "another or passes 2**64")
            prev_end = guest_addr + size
            self.regions.append(self._map(guest_addr, size, backing, prefault, lock,
                                          slot=len(self.regions)))
            self._starts.append(guest_addr)
        self.size = sum(r.size for r in self.regions)
        # (region, first address, one past the last), for the lookup hot path
        self._bounds = [(r, r.guest_addr, r.end) for r in self.regions]
        self.backing = backing

    @staticmethod
    def _map(guest_addr: int, size: int, backing: str, prefault: bool, lock: bool,
             slot: int) -> GuestRegion:
        flags = _MAP_PRIVATE | _MAP_ANONYMOUS
        if backing == "hugetlb":
            flags |= _MAP_HUGETLB
        addr = _libc.mmap(None, size, _PROT_RW, flags, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            hint = ""
            if backing == "hugetlb":
                hint = (": reserve enough 2 MiB huge pages first "
                        "(/proc/sys/vm/nr_hugepages) or use another backing")
            raise MemoryReservationError(
                f"cannot reserve {size >> 20} MiB of guest RAM ({_errno_text()}){hint}")
        try:
            # A forked helper must not share (or copy) guest RAM.
            _libc.madvise(addr, size, _MADV_DONTFORK)
            if backing == "thp":
                _libc.madvise(addr, size, _MADV_HUGEPAGE)
            if lock and _libc.mlock(addr, size) != 0:
                raise MemoryReservationError(
                    f"cannot lock {size >> 20} MiB of guest RAM ({_errno_text()}): raise "
                    "RLIMIT_MEMLOCK (ulimit -l) or run without locking")
            if prefault and not lock:
                if _libc.madvise(addr, size, _MADV_POPULATE_WRITE) != 0:
                    # Older kernels: touch one byte per page.
                    buf = (ctypes.c_char * size).from_address(addr)
                    for off in range(0, size, PAGE_SIZE):
                        buf[off] = b"\0"
        except BaseException:
            _libc.munmap(addr, size)
            raise
        view = memoryview((ctypes.c_char * size).from_address(addr)).cast("B")
        return GuestRegion(guest_addr, size, addr, view, slot)

    def close(self) -> None:
        for region in self.regions:
            region.view.release()
            _libc.munmap(region.host_addr, region.size)
        self.regions = []
        self._starts = []
        self._bounds = []

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Lookup. -------------------------------------------------------------
    def _find(self, addr: int, length: int) -> tuple[GuestRegion, int]:
        """The region holding [addr, addr+length) whole, and the offset in it."""
        end = addr + length
        if addr < 0 or length < 0 or end > ADDRESS_LIMIT:
            raise GuestMemoryError(addr, length, "outside the 64-bit address space")
        for region, start, stop in self._bounds:
            if start <= addr < stop:
                if end > stop:
                    raise GuestMemoryError(addr, length,
                                           f"runs past the end of RAM at {stop:#x}")
                return region, addr - start
        raise GuestMemoryError(addr, length, "not guest RAM")

    def contains(self, addr: int, length: int = 1) -> bool:
        try:
            self._find(addr, length)
        except GuestMemoryError:
            return False
        return True

    def end(self) -> int:
        """One past the highest RAM address."""
        return self.regions[-1].end if self.regions else 0

    # Checked access. -----------------------------------------------------
    def view(self, addr: int, length: int) -> memoryview:
        """A writable view of [addr, addr+length); the span must be in one region."""
        region, off = self._find(addr, length)
        return region.view[off:off + length]

    def read(self, addr: int, length: int) -> bytes:
        region, off = self._find(addr, length)
        return bytes(region.view[off:off + length])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        region, off = self._find(addr, length)
        region.view[off:off + length] = data

    def read_obj(self, addr: int, ctype):
        """A copy of a ctypes object read from guest memory."""
        size = ctypes.sizeof(ctype)
        region, off = self._find(addr, size)
        return ctype.from_buffer_copy(region.view[off:off + size])

    def write_obj(self, addr: int, obj) -> None:
        self.write(addr, bytes(obj))

    def read_u16(self, addr: int) -> int:
        region, off = self._find(addr, 2)
        return _U16.unpack_from(region.view, off)[0]

    def read_u32(self, addr: int) -> int:
        region, off = self._find(addr, 4)
        return _U32.unpack_from(region.view, off)[0]

    def read_u64(self, addr: int) -> int:
        region, off = self._find(addr, 8)
        return _U64.unpack_from(region.view, off)[0]

    def write_u16(self, addr: int, value: int) -> None:
        region, off = self._find(addr, 2)
        _U16.pack_into(region.view, off, value)

    def write_u32(self, addr: int, value: int) -> None:
        region, off = self._find(addr, 4)
        _U32.pack_into(region.view, off, value)

    def write_u64(self, addr: int, value: int) -> None:
        region, off = self._find(addr, 8)
        _U64.pack_into(region.view, off, value)

    # KVM and accounting. ------------------------------------------------
    def register(self, vm, dirty_log: bool = False) -> None:
        """Register every region as a memslot of `vm` (a kvmm.ioctl.Vm)."""
        from kvmm.ioctl.numbers import KVM_MEM_LOG_DIRTY_PAGES
        flags = KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0
        for region in self.regions:
            vm.set_user_memory_region(region.slot, region.guest_addr, region.size,
                                      region.host_addr, flags)

    def dirty_pages(self, vm) -> list[int]:
        """Guest addresses of the 4 KiB pages written since the last call.

        The memslots must have been registered with dirty_log=True.
        """
        pages = []
        for region in self.regions:
            npages = region.size // PAGE_SIZE
            bitmap = (ctypes.c_uint64 * ((npages + 63) // 64))()
            vm.get_dirty_log(region.slot, bitmap)
            for word_index, word in enumerate(bitmap):
                while word:
                    bit = (word & -word).bit_length() - 1
                    pages.append(region.guest_addr + (word_index * 64 + bit) * PAGE_SIZE)
                    word &= word - 1
        return pages

    def resident_bytes(self) -> int:
        """How much of guest RAM is backed by host pages now (mincore)."""
        total = 0
        for region in self.regions:
            npages = (region.size + PAGE_SIZE - 1) // PAGE_SIZE
            vec = (ctypes.c_ubyte * npages)()
            if _libc.mincore(region.host_addr, region.size, vec) != 0:
                continue
            total += sum(1 for b in bytes(vec) if b & 1) * PAGE_SIZE
        return total
