"""virtio-blk (kvmm/virtio/blk/): requests against a temporary image through the
mmio transport and a driver-side helper, bad chains, read-only drives, the
rate-limit hook, drive options (kvmm.spec.DriveSpec) and opening images
(open_drive/open_drives), and the builder's wiring of drives."""
import fcntl
import os
import struct

import pytest

from kvmm.devices.irq import CountingTrigger
from kvmm.memory import GuestMemory
from kvmm.virtio import mmio
from kvmm.spec import DriveSpec, SpecError, VmSpec
from kvmm.virtio.blk import Block, DriveError, open_drive, open_drives
from kvmm.virtio.blk import device as blkdev
from kvmm.virtio.blk.device import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
)
from kvmm.virtio.blk.request import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_SECURE_ERASE, VIRTIO_BLK_T_WRITE_ZEROES,
)
from kvmm.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    bit,
)
from tests.unit.virtio.driver import BlkDriver, MmioDriver, VirtqDriver

IMAGE_SIZE = 1 << 20
SECTORS = IMAGE_SIZE // 512
RINGS = 0x1000
SCRATCH = 0x100000
SCRATCH_END = 0x300000
UNMAP = 1


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory([(0, 4 << 20)])
    yield m
    m.close()


def spec(path, drive_id="drive0", read_only=False, serial=None, root=False) -> DriveSpec:
    return DriveSpec(drive_id=drive_id, path_on_host=str(path), is_read_only=read_only,
                     serial=serial, is_root_device=root)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return path


