"""Small legacy and platform devices: the i8042 reset line, the debug-exit port,
the boot timer and the exit-benchmark sink (ports in kvmm/arch/x86_64/layout.py)."""
from __future__ import annotations

import time


I8042_DATA_OFFSET = 0               # port 0x60
I8042_COMMAND_OFFSET = 4            # port 0x64
I8042_CMD_READ_CTR = 0x20           # read the controller configuration byte
I8042_CMD_WRITE_CTR = 0x60          # the next data byte is the configuration byte
I8042_CMD_RESET_CPU = 0xFE          # pulse the CPU reset line
I8042_STATUS_OUTPUT_FULL = 0b1      # a byte waits in the data port
I8042_STATUS_SYSTEM_FLAG = 0b100    # set after a successful self-test
I8042_CTR_KBD_INT = 0b1             # keyboard interrupt enabled
I8042_BUFFER_MAX = 16
# Ctrl, Alt, Del make codes in scan code set 2 (what Firecracker's i8042 sends).
CTRL_ALT_DEL_SCANCODES = (0x14, 0x11, 0xE0, 0x71)


class I8042:
    """Enough of the PS/2 controller for a guest to reset the machine, and for
    the host to send it Ctrl-Alt-Del (Firecracker's SendCtrlAltDel).

    Spans ports 0x60-0x64; `on_reset` is called once for the reset command;
    `irq` (one `trigger()` method) raises the keyboard interrupt.
    """

    def __init__(self, on_reset: Callable[[], None], irq=None):
        self._on_reset = on_reset
        self._irq = irq
        self._buffer: list[int] = []
        self._ctr = I8042_CTR_KBD_INT
        self._writing_ctr = False

    def read(self, offset: int, data: memoryview) -> None:
        if offset == I8042_COMMAND_OFFSET:
            data[0] = I8042_STATUS_SYSTEM_FLAG | (I8042_STATUS_OUTPUT_FULL if self._buffer else 0)
        elif offset == I8042_DATA_OFFSET:
            data[0] = self._buffer.pop(0) if self._buffer else 0
            if self._buffer and self._irq is not None and self._ctr & I8042_CTR_KBD_INT:
                self._irq.trigger()

    def write(self, offset: int, data: bytes) -> None:
        if offset == I8042_COMMAND_OFFSET:
            cmd = data[0]
            if cmd == I8042_CMD_RESET_CPU:
                self._on_reset()
            elif cmd == I8042_CMD_READ_CTR:
                self._push(self._ctr)
            elif cmd == I8042_CMD_WRITE_CTR:
                self._writing_ctr = True
        elif offset == I8042_DATA_OFFSET and self._writing_ctr:
            self._ctr = data[0]
            self._writing_ctr = False

    def _push(self, byte: int) -> bool:
        if len(self._buffer) >= I8042_BUFFER_MAX:
            return False
        self._buffer.append(byte)
        return True

    def send_ctrl_alt_del(self) -> None:
        """Queue the key presses and raise the keyboard interrupt."""
        for code in CTRL_ALT_DEL_SCANCODES:
            self._push(code)
        if self._irq is not None:
            self._irq.trigger()


class DebugExit:
    """The guest writes its exit status (1-4 bytes, little-endian)."""

    def __init__(self, on_exit: Callable[[int], None]):
        self._on_exit = on_exit

    def read(self, offset: int, data: memoryview) -> None:
        pass

    def write(self, offset: int, data: bytes) -> None:
        self._on_exit(int.from_bytes(data, "little") & 0xFF)


class BootTimer:
    """Records when the guest first says it is ready (after Firecracker's boot timer)."""

    def __init__(self, start: float, on_ready: Callable[[float], None] | None = None):
        self._start = start
        self._on_ready = on_ready
        self.ready_after: float | None = None

    def read(self, offset: int, data: memoryview) -> None:
        pass

    def write(self, offset: int, data: bytes) -> None:
        if self.ready_after is None:
            self.ready_after = time.monotonic() - self._start
            if self._on_ready is not None:
                self._on_ready(self.ready_after)


class Sink:
    """Writes are dropped and reads return zeros: an exit and nothing else."""

    def __init__(self) -> None:
        self.accesses = 0

    def read(self, offset: int, data: memoryview) -> None:
        self.accesses += 1

    def write(self, offset: int, data: bytes) -> None:
        self.accesses += 1
