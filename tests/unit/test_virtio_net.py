"""virtio-net (kvmm/virtio/net/device.py) through the mmio transport, a driver-side
helper and a fake TAP (a SOCK_SEQPACKET socketpair: one message per frame, like a
TAP fd): transmit and receive byte for byte, merged receive buffers, headers
split across descriptors, frames waiting in the TAP while the guest has no
buffers, the transmit budget, the rate-limit hooks, bad chains and hostile
rings, and a real EventLoop thread (fairness included)."""
import functools
import os
import select
import socket
import struct
import threading
import time

import pytest

from kvmm.devices.irq import CountingTrigger
from kvmm.eventloop import EventLoop
from kvmm.memory import GuestMemory
from kvmm.virtio import mmio
from kvmm.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    bit,
)
from kvmm.virtio.net import Net
from kvmm.virtio.net import device as netdev
from kvmm.virtio.net.device import (
    NET_HDR_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
)
from kvmm.virtio.net.tap import TUN_F_CSUM, TUN_F_TSO4
from tests.unit.virtio.driver import Allocator, MmioDriver, VirtqDriver

MAC = bytes.fromhex("020000000001")
RX_RING = 0x1000
TX_RING = 0x4000
BUFS = 0x10000
BUFS_END = 0x3F0000
QSIZE = 256
BASIC = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC)
         | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU))
MRG = BASIC | bit(VIRTIO_NET_F_MRG_RXBUF)
HDR = struct.Struct("<BBHHHHH")     # struct virtio_net_hdr with num_buffers


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory([(0, 4 << 20)])
    yield m
    m.close()


def frame(n: int, seed: int = 0) -> bytes:
    """An Ethernet frame of n bytes: broadcast destination, our MAC, a local
    EtherType, then a counting pattern."""
    body = bytes((seed + i) & 0xFF for i in range(n - 14))
    return b"\xff" * 6 + MAC + b"\x88\xb5" + body


