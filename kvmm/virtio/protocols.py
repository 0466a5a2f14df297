"""Interfaces of the virtio layer for type checkers and readers; nothing on
the boot path imports this module (it imports typing)."""
from __future__ import annotations

from typing import Protocol

from kvmm.virtio.blk.request import BlockRequest


class RequestLimiter(Protocol):
    """The rate-limiter hook of a device (kvmm/quota implements it).

    `admit` is called on the I/O thread for each parsed request before any
    I/O: 0 lets it go now; a positive number of seconds leaves the request in
    the available ring and processes the queue again after that long.
    """

    def admit(self, request: BlockRequest) -> float: ...
