"""The small interfaces between devices and the rest of kvmm (STYLE rule 5).

Kept apart so the boot path need not import `typing`; devices satisfy them
structurally and never import kvmm.ioctl.
"""
from typing import Protocol


class BusDevice(Protocol):
    """What a bus needs of a device.

    `read` fills `data` (pre-zeroed, 1-8 bytes) for an access at `offset`
    from the device's base; `write` receives the bytes the guest wrote. A
    device that sets `accepts_string_io = True` gets string output (OUTS) as
    one write of the whole buffer.
    """

    def read(self, offset: int, data: memoryview) -> None: ...

    def write(self, offset: int, data: bytes) -> None: ...


class IrqTrigger(Protocol):
    """Raises one interrupt line: an irqfd in production, a counter in tests."""

    def trigger(self) -> None: ...