class FakeTap:
    """The device end of a socketpair stands in for the TAP fd."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.name = "faketap0"
        self.offloads = []

    def set_offload(self, flags: int) -> None:
        self.offloads.append(flags)

    def dropped(self):
        return None

    def close(self) -> None:
        self.sock.close()


class FakeLoop:
    """add_reader / remove_reader as the EventLoop has them (registering an fd twice
    fails, as epoll does)."""

    def __init__(self):
        self.readers = {}
        self.adds = 0

    def add_reader(self, fd, callback):
        assert fd not in self.readers, "fd registered twice"
        self.readers[fd] = callback
        self.adds += 1

    def remove_reader(self, fd):
        self.readers.pop(fd, None)


class Limiter:
    """Refuses while `refuse` is true (with a 0.05 s wait); records the sizes."""

    def __init__(self, refuse=False):
        self.refuse = refuse
        self.calls = []

    def limits(self):
        return True

    def count(self, ops, nbytes):
        raise AssertionError("a limiting limiter is asked, frame by frame")

    def admit_bytes(self, nbytes):
        self.calls.append(nbytes)
        return 0.05 if self.refuse else 0.0


class Rig:
    """A Net device on a fake TAP, its transport, and the driver side of both queues."""

    def __init__(self, mem, features=MRG, *, loop=None, queue_size=QSIZE, handler=True,
                 **net_kw):
        self.mem = mem
        self.wire, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dev.setblocking(False)
        self.wire.setblocking(False)
        self.tap = FakeTap(dev)
        self.loop = loop if loop is not None else FakeLoop()
        self.net = Net(self.tap, mac=MAC, loop=self.loop, queue_size=queue_size, **net_kw)
        self.irq = CountingTrigger()
        self.transport = mmio.MmioTransport(self.net, mem, self.irq,
                                            loop=loop if isinstance(loop, EventLoop) else None)
        if handler:                   # as kvmm.builder wires it
            self.net.set_rx_handler(functools.partial(self.transport.process, netdev.RX_QUEUE))
        self.mmio = MmioDriver(self.transport)
        self.rxq = VirtqDriver.at(mem, queue_size, RX_RING)
        self.txq = VirtqDriver.at(mem, queue_size, TX_RING)
        self.alloc = Allocator(BUFS, BUFS_END)
        self.rx_bufs = {}             # head -> [(addr, len)]
        self.features = features
        if features is not None:
            status = self.mmio.start([self.rxq, self.txq], features)
            assert not status & STATUS_DEVICE_NEEDS_RESET

    def close(self):
        self.transport.close()
        self.tap.close()
        self.wire.close()

    # Driving the device as the EventLoop would. ---------------------------------------
    def pump(self, rounds=1000):
        """Readable readers, then signalled queues, then timers, until nothing happens."""
        for _ in range(rounds):
            busy = False
            for fd, cb in list(self.loop.readers.items()):
                if select.select([fd], [], [], 0)[0]:
                    cb()
                    busy = True
            busy |= bool(self.transport.run_pending())
            busy |= bool(self.transport.run_timers())
            if not busy:
                return
        raise AssertionError("the device never went quiet")

    # Transmit. ----------------------------------------------------------------------
    def queue_tx(self, data: bytes, hdr: bytes = bytes(NET_HDR_LEN), pieces=None,
                 indirect=False, writable=False) -> int:
        """Put header + frame in the TX ring (one descriptor, or `pieces` lengths)."""
        payload = hdr + data
        addr = self.alloc.alloc(len(payload), 16)
        self.mem.write(addr, payload)
        sizes = pieces or [len(payload)]
        assert sum(sizes) == len(payload)
        bufs, off = [], 0
        for n in sizes:
            bufs.append((addr + off, n, writable))
            off += n
        if indirect:
            return self.txq.add_indirect(bufs, self.alloc.alloc(16 * len(bufs), 16))
        return self.txq.add_chain(bufs)

    def wire_frames(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.wire.recv(1 << 17))
            except BlockingIOError:
                return out

    # Receive. -----------------------------------------------------------------------
    def post_rx(self, count: int, size: int = 2048, pieces=None, publish=True) -> list[int]:
        heads = []
        for _ in range(count):
            sizes = pieces or [size]
            bufs = []
            for n in sizes:
                a = self.alloc.alloc(n, 16)
                self.mem.write(a, b"\xee" * n)
                bufs.append((a, n, True))
            head = self.rxq.add_chain(bufs, publish=publish)
            self.rx_bufs[head] = [(a, n) for a, n, _w in bufs]
            heads.append(head)
        return heads

    def wire_send(self, data: bytes, hdr: bytes = bytes(NET_HDR_LEN)) -> None:
        """Send a frame into the "TAP"; while the socket is full, let the device
        drain it (pump, or wait for a real loop)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self.wire.send(hdr + data)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                if isinstance(self.loop, FakeLoop):
                    self.pump()
                else:
                    time.sleep(0.001)

    def chain_bytes(self, head: int, length: int) -> bytes:
        out = b"".join(self.mem.read(a, n) for a, n in self.rx_bufs[head])
        return out[:length]

    def rx_frames(self) -> list[tuple[bytes, bytes, list]]:
        """Received (header, frame, used elements) from the used ring, merging
        num_buffers chains the way a driver does."""
        used = self.rxq.get_used()
        out = []
        i = 0
        while i < len(used):
            head, length = used[i]
            first = self.chain_bytes(head, length)
            hdr = first[:NET_HDR_LEN]
            count = HDR.unpack(hdr)[6]
            data = first[NET_HDR_LEN:]
            for h, n in used[i + 1:i + count]:
                data += self.chain_bytes(h, n)
            out.append((hdr, data, used[i:i + count]))
            i += max(count, 1)
        return out


@pytest.fixture
def rig(mem):
    r = Rig(mem)
    yield r
    r.close()


# Features and configuration space. -------------------------------------------------------
def test_features_and_config(mem):
    r = Rig(mem, features=None, mtu=1400)
    try:
        offered = r.mmio.device_features()
        for b in (VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
                  VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MTU,
                  VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
                  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4):
            assert offered & bit(b), b
        assert r.mmio.r32(mmio.DEVICE_ID) == 1
        cfg = memoryview(bytearray(12))
        r.transport.read(mmio.CONFIG, cfg)
        mac, status, pairs, mtu = struct.unpack("<6sHHH", cfg)
        assert (mac, status, pairs, mtu) == (MAC, 1, 1, 1400)    # link up
        # byte by byte, as a driver reads the MAC
        one = memoryview(bytearray(1))
        r.transport.read(mmio.CONFIG + 5, one)
        assert one[0] == MAC[5]
    finally:
        r.close()


