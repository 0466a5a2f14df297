"""virtio-blk requests, parsed into typed objects before any I/O (STYLE rule 9).

A request (virtio 1.2 §5.2.6) is a chain: a 16-byte device-readable header
`struct virtio_blk_req { le32 type; le32 reserved; le64 sector; }`, data
buffers, and a device-writable status byte at the very end. `parse` copies
the header once, checks every buffer's direction, the sector arithmetic and
the limits the device advertised, and returns a `BlockRequest` whose data
are memoryviews of guest RAM (for os.preadv / os.pwritev, no copies).

A request that breaks a rule but has a status byte is answered: `BadRequest`
carries the status view and the code (IOERR or UNSUPP). A chain without a
device-writable last byte cannot be answered at all: that is a QueueError,
and the device gets DEVICE_NEEDS_RESET.
"""
from __future__ import annotations

import struct

from kvmm.spec.devices import SERIAL_MAX
from kvmm.virtio.blk.drive import SECTOR_SHIFT, SECTOR_SIZE
from kvmm.virtio.errors import QueueError, VirtioError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmm.memory import GuestMemory
    from kvmm.virtio.queue import DescriptorChain

# §5.2.6 request types
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14
# §5.2.6 status values
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
# §5.2.6 struct virtio_blk_discard_write_zeroes flags
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 0b1

HEADER_SIZE = 16
SEGMENT_SIZE = 16       # struct virtio_blk_discard_write_zeroes
ID_BYTES = SERIAL_MAX   # VIRTIO_BLK_ID_BYTES

_HEADER = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")


class RequestLimits:
    """What the device advertises in its configuration space (and enforces)."""

    __slots__ = ("seg_max", "size_max", "max_discard_sectors", "max_discard_seg",
                 "max_write_zeroes_sectors", "max_write_zeroes_seg")

    def __init__(self, seg_max: int = 254, size_max: int = 1 << 22,
                 max_discard_sectors: int = 1 << 22, max_discard_seg: int = 32,
                 max_write_zeroes_sectors: int = 1 << 22, max_write_zeroes_seg: int = 32):
        self.seg_max = seg_max
        self.size_max = size_max
        self.max_discard_sectors = max_discard_sectors
        self.max_discard_seg = max_discard_seg
        self.max_write_zeroes_sectors = max_write_zeroes_sectors
        self.max_write_zeroes_seg = max_write_zeroes_seg

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"RequestLimits({fields})"


DEFAULT_LIMITS = RequestLimits()


class BadRequest(VirtioError):
    """A request to answer with `code` (IOERR or UNSUPP) written to `status`."""

    def __init__(self, status: memoryview, code: int, reason: str):
        self.status = status
        self.code = code
        self.reason = reason
        super().__init__(reason)


