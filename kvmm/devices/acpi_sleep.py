"""The ACPI sleep control and status registers of a hardware-reduced platform
(ACPI 6.5, 4.8.3.7 and 4.8.3.8), as one byte-wide port (layout.PORT_ACPI_SLEEP,
named in the FADT by kvmm/arch/x86_64/acpi.py).

A guest powers off by writing SLP_TYP (the value from \\_S5, 5) with SLP_EN
set; that calls `on_poweroff`. Other sleep states are not offered (the DSDT
has no \\_S1-\\_S4), so a request for one is ignored. Reads return 0: WAK_STS
clear, the guest has not woken from anything.
"""
from __future__ import annotations

SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 0b10_0000
SLEEP_TYPE_S5 = 5


class AcpiSleep:
    def __init__(self, on_poweroff):
        self._on_poweroff = on_poweroff
        self.requests = 0

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if value & SLP_EN and (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLEEP_TYPE_S5:
            self.requests += 1
            self._on_poweroff()
