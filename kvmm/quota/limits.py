"""The adapter devices call to be admitted by a rate limiter.

Limits are configured as kvmm.spec.RateLimiterSpec; a request says what it
costs (a block request's `cost_bytes`, a frame's length) and is charged one
op plus those bytes.
"""
from __future__ import annotations

from kvmm.quota.bucket import RateLimiter


class RequestAdmission:
    """The device hook: `admit(request)` for block requests (which price
    themselves through `cost_bytes`), `admit_bytes(n)` for frames. Each returns
    0.0 when admitted, else the seconds to wait before trying again."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter

    def limits(self) -> bool:
        """False while no bucket applies: the device may then skip admit_bytes
        for a batch and report it with count()."""
        return self.limiter.limited()

    def count(self, ops: int, nbytes: int) -> None:
        self.limiter.count(ops, nbytes)

    def admit_bytes(self, nbytes: int) -> float:
        if self.limiter.try_consume(nbytes):
            return 0.0
        return max(self.limiter.wait_ns(nbytes), 1) / 1e9

    def admit(self, request) -> float:
        return self.admit_bytes(request.cost_bytes)
