"""Guest RAM: fixed reservation, memslots, one checked access path."""
from kvmm.memory.errors import GuestMemoryError, MemoryReservationError
from kvmm.memory.guest import GuestMemory, GuestRegion

__all__ = ["GuestMemory", "GuestRegion", "GuestMemoryError", "MemoryReservationError"]