def test_offloads_follow_the_negotiation(mem):
    r = Rig(mem, MRG | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4))
    try:
        assert r.tap.offloads[-1] == TUN_F_CSUM | TUN_F_TSO4
    finally:
        r.close()
    r = Rig(mem, MRG)
    try:
        assert r.tap.offloads[-1] == 0
    finally:
        r.close()


def test_without_offloads_none_are_offered(mem):
    r = Rig(mem, features=None, offloads=False)
    try:
        offered = r.mmio.device_features()
        assert not offered & (bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM)
                              | bit(VIRTIO_NET_F_HOST_TSO4))
    finally:
        r.close()


def test_bad_device_arguments():
    with pytest.raises(ValueError, match="unicast"):
        Net(None, mac=bytes.fromhex("010000000001"))
    with pytest.raises(ValueError, match="MTU"):
        Net(None, mac=MAC, mtu=20)
    with pytest.raises(ValueError, match="power of two"):
        Net(None, mac=MAC, queue_size=100)


# Transmit. -----------------------------------------------------------------------------
def test_transmit_one_frame(rig):
    data = frame(60)
    head = rig.queue_tx(data)
    before = rig.irq.count
    rig.mmio.notify(1)
    assert rig.wire_frames() == [bytes(NET_HDR_LEN) + data]
    assert rig.txq.get_used() == [(head, 0)]
    assert rig.irq.count == before + 1
    s = rig.net.stats()
    assert (s["tx_frames"], s["tx_bytes"], s["tx_dropped"]) == (1, 60, 0)


@pytest.mark.parametrize("pieces", [[12, 1514], [5, 7, 100, 1414], [12, 1, 1, 1512]])
def test_transmit_scattered(rig, pieces):
    data = frame(1514, seed=7)
    rig.queue_tx(data, pieces=pieces)
    rig.mmio.notify(1)
    assert rig.wire_frames() == [bytes(NET_HDR_LEN) + data]


def test_transmit_indirect(rig):
    data = frame(900)
    rig.queue_tx(data, pieces=[12, 400, 500], indirect=True)
    rig.mmio.notify(1)
    assert rig.wire_frames() == [bytes(NET_HDR_LEN) + data]


def test_transmit_many_in_order(rig):
    frames = [frame(14 + (i * 37) % 1500, seed=i) for i in range(100)]
    for f in frames:
        rig.queue_tx(f)
    rig.mmio.notify(1)
    rig.pump()
    assert [w[NET_HDR_LEN:] for w in rig.wire_frames()] == frames
    assert len(rig.txq.get_used()) == 100


def test_transmit_header_is_sent_as_copied(rig):
    # num_buffers is the driver's to zero on transmit; the device sends its own copy
    hdr = HDR.pack(0, 0, 0, 0, 0, 0, 0x1234)
    rig.queue_tx(frame(64), hdr=hdr)
    rig.mmio.notify(1)
    [sent] = rig.wire_frames()
    assert sent[:NET_HDR_LEN] == bytes(NET_HDR_LEN)


@pytest.mark.parametrize("case", ["writable", "short", "oversized", "csum-flag",
                                  "gso-type", "data-valid"])
def test_transmit_bad_chains_are_dropped_and_counted(rig, case):
    kw = {}
    data = frame(64)
    if case == "writable":
        kw["writable"] = True
    elif case == "short":
        data = b"\x00" * 10
    elif case == "oversized":
        data = frame(1519)                # MTU 1500 + 14 + 4 (VLAN) is the most
    elif case == "csum-flag":
        kw["hdr"] = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14, 16, 0)
    elif case == "gso-type":
        kw["hdr"] = HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 0, 0, 0)
    elif case == "data-valid":
        kw["hdr"] = HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0)
    head = rig.queue_tx(data, **kw)
    rig.mmio.notify(1)
    assert rig.wire_frames() == []
    assert rig.txq.get_used() == [(head, 0)]          # returned, the ring goes on
    assert rig.net.stats()["tx_dropped"] == 1
    assert not rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET
    good = frame(64, seed=1)
    rig.queue_tx(good)
    rig.mmio.notify(1)
    assert rig.wire_frames() == [bytes(NET_HDR_LEN) + good]


