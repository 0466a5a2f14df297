"""Small legacy and platform devices: the i8042 reset line, the debug-exit port,
the boot timer and the exit-benchmark sink (ports in kvmm/arch/x86_64/layout.py)."""
from __future__ import annotations

import time


I8042_DATA_OFFSET = 0               # port 0x60
I8042_COMMAND_OFFSET = 4            # port 0x64
I8042_CMD_RESET_CPU = 0xFE          # pulse the CPU reset line
I8042_STATUS_SYSTEM_FLAG = 0b100    # set after a successful self-test


class I8042:
    """Enough of the PS/2 controller for a guest to reset the machine.

    Spans ports 0x60-0x64; `on_reset` is called once for the reset command.
    """

    def __init__(self, on_reset: Callable[[], None]):
        self._on_reset = on_reset

    def read(self, offset: int, data: memoryview) -> None:
        if offset == I8042_COMMAND_OFFSET:
            data[0] = I8042_STATUS_SYSTEM_FLAG

    def write(self, offset: int, data: bytes) -> None:
        if offset == I8042_COMMAND_OFFSET and data[0] == I8042_CMD_RESET_CPU:
            self._on_reset()


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