class Rig:
    """A drive, its device and transport, and the driver side."""

    def __init__(self, mem, drive_spec, *, queue_size=256, features=None, **blk_kw):
        self.drive = open_drive(drive_spec)
        self.blk = Block(self.drive, queue_size=queue_size, **blk_kw)
        self.irq = CountingTrigger()
        self.transport = mmio.MmioTransport(self.blk, mem, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.vq = VirtqDriver.at(mem, queue_size, RINGS)
        self.mmio.start([self.vq], features)
        self.drv = BlkDriver(mem, self.vq, self.mmio, SCRATCH, SCRATCH_END)

    def close(self):
        self.transport.close()
        self.drive.close()


@pytest.fixture
def rig(mem, image):
    r = Rig(mem, spec(image, "disk", serial="SER-123"))
    yield r
    r.close()


@pytest.fixture
def ro_rig(mem, image):
    r = Rig(mem, spec(image, read_only=True))
    yield r
    r.close()


def file_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# Features and configuration space. -----------------------------------------------
def test_features_and_config(rig):
    offered = rig.mmio.device_features()
    for b in (VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
              VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE,
              VIRTIO_BLK_F_FLUSH):
        assert offered & bit(b)
    assert not offered & bit(VIRTIO_BLK_F_RO)
    # The temporary directory's file system decides DISCARD / WRITE_ZEROES.
    assert bool(offered & bit(VIRTIO_BLK_F_DISCARD)) == rig.drive.can_discard
    assert bool(offered & bit(VIRTIO_BLK_F_WRITE_ZEROES)) == rig.drive.can_write_zeroes
    assert rig.mmio.r32(mmio.DEVICE_ID) == 2
    cfg = memoryview(bytearray(60))
    rig.transport.read(mmio.CONFIG, cfg)
    capacity, size_max, seg_max = struct.unpack_from("<QII", cfg)
    assert (capacity, seg_max) == (SECTORS, 254)
    assert size_max == blkdev.DEFAULT_SIZE_MAX
    assert struct.unpack_from("<I", cfg, 20)[0] == 512      # blk_size
    # 64-bit capacity read as two 32-bit halves, as Linux does
    assert rig.mmio.r32(mmio.CONFIG) == SECTORS and rig.mmio.r32(mmio.CONFIG + 4) == 0


# Requests. ------------------------------------------------------------------------
def test_read(rig, image):
    r = rig.drv.do(VIRTIO_BLK_T_IN, 3, in_len=4096)
    assert r.status == VIRTIO_BLK_S_OK
    assert r.data == file_bytes(image, 3 * 512, 4096)
    assert r.used_len == 4097
    assert rig.blk.stats()["reads"] == 1 and rig.blk.stats()["read_bytes"] == 4096


def test_read_scattered(rig, image):
    bufs = rig.drv.build(VIRTIO_BLK_T_IN, 10, in_len=1536, seg=512)
    # uneven pieces: 100 + 412 + 1024 bytes (the allocator left the buffers contiguous)
    a1 = bufs[1][0]
    uneven = [bufs[0], (a1, 100, True), (a1 + 100, 412, True), (a1 + 512, 1024, True),
              bufs[-1]]
    r = rig.drv.do_bufs(uneven)
    assert r.status == VIRTIO_BLK_S_OK
    assert r.data == file_bytes(image, 10 * 512, 1536)


def test_write(rig, image):
    payload = os.urandom(8192)
    r = rig.drv.do(VIRTIO_BLK_T_OUT, 100, out=payload, seg=4096)
    assert r.status == VIRTIO_BLK_S_OK and r.used_len == 1
    assert file_bytes(image, 100 * 512, 8192) == payload
    r = rig.drv.do(VIRTIO_BLK_T_IN, 100, in_len=8192)
    assert r.data == payload
    s = rig.blk.stats()
    assert s["writes"] == 1 and s["write_bytes"] == 8192


def test_last_and_first_sectors(rig, image):
    assert rig.drv.do(VIRTIO_BLK_T_IN, SECTORS - 1, in_len=512).status == VIRTIO_BLK_S_OK
    assert rig.drv.do(VIRTIO_BLK_T_OUT, 0, out=b"x" * 512).status == VIRTIO_BLK_S_OK
    assert rig.drv.do(VIRTIO_BLK_T_IN, 5, in_len=0).status == VIRTIO_BLK_S_OK


def test_flush_really_syncs_first(rig, monkeypatch):
    calls = []
    real = os.fdatasync

    def fdatasync(fd):
        # the status byte is still unwritten while the sync runs
        calls.append(rig.drv.mem.read(status_addr, 1))
        real(fd)
    monkeypatch.setattr(blkdev.os, "fdatasync", fdatasync)
    bufs = rig.drv.build(VIRTIO_BLK_T_FLUSH)
    status_addr = bufs[-1][0]
    r = rig.drv.do_bufs(bufs)
    assert calls == [b"\xff"]
    assert r.status == VIRTIO_BLK_S_OK and rig.blk.stats()["flushes"] == 1


def test_get_id(rig):
    r = rig.drv.do(VIRTIO_BLK_T_GET_ID, in_len=20)
    assert r.status == VIRTIO_BLK_S_OK
    assert r.data == b"SER-123" + bytes(13)
    assert r.used_len == 21


def test_get_id_defaults_to_drive_id(mem, image):
    r = Rig(mem, spec(image))
    try:
        assert r.drv.do(VIRTIO_BLK_T_GET_ID, in_len=20).data == b"drive0" + bytes(14)
    finally:
        r.close()


def test_get_id_too_short(rig):
    assert rig.drv.do(VIRTIO_BLK_T_GET_ID, in_len=8).status == VIRTIO_BLK_S_IOERR


def test_discard(rig, image):
    if not rig.drive.can_discard:
        pytest.skip("the temporary directory's file system cannot punch holes")
    r = rig.drv.segments(VIRTIO_BLK_T_DISCARD, [(8, 16, 0), (100, 8, 0)])
    assert r.status == VIRTIO_BLK_S_OK
    assert file_bytes(image, 8 * 512, 16 * 512) == bytes(16 * 512)
    assert file_bytes(image, 100 * 512, 8 * 512) == bytes(8 * 512)
    assert file_bytes(image, 7 * 512, 512) != bytes(512)      # neighbours untouched
    assert os.path.getsize(image) == IMAGE_SIZE
    assert rig.blk.stats()["discards"] == 1


def test_discard_with_unmap_is_unsupported(rig):
    if not rig.drive.can_discard:
        pytest.skip("no discard here")
    assert rig.drv.segments(VIRTIO_BLK_T_DISCARD, [(8, 8, UNMAP)]).status == VIRTIO_BLK_S_UNSUPP


@pytest.mark.parametrize("flags", [0, UNMAP])
def test_write_zeroes(rig, image, flags):
    if not rig.drive.can_write_zeroes:
        pytest.skip("the temporary directory's file system cannot zero ranges")
    r = rig.drv.segments(VIRTIO_BLK_T_WRITE_ZEROES, [(20, 9, flags)])
    assert r.status == VIRTIO_BLK_S_OK
    assert file_bytes(image, 20 * 512, 9 * 512) == bytes(9 * 512)
    assert file_bytes(image, 29 * 512, 512) != bytes(512)
    assert os.path.getsize(image) == IMAGE_SIZE


@pytest.mark.parametrize("rtype", [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES])
@pytest.mark.parametrize("segs,status", [
    ([(0, 8, 0b10)], VIRTIO_BLK_S_UNSUPP),                      # reserved flag
    ([(SECTORS - 4, 8, 0)], VIRTIO_BLK_S_IOERR),                # past the end
    ([((1 << 64) - 1, 2, 0)], VIRTIO_BLK_S_IOERR),              # wraps
    ([(0, blkdev.MAX_DISCARD_SECTORS + 1, 0)], VIRTIO_BLK_S_IOERR),
    ([(0, 1, 0)] * (blkdev.MAX_DISCARD_SEGMENTS + 1), VIRTIO_BLK_S_IOERR),
])
def test_discard_write_zeroes_checks(rig, image, rtype, segs, status):
    if not (rig.drive.can_discard and rig.drive.can_write_zeroes):
        pytest.skip("no discard / write zeroes here")
    before = image.read_bytes()
    assert rig.drv.segments(rtype, segs).status == status
    assert image.read_bytes() == before


def test_discard_payload_not_whole_segments(rig):
    assert rig.drv.do(VIRTIO_BLK_T_DISCARD, out=b"\0" * 20).status == VIRTIO_BLK_S_IOERR


@pytest.mark.parametrize("rtype", [2, 3, VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_SECURE_ERASE,
                                   0xFFFF_FFFF])
def test_unknown_types_unsupported(rig, rtype):
    assert rig.drv.do(rtype, in_len=512).status == VIRTIO_BLK_S_UNSUPP
    assert rig.blk.stats()["unsupported"] == 1


# Bounds and bad chains. ------------------------------------------------------------
@pytest.mark.parametrize("rtype,sector,kw", [
    (VIRTIO_BLK_T_IN, SECTORS, {"in_len": 512}),
    (VIRTIO_BLK_T_IN, SECTORS - 1, {"in_len": 1024}),
    (VIRTIO_BLK_T_IN, (1 << 64) - 1, {"in_len": 512}),
    (VIRTIO_BLK_T_OUT, (1 << 64) - 2, {"out": b"y" * 1024}),
    (VIRTIO_BLK_T_IN, 0, {"in_len": 513}),
    (VIRTIO_BLK_T_OUT, 0, {"out": b"z" * 100}),
    (VIRTIO_BLK_T_IN, 0, {"in_len": 512, "header_len": 15}),
    (VIRTIO_BLK_T_IN, 0, {"in_len": 512, "header_len": 17}),
])
def test_bad_requests_get_ioerr(rig, image, rtype, sector, kw):
    before = image.read_bytes()
    r = rig.drv.do(rtype, sector, **kw)
    assert r.status == VIRTIO_BLK_S_IOERR and r.used_len == 1
    assert image.read_bytes() == before
    assert rig.blk.stats()["errors"] == 1
    assert not rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET
    # the device still works afterwards
    assert rig.drv.do(VIRTIO_BLK_T_IN, 0, in_len=512).status == VIRTIO_BLK_S_OK


def test_wrong_data_direction(rig, image):
    bufs = rig.drv.build(VIRTIO_BLK_T_IN, 0, in_len=512)
    a, n, _w = bufs[1]
    bufs[1] = (a, n, False)                    # a read into a device-readable buffer
    assert rig.drv.do_bufs(bufs).status == VIRTIO_BLK_S_IOERR
    rig.drv.reset_scratch()
    bufs = rig.drv.build(VIRTIO_BLK_T_OUT, 0, out=b"q" * 512)
    a, n, _w = bufs[1]
    bufs[1] = (a, n, True)
    before = image.read_bytes()
    assert rig.drv.do_bufs(bufs).status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_writable_header(rig):
    bufs = rig.drv.build(VIRTIO_BLK_T_IN, 0, in_len=512)
    a, n, _w = bufs[0]
    bufs[0] = (a, n, True)
    assert rig.drv.do_bufs(bufs).status == VIRTIO_BLK_S_IOERR


def test_status_byte_only(rig, mem):
    mem.write(SCRATCH, b"\xff")
    r = rig.drv.do_bufs([(SCRATCH, 1, True)])
    assert r.status == VIRTIO_BLK_S_IOERR


def test_no_status_byte_needs_reset(rig, mem):
    bufs = rig.drv.build(VIRTIO_BLK_T_IN, 0, in_len=512)
    a, n, _w = bufs[-1]
    bufs[-1] = (a, n, False)                   # the "status" is device-readable
    assert rig.drv.do_bufs(bufs) is None       # not answered
    assert mem.read(a, 1) == b"\xff"
    assert rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET
    assert rig.transport.counters["queue_errors"] == 1


def test_zero_length_status_needs_reset(rig):
    bufs = rig.drv.build(VIRTIO_BLK_T_FLUSH)
    a, _n, w = bufs[-1]
    bufs[-1] = (a, 0, w)
    rig.drv.do_bufs(bufs)
    assert rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET


def test_status_shares_the_last_data_buffer(rig, image, mem):
    """Any layout: data and status in one device-writable buffer."""
    header = SCRATCH
    mem.write(header, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 2))
    data = SCRATCH + 0x1000
    mem.write(data + 1024, b"\xff")
    r = rig.drv.do_bufs([(header, 16, False), (data, 1025, True)])
    assert r.used_len == 1025
    assert mem.read(data + 1024, 1)[0] == VIRTIO_BLK_S_OK
    assert mem.read(data, 1024) == file_bytes(image, 1024, 1024)


