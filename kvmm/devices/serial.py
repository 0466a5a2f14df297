"""A 16550A-compatible UART (after vm-superio's `serial.rs`; register map from
the National Semiconductor PC16550D datasheet).

Transmit is always ready (LSR.THRE is always set) so a guest may write a
whole line with one `rep outsb`; the bytes go to a `ConsoleSink`, which
buffers them and writes whole lines. Received bytes wait in a bounded FIFO.
"""
from __future__ import annotations

import os
import threading

# Register offsets (DLAB=0 unless noted)
DATA = 0            # RBR (read) / THR (write); DLL with DLAB=1
IER = 1             # interrupt enable; DLM with DLAB=1
IIR = 2             # interrupt identification (read) / FCR (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
REGISTER_COUNT = 8

IER_RDA = 0b0001            # received data available
IER_THRE = 0b0010           # transmitter holding register empty
IER_MASK = 0b1111
IIR_NONE = 0b0001           # no interrupt pending
IIR_THRE = 0b0010
IIR_RDA = 0b0100
IIR_FIFO_ENABLED = 0b1100_0000
LCR_DLAB = 0b1000_0000
MCR_DTR = 0b0001
MCR_RTS = 0b0010
MCR_OUT1 = 0b0100
MCR_OUT2 = 0b1000
MCR_LOOP = 0b1_0000
MCR_MASK = 0b1_1111
LSR_DATA_READY = 0b0000_0001
LSR_THR_EMPTY = 0b0010_0000
LSR_IDLE = 0b0100_0000
MSR_CTS = 0b0001_0000
MSR_DSR = 0b0010_0000
MSR_RI = 0b0100_0000
MSR_DCD = 0b1000_0000
DEFAULT_DIVISOR = 12        # 9600 baud
FIFO_SIZE = 4096            # received bytes kept before input is refused


class ConsoleSink:
    """Where console output goes: an fd, written a line (or a full buffer) at a time.

    Keeps the last `tail_lines` complete lines for error reports.
    """

    def __init__(self, fd: int | None, tail_lines: int = 20, flush_threshold: int = 4096,
                 capture: bool = False):
        self.fd = fd
        self._buf = bytearray()
        self._tail: list[bytes] = []
        self._tail_lines = tail_lines
        self._partial = bytearray()
        self._threshold = flush_threshold
        self._lock = threading.Lock()
        self.captured = bytearray() if capture else None
        self.total = 0
        # Called with each chunk of output as it arrives, on the vCPU thread and
        # outside the lock (e.g. `kvmm boot-test` watching for a pattern); keep it short.
        self.observer = None

    def write(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            self.total += len(data)
            if self.captured is not None:
                self.captured += data
            self._remember(data)
            if b"\n" in data or len(self._buf) >= self._threshold:
                self._flush_locked()
        observer = self.observer
        if observer is not None:
            observer(data)

    def _remember(self, data: bytes) -> None:
        self._partial += data
        if b"\n" in self._partial:
            *lines, rest = bytes(self._partial).split(b"\n")
            self._tail.extend(lines)
            del self._tail[:-self._tail_lines]
            self._partial = bytearray(rest)

    def _flush_locked(self) -> None:
        if self._buf and self.fd is not None:
            data = bytes(self._buf)
            while data:
                try:
                    n = os.write(self.fd, data)
                except BlockingIOError:
                    continue
                except OSError:
                    break       # the reader went away; the guest must not stall
                data = data[n:]
        self._buf.clear()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def tail(self) -> list[str]:
        lines = list(self._tail)
        if self._partial:
            lines.append(bytes(self._partial))
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


class Serial:
    """The UART state machine. `interrupt` is an IrqTrigger (IRQ 4 for COM1)."""

    accepts_string_io = True

    def __init__(self, interrupt, sink: ConsoleSink):
        self._irq = interrupt
        self.sink = sink
        self._lock = threading.Lock()
        self.dll = DEFAULT_DIVISOR & 0xFF
        self.dlm = DEFAULT_DIVISOR >> 8
        self.ier = 0
        self.iir = IIR_NONE
        self.lcr = 0b0000_0011      # 8N1
        self.mcr = MCR_OUT2
        self.lsr = LSR_THR_EMPTY | LSR_IDLE
        self.msr = MSR_DSR | MSR_CTS | MSR_DCD
        self.scr = 0
        self._in = bytearray()       # received bytes not yet read (a small FIFO)
        self.dropped_input = 0

    # Interrupt logic. -----------------------------------------------------
    def _raise(self, iir_bit: int) -> None:
        self.iir |= iir_bit
        self.iir &= ~IIR_NONE
        self._irq.trigger()

    def _clear(self, iir_bit: int) -> None:
        self.iir &= ~iir_bit
        if self.iir & (IIR_THRE | IIR_RDA) == 0:
            self.iir = IIR_NONE

    # Input from the host side. -------------------------------------------
    def enqueue_input(self, data: bytes) -> int:
        """Queue bytes for the guest to read; returns how many were accepted."""
        with self._lock:
            if self.mcr & MCR_LOOP:
                return 0
            room = FIFO_SIZE - len(self._in)
            accepted = data[:room]
            self.dropped_input += len(data) - len(accepted)
            if accepted:
                self._in.extend(accepted)
                self.lsr |= LSR_DATA_READY
                if self.ier & IER_RDA:
                    self._raise(IIR_RDA)
            return len(accepted)

    # BusDevice. -------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset == DATA and len(data) > 1 and not self.lcr & LCR_DLAB:
                self._transmit(data)          # string I/O: a whole buffer to THR
                return
            for value in data:
                self._write_register(offset, value)

    def _transmit(self, data: bytes) -> None:
        if self.mcr & MCR_LOOP:
            for value in data:
                if len(self._in) < FIFO_SIZE:
                    self._in.append(value)
            self.lsr |= LSR_DATA_READY
            if self.ier & IER_RDA:
                self._raise(IIR_RDA)
        else:
            self.sink.write(data)
        if self.ier & IER_THRE:
            self._raise(IIR_THRE)

    def _write_register(self, offset: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                self.dll = value
            else:
                self._transmit(bytes((value,)))
        elif offset == IER:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & IER_MASK
                if self.ier & IER_THRE:
                    self._raise(IIR_THRE)   # THR is empty, as on a real 16550
                else:
                    self._clear(IIR_THRE)
                if self.ier & IER_RDA and self._in:
                    self._raise(IIR_RDA)
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
        elif offset == SCR:
            self.scr = value
        # FCR, LSR and MSR writes are accepted and ignored.

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            for i in range(len(data)):
                data[i] = self._read_register(offset)

    def _read_register(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                return self.dll
            value = 0
            if self._in:
                value = self._in[0]
                del self._in[0]
            if not self._in:
                self.lsr &= ~LSR_DATA_READY
                self._clear(IIR_RDA)
            return value
        if offset == IER:
            return self.dlm if dlab else self.ier
        if offset == IIR:
            value = self.iir | IIR_FIFO_ENABLED
            self._clear(IIR_THRE)             # reading IIR acknowledges THRE
            return value
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return self.lsr
        if offset == MSR:
            if self.mcr & MCR_LOOP:
                # Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return ((m & MCR_DTR) << 5) | ((m & MCR_RTS) << 3) | ((m & MCR_OUT1) << 4) | (
                    (m & MCR_OUT2) << 4)
            return self.msr
        if offset == SCR:
            return self.scr
        return 0
