"""Typed vCPU exits (after kvm-ioctls' VcpuExit), chosen only by exit_reason.

Data buffers of IN and MMIO-read exits are writable views into the kvm_run
page, zeroed before they are handed out: what a device writes into them is
what the guest reads.
"""
from __future__ import annotations

from kvmm.ioctl import numbers as n


class UnknownExit(Exception):
    """KVM returned an exit reason kvmm does not handle."""

    def __init__(self, reason: int):
        super().__init__(f"unhandled KVM exit reason {reason}")
        self.reason = reason


class _Exit:
    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


class IoOut(_Exit):
    """OUT/OUTS: `data` holds `count` elements of `size` bytes."""
    __slots__ = ("port", "size", "count", "data")

    def __init__(self, port: int, size: int, count: int, data: bytes):
        self.port, self.size, self.count, self.data = port, size, count, data


class IoIn(_Exit):
    """IN/INS: fill `data` (`count` elements of `size` bytes)."""
    __slots__ = ("port", "size", "count", "data")

    def __init__(self, port: int, size: int, count: int, data: memoryview):
        self.port, self.size, self.count, self.data = port, size, count, data


class MmioWrite(_Exit):
    __slots__ = ("addr", "data")

    def __init__(self, addr: int, data: bytes):
        self.addr, self.data = addr, data


class MmioRead(_Exit):
    """Fill `data` (len 1, 2, 4 or 8)."""
    __slots__ = ("addr", "data")

    def __init__(self, addr: int, data: memoryview):
        self.addr, self.data = addr, data


class Hlt(_Exit):
    __slots__ = ()


class Shutdown(_Exit):
    """Triple fault or another shutdown condition."""
    __slots__ = ()


class FailEntry(_Exit):
    __slots__ = ("hardware_entry_failure_reason", "cpu")

    def __init__(self, hardware_entry_failure_reason: int, cpu: int):
        self.hardware_entry_failure_reason, self.cpu = hardware_entry_failure_reason, cpu


class InternalError(_Exit):
    __slots__ = ("suberror", "data")

    def __init__(self, suberror: int, data: tuple):
        self.suberror, self.data = suberror, data


class SystemEvent(_Exit):
    __slots__ = ("type", "data")

    def __init__(self, type: int, data: tuple):
        self.type, self.data = type, data


class Interrupted(_Exit):
    """KVM_RUN returned early (EINTR, immediate_exit, KVM_EXIT_INTR)."""
    __slots__ = ()


class IrqWindowOpen(_Exit):
    __slots__ = ()


_HLT = Hlt()
_SHUTDOWN = Shutdown()
_INTERRUPTED = Interrupted()
_IRQ_WINDOW = IrqWindowOpen()
_IO_DATA_LIMIT = 4096  # the PIO data page follows the kvm_run header


def decode_exit(run, view: memoryview, interrupted: bool = False):
    """Turn the kvm_run page into one of the exit types above."""
    if interrupted:
        return _INTERRUPTED
    reason = run.exit_reason
    if reason == n.KVM_EXIT_IO:
        io = run.exit.io
        size, count, off = io.size, io.count, io.data_offset
        length = size * count
        if length > _IO_DATA_LIMIT or off + length > len(view):
            raise UnknownExit(reason)
        if io.direction == n.KVM_EXIT_IO_OUT:
            return IoOut(io.port, size, count, bytes(view[off:off + length]))
        data = view[off:off + length]
        data[:] = bytes(length)
        return IoIn(io.port, size, count, data)
    if reason == n.KVM_EXIT_MMIO:
        mmio = run.exit.mmio
        length = min(mmio.len, 8)
        off = _MMIO_DATA_OFFSET
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, bytes(view[off:off + length]))
        data = view[off:off + length]
        data[:] = bytes(length)
        return MmioRead(mmio.phys_addr, data)
    if reason == n.KVM_EXIT_HLT:
        return _HLT
    if reason == n.KVM_EXIT_INTR:
        return _INTERRUPTED
    if reason == n.KVM_EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == n.KVM_EXIT_FAIL_ENTRY:
        fe = run.exit.fail_entry
        return FailEntry(fe.hardware_entry_failure_reason, fe.cpu)
    if reason == n.KVM_EXIT_INTERNAL_ERROR:
        ie = run.exit.internal
        return InternalError(ie.suberror, tuple(ie.data[:min(ie.ndata, 16)]))
    if reason == n.KVM_EXIT_SYSTEM_EVENT:
        se = run.exit.system_event
        return SystemEvent(se.type, tuple(se.data[:min(se.ndata, 16)]))
    if reason == n.KVM_EXIT_IRQ_WINDOW_OPEN:
        return _IRQ_WINDOW
    raise UnknownExit(reason)


def _mmio_data_offset() -> int:
    from kvmm.ioctl.structs import KvmRun, KvmRunMmio
    return KvmRun.exit.offset + KvmRunMmio.data.offset


_MMIO_DATA_OFFSET = _mmio_data_offset()