def test_indirect_request(rig, image):
    r = rig.drv.do(VIRTIO_BLK_T_IN, 7, in_len=2048, seg=512, indirect=True)
    assert r.status == VIRTIO_BLK_S_OK and r.data == file_bytes(image, 7 * 512, 2048)


def test_seg_max_enforced(mem, image):
    r = Rig(mem, spec(image), queue_size=8)      # seg_max = 6
    try:
        cfg = memoryview(bytearray(4))
        r.transport.read(mmio.CONFIG + 12, cfg)
        assert struct.unpack("<I", cfg)[0] == 6
        ok = r.drv.do(VIRTIO_BLK_T_IN, 0, in_len=6 * 512, seg=512, indirect=True)
        assert ok.status == VIRTIO_BLK_S_OK
        bad = r.drv.do(VIRTIO_BLK_T_IN, 0, in_len=7 * 512, seg=512, indirect=True)
        assert bad.status == VIRTIO_BLK_S_IOERR
    finally:
        r.close()


def test_size_max_enforced(mem, image):
    r = Rig(mem, spec(image), size_max=4096)
    try:
        assert r.drv.do(VIRTIO_BLK_T_IN, 0, in_len=8192, seg=4096).status == VIRTIO_BLK_S_OK
        assert r.drv.do(VIRTIO_BLK_T_IN, 0, in_len=8192).status == VIRTIO_BLK_S_IOERR
    finally:
        r.close()


