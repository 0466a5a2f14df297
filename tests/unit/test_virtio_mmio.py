"""The virtio-mmio transport (kvmm/virtio/mmio.py): registers, the status state
machine, feature negotiation, queue set-up checks, notifications, interrupts
and DEVICE_NEEDS_RESET on a broken queue."""
import logging
import os
import struct
import threading

import pytest

from kvmm.devices.irq import CountingTrigger
from kvmm.eventloop import EventLoop
from kvmm.memory import GuestMemory
from kvmm.virtio import mmio
from kvmm.virtio.device import (
    INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    RateLimitedLog, VirtioDevice, bit,
)
from kvmm.virtio.errors import VirtioError
from kvmm.virtio.mmio import MmioTransport, cmdline_word
from tests.unit.virtio.driver import MmioDriver, VirtqDriver

DATA = 0x100000
ACK_DRIVER = STATUS_ACKNOWLEDGE | STATUS_DRIVER
DEVICE_FEATURE_0 = bit(0)


class EchoDevice(VirtioDevice):
    """Fills every device-writable buffer with 0xAB and returns the chain."""

    device_id = 0x1F
    name = "echo"
    avail_features = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX)
                      | bit(VIRTIO_F_INDIRECT_DESC) | DEVICE_FEATURE_0)
    queue_max_sizes = (16, 8)
    config = bytes(range(1, 25))

    def __init__(self):
        super().__init__()
        self.activations = 0
        self.resets = 0
        self.processed = []
        self.fail_with = None
        self.queues = None

    def activate(self, queues, mem, interrupt):
        self.activations += 1
        self.queues, self.mem, self.interrupt = queues, mem, interrupt

    def reset(self):
        self.resets += 1
        self.queues = None

    def process_queue(self, index):
        if self.fail_with is not None:
            raise self.fail_with
        q = self.queues[index]
        while (chain := q.pop()) is not None:
            n = 0
            for v in chain.writable_views(self.mem):
                v[:] = b"\xab" * len(v)
                n += len(v)
            self.processed.append((index, chain.head))
            q.add_used(chain.head, n)
        if q.needs_notification():
            self.interrupt.signal_used()


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory([(0, 4 << 20)])
    yield m
    m.close()


@pytest.fixture
def dev():
    return EchoDevice()


@pytest.fixture
def irq():
    return CountingTrigger()


@pytest.fixture
def transport(mem, dev, irq):
    t = MmioTransport(dev, mem, irq)
    yield t
    t.close()


@pytest.fixture
def drv(transport):
    return MmioDriver(transport)


def queues(mem):
    return [VirtqDriver.at(mem, 16, 0x1000), VirtqDriver.at(mem, 8, 0x3000)]


# Identity and features. ---------------------------------------------------
def test_identity_registers(drv):
    assert drv.r32(mmio.MAGIC_VALUE) == 0x74726976
    assert drv.r32(mmio.VERSION) == 2
    assert drv.r32(mmio.DEVICE_ID) == 0x1F
    assert drv.r32(mmio.VENDOR_ID) == mmio.VENDOR_KVMM


def test_device_features_by_word(drv, dev):
    assert drv.device_features() == dev.avail_features
    drv.w32(mmio.DEVICE_FEATURES_SEL, 2)
    assert drv.r32(mmio.DEVICE_FEATURES) == 0
    drv.w32(mmio.DEVICE_FEATURES_SEL, 0xFFFF_FFFF)
    assert drv.r32(mmio.DEVICE_FEATURES) == 0


def test_features_ok_accepted(drv, dev):
    wanted = bit(VIRTIO_F_VERSION_1) | DEVICE_FEATURE_0
    status = drv.negotiate(wanted)
    assert status == ACK_DRIVER | STATUS_FEATURES_OK
    assert dev.acked_features == wanted


def test_features_ok_refused_without_version_1(drv):
    assert not drv.negotiate(DEVICE_FEATURE_0) & STATUS_FEATURES_OK


def test_features_ok_refused_for_unknown_features(drv):
    assert not drv.negotiate(bit(VIRTIO_F_VERSION_1) | bit(3)) & STATUS_FEATURES_OK


def test_features_ok_refused_for_unknown_feature_word(drv):
    drv.w32(mmio.STATUS, STATUS_ACKNOWLEDGE)
    drv.w32(mmio.STATUS, ACK_DRIVER)
    drv.write_driver_features(bit(VIRTIO_F_VERSION_1))
    drv.w32(mmio.DRIVER_FEATURES_SEL, 5)
    drv.w32(mmio.DRIVER_FEATURES, 1)
    drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_FEATURES_OK)
    assert not drv.status() & STATUS_FEATURES_OK


