"""virtio-blk (virtio 1.2 §5.2) backed by a raw image file.

One request queue. On a notification the I/O thread drains every available
chain: parse (BlockRequest.parse, before any I/O), then os.preadv /
os.pwritev straight between the image and memoryviews of guest RAM, then the
status byte, then the used element; one interrupt per batch (EVENT_IDX
suppresses the rest). FLUSH completes only after os.fdatasync returns.

Rate-limit hook: `limiter.admit(request)` (kvmm.virtio.protocols.RequestLimiter)
returns 0 to go on, or the seconds to wait. A refused request stays in the
available ring (Queue.undo_pop) and the queue is processed again from a timer
(VirtioDevice.retry_later, on the EventLoop).
"""
from __future__ import annotations

import errno
import os
import struct
import time

from kvmm.virtio.blk.drive import (
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, SECTOR_SHIFT, SECTOR_SIZE,
    Drive, fallocate,
)
from kvmm.virtio.blk.request import (
    ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, BadRequest, BlockRequest,
    RequestLimits,
)
from kvmm.virtio.device import (
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
    VirtioDevice, VirtioInterrupt, bit,
)
from kvmm.virtio.queue import Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmm.memory import GuestMemory
    from kvmm.virtio.protocols import RequestLimiter

# §5.2.3 Feature bits
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

DEFAULT_QUEUE_SIZE = 256
DEFAULT_SIZE_MAX = 1 << 22           # bytes per segment; larger than any request Linux sends
MAX_DISCARD_SECTORS = 1 << 22        # 2 GiB per segment
MAX_DISCARD_SEGMENTS = 32

# §5.2.4 struct virtio_blk_config up to write_zeroes_may_unmap and unused1[3]
# (60 bytes): capacity, size_max, seg_max, geometry {cylinders, heads, sectors},
# blk_size, topology {physical_block_exp, alignment_offset, min_io_size,
# opt_io_size}, writeback, unused0, num_queues, max_discard_sectors,
# max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors,
# max_write_zeroes_seg, write_zeroes_may_unmap, unused1[3].
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
_CONFIG_CAPACITY = struct.Struct("<Q")          # capacity, the first field
assert _CONFIG.size == 60


def _advance(views: list[memoryview], done: int) -> list[memoryview]:
    """The part of `views` after the first `done` bytes."""
    rest = []
    for v in views:
        n = len(v)
        if done >= n:
            done -= n
            continue
        rest.append(v[done:] if done else v)
        done = 0
    return rest


def _preadv_full(fd: int, views: list[memoryview], offset: int, total: int) -> None:
    done = os.preadv(fd, views, offset)
    while done < total:
        n = os.preadv(fd, _advance(views, done), offset + done)
        if n == 0:
            raise OSError(errno.EIO, "image ended before the request (was it truncated?)")
        done += n


def _pwritev_full(fd: int, views: list[memoryview], offset: int, total: int) -> None:
    done = os.pwritev(fd, views, offset)
    while done < total:
        n = os.pwritev(fd, _advance(views, done), offset + done)
        if n == 0:
            raise OSError(errno.EIO, "image accepted no data")
        done += n