# Batches and interrupts. -------------------------------------------------------------
@pytest.mark.parametrize("event_idx", [True, False])
def test_batch_one_interrupt(rig, image, event_idx, mem):
    if not event_idx:
        rig.close()
        rig.__init__(mem, spec(image),
                     features=rig.blk.avail_features & ~bit(VIRTIO_F_EVENT_IDX))
    rig.drv.reset_scratch()
    heads = [rig.drv.submit(rig.drv.build(VIRTIO_BLK_T_IN, 8 * k, in_len=4096))
             for k in range(16)]
    before = rig.irq.count
    results = rig.drv.complete()
    assert sorted(results) == sorted(heads)
    assert all(res.status == VIRTIO_BLK_S_OK for res in results.values())
    assert results[heads[5]].data == file_bytes(image, 40 * 512, 4096)
    assert rig.irq.count == before + 1


def test_event_idx_suppresses_interrupt(rig):
    rig.vq.set_used_event(rig.vq.used_idx() + 5)
    before = rig.irq.count
    for _ in range(3):
        rig.drv.do(VIRTIO_BLK_T_IN, 0, in_len=512)
    assert rig.irq.count == before
    assert rig.vq.avail_event() == rig.vq.avail_idx      # notify me on the next one


# I/O errors and short transfers. ----------------------------------------------------------
def test_io_error_answers_ioerr(rig, monkeypatch):
    def failing(*_a):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(blkdev.os, "preadv", failing)
    r = rig.drv.do(VIRTIO_BLK_T_IN, 0, in_len=512)
    assert r.status == VIRTIO_BLK_S_IOERR and r.used_len == 1
    assert rig.blk.stats()["errors"] == 1
    monkeypatch.undo()
    assert rig.drv.do(VIRTIO_BLK_T_IN, 0, in_len=512).status == VIRTIO_BLK_S_OK