class BlockRequest:
    """A checked request.

    `type` and `sector` come from the header (read once). `data` are views of
    the data buffers in order, `nbytes` their total. `segments` holds the
    (sector, num_sectors, flags) ranges of DISCARD / WRITE_ZEROES, copied out
    of guest memory and checked. `status` is the one-byte view to answer in.
    """

    __slots__ = ("head", "type", "sector", "data", "nbytes", "status", "segments")

    def __init__(self, head: int, rtype: int, sector: int, data: list[memoryview],
                 nbytes: int, status: memoryview,
                 segments: list[tuple[int, int, int]] | None = None):
        self.head = head
        self.type = rtype
        self.sector = sector
        self.data = data
        self.nbytes = nbytes
        self.status = status
        self.segments = segments

    @property
    def cost_bytes(self) -> int:
        """What the request costs a bandwidth bucket: its data for reads and
        writes, nothing for the others (each costs one op)."""
        return self.nbytes if self.type in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT) else 0

    def __repr__(self) -> str:
        return (f"BlockRequest(head={self.head}, type={self.type}, sector={self.sector}, "
                f"nbytes={self.nbytes}, segments={self.segments})")

    @classmethod
    def parse(cls, chain: DescriptorChain, mem: GuestMemory, capacity: int,
              limits: RequestLimits = DEFAULT_LIMITS) -> BlockRequest:
        """Check `chain` as a virtio-blk request against a disk of `capacity`
        sectors. Raises BadRequest (answerable) or QueueError (not answerable)."""
        bufs = chain.buffers
        head = chain.head
        s_addr, s_len, s_writable = bufs[-1]
        if not s_writable or s_len == 0:
            raise QueueError(f"block request at head {head}: the last buffer is not a "
                             "device-writable status byte, so it cannot be answered")
        view = mem.view
        status = view(s_addr + s_len - 1, 1)
        if len(bufs) < 2:
            raise BadRequest(status, VIRTIO_BLK_S_IOERR, "request has no header")
        h_addr, h_len, h_writable = bufs[0]
        if h_writable or h_len != HEADER_SIZE:
            raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                             f"header is a {'device-writable' if h_writable else 'readable'} "
                             f"buffer of {h_len} bytes, not a readable one of {HEADER_SIZE}")
        rtype, _reserved, sector = _HEADER.unpack_from(view(h_addr, HEADER_SIZE))  # once
        middle = bufs[1:-1]
        if s_len > 1:
            # Any layout (VERSION_1): the status byte may share a buffer with data.
            middle.append((s_addr, s_len - 1, True))

        if rtype == VIRTIO_BLK_T_IN or rtype == VIRTIO_BLK_T_OUT:
            writable = rtype == VIRTIO_BLK_T_IN
            if len(middle) > limits.seg_max:
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"{len(middle)} data segments, more than seg_max "
                                 f"{limits.seg_max}")
            size_max = limits.size_max
            data = []
            nbytes = 0
            for addr, length, w in middle:
                if w != writable:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     f"{'read' if writable else 'write'} request with a "
                                     f"{'readable' if writable else 'device-writable'} "
                                     "data buffer")
                if length > size_max:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     f"data segment of {length} bytes, more than size_max "
                                     f"{size_max}")
                nbytes += length
                data.append(view(addr, length))
            if nbytes & (SECTOR_SIZE - 1):
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"data length {nbytes} is not a multiple of {SECTOR_SIZE}")
            if sector > capacity or nbytes >> SECTOR_SHIFT > capacity - sector:
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"sectors [{sector}, +{nbytes >> SECTOR_SHIFT}) pass the "
                                 f"capacity of {capacity}")
            return cls(head, rtype, sector, data, nbytes, status)

        if rtype == VIRTIO_BLK_T_FLUSH:
            return cls(head, rtype, 0, [], 0, status)

        if rtype == VIRTIO_BLK_T_GET_ID:
            data = []
            nbytes = 0
            for addr, length, w in middle:
                if not w:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     "GET_ID with a readable data buffer")
                nbytes += length
                data.append(view(addr, length))
            if nbytes < ID_BYTES:
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"GET_ID buffer of {nbytes} bytes, less than {ID_BYTES}")
            return cls(head, rtype, 0, data, nbytes, status)

        if rtype == VIRTIO_BLK_T_DISCARD or rtype == VIRTIO_BLK_T_WRITE_ZEROES:
            discard = rtype == VIRTIO_BLK_T_DISCARD
            name = "DISCARD" if discard else "WRITE_ZEROES"
            nbytes = 0
            for _addr, length, w in middle:
                if w:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     f"{name} with a device-writable data buffer")
                nbytes += length
            if nbytes == 0 or nbytes % SEGMENT_SIZE:
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"{name} data of {nbytes} bytes is not a non-zero multiple "
                                 f"of {SEGMENT_SIZE}")
            max_seg = limits.max_discard_seg if discard else limits.max_write_zeroes_seg
            max_sectors = (limits.max_discard_sectors if discard
                           else limits.max_write_zeroes_sectors)
            if nbytes // SEGMENT_SIZE > max_seg:
                raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                 f"{name} of {nbytes // SEGMENT_SIZE} segments, more than "
                                 f"{max_seg}")
            # Copy the segments out of guest memory once, then check the copy.
            raw = b"".join([bytes(view(addr, length)) for addr, length, _w in middle])
            segments = []
            for seg_sector, num, flags in _SEGMENT.iter_unpack(raw):
                if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (
                        discard and flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP):
                    # §5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
                    raise BadRequest(status, VIRTIO_BLK_S_UNSUPP,
                                     f"{name} segment with flags {flags:#x}")
                if num > max_sectors:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     f"{name} segment of {num} sectors, more than "
                                     f"{max_sectors}")
                if seg_sector > capacity or num > capacity - seg_sector:
                    raise BadRequest(status, VIRTIO_BLK_S_IOERR,
                                     f"{name} sectors [{seg_sector}, +{num}) pass the "
                                     f"capacity of {capacity}")
                segments.append((seg_sector, num, flags))
            return cls(head, rtype, 0, [], nbytes, status, segments)

        raise BadRequest(status, VIRTIO_BLK_S_UNSUPP, f"request type {rtype} is not supported")