class Block(VirtioDevice):
    """A virtio-blk device for one opened Drive (see kvmm.virtio.blk.drive)."""

    device_id = VIRTIO_ID_BLOCK

    def __init__(self, drive: Drive, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 size_max: int = DEFAULT_SIZE_MAX, limiter: RequestLimiter | None = None,
                 log_per_second: int = 5):
        self.name = f"virtio-blk:{drive.id}"
        super().__init__(log_per_second)
        if queue_size < 4 or queue_size & (queue_size - 1) or queue_size > 32768:
            raise ValueError(f"virtio-blk queue size {queue_size} is not a power of two "
                             "in 4..32768")
        if not SECTOR_SIZE <= size_max <= 0xFFFF_FFFF:
            raise ValueError(f"virtio-blk size_max {size_max} outside 512..2**32-1")
        self.drive = drive
        self.queue_max_sizes = (queue_size,)
        self.read_only = drive.read_only
        self.capacity = drive.capacity
        self.can_discard = drive.can_discard and not drive.read_only
        self.can_write_zeroes = drive.can_write_zeroes and not drive.read_only
        # Header and status take two descriptors of a chain (QEMU's choice too).
        seg_max = queue_size - 2
        self.limits = RequestLimits(seg_max=seg_max, size_max=size_max,
                                    max_discard_sectors=MAX_DISCARD_SECTORS,
                                    max_discard_seg=MAX_DISCARD_SEGMENTS,
                                    max_write_zeroes_sectors=MAX_DISCARD_SECTORS,
                                    max_write_zeroes_seg=MAX_DISCARD_SEGMENTS)
        features = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX)
                    | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_BLK_F_SIZE_MAX)
                    | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE)
                    | bit(VIRTIO_BLK_F_FLUSH))
        if self.read_only:
            features |= bit(VIRTIO_BLK_F_RO)
        if self.can_discard:
            features |= bit(VIRTIO_BLK_F_DISCARD)
        if self.can_write_zeroes:
            features |= bit(VIRTIO_BLK_F_WRITE_ZEROES)
        self.avail_features = features
        granularity = max(1, min(os.fstat(drive.fd).st_blksize, 1 << 20) >> SECTOR_SHIFT) \
            if self.can_discard else 0
        self.config = _CONFIG.pack(
            self.capacity, size_max, seg_max,
            0, 0, 0,                                   # geometry (not offered)
            SECTOR_SIZE,                               # blk_size
            0, 0, 0, 0,                                # topology (not offered)
            0, 0, 0,                                   # writeback, unused0, num_queues
            MAX_DISCARD_SECTORS if self.can_discard else 0,
            MAX_DISCARD_SEGMENTS if self.can_discard else 0,
            granularity,                               # discard_sector_alignment
            MAX_DISCARD_SECTORS if self.can_write_zeroes else 0,
            MAX_DISCARD_SEGMENTS if self.can_write_zeroes else 0,
            1 if self.can_write_zeroes and self.can_discard else 0)
        self.serial_bytes = drive.serial.encode("ascii")[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self.limiter = limiter
        self._queue: Queue | None = None
        self._mem: GuestMemory | None = None
        self._interrupt: VirtioInterrupt | None = None
        self._retry_at = 0.0           # when the pending retry timer fires
        self.reads = self.writes = self.read_bytes = self.write_bytes = 0
        self.flushes = self.discards = self.write_zeroes = self.get_ids = 0
        self.errors = self.unsupported = self.throttled = 0

    def replace_drive(self, drive: Drive) -> Drive:
        """Put another image behind the device (Firecracker's PATCH /drives
        path_on_host), on the I/O thread; returns the old Drive for the caller
        to close. The capacity in the configuration space follows the new
        image; the transport then tells the driver (config change interrupt)."""
        if drive.read_only != self.read_only:
            raise ValueError(f"drive {drive.id!r}: the new image must be "
                             f"{'read-only' if self.read_only else 'writable'} like the old")
        old, self.drive = self.drive, drive
        self.capacity = drive.capacity
        self.config = _CONFIG_CAPACITY.pack(drive.capacity) + self.config[_CONFIG_CAPACITY.size:]
        return old

    # VirtioDevice. ------------------------------------------------------------
    def activate(self, queues: list[Queue], mem: GuestMemory,
                 interrupt: VirtioInterrupt) -> None:
        self._queue = queues[0]
        self._mem = mem
        self._interrupt = interrupt

    def reset(self) -> None:
        self._queue = None
        self._mem = None
        self._interrupt = None
        self._retry_at = 0.0

    def stats(self) -> dict[str, int]:
        return {"reads": self.reads, "writes": self.writes, "read_bytes": self.read_bytes,
                "write_bytes": self.write_bytes, "flushes": self.flushes,
                "discards": self.discards, "write_zeroes": self.write_zeroes,
                "get_ids": self.get_ids, "errors": self.errors,
                "unsupported": self.unsupported, "throttled": self.throttled}

    def process_queue(self, index: int) -> None:
        q = self._queue
        if q is None:
            return
        mem = self._mem
        capacity = self.capacity
        limits = self.limits
        limiter = self.limiter
        execute = self._execute
        parse = BlockRequest.parse
        try:
            while True:
                q.disable_notification()
                while True:
                    chain = q.pop()
                    if chain is None:
                        break
                    try:
                        req = parse(chain, mem, capacity, limits)
                    except BadRequest as e:
                        self._refuse(e)
                        q.add_used(chain.head, 1)
                        continue
                    if limiter is not None:
                        wait = limiter.admit(req)
                        if wait > 0:
                            q.undo_pop()
                            self.throttled += 1
                            self._schedule_retry(wait, index)
                            return        # the finally below still signals
                    q.add_used(chain.head, execute(req))
                if not q.enable_notification():
                    break
        finally:
            if q.needs_notification():
                self._interrupt.signal_used()

    def _schedule_retry(self, wait: float, index: int) -> None:
        """One retry timer at a time: a notification that arrives while the
        queue is throttled does not add another."""
        now = time.monotonic()
        if now >= self._retry_at and self.retry_later(wait, index):
            self._retry_at = now + wait

    # Requests. ----------------------------------------------------------------
    def _refuse(self, e: BadRequest) -> None:
        e.status[0] = e.code
        if e.code == VIRTIO_BLK_S_UNSUPP:
            self.unsupported += 1
        else:
            self.errors += 1
        self.log.warning("request refused (%s): %s",
                         "UNSUPP" if e.code == VIRTIO_BLK_S_UNSUPP else "IOERR", e.reason)

    def _execute(self, req: BlockRequest) -> int:
        """Do `req`, write its status byte, and return the used length."""
        rtype = req.type
        fd = self.drive.fd
        written = 1
        status = VIRTIO_BLK_S_OK
        try:
            if rtype == VIRTIO_BLK_T_IN:
                n = req.nbytes
                if n:
                    _preadv_full(fd, req.data, req.sector << SECTOR_SHIFT, n)
                self.reads += 1
                self.read_bytes += n
                written = n + 1
            elif rtype == VIRTIO_BLK_T_OUT:
                if self.read_only:
                    status = self._readonly("write")
                else:
                    n = req.nbytes
                    if n:
                        _pwritev_full(fd, req.data, req.sector << SECTOR_SHIFT, n)
                    self.writes += 1
                    self.write_bytes += n
            elif rtype == VIRTIO_BLK_T_FLUSH:
                if not self.read_only:
                    os.fdatasync(fd)
                self.flushes += 1
            elif rtype == VIRTIO_BLK_T_GET_ID:
                self._copy_out(req.data, self.serial_bytes)
                self.get_ids += 1
                written = ID_BYTES + 1
            elif rtype == VIRTIO_BLK_T_DISCARD:
                status = self._discard(req, fd)
            elif rtype == VIRTIO_BLK_T_WRITE_ZEROES:
                status = self._write_zeroes(req, fd)
            else:                               # parse() lets no other type through
                status = VIRTIO_BLK_S_UNSUPP
        except OSError as e:
            status = VIRTIO_BLK_S_IOERR
            written = 1
            self.errors += 1
            self.log.error("I/O error on %s (request type %d, sector %d): %s",
                           self.drive.path, rtype, req.sector, e)
        req.status[0] = status
        return written

    def _readonly(self, what: str) -> int:
        self.errors += 1
        self.log.warning("%s refused: the drive is read-only", what)
        return VIRTIO_BLK_S_IOERR

    def _discard(self, req: BlockRequest, fd: int) -> int:
        if self.read_only:
            return self._readonly("discard")
        if not self.can_discard:
            self.unsupported += 1
            return VIRTIO_BLK_S_UNSUPP
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        for sector, num, _flags in req.segments:
            if num:
                fallocate(fd, mode, sector << SECTOR_SHIFT, num << SECTOR_SHIFT)
        self.discards += 1
        return VIRTIO_BLK_S_OK

    def _write_zeroes(self, req: BlockRequest, fd: int) -> int:
        if self.read_only:
            return self._readonly("write-zeroes")
        if not self.can_write_zeroes:
            self.unsupported += 1
            return VIRTIO_BLK_S_UNSUPP
        for sector, num, flags in req.segments:
            if not num:
                continue
            if flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP and self.can_discard:
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE   # reads back as zeroes
            else:
                mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
            fallocate(fd, mode, sector << SECTOR_SHIFT, num << SECTOR_SHIFT)
        self.write_zeroes += 1
        return VIRTIO_BLK_S_OK

    @staticmethod
    def _copy_out(views: list[memoryview], data: bytes) -> None:
        pos = 0
        for v in views:
            if pos >= len(data):
                break
            n = min(len(v), len(data) - pos)
            v[:n] = data[pos:pos + n]
            pos += n