def test_short_transfers_are_completed(rig, image, monkeypatch):
    real_preadv, real_pwritev = os.preadv, os.pwritev

    def trim(views, limit=700):
        out, left = [], limit
        for v in views:
            if left <= 0:
                break
            out.append(v[:left])
            left -= len(v[:left])
        return out

    monkeypatch.setattr(blkdev.os, "preadv", lambda fd, v, off: real_preadv(fd, trim(v), off))
    monkeypatch.setattr(blkdev.os, "pwritev", lambda fd, v, off: real_pwritev(fd, trim(v), off))
    payload = os.urandom(4096)
    assert rig.drv.do(VIRTIO_BLK_T_OUT, 1, out=payload, seg=1024).status == VIRTIO_BLK_S_OK
    assert file_bytes(image, 512, 4096) == payload
    r = rig.drv.do(VIRTIO_BLK_T_IN, 1, in_len=4096, seg=512)
    assert r.status == VIRTIO_BLK_S_OK and r.data == payload


def test_truncated_image_is_ioerr(rig, image):
    os.truncate(image, 4096)
    r = rig.drv.do(VIRTIO_BLK_T_IN, 100, in_len=512)
    assert r.status == VIRTIO_BLK_S_IOERR


# Read-only drives. ----------------------------------------------------------------------
def test_read_only_drive(ro_rig, image):
    offered = ro_rig.mmio.device_features()
    assert offered & bit(VIRTIO_BLK_F_RO)
    assert not offered & (bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES))
    before = image.read_bytes()
    assert ro_rig.drv.do(VIRTIO_BLK_T_OUT, 0, out=b"w" * 512).status == VIRTIO_BLK_S_IOERR
    for rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        assert ro_rig.drv.segments(rtype, [(0, 8, 0)]).status == VIRTIO_BLK_S_IOERR
    assert ro_rig.drv.do(VIRTIO_BLK_T_FLUSH).status == VIRTIO_BLK_S_OK
    r = ro_rig.drv.do(VIRTIO_BLK_T_IN, 0, in_len=1024)
    assert r.status == VIRTIO_BLK_S_OK and r.data == before[:1024]
    assert image.read_bytes() == before
    assert ro_rig.blk.stats()["errors"] == 3
    assert fcntl.fcntl(ro_rig.drive.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY


# Rate-limit hook. ---------------------------------------------------------------------------
class Limiter:
    """Refuses the first `refusals` requests with a 0.25 s wait."""

    def __init__(self, refusals):
        self.refusals = refusals
        self.calls = []

    def admit(self, request):
        self.calls.append((request.type, request.cost_bytes))
        if self.refusals:
            self.refusals -= 1
            return 0.25
        return 0.0


def test_throttled_request_stays_queued(mem, image):
    limiter = Limiter(refusals=2)
    r = Rig(mem, spec(image), limiter=limiter)
    try:
        r.drv.reset_scratch()
        head = r.drv.submit(r.drv.build(VIRTIO_BLK_T_IN, 0, in_len=512))
        assert r.drv.complete() == {}                        # refused: still in the ring
        assert r.transport._timers == [(0.25, 0)]
        r.mmio.notify(0)                                     # a notification meanwhile,
        assert r.drv.vq.get_used() == []                     # refused again,
        assert r.transport._timers == [(0.25, 0)]             # but no second timer
        assert r.blk.stats()["throttled"] == 2
        assert r.transport.run_timers() == 1                  # the retry timer fires
        assert r.drv.vq.get_used() == [(head, 513)]
        assert limiter.calls == [(VIRTIO_BLK_T_IN, 512)] * 3
    finally:
        r.close()


# Several drives. --------------------------------------------------------------------------
def test_two_drives_are_independent(mem, tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"A" * 8192)
    b.write_bytes(b"B" * 4096)
    drives = open_drives([DriveSpec.from_cli_option(f"path={a}", 0),
                          DriveSpec.from_cli_option(f"path={b},ro", 1)])
    assert [d.id for d in drives] == ["drive0", "drive1"]
    rigs = []
    try:
        for k, drive in enumerate(drives):
            blk = Block(drive, queue_size=16)
            t = mmio.MmioTransport(blk, mem, CountingTrigger())
            m = MmioDriver(t)
            vq = VirtqDriver.at(mem, 16, RINGS + 0x2000 * k)
            m.start([vq])
            rigs.append((BlkDriver(mem, vq, m, SCRATCH + 0x80000 * k,
                                   SCRATCH + 0x80000 * (k + 1)), blk, t))
        da, db = rigs[0][0], rigs[1][0]
        assert da.do(VIRTIO_BLK_T_IN, 0, in_len=512).data == b"A" * 512
        assert db.do(VIRTIO_BLK_T_IN, 0, in_len=512).data == b"B" * 512
        assert db.do(VIRTIO_BLK_T_IN, 8, in_len=512).status == VIRTIO_BLK_S_IOERR
        assert da.do(VIRTIO_BLK_T_IN, 8, in_len=512).status == VIRTIO_BLK_S_OK
        assert rigs[0][1].stats()["reads"] == 2 and rigs[1][1].stats()["reads"] == 1
    finally:
        for _d, _b, t in rigs:
            t.close()
        for d in drives:
            d.close()


def test_stats_keys(rig):
    assert set(rig.blk.stats()) == {"reads", "writes", "read_bytes", "write_bytes", "flushes",
                                    "discards", "write_zeroes", "get_ids", "errors",
                                    "unsupported", "throttled"}
    assert {"queue_errors", "reads"} <= set(rig.transport.stats())


# Drive options. -----------------------------------------------------------------------------
def test_drive_option():
    assert DriveSpec.from_cli_option("path=/img/a.raw", 0) == spec("/img/a.raw")
    assert DriveSpec.from_cli_option("path=a.img,ro,id=root,serial=ABC 1", 3) == \
        spec("a.img", "root", read_only=True, serial="ABC 1")
    assert DriveSpec.from_cli_option("path=we,,ird.img,ro=off", 0) == spec("we,ird.img")
    assert DriveSpec.from_cli_option("path=a,ro=on", 0).is_read_only
    assert DriveSpec.from_cli_option("id=x,path=p", 0).drive_id == "x"
    assert DriveSpec.from_cli_option("path=p", 2).drive_id == "drive2"
    assert not DriveSpec.from_cli_option("path=p", 0).is_root_device


@pytest.mark.parametrize("text,field,match", [
    ("", "--drive", "is empty"),
    ("path=a,", "--drive 'path=a,'", "unknown option ''"),
    ("ro", "--drive 'ro'", "path= is required"),
    ("path=", "--drive 'path=': path", "is empty"),
    ("disk.img", "--drive 'disk.img'", "unknown option 'disk.img'"),
    ("path=a,file=b", "--drive 'path=a,file=b'", "unknown option 'file'"),
    ("path=a,path=b", "--drive 'path=a,path=b'", "path is given twice"),
    ("path=a,ro,ro", "--drive 'path=a,ro,ro'", "ro is given twice"),
    ("path=a,ro=yes", "--drive 'path=a,ro=yes': ro", "takes no value"),
    ("path=a,id=", "--drive 'path=a,id=': id", "must be 1-64"),
    ("path=a,id=-x", "--drive 'path=a,id=-x': id", "must be 1-64"),
    ("path=a,id=a/b", "--drive 'path=a,id=a/b': id", "must be 1-64"),
    ("path=a,id=" + "x" * 65, "--drive 'path=a,id=" + "x" * 65 + "': id", "must be 1-64"),
    ("path=a,serial=" + "s" * 21, "--drive 'path=a,serial=" + "s" * 21 + "': serial",
     "at most 20"),
    ("path=a,serial=caf\u00e9", "--drive 'path=a,serial=caf\u00e9': serial", "printable ASCII"),
    ("path=a,bw=fast", "--drive 'path=a,bw=fast': bw", "not a size"),
    ("path=a,iops_burst=5", "--drive 'path=a,iops_burst=5': iops", "needs a non-zero rate"),
])
def test_drive_option_errors(text, field, match):
    with pytest.raises(SpecError, match=match) as e:
        DriveSpec.from_cli_option(text, 0)
    assert e.value.field == field
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_sixty_four_character_id_is_fine():
    assert DriveSpec.from_cli_option("path=a,id=" + "x" * 64, 0).drive_id == "x" * 64


def one_line_error(specs, match):
    with pytest.raises(DriveError, match=match) as e:
        open_drives(specs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_image(tmp_path):
    msg = one_line_error([spec(tmp_path / "nope.img")], "does not exist")
    assert "drive0" in msg and "nope.img" in msg


def test_directory(tmp_path):
    one_line_error([spec(tmp_path)], "is a directory")


def test_not_a_regular_file():
    one_line_error([spec("/dev/null")], "neither a regular file")


def test_bad_size(tmp_path):
    p = tmp_path / "odd.img"
    p.write_bytes(b"x" * 1000)
    one_line_error([spec(p)], "not a multiple of 512")


def test_an_empty_image_is_a_disk_of_no_sectors(tmp_path):
    """Orchestrators (Kata) attach empty placeholder images and PATCH their path
    later; Firecracker accepts them, and so does kvmm."""
    p = tmp_path / "placeholder.img"
    p.touch()
    with open_drive(spec(p)) as drive:
        assert (drive.size, drive.capacity) == (0, 0)


def test_same_file_twice(tmp_path, image):
    link = tmp_path / "hardlink.img"
    os.link(image, link)
    msg = one_line_error([spec(image, "a"), spec(link, "b")],
                         "same file as drive 'a'")
    assert "'b'" in msg
    one_line_error([spec(image, "a", read_only=True),
                    spec(image, "b", read_only=True)], "same file")


def test_read_only_file_needs_ro(image):
    os.chmod(image, 0o444)
    one_line_error([spec(image)], "read-only.*add ',ro'")
    open_drive(spec(image, read_only=True)).close()


def test_unreadable_file(image):
    os.chmod(image, 0o200)
    one_line_error([spec(image, read_only=True)], "cannot be read")


def test_duplicate_ids(tmp_path, image):
    """Ids are checked across drives by VmSpec.validate, before any image opens."""
    other = tmp_path / "other.img"
    other.write_bytes(bytes(512))
    with pytest.raises(SpecError, match="drive id 'x' is used twice") as e:
        VmSpec(drives=[spec(image, "x"), spec(other, "x")]).validate()
    assert e.value.field == "drives"
    # a default id can collide with an explicit one
    drives = [DriveSpec.from_cli_option(f"path={image}", 0),
              DriveSpec.from_cli_option(f"path={other},id=drive0", 1)]
    with pytest.raises(SpecError, match="'drive0' is used twice"):
        VmSpec(drives=drives).validate()


def test_lock_held_by_another_monitor(image):
    [first] = open_drives([spec(image)])
    try:
        msg = one_line_error([spec(image)], "locked")
        assert "another process" in msg
        one_line_error([spec(image, read_only=True)], "locked.*read-write")
    finally:
        first.close()
    [again] = open_drives([spec(image)])
    again.close()


def test_read_only_drives_share(image):
    a = open_drives([spec(image, read_only=True)])
    b = open_drives([spec(image, read_only=True)])
    one_line_error([spec(image)], "locked")
    for d in a + b:
        d.close()


def test_all_or_nothing(tmp_path, image):
    """A failing drive closes (and unlocks) the ones opened before it."""
    one_line_error([spec(image), spec(tmp_path / "missing", "drive1")],
                   "does not exist")
    [d] = open_drives([spec(image)])
    d.close()


def test_fallocate_probe_leaves_image_alone(image):
    before = image.read_bytes()
    blocks = os.stat(image).st_blocks
    [d] = open_drives([spec(image)])
    d.close()
    assert image.read_bytes() == before and os.path.getsize(image) == IMAGE_SIZE
    assert os.stat(image).st_blocks == blocks


def test_probe_without_tmpfile(image, monkeypatch):
    """No O_TMPFILE in the image's directory: discard is probed past the end of
    the image (allocating nothing), write-zeroes is not offered."""
    from kvmm.virtio.blk import drive as drive_mod
    real_open = os.open

    def no_tmpfile(path, flags, *a):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a)
    monkeypatch.setattr(drive_mod.os, "open", no_tmpfile)
    blocks = os.stat(image).st_blocks
    [d] = open_drives([spec(image)])
    try:
        assert d.can_discard and not d.can_write_zeroes
        assert os.stat(image).st_blocks == blocks
    finally:
        d.close()


def test_write_zeroes_unsupported_where_not_offered(mem, image, monkeypatch):
    from kvmm.virtio.blk import drive as drive_mod
    monkeypatch.setattr(drive_mod.Drive, "probe_fallocate", lambda self: None)
    r = Rig(mem, spec(image))
    try:
        offered = r.mmio.device_features()
        assert not offered & (bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES))
        before = image.read_bytes()
        for rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            assert r.drv.segments(rtype, [(0, 8, 0)]).status == VIRTIO_BLK_S_UNSUPP
        assert image.read_bytes() == before
        cfg = memoryview(bytearray(24))
        r.transport.read(mmio.CONFIG + 36, cfg)       # discard/write-zeroes limits
        assert bytes(cfg) == bytes(24)
    finally:
        r.close()