def test_transmit_offloaded_frames_when_negotiated(mem):
    features = (MRG | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4))
    r = Rig(mem, features)
    try:
        hdr = HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16, 0)
        big = frame(30000)
        r.queue_tx(big, hdr=hdr)
        r.mmio.notify(1)
        assert r.wire_frames() == [hdr + big]
    finally:
        r.close()


def test_transmit_budget_yields_to_the_loop(rig):
    for i in range(200):
        rig.queue_tx(frame(60, seed=i))
    rig.mmio.notify(1)
    # One pass sends a budget's worth and asks to be run again.
    assert len(rig.wire_frames()) == netdev.DEFAULT_BUDGET
    assert rig.transport._timers == [(0.0, 1)]
    assert rig.net.stats()["tx_yields"] == 1
    rig.pump()
    assert len(rig.wire_frames()) == 200 - netdev.DEFAULT_BUDGET
    assert len(rig.txq.get_used()) == 200


def test_transmit_to_a_failing_tap_drops_and_counts(rig):
    rig.wire.close()                      # writes now fail (EPIPE / ECONNREFUSED)
    rig.queue_tx(frame(60))
    rig.mmio.notify(1)
    s = rig.net.stats()
    assert s["tx_dropped"] == 1 and s["tx_errors"] == 1 and s["tx_frames"] == 0
    assert len(rig.txq.get_used()) == 1


# Receive. ------------------------------------------------------------------------------
def test_receive_one_frame(rig):
    rig.post_rx(8)
    rig.mmio.notify(0)
    assert rig.tap.fd in rig.loop.readers            # watching the TAP once buffers exist
    data = frame(98)
    before = rig.irq.count
    rig.wire_send(data)
    rig.pump()
    [(hdr, got, used)] = rig.rx_frames()
    assert got == data
    assert HDR.unpack(hdr) == (0, 0, 0, 0, 0, 0, 1)
    assert used[0][1] == NET_HDR_LEN + 98
    assert rig.irq.count == before + 1
    s = rig.net.stats()
    assert (s["rx_frames"], s["rx_bytes"], s["rx_dropped"]) == (1, 98, 0)


def test_receive_without_a_handler_goes_through_the_retry_hook(mem):
    r = Rig(mem, handler=False)
    try:
        r.post_rx(4)
        r.mmio.notify(0)
        r.wire_send(frame(80))
        fd = r.tap.fd
        r.loop.readers[fd]()                     # the TAP is readable
        assert r.transport._timers == [(0.0, 0)]  # process_queue(0) asked for, at once
        r.transport.run_timers()
        assert [f for _h, f, _u in r.rx_frames()] == [frame(80)]
    finally:
        r.close()


def test_receive_many_mixed_sizes_in_order(rig):
    rig.post_rx(QSIZE)
    rig.mmio.notify(0)
    frames = [frame(14 + (i * 151) % 1501, seed=i) for i in range(200)]
    for f in frames:
        rig.wire_send(f)
    rig.pump()
    assert [f for _h, f, _u in rig.rx_frames()] == frames


def test_receive_clears_flags_without_guest_csum(rig):
    rig.post_rx(2)
    rig.mmio.notify(0)
    rig.wire_send(frame(60), hdr=HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0x7777))
    rig.pump()
    [(hdr, _f, _u)] = rig.rx_frames()
    assert HDR.unpack(hdr) == (0, 0, 0, 0, 0, 0, 1)


def test_receive_merges_small_buffers(rig):
    rig.post_rx(12, size=512)
    rig.mmio.notify(0)
    data = frame(1514, seed=3)
    rig.wire_send(data)
    rig.pump()
    [(hdr, got, used)] = rig.rx_frames()
    assert got == data
    assert HDR.unpack(hdr)[6] == 3                     # num_buffers
    assert [n for _h, n in used] == [512, 512, NET_HDR_LEN + 1514 - 1024]


def test_receive_header_split_across_descriptors(rig):
    rig.post_rx(4, pieces=[4, 7, 2037])              # num_buffers lands in the second
    rig.mmio.notify(0)
    data = frame(200)
    rig.wire_send(data)
    rig.pump()
    [(hdr, got, _u)] = rig.rx_frames()
    assert got == data and HDR.unpack(hdr)[6] == 1


