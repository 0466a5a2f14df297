"""Errors of guest memory."""


class GuestMemoryError(Exception):
    """A guest-physical access that guest RAM cannot satisfy.

    `addr` and `length` are the access; `reason` says what is wrong with it.
    """

    def __init__(self, addr: int, length: int, reason: str):
        self.addr = addr
        self.length = length
        self.reason = reason
        super().__init__(f"guest memory access [{addr:#x}, +{length:#x}): {reason}")


class MemoryReservationError(Exception):
    """Guest RAM could not be reserved as asked (size, huge pages, locking)."""