def test_driver_features_frozen_after_features_ok(drv, dev):
    drv.negotiate(bit(VIRTIO_F_VERSION_1))
    drv.write_driver_features(dev.avail_features)
    assert drv.t.driver_features == bit(VIRTIO_F_VERSION_1)


def test_driver_features_need_driver_status(drv):
    drv.write_driver_features(bit(VIRTIO_F_VERSION_1))
    assert drv.t.driver_features == 0


# Status state machine. --------------------------------------------------------
def test_status_steps_in_order(drv):
    drv.w32(mmio.STATUS, STATUS_DRIVER)                  # DRIVER without ACKNOWLEDGE
    assert drv.status() == 0
    drv.w32(mmio.STATUS, STATUS_ACKNOWLEDGE)
    drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_DRIVER_OK)  # DRIVER_OK before FEATURES_OK
    assert drv.status() == ACK_DRIVER
    drv.w32(mmio.STATUS, STATUS_ACKNOWLEDGE)             # clearing a bit is not allowed
    assert drv.status() == ACK_DRIVER
    drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_DEVICE_NEEDS_RESET | 0x30)  # not the driver's bits
    assert drv.status() == ACK_DRIVER


def test_failed_bit(drv, dev, mem):
    drv.negotiate()
    drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED)
    assert drv.status() & STATUS_FAILED
    drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED | STATUS_DRIVER_OK)
    assert dev.activations == 0


def test_reset_clears_everything(drv, dev, mem, irq):
    drv.start(queues(mem))
    assert dev.activations == 1
    drv.t.interrupt.signal_used()
    drv.w32(mmio.STATUS, 0)
    assert dev.resets == 1
    assert drv.status() == 0
    assert drv.interrupt_status() == 0
    for sel in (0, 1):
        drv.w32(mmio.QUEUE_SEL, sel)
        assert drv.r32(mmio.QUEUE_READY) == 0
    assert drv.t.driver_features == 0
    # and it can be brought up again
    assert drv.start(queues(mem)) & STATUS_DRIVER_OK
    assert dev.activations == 2


# Queue set-up. ----------------------------------------------------------------
def test_queue_num_max(drv):
    for sel, expected in ((0, 16), (1, 8), (2, 0), (0xFFFF_FFFF, 0)):
        drv.w32(mmio.QUEUE_SEL, sel)
        assert drv.r32(mmio.QUEUE_NUM_MAX) == expected
        assert drv.r32(mmio.QUEUE_READY) == 0


def test_queue_registers_ignored_before_features_ok(drv, mem):
    drv.w32(mmio.STATUS, STATUS_ACKNOWLEDGE)
    drv.w32(mmio.STATUS, ACK_DRIVER)
    drv.setup_queue(0, VirtqDriver.at(mem, 4, 0x1000))
    q = drv.t.queues[0]
    assert (q.size, q.desc_table, q.ready) == (16, 0, False)
    assert drv.t.counters["bad_accesses"] > 0


def test_queue_addresses_64_bit(drv, mem):
    drv.negotiate()
    drv.w32(mmio.QUEUE_SEL, 1)
    drv.w32(mmio.QUEUE_DESC_LOW, 0x1234_5000)
    drv.w32(mmio.QUEUE_DESC_HIGH, 0x1)
    drv.w32(mmio.QUEUE_DRIVER_HIGH, 0xFFFF_FFFF)
    q = drv.t.queues[1]
    assert q.desc_table == 0x1_1234_5000
    assert q.avail_ring == 0xFFFF_FFFF_0000_0000


@pytest.mark.parametrize("size", [0, 3, 32])
def test_queue_ready_with_bad_size(drv, mem, size, irq):
    drv.negotiate()
    vq = VirtqDriver.at(mem, 16, 0x1000)
    drv.setup_queue(0, vq, ready=False)
    drv.w32(mmio.QUEUE_NUM, size)
    drv.w32(mmio.QUEUE_READY, 1)
    assert drv.r32(mmio.QUEUE_READY) == 0
    assert drv.status() & STATUS_DEVICE_NEEDS_RESET
    assert drv.t.counters["queue_errors"] == 1
    assert irq.count == 0                      # no DRIVER_OK yet: no config interrupt