def test_receive_without_mergeable_buffers(mem):
    r = Rig(mem, BASIC)
    try:
        r.post_rx(4, size=1526)
        r.mmio.notify(0)
        for n in (60, 1514):
            r.wire_send(frame(n, seed=n))
        r.pump()
        got = r.rx_frames()
        assert [f for _h, f, _u in got] == [frame(60, seed=60), frame(1514, seed=1514)]
        assert all(HDR.unpack(h)[6] == 1 for h, _f, _u in got)
    finally:
        r.close()


def test_receive_too_large_for_the_buffer_is_dropped_not_cut(mem):
    r = Rig(mem, BASIC)
    try:
        r.post_rx(2, size=600)                       # too small for a full frame
        r.mmio.notify(0)
        r.wire_send(frame(1000))
        r.wire_send(frame(100, seed=9))
        r.pump()
        [(_h, got, _u)] = r.rx_frames()              # the big one is gone, counted;
        assert got == frame(100, seed=9)              # its buffer took the next frame
        assert r.net.stats()["rx_dropped"] == 1
    finally:
        r.close()


def test_frames_wait_in_the_tap_while_the_guest_has_no_buffers(rig):
    frames = [frame(60 + i, seed=i) for i in range(20)]
    rig.post_rx(5)
    rig.mmio.notify(0)
    for f in frames:
        rig.wire_send(f)
    rig.pump()
    got = [f for _h, f, _u in rig.rx_frames()]
    assert got == frames[:5]
    # Out of buffers: the device stopped reading (the rest wait in the TAP) and
    # asked the driver for a notification (EVENT_IDX: avail_event = next_avail).
    assert rig.tap.fd not in rig.loop.readers
    assert rig.rxq.avail_event() == 5
    s = rig.net.stats()
    assert s["rx_deferred"] == 1 and s["rx_dropped"] == 0
    assert select.select([rig.tap.fd], [], [], 0)[0]  # still queued in the "kernel"
    rig.post_rx(30)
    rig.mmio.notify(0)                                 # the guest's notification resumes it
    rig.pump()
    got += [f for _h, f, _u in rig.rx_frames()]
    assert got == frames
    assert rig.tap.fd in rig.loop.readers


def test_no_notification_wanted_while_buffers_last(mem):
    # Without EVENT_IDX the device sets VIRTQ_USED_F_NO_NOTIFY while it has room.
    r = Rig(mem, MRG & ~bit(VIRTIO_F_EVENT_IDX))
    try:
        r.post_rx(4)
        r.mmio.notify(0)
        assert r.rxq.used_flags() == 1
        for i in range(4):
            r.wire_send(frame(60, seed=i))
        r.pump()
        assert len(r.rx_frames()) == 4
        assert r.rxq.used_flags() == 0               # starved: notify me
    finally:
        r.close()


@pytest.mark.parametrize("case", ["readable", "tiny"])
def test_receive_bad_chains_are_returned_empty(rig, case):
    if case == "readable":
        a = rig.alloc.alloc(2048)
        head = rig.rxq.add_chain([(a, 2048, False)])
    else:
        head = rig.post_rx(1, size=8)[0]
    good = rig.post_rx(2)
    rig.mmio.notify(0)
    assert rig.rxq.get_used()[0] == (head, 0)
    rig.wire_send(frame(70))
    rig.pump()
    used = rig.rxq.get_used()
    assert used == [(good[0], NET_HDR_LEN + 70)]
    assert rig.net.stats()["rx_bad_chains"] == 1


# Rate limiting. ----------------------------------------------------------------------------
def test_transmit_rate_limit_leaves_frames_in_the_ring(mem):
    limiter = Limiter(refuse=True)
    r = Rig(mem, tx_limiter=limiter)
    try:
        r.queue_tx(frame(100))
        r.queue_tx(frame(200))
        r.mmio.notify(1)
        assert r.wire_frames() == [] and r.txq.get_used() == []
        assert r.transport._timers == [(0.05, 1)]
        r.mmio.notify(1)                                   # refused again, no second timer
        assert r.transport._timers == [(0.05, 1)]
        limiter.refuse = False
        r.transport.run_timers()
        assert [len(w) - NET_HDR_LEN for w in r.wire_frames()] == [100, 200]
        assert limiter.calls == [100, 100, 100, 200]
        assert r.net.stats()["tx_throttled"] == 2
    finally:
        r.close()


