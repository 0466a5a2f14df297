"""Bus range rules and dispatch."""
import pytest

from kvmm.devices.bus import Bus, BusError


class Recorder:
    def __init__(self):
        self.writes = []
        self.reads = []

    def read(self, offset, data):
        self.reads.append((offset, len(data)))
        data[:] = bytes([0x5A] * len(data))

    def write(self, offset, data):
        self.writes.append((offset, bytes(data)))


def test_dispatch_gives_offsets():
    bus = Bus("test", 0x10000)
    dev = Recorder()
    bus.insert(dev, 0x3F8, 8)
    assert bus.write(0x3FA, b"\x01")
    assert dev.writes == [(2, b"\x01")]
    buf = bytearray(2)
    assert bus.read(0x3FE, memoryview(buf))
    assert dev.reads == [(6, 2)] and buf == b"\x5a\x5a"


def test_unhandled_reads_all_ones_and_counts():
    bus = Bus("test", 0x10000)
    buf = bytearray(4)
    assert not bus.read(0x100, memoryview(buf))
    assert buf == b"\xff" * 4
    assert not bus.write(0x100, b"\x00")
    assert bus.unhandled == 2


def test_access_crossing_the_end_is_not_dispatched():
    bus = Bus("test", 0x10000)
    dev = Recorder()
    bus.insert(dev, 0x10, 4)
    assert not bus.write(0x12, b"\0\0\0\0")
    assert dev.writes == []


@pytest.mark.parametrize("base,length", [(0x10, 0), (0x10, -1), (0xFFFF, 2), (-1, 1)])
def test_rejects_bad_ranges(base, length):
    bus = Bus("test", 0x10000)
    with pytest.raises(BusError):
        bus.insert(Recorder(), base, length)


@pytest.mark.parametrize("base,length", [(0x100, 0x10), (0xF8, 0x10), (0x108, 1),
                                         (0xF0, 0x100)])
def test_rejects_overlaps(base, length):
    bus = Bus("test", 0x10000)
    bus.insert(Recorder(), 0x100, 0x10)
    with pytest.raises(BusError):
        bus.insert(Recorder(), base, length)


def test_adjacent_ranges_are_fine_and_removal_works():
    bus = Bus("test", 0x10000)
    a, b = Recorder(), Recorder()
    bus.insert(a, 0x100, 0x10)
    bus.insert(b, 0x110, 0x10)
    bus.write(0x10F, b"a")
    bus.write(0x110, b"b")
    assert a.writes == [(0xF, b"a")] and b.writes == [(0, b"b")]
    bus.remove(0x100)
    assert not bus.write(0x100, b"x")


def test_string_io():
    bus = Bus("test", 0x10000)
    dev = Recorder()
    bus.insert(dev, 0x40, 2)
    bus.write_string(0x40, 2, b"aabbcc")
    assert dev.writes == [(0, b"aa"), (0, b"bb"), (0, b"cc")]
