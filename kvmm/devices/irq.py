"""Interrupt triggers injected into devices.

A device raises its interrupt through a one-method object (`IrqTrigger`,
kvmm/devices/protocols.py); in production
that is an eventfd bound to a GSI with KVM_IRQFD (no exit to user space),
in unit tests a counter.
"""
from __future__ import annotations

import os


class EventFdTrigger:
    """An eventfd; the builder registers `fd` with Vm.register_irqfd(fd, gsi)."""

    def __init__(self, gsi: int):
        self.gsi = gsi
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def trigger(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the interrupt is already pending

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CountingTrigger:
    """For unit tests: counts triggers."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1