def test_receive_rate_limit_holds_the_frame_and_the_tap(mem):
    limiter = Limiter(refuse=True)
    r = Rig(mem, rx_limiter=limiter)
    try:
        r.post_rx(8)
        r.mmio.notify(0)
        r.wire_send(frame(100, seed=1))
        r.wire_send(frame(200, seed=2))
        r.pump()
        assert r.rx_frames() == []                         # read, but not delivered
        assert r.tap.fd not in r.loop.readers              # the second waits in the TAP
        assert select.select([r.tap.fd], [], [], 0)[0]
        assert r.net.stats()["rx_throttled"] >= 1
        limiter.refuse = False
        r.transport.process(0)                             # the retry timer, when it is due
        r.pump()
        assert [f for _h, f, _u in r.rx_frames()] == [frame(100, seed=1), frame(200, seed=2)]
        assert limiter.calls[-2:] == [100, 200]
    finally:
        r.close()


def test_counting_only_limiters_see_every_frame_and_a_patch_takes_effect(mem):
    """With no bucket (the default: limiters only count), frames pass in
    batches and are counted in bulk, in both directions; a bucket added at run
    time throttles the next pass."""
    from kvmm.quota.bucket import TokenBucket
    from kvmm.quota.guest import GuestQuota
    from kvmm.spec import RateLimiterSpec
    quota = GuestQuota()
    rx = quota.nic("n0", "rx", RateLimiterSpec())
    tx = quota.nic("n0", "tx", None)
    r = Rig(mem, rx_limiter=rx, tx_limiter=tx)
    try:
        for n in (60, 100, 1400):
            r.queue_tx(frame(n))
        r.mmio.notify(1)
        assert [len(w) - NET_HDR_LEN for w in r.wire_frames()] == [60, 100, 1400]
        r.post_rx(4)
        r.mmio.notify(0)
        r.wire_send(frame(80))
        r.wire_send(frame(90))
        r.pump()
        assert len(r.rx_frames()) == 2
        stats = quota.stats()
        assert (stats["net:n0:tx"]["ops"], stats["net:n0:tx"]["bytes"]) == (3, 1560)
        assert (stats["net:n0:rx"]["ops"], stats["net:n0:rx"]["bytes"]) == (2, 170)
        assert (stats["nets:tx"]["ops"], stats["nets:rx"]["ops"]) == (3, 2)
        # One 100-byte frame's worth of tokens, refilled over a long time.
        tx.limiter.update(bandwidth=TokenBucket(100, 60_000))
        r.queue_tx(frame(100))
        r.queue_tx(frame(100))
        r.mmio.notify(1)
        assert [len(w) - NET_HDR_LEN for w in r.wire_frames()] == [100]
        assert r.net.stats()["tx_throttled"] == 1
        assert quota.stats()["net:n0:tx"]["ops"] == 4
    finally:
        r.close()


# Hostile rings and resets. ------------------------------------------------------------------
def test_hostile_rx_ring_needs_reset_and_stops_reading(rig):
    rig.post_rx(2)
    rig.mmio.notify(0)
    assert rig.tap.fd in rig.loop.readers
    rig.rxq.set_avail_idx(rig.rxq.avail_idx + QSIZE + 5)   # runs past the ring
    rig.wire_send(frame(60))
    rig.wire_send(frame(60))
    rig.wire_send(frame(60))
    rig.pump()
    assert rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET
    assert rig.tap.fd not in rig.loop.readers             # no busy loop on a dead device
    # The driver resets and starts again; the frames still in the TAP arrive.
    rig.rxq = VirtqDriver.at(rig.mem, QSIZE, RX_RING)
    rig.txq = VirtqDriver.at(rig.mem, QSIZE, TX_RING)
    rig.rx_bufs.clear()
    rig.mmio.start([rig.rxq, rig.txq], MRG)
    rig.post_rx(8)
    rig.mmio.notify(0)
    rig.pump()
    assert len(rig.rx_frames()) == 1                       # two came before the reset


def test_hostile_tx_ring_needs_reset(rig):
    rig.txq.write_desc(0, 0x10000, 100, 0b001, 7)            # NEXT -> 7
    rig.txq.write_desc(7, 0x10000, 100, 0b001, 0)            # NEXT -> 0: a loop
    rig.txq.publish(0)
    rig.mmio.notify(1)
    assert rig.mmio.status() & STATUS_DEVICE_NEEDS_RESET
    assert rig.wire_frames() == []


