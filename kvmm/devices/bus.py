"""Port-I/O and MMIO buses (after Firecracker's `bus.rs` and vm-superio).

A device implements the `BusDevice` protocol (kvmm/devices/protocols.py) and sees offsets from its own
base, never absolute addresses. The bus rejects zero-length, overflowing and
overlapping ranges when a device is inserted, so a lookup is a binary search.
"""
from __future__ import annotations

import bisect
import threading


class BusError(Exception):
    """A device range that cannot be inserted."""


class Bus:
    """A set of non-overlapping [base, base+length) ranges, each owned by a device."""

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit            # one past the highest address (0x10000 for ports)
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, BusDevice]] = []
        self._lock = threading.Lock()
        self.unhandled = 0            # accesses that hit no device

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        if length <= 0:
            raise BusError(f"{self.name}: zero or negative length {length} at {base:#x}")
        if base < 0 or base + length > self.limit:
            raise BusError(f"{self.name}: range [{base:#x}, +{length:#x}) passes the bus "
                           f"limit {self.limit:#x}")
        with self._lock:
            i = bisect.bisect_right(self._bases, base)
            if i > 0:
                pbase, plen, _ = self._entries[i - 1]
                if pbase + plen > base:
                    raise BusError(f"{self.name}: [{base:#x}, +{length:#x}) overlaps "
                                   f"[{pbase:#x}, +{plen:#x})")
            if i < len(self._entries) and base + length > self._entries[i][0]:
                nbase, nlen, _ = self._entries[i]
                raise BusError(f"{self.name}: [{base:#x}, +{length:#x}) overlaps "
                               f"[{nbase:#x}, +{nlen:#x})")
            self._bases.insert(i, base)
            self._entries.insert(i, (base, length, device))

    def remove(self, base: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            if i < len(self._bases) and self._bases[i] == base:
                del self._bases[i]
                del self._entries[i]

    def find(self, addr: int, length: int = 1) -> tuple[BusDevice, int] | None:
        """The device whose range holds [addr, addr+length), and the offset."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i < 0:
            return None
        base, size, device = self._entries[i]
        offset = addr - base
        if offset + length > size:
            return None
        return device, offset

    def read(self, addr: int, data: memoryview) -> bool:
        """Dispatch a read; an access that hits no device reads as all ones."""
        hit = self.find(addr, len(data))
        if hit is None:
            self.unhandled += 1
            data[:] = b"\xff" * len(data)
            return False
        hit[0].read(hit[1], data)
        return True

    def write(self, addr: int, data: bytes) -> bool:
        hit = self.find(addr, len(data))
        if hit is None:
            self.unhandled += 1
            return False
        hit[0].write(hit[1], data)
        return True

    def devices(self) -> list[tuple[int, int, BusDevice]]:
        return list(self._entries)

    def write_string(self, addr: int, size: int, data: bytes) -> bool:
        """String output (OUTS): one call with the whole buffer where the device
        takes it (`accepts_string_io`), else one write per element."""
        hit = self.find(addr, size)
        if hit is None:
            self.unhandled += 1
            return False
        device, offset = hit
        if getattr(device, "accepts_string_io", False):
            device.write(offset, data)
        else:
            for i in range(0, len(data), size):
                device.write(offset, data[i:i + size])
        return True

    def read_string(self, addr: int, size: int, data: memoryview) -> bool:
        """String input (INS): one read per element."""
        hit = self.find(addr, size)
        if hit is None:
            self.unhandled += 1
            data[:] = b"\xff" * len(data)
            return False
        device, offset = hit
        for i in range(0, len(data), size):
            device.read(offset, data[i:i + size])
        return True
