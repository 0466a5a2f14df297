"""The driver side of virtio, for unit tests: split virtqueues laid out in a
GuestMemory, the virtio-mmio register dance, and virtio-blk requests.

Everything here writes guest memory the way a guest driver would, through
GuestMemory's checked accessors, so tests can build good and hostile rings.
"""
from __future__ import annotations

import struct

from kvmm.memory import GuestMemory
from kvmm.virtio import mmio
from kvmm.virtio.device import (
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
)
from kvmm.virtio.queue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, avail_ring_bytes,
    desc_table_bytes, used_ring_bytes,
)

DESC = struct.Struct("<QIHH")


class Allocator:
    """Bump allocator of guest addresses in [start, end)."""

    def __init__(self, start: int, end: int):
        self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) // align * align
        if addr + size > self.end:
            raise MemoryError("test guest memory exhausted")
        self.next = addr + size
        return addr


class VirtqDriver:
    """A split virtqueue, driver side."""

    def __init__(self, mem: GuestMemory, size: int, desc: int, avail: int, used: int):
        self.mem = mem
        self.size = size
        self.desc = desc
        self.avail = avail
        self.used = used
        for addr, length in ((desc, desc_table_bytes(size)), (avail, avail_ring_bytes(size)),
                             (used, used_ring_bytes(size))):
            mem.write(addr, bytes(length))
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, list[int]] = {}

    @classmethod
    def at(cls, mem: GuestMemory, size: int, base: int) -> VirtqDriver:
        desc = (base + 15) // 16 * 16
        avail = desc + desc_table_bytes(size)
        used = (avail + avail_ring_bytes(size) + 3) // 4 * 4
        return cls(mem, size, desc, avail, used)

    def end(self) -> int:
        return self.used + used_ring_bytes(self.size)

    # Descriptors. ----------------------------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int, nxt: int,
                   table: int | None = None) -> None:
        base = self.desc if table is None else table
        self.mem.write(base + 16 * index, DESC.pack(addr, length, flags, nxt))

    def add_chain(self, bufs: list[tuple[int, int, bool]], *, publish: bool = True) -> int:
        """Put a direct chain of (addr, len, device-writable) buffers; return its head."""
        if len(bufs) > len(self.free):
            raise ValueError("not enough free descriptors")
        idxs = [self.free.pop(0) for _ in bufs]
        for k, (addr, length, writable) in enumerate(bufs):
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            nxt = 0
            if k + 1 < len(bufs):
                flags |= VIRTQ_DESC_F_NEXT
                nxt = idxs[k + 1]
            self.write_desc(idxs[k], addr, length, flags, nxt)
        self.chains[idxs[0]] = idxs
        if publish:
            self.publish(idxs[0])
        return idxs[0]

    def add_indirect(self, bufs: list[tuple[int, int, bool]], table: int, *,
                     publish: bool = True) -> int:
        """Put a chain as one indirect descriptor whose table is at `table`."""
        for k, (addr, length, writable) in enumerate(bufs):
            flags = VIRTQ_DESC_F_WRITE if writable else 0
            nxt = 0
            if k + 1 < len(bufs):
                flags |= VIRTQ_DESC_F_NEXT
                nxt = k + 1
            self.mem.write(table + 16 * k, DESC.pack(addr, length, flags, nxt))
        head = self.free.pop(0)
        self.write_desc(head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
        self.chains[head] = [head]
        if publish:
            self.publish(head)
        return head

    # Rings. ----------------------------------------------------------------
    def publish(self, head: int) -> None:
        """Place `head` in the available ring, then bump the index (in that order)."""
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def set_avail_entry(self, slot: int, head: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * slot, head)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write_u16(self.avail, flags)

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used + 4 + 8 * self.size)

    def used_flags(self) -> int:
        return self.mem.read_u16(self.used)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def get_used(self) -> list[tuple[int, int]]:
        """New (id, len) used elements since the last call; their descriptors are freed."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.last_used % self.size
            elem_id = self.mem.read_u32(self.used + 4 + 8 * slot)
            length = self.mem.read_u32(self.used + 8 + 8 * slot)
            out.append((elem_id, length))
            self.free.extend(self.chains.pop(elem_id, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class MmioDriver:
    """The virtio-mmio register sequence of §3.1.1 / §4.2.3, through BusDevice calls."""

    def __init__(self, transport):
        self.t = transport

    def r32(self, offset: int) -> int:
        data = memoryview(bytearray(4))
        self.t.read(offset, data)
        return struct.unpack("<I", data)[0]

    def w32(self, offset: int, value: int) -> None:
        self.t.write(offset, struct.pack("<I", value & 0xFFFF_FFFF))

    def status(self) -> int:
        return self.r32(mmio.STATUS)

    def device_features(self) -> int:
        self.w32(mmio.DEVICE_FEATURES_SEL, 0)
        low = self.r32(mmio.DEVICE_FEATURES)
        self.w32(mmio.DEVICE_FEATURES_SEL, 1)
        return low | self.r32(mmio.DEVICE_FEATURES) << 32

    def negotiate(self, features: int | None = None) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, write features (default: all offered),
        FEATURES_OK; return the status read back."""
        self.w32(mmio.STATUS, 0)
        self.w32(mmio.STATUS, STATUS_ACKNOWLEDGE)
        self.w32(mmio.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = self.device_features()
        if features is None:
            features = offered
        self.write_driver_features(features)
        self.w32(mmio.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return self.status()

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self.w32(mmio.DRIVER_FEATURES_SEL, sel)
            self.w32(mmio.DRIVER_FEATURES, features >> (32 * sel))

    def setup_queue(self, index: int, vq: VirtqDriver, *, ready: bool = True) -> None:
        self.w32(mmio.QUEUE_SEL, index)
        self.w32(mmio.QUEUE_NUM, vq.size)
        for low, addr in ((mmio.QUEUE_DESC_LOW, vq.desc), (mmio.QUEUE_DRIVER_LOW, vq.avail),
                          (mmio.QUEUE_DEVICE_LOW, vq.used)):
            self.w32(low, addr)
            self.w32(low + 4, addr >> 32)
        if ready:
            self.w32(mmio.QUEUE_READY, 1)

    def driver_ok(self) -> int:
        self.w32(mmio.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
                 | STATUS_DRIVER_OK)
        self.t.run_pending()
        return self.status()

    def start(self, vqs: list[VirtqDriver], features: int | None = None) -> int:
        status = self.negotiate(features)
        assert status & STATUS_FEATURES_OK, f"FEATURES_OK refused (status {status:#x})"
        for i, vq in enumerate(vqs):
            self.setup_queue(i, vq)
        return self.driver_ok()

    def notify(self, index: int = 0) -> None:
        """QueueNotify as a plain MMIO write, then let the transport run as the
        EventLoop would."""
        self.w32(mmio.QUEUE_NOTIFY, index)
        self.t.run_pending()

    def interrupt_status(self) -> int:
        return self.r32(mmio.INTERRUPT_STATUS)

    def ack(self, bits: int) -> None:
        self.w32(mmio.INTERRUPT_ACK, bits)


BLK_HEADER = struct.Struct("<IIQ")
BLK_SEGMENT = struct.Struct("<QII")


class BlkResult:
    __slots__ = ("status", "data", "used_len", "head")

    def __init__(self, status, data, used_len, head):
        self.status, self.data, self.used_len, self.head = status, data, used_len, head

    def __repr__(self) -> str:
        return f"BlkResult(status={self.status}, used_len={self.used_len}, {len(self.data)} bytes)"


class BlkDriver:
    """virtio-blk requests (virtio 1.2 §5.2.6), driver side, one at a time or batched.

    Request memory comes from a bump allocator over [scratch, scratch_end);
    `reset_scratch()` reuses it once earlier requests have completed.
    """

    def __init__(self, mem: GuestMemory, vq: VirtqDriver, mmio_driver: MmioDriver,
                 scratch: int, scratch_end: int):
        self.mem = mem
        self.vq = vq
        self.mmio = mmio_driver
        self.scratch = scratch
        self.alloc = Allocator(scratch, scratch_end)
        self.pending: dict[int, tuple[int, int, int]] = {}

    def reset_scratch(self) -> None:
        self.alloc = Allocator(self.scratch, self.alloc.end)

    def build(self, rtype: int, sector: int = 0, *, out: bytes = b"", in_len: int = 0,
              seg: int | None = None, header_len: int = 16) -> list[tuple[int, int, bool]]:
        """The buffers of a request: header, data (split in `seg`-byte pieces),
        a status byte preset to 0xff."""
        header = self.alloc.alloc(max(header_len, 16))
        self.mem.write(header, BLK_HEADER.pack(rtype, 0, sector))
        bufs = [(header, header_len, False)]
        for payload, writable in ((out, False), (bytes(in_len), True)):
            if not payload:
                continue
            step = seg or len(payload)
            for off in range(0, len(payload), step):
                piece = payload[off:off + step]
                addr = self.alloc.alloc(len(piece), 512)
                self.mem.write(addr, piece if not writable else b"\xee" * len(piece))
                bufs.append((addr, len(piece), writable))
        status = self.alloc.alloc(1, 1)
        self.mem.write(status, b"\xff")
        bufs.append((status, 1, True))
        return bufs

    def submit(self, bufs: list[tuple[int, int, bool]], *, indirect: bool = False) -> int:
        if indirect:
            table = self.alloc.alloc(16 * len(bufs))
            head = self.vq.add_indirect(bufs, table)
        else:
            head = self.vq.add_chain(bufs)
        status_addr = bufs[-1][0] + bufs[-1][1] - 1
        in_bufs = [(a, n) for a, n, w in bufs[1:-1] if w]
        self.pending[head] = (status_addr, in_bufs)
        return head

    def complete(self) -> dict[int, BlkResult]:
        self.mmio.notify(0)
        results = {}
        for head, used_len in self.vq.get_used():
            status_addr, in_bufs = self.pending.pop(head)
            data = b"".join(self.mem.read(a, n) for a, n in in_bufs)
            results[head] = BlkResult(self.mem.read(status_addr, 1)[0], data, used_len, head)
        return results

    def do(self, rtype: int, sector: int = 0, **kw) -> BlkResult:
        indirect = kw.pop("indirect", False)
        self.reset_scratch()
        head = self.submit(self.build(rtype, sector, **kw), indirect=indirect)
        results = self.complete()
        return results.get(head)

    def do_bufs(self, bufs, *, indirect: bool = False) -> BlkResult | None:
        head = self.submit(bufs, indirect=indirect)
        return self.complete().get(head)

    def segments(self, rtype: int, segs: list[tuple[int, int, int]]) -> BlkResult:
        payload = b"".join(BLK_SEGMENT.pack(*s) for s in segs)
        return self.do(rtype, 0, out=payload)