@pytest.mark.parametrize("reg,addr", [(mmio.QUEUE_DESC_LOW, 0x1008),
                                      (mmio.QUEUE_DRIVER_LOW, 0x1001),
                                      (mmio.QUEUE_DEVICE_LOW, 0x1002),
                                      (mmio.QUEUE_DEVICE_LOW, (4 << 20) - 8)])
def test_queue_ready_with_bad_ring(drv, mem, reg, addr):
    drv.negotiate()
    drv.setup_queue(0, VirtqDriver.at(mem, 16, 0x1000), ready=False)
    drv.w32(reg, addr)
    drv.w32(mmio.QUEUE_READY, 1)
    assert drv.r32(mmio.QUEUE_READY) == 0
    assert drv.status() & STATUS_DEVICE_NEEDS_RESET


def test_queue_config_frozen_while_ready(drv, mem):
    drv.negotiate()
    drv.setup_queue(0, VirtqDriver.at(mem, 16, 0x1000))
    drv.w32(mmio.QUEUE_NUM, 4)
    assert drv.t.queues[0].size == 16


def test_driver_ok_needs_every_queue(drv, mem, dev):
    drv.negotiate()
    drv.setup_queue(0, VirtqDriver.at(mem, 16, 0x1000))
    drv.driver_ok()
    assert dev.activations == 0
    assert drv.status() & STATUS_DEVICE_NEEDS_RESET


# Access sizes and directions. -----------------------------------------------------
def test_wrong_size_and_misaligned_accesses(drv, transport):
    data = memoryview(bytearray(2))
    transport.read(mmio.MAGIC_VALUE, data)
    assert bytes(data) == b"\0\0"
    data = memoryview(bytearray(8))
    transport.read(mmio.MAGIC_VALUE, data)
    assert bytes(data) == bytes(8)
    data = memoryview(bytearray(4))
    transport.read(mmio.MAGIC_VALUE + 1, data)
    assert bytes(data) == bytes(4)
    transport.write(mmio.STATUS, b"\x01")
    transport.write(mmio.STATUS + 2, b"\x01\0\0\0")
    assert drv.status() == 0
    assert transport.counters["bad_accesses"] == 5


@pytest.mark.parametrize("reg", sorted(mmio._WRITE_ONLY))
def test_write_only_registers_read_zero(drv, mem, reg):
    drv.negotiate()
    drv.setup_queue(0, VirtqDriver.at(mem, 16, 0x1000), ready=False)
    assert drv.r32(reg) == 0


@pytest.mark.parametrize("reg", [mmio.MAGIC_VALUE, mmio.VERSION, mmio.DEVICE_ID,
                                 mmio.VENDOR_ID, mmio.DEVICE_FEATURES, mmio.QUEUE_NUM_MAX,
                                 mmio.INTERRUPT_STATUS, mmio.CONFIG_GENERATION, 0x0F0])
def test_read_only_registers_ignore_writes(drv, reg):
    before = drv.r32(reg)
    drv.w32(reg, 0xDEAD_BEEF)
    assert drv.r32(reg) == before


def test_shared_memory_registers(drv):
    for reg in (mmio.SHM_LEN_LOW, mmio.SHM_LEN_HIGH, mmio.SHM_BASE_LOW, mmio.SHM_BASE_HIGH):
        assert drv.r32(reg) == 0xFFFF_FFFF      # no region: length and base -1
    assert drv.r32(mmio.QUEUE_RESET) == 0


@pytest.mark.parametrize("offset,size", [(0, 1), (0, 2), (0, 4), (0, 8), (3, 1), (20, 4),
                                         (22, 4), (24, 4), (0xEFF, 1)])
def test_config_space_any_size(transport, dev, offset, size):
    data = memoryview(bytearray(size))
    transport.read(mmio.CONFIG + offset, data)
    expected = dev.config[offset:offset + size]
    assert bytes(data) == expected + bytes(size - len(expected))


def test_config_writes_reach_device(transport, dev):
    seen = []
    dev.write_config = lambda offset, data: seen.append((offset, data))
    transport.write(mmio.CONFIG + 3, b"\x07")
    assert seen == [(3, b"\x07")]


def test_config_generation_and_change_interrupt(drv, mem, irq):
    gen = drv.r32(mmio.CONFIG_GENERATION)
    drv.t.config_changed()
    assert drv.r32(mmio.CONFIG_GENERATION) == gen + 1
    assert irq.count == 0                       # not before DRIVER_OK
    drv.start(queues(mem))
    drv.t.config_changed()
    assert drv.interrupt_status() == INTERRUPT_CONFIG_CHANGE
    assert irq.count == 1


