"""The 16550 UART state machine."""
import os

import pytest

from kvmm.devices import serial as u
from kvmm.devices.irq import CountingTrigger


def make(fd=None):
    irq = CountingTrigger()
    sink = u.ConsoleSink(fd, capture=True)
    return u.Serial(irq, sink), irq, sink


def rd(dev, off):
    buf = bytearray(1)
    dev.read(off, memoryview(buf))
    return buf[0]


def test_transmit_reaches_the_sink_a_line_at_a_time():
    r, w = os.pipe()
    try:
        dev, _, sink = make(w)
        for ch in b"hi":
            dev.write(u.DATA, bytes([ch]))
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 10)            # no newline yet: still buffered
        dev.write(u.DATA, b"\n")
        assert os.read(r, 10) == b"hi\n"
        assert sink.tail() == ["hi"]
    finally:
        os.close(r)
        os.close(w)


def test_string_io_writes_the_whole_buffer():
    dev, _, sink = make()
    dev.write(u.DATA, b"hello\n")
    assert bytes(sink.captured) == b"hello\n"


def test_lsr_always_ready_to_transmit():
    dev, _, _ = make()
    assert rd(dev, u.LSR) & u.LSR_THR_EMPTY
    assert not rd(dev, u.LSR) & u.LSR_DATA_READY


def test_divisor_latch():
    dev, _, sink = make()
    dev.write(u.LCR, bytes([u.LCR_DLAB]))
    dev.write(u.DATA, b"\x01")
    dev.write(u.IER, b"\x02")
    assert rd(dev, u.DATA) == 1 and rd(dev, u.IER) == 2
    dev.write(u.LCR, b"\x03")
    assert rd(dev, u.IER) == 0
    assert sink.total == 0           # divisor writes are not output


def test_thre_interrupt():
    dev, irq, _ = make()
    dev.write(u.IER, bytes([u.IER_THRE]))
    assert irq.count == 1
    assert rd(dev, u.IIR) & 0x0F == u.IIR_THRE
    assert rd(dev, u.IIR) & 0x0F == u.IIR_NONE     # reading IIR acknowledged it
    dev.write(u.DATA, b"x")
    assert irq.count == 2


def test_receive_and_rda_interrupt():
    dev, irq, _ = make()
    dev.write(u.IER, bytes([u.IER_RDA]))
    assert dev.enqueue_input(b"ab") == 2
    assert irq.count == 1
    assert rd(dev, u.LSR) & u.LSR_DATA_READY
    assert rd(dev, u.IIR) & 0x0F == u.IIR_RDA
    assert rd(dev, u.DATA) == ord("a")
    assert rd(dev, u.DATA) == ord("b")
    assert not rd(dev, u.LSR) & u.LSR_DATA_READY
    assert rd(dev, u.IIR) & 0x0F == u.IIR_NONE


def test_input_fifo_is_bounded():
    dev, _, _ = make()
    assert dev.enqueue_input(b"x" * (u.FIFO_SIZE + 10)) == u.FIFO_SIZE
    assert dev.dropped_input == 10


def test_loopback():
    dev, _, sink = make()
    dev.write(u.MCR, bytes([u.MCR_LOOP | u.MCR_OUT2 | u.MCR_RTS]))
    dev.write(u.DATA, b"z")
    assert rd(dev, u.DATA) == ord("z")
    assert sink.total == 0
    msr = rd(dev, u.MSR)
    assert msr & u.MSR_CTS and msr & u.MSR_DCD and not msr & u.MSR_DSR


def test_scratch_register():
    dev, _, _ = make()
    dev.write(u.SCR, b"\xa5")
    assert rd(dev, u.SCR) == 0xA5


def test_tail_keeps_last_lines():
    sink = u.ConsoleSink(None, tail_lines=3)
    for i in range(10):
        sink.write(f"line {i}\n".encode())
    sink.write(b"partial")
    assert sink.tail() == ["line 7", "line 8", "line 9", "partial"]