def test_queue_not_ready_after_driver_ok_does_not_spin(rig):
    rig.post_rx(2)
    rig.mmio.notify(0)
    rig.mmio.w32(mmio.QUEUE_SEL, 0)
    rig.mmio.w32(mmio.QUEUE_READY, 0)                      # "stop using the queue"
    rig.wire_send(frame(60))
    rig.pump()                                             # must go quiet
    assert rig.tap.fd not in rig.loop.readers


def test_reset_forgets_buffers_and_stops_watching(rig):
    rig.post_rx(4)
    rig.mmio.notify(0)
    assert rig.tap.fd in rig.loop.readers
    rig.mmio.w32(mmio.STATUS, 0)
    assert rig.tap.fd not in rig.loop.readers
    rig.wire_send(frame(60))
    rig.pump()
    assert rig.net.stats()["rx_frames"] == 0
    rig.rxq = VirtqDriver.at(rig.mem, QSIZE, RX_RING)
    rig.txq = VirtqDriver.at(rig.mem, QSIZE, TX_RING)
    rig.rx_bufs.clear()
    rig.mmio.start([rig.rxq, rig.txq], MRG)
    rig.post_rx(4)
    rig.mmio.notify(0)
    rig.pump()
    assert [f for _h, f, _u in rig.rx_frames()] == [frame(60)]


# A real EventLoop thread. ----------------------------------------------------------------------
def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.001)


def test_event_loop_transmit_stays_fair(mem):
    """A transmit flood is cut into budgets: a reader that became ready while the
    flood started runs after the first budget, not after the flood."""
    loop = EventLoop("test-net")
    loop.start()
    budget = 32
    r = Rig(mem, loop=loop, tx_budget=budget)
    seen = []
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        loop.add_reader(rfd, lambda: (os.read(rfd, 64), seen.append(r.net.tx_frames)))
        n = 240
        for i in range(n):
            r.queue_tx(frame(60, seed=i))

        def flood():                                # on the loop thread
            os.write(wfd, b"x")                     # the console (say) has input now
            r.transport.process(1)                  # the guest's notification
        loop.call_soon_threadsafe(flood)
        got = []
        _wait_for(lambda: got.extend(r.wire_frames()) or len(got) == n)
        assert [g[NET_HDR_LEN:] for g in got] == [frame(60, seed=i) for i in range(n)]
        _wait_for(lambda: seen)
        # Served after one budget, or two: a retry asked for from a reader's
        # callback runs in the same loop iteration (EventLoop.call_soon).
        assert seen[0] in (budget, 2 * budget)
        assert r.net.stats()["tx_yields"] == n // budget
    finally:
        loop.remove_reader(rfd)
        os.close(rfd)
        os.close(wfd)
        r.close()
        loop.close()


def test_event_loop_receive(mem):
    loop = EventLoop("test-net-rx")
    loop.start()
    r = Rig(mem, loop=loop)
    try:
        r.post_rx(64)
        r.mmio.w32(mmio.QUEUE_NOTIFY, 0)
        _wait_for(lambda: r.net._watching)
        frames = [frame(60 + i * 13, seed=i) for i in range(50)]
        for f in frames:
            r.wire_send(f)
        _wait_for(lambda: r.rxq.used_idx() == 50)
        assert [f for _h, f, _u in r.rx_frames()] == frames
        assert loop.errors == []
    finally:
        r.close()
        loop.close()


def test_event_loop_two_threads_drive_both_queues(mem):
    """The loop receives while a "vCPU" thread transmits and reposts buffers."""
    loop = EventLoop("test-net-both")
    loop.start()
    r = Rig(mem, loop=loop)
    stop = threading.Event()
    try:
        r.post_rx(QSIZE)
        r.mmio.w32(mmio.QUEUE_NOTIFY, 0)
        _wait_for(lambda: r.net._watching)
        n = 300
        for i in range(n):
            r.wire_send(frame(100, seed=i))
        received = []
        deadline = time.monotonic() + 10
        while len(received) < n and time.monotonic() < deadline:
            got = r.rx_frames()
            received += [f for _h, f, _u in got]
            if got:        # repost what came back, and notify
                r.post_rx(sum(len(u) for _h, _f, u in got))
                r.mmio.w32(mmio.QUEUE_NOTIFY, 0)
            time.sleep(0.0005)
        assert received == [frame(100, seed=i) for i in range(n)]
    finally:
        stop.set()
        r.close()
        loop.close()