# Notifications and interrupts. ---------------------------------------------------
def test_notifiers_are_eventfds(transport):
    notifiers = transport.notifiers()
    assert [(off, dm) for off, dm, _fd in notifiers] == [(0x50, 0), (0x50, 1)]
    fds = [fd for _o, _d, fd in notifiers]
    assert len(set(fds)) == 2
    transport.write(mmio.QUEUE_NOTIFY, struct.pack("<I", 1))   # a plain MMIO write ...
    assert os.eventfd_read(fds[1]) == 1                         # ... signals the same fd
    with pytest.raises(BlockingIOError):
        os.eventfd_read(fds[0])


def test_requests_processed_with_interrupt(drv, mem, dev, irq):
    vqs = queues(mem)
    assert drv.start(vqs) == ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    h0 = vqs[0].add_chain([(DATA, 8, False), (DATA + 0x100, 32, True)])
    h1 = vqs[1].add_chain([(DATA + 0x200, 4, True)])
    drv.notify(0)
    assert vqs[0].get_used() == [(h0, 32)]
    assert vqs[1].get_used() == []               # queue 1 was not notified
    assert mem.read(DATA + 0x100, 32) == b"\xab" * 32
    assert drv.interrupt_status() == INTERRUPT_USED_BUFFER
    assert irq.count == 1
    drv.ack(INTERRUPT_USED_BUFFER)
    assert drv.interrupt_status() == 0
    drv.notify(1)
    assert vqs[1].get_used() == [(h1, 4)]
    assert irq.count == 2


def test_notify_for_missing_queue_ignored(drv, mem):
    drv.start(queues(mem))
    drv.notify(7)
    assert drv.t.counters["bad_accesses"] == 1
    assert not drv.status() & STATUS_DEVICE_NEEDS_RESET


def test_chains_made_available_before_driver_ok_are_seen(drv, mem, dev):
    vqs = queues(mem)
    drv.negotiate()
    for i, vq in enumerate(vqs):
        drv.setup_queue(i, vq)
    h = vqs[0].add_chain([(DATA, 4, True)])
    drv.driver_ok()
    assert vqs[0].get_used() == [(h, 4)]


def test_queue_ready_zero_stops_the_queue(drv, mem, dev):
    vqs = queues(mem)
    drv.start(vqs)
    drv.w32(mmio.QUEUE_SEL, 0)
    drv.w32(mmio.QUEUE_READY, 0)
    assert drv.r32(mmio.QUEUE_READY) == 0
    vqs[0].add_chain([(DATA, 4, True)])
    drv.notify(0)
    assert dev.processed == []


# A broken queue. -----------------------------------------------------------------
def test_broken_queue_needs_reset(drv, mem, dev, irq, caplog):
    vqs = queues(mem)
    drv.start(vqs)
    vqs[0].set_avail_idx(100)                      # more than the queue size ahead
    with caplog.at_level(logging.WARNING, logger="kvmm.virtio"):
        drv.notify(0)
    assert drv.status() & STATUS_DEVICE_NEEDS_RESET
    assert drv.interrupt_status() & INTERRUPT_CONFIG_CHANGE
    assert irq.count == 1
    assert drv.t.counters["queue_errors"] == 1
    assert "ahead" in caplog.text and "needs reset" in caplog.text
    # The device is left alone until the driver resets it ...
    vqs[1].add_chain([(DATA, 4, True)])
    drv.notify(1)
    assert dev.processed == []
    # ... and works again after a reset.
    vqs = queues(mem)
    drv.start(vqs)
    assert not drv.status() & STATUS_DEVICE_NEEDS_RESET
    h = vqs[0].add_chain([(DATA, 4, True)])
    drv.notify(0)
    assert vqs[0].get_used() == [(h, 4)]


def test_device_bug_needs_reset_not_crash(drv, mem, dev):
    drv.start(queues(mem))
    dev.fail_with = KeyError("bug")
    drv.notify(0)
    assert drv.status() & STATUS_DEVICE_NEEDS_RESET