# The builder's wiring (kvmm/builder.py), with stand-ins for KVM. -------------------------
class FakeVm:
    def __init__(self):
        self.irqfds, self.ioeventfds = [], []

    def register_irqfd(self, fd, gsi):
        self.irqfds.append((fd, gsi))

    def register_ioeventfd(self, fd, addr, length, datamatch=None, pio=False):
        self.ioeventfds.append((fd, addr, length, datamatch, pio))


class FakeLoop:
    def __init__(self):
        self.readers = {}

    def add_reader(self, fd, cb):
        self.readers[fd] = cb

    def remove_reader(self, fd):
        self.readers.pop(fd, None)


class FakeMachine:
    def __init__(self, mem):
        from kvmm.devices.bus import Bus
        self.vm, self.mem, self.loop = FakeVm(), mem, FakeLoop()
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self.virtio_devices = []
        self.quota = None


def vm_spec(tmp_path, drives) -> VmSpec:
    from kvmm.spec import BootSourceSpec, HostSpec
    from tests import elfimage
    kernel = tmp_path / "kernel"
    kernel.write_bytes(elfimage.build())
    return VmSpec(boot_source=BootSourceSpec(kernel_image_path=str(kernel)), drives=drives,
                  host=HostSpec(console="none"))


def test_builder_wires_drives_root_first(mem, tmp_path):
    from kvmm import builder
    from kvmm.arch.x86_64 import layout
    from kvmm.cleanup import Cleanup
    from kvmm.spec import RateLimiterSpec
    specs = []
    for k in range(2):
        p = tmp_path / f"{k}.img"
        p.write_bytes(bytes(4096))
        specs.append(spec(p, f"d{k}", root=k == 1))
    specs[0].rate_limiter = RateLimiterSpec.from_shorthand({"iops": "100"}, "test")
    vm = vm_spec(tmp_path, specs)
    prep = builder.prepare(vm)
    assert [d.spec.drive_id for d in prep.devices] == ["d1", "d0"]       # the root drive first
    assert [(d.slot, d.gsi) for d in prep.devices] == [(0, layout.VIRTIO_IRQ_BASE),
                                                       (1, layout.VIRTIO_IRQ_BASE + 1)]
    assert prep.cmdline.startswith(b"root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5 ")
    m = FakeMachine(mem)
    with Cleanup() as stack:
        stack.callback(prep.close)
        builder._add_virtio_devices(m, vm, prep, stack)
        transports = m.virtio_devices
        assert [t.name for t in transports] == ["virtio-blk:d1", "virtio-blk:d0"]
        assert [gsi for _fd, gsi in m.vm.irqfds] == [layout.VIRTIO_IRQ_BASE,
                                                      layout.VIRTIO_IRQ_BASE + 1]
        for slot, t in enumerate(transports):
            base = layout.virtio_mmio_base(slot)
            dev, off = m.mmio_bus.find(base + mmio.MAGIC_VALUE, 4)
            assert dev is t and off == 0
            [(fd, addr, length, datamatch, pio)] = [e for e in m.vm.ioeventfds
                                                    if e[1] == base + 0x50]
            assert (length, datamatch, pio) == (4, 0, False)
            assert fd in m.loop.readers
        # The first device answers on the bus.
        data = memoryview(bytearray(4))
        m.mmio_bus.read(layout.VIRTIO_MMIO_START, data)
        assert bytes(data) == b"virt"
        # Each drive has its limiter under the drive group; d0 has its spec's buckets.
        limiters = m.quota.limiters
        assert limiters["drive:d0"].parents == (limiters["drives"],)
        assert limiters["drive:d0"].ops.size == 10 and limiters["drive:d1"].ops is None
    assert m.loop.readers == {}             # torn down with the stack
    open_drive(specs[0]).close()            # and the image locks released
    open_drive(specs[1]).close()


def test_builder_bad_image_touches_nothing(mem, tmp_path, image):
    """prepare() opens every image before any KVM object exists, all or none."""
    from kvmm import builder
    vm = vm_spec(tmp_path, [spec(image, "good"), spec(tmp_path / "missing.img", "bad")])
    with pytest.raises(DriveError, match="drive 'bad'.*does not exist"):
        builder.prepare(vm)
    open_drive(spec(image)).close()         # the first drive's lock was released