def test_other_devices_go_on(mem):
    """One broken device does not stop another on the same guest memory."""
    good_dev, bad_dev = EchoDevice(), EchoDevice()
    good = MmioDriver(MmioTransport(good_dev, mem, CountingTrigger()))
    bad = MmioDriver(MmioTransport(bad_dev, mem, CountingTrigger()))
    gq = [VirtqDriver.at(mem, 16, 0x1000), VirtqDriver.at(mem, 8, 0x3000)]
    bq = [VirtqDriver.at(mem, 16, 0x5000), VirtqDriver.at(mem, 8, 0x7000)]
    good.start(gq)
    bad.start(bq)
    bq[0].write_desc(0, DATA, 4, 0b001, 0)        # a next loop
    bq[0].publish(0)
    bad.notify(0)
    assert bad.status() & STATUS_DEVICE_NEEDS_RESET
    h = gq[0].add_chain([(DATA + 64, 4, True)])
    good.notify(0)
    assert gq[0].get_used() == [(h, 4)]
    assert not good.status() & STATUS_DEVICE_NEEDS_RESET
    good.t.close()
    bad.t.close()


def test_log_is_rate_limited(transport, caplog):
    with caplog.at_level(logging.WARNING, logger="kvmm.virtio"):
        for _ in range(100):
            transport.read(mmio.MAGIC_VALUE, memoryview(bytearray(1)))
    assert transport.counters["bad_accesses"] == 100
    assert 1 <= len(caplog.records) <= 5
    assert transport.log.suppressed >= 95


def test_rate_limited_log_reports_suppressed(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("kvmm.virtio.device.time.monotonic", lambda: now[0])
    rl = RateLimitedLog("kvmm.test", "dev", per_second=2)
    with caplog.at_level(logging.WARNING, logger="kvmm.test"):
        for i in range(10):
            rl.warning("line %d", i)
        now[0] += 1.5
        rl.warning("later")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["dev: line 0", "dev: line 1", "dev: 8 similar messages suppressed",
                        "dev: later"]


# With the real EventLoop thread. -------------------------------------------------
def test_event_loop_runs_the_queue(mem):
    dev = EchoDevice()
    done = threading.Event()
    loop = EventLoop("test-io")

    class Trigger:
        def trigger(self):
            done.set()

    t = MmioTransport(dev, mem, Trigger(), loop=loop)
    drv = MmioDriver(t)
    loop.start()
    try:
        vqs = queues(mem)
        drv.negotiate()
        for i, vq in enumerate(vqs):
            drv.setup_queue(i, vq)
        drv.w32(mmio.STATUS, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        h = vqs[0].add_chain([(DATA, 16, True)])
        drv.w32(mmio.QUEUE_NOTIFY, 0)              # no run_pending: the loop does it
        assert done.wait(5)
        assert vqs[0].get_used() == [(h, 16)]
    finally:
        loop.stop()
        t.close()
        loop.close()


def test_device_without_version_1_refused(mem):
    class Legacy(EchoDevice):
        avail_features = DEVICE_FEATURE_0
    with pytest.raises(VirtioError, match="VERSION_1"):
        MmioTransport(Legacy(), mem, CountingTrigger())


# Command line. ------------------------------------------------------------------
def test_cmdline_word():
    assert cmdline_word(0xD000_0000, 5) == "virtio_mmio.device=4K@0xd0000000:5"
    assert cmdline_word(0x1000_0000, 48, size=512, platform_id=7) == \
        "virtio_mmio.device=512@0x10000000:48:7"
    assert cmdline_word(0x1000_0000, 1, size=1 << 20) == "virtio_mmio.device=1M@0x10000000:1"
    with pytest.raises(ValueError):
        cmdline_word(0, 5, size=0)


def test_cmdline_words_follow_the_builders_slots():
    """The builder gives slot k the MMIO page VIRTIO_MMIO_START + k * 4 KiB and GSI
    VIRTIO_IRQ_BASE + k, and declares each on the command line once."""
    from kvmm import builder
    from kvmm.spec import SpecError
    slots = builder.assign_slots(["a", "b"])
    assert [cmdline_word(d.base, d.gsi, d.size) for d in slots] == [
        "virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6"]
    assert builder._with_virtio_words("quiet", slots) == (
        "quiet virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
    given = "virtio_mmio.device=4K@0xd0000000:5 quiet"
    assert builder._with_virtio_words(given, slots) == (
        given + " virtio_mmio.device=4K@0xd0001000:6")       # not repeated
    assert builder._with_virtio_words("quiet", []) == "quiet"
    assert len(builder.assign_slots(["d"] * 19)) == 19      # IOAPIC pins 5..23
    with pytest.raises(SpecError, match="too many virtio devices") as e:
        builder.assign_slots(["d"] * 20)
    assert e.value.field == "devices"
