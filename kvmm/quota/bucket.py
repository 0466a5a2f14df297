"""Token buckets and rate limiters (after Firecracker's `rate_limiter` crate).

Semantics follow Firecracker: a bucket of `size` tokens refills linearly over
`refill_time` ms and starts full; an optional `one_time_burst` is spent first
and never refills; a request larger than the bucket is allowed once, when the
bucket is full, and its deficit is waited out.

Where Firecracker, once a bucket is empty, waits a fixed 100 ms before trying
again (its real rate falls well below the setting for small buckets), these
buckets say exactly when enough tokens will exist (`wait_ns`), so a device
can sleep that long and no longer. Arithmetic is exact integer arithmetic in
token-nanoseconds: no drift over any run length.
"""
from __future__ import annotations

import time

NS_PER_MS = 1_000_000


class TokenBucket:
    """One bucket. `clock` returns nanoseconds (time.monotonic_ns by default)."""

    __slots__ = ("size", "refill_time_ms", "one_time_burst", "_refill_ns", "_credit",
                 "_cap", "_last", "_clock", "initial_burst")

    def __init__(self, size: int, refill_time_ms: int, one_time_burst: int = 0,
                 clock=time.monotonic_ns):
        for name, value in (("size", size), ("refill_time", refill_time_ms),
                            ("one_time_burst", one_time_burst)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"token bucket {name} must be a whole number >= 0, "
                                 f"not {value!r}")
        if size == 0:
            raise ValueError("a token bucket of size 0 is no limit; leave the bucket out")
        if refill_time_ms == 0:
            raise ValueError("a token bucket with a non-zero size needs a refill_time "
                             "above 0 ms")
        self.size = size
        self.refill_time_ms = refill_time_ms
        self.one_time_burst = one_time_burst
        self.initial_burst = one_time_burst
        self._refill_ns = refill_time_ms * NS_PER_MS
        self._cap = size * self._refill_ns          # credit of a full bucket
        self._credit = self._cap                    # token-nanoseconds; starts full
        self._clock = clock
        self._last = clock()

    # Accounting in token-nanoseconds: `size` tokens per `refill_ns`, so each
    # elapsed nanosecond adds `size` units and one token costs `refill_ns` units.
    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            self._last = now
            if self._credit < self._cap:
                self._credit = min(self._cap, self._credit + elapsed * self.size)

    @property
    def budget(self) -> int:
        """Whole tokens available now (not counting the one-time burst)."""
        self._refill()
        return max(0, self._credit) // self._refill_ns

    def can_take(self, tokens: int) -> bool:
        self._refill()
        need = tokens - self.one_time_burst
        if need <= 0:
            return True
        if need > self.size:
            return self._credit >= self._cap        # too big: only from a full bucket
        return self._credit >= need * self._refill_ns

    def take(self, tokens: int) -> None:
        """Consume; call only after can_take(tokens) said yes."""
        from_burst = min(tokens, self.one_time_burst)
        self.one_time_burst -= from_burst
        self._credit -= (tokens - from_burst) * self._refill_ns   # may go negative: a deficit

    def wait_ns(self, tokens: int) -> int:
        """Nanoseconds until can_take(tokens) becomes true (0 if it is now)."""
        self._refill()
        need = tokens - self.one_time_burst
        if need <= 0:
            return 0
        target = self._cap if need > self.size else need * self._refill_ns
        deficit = target - self._credit
        if deficit <= 0:
            return 0
        return -(-deficit // self.size)            # ceil: refill adds `size` per ns

    def reset(self) -> None:
        """Full again, burst restored (a configuration change)."""
        self._credit = self._cap
        self.one_time_burst = self.initial_burst
        self._last = self._clock()


class RateLimiter:
    """Two independent buckets, bytes and operations; either may be absent.

    A request costs one op and `nbytes` bytes, all or nothing across both
    buckets (and across any `parents`, e.g. a per-guest group limiter).
    `backoff_ns` emulates Firecracker's fixed back-off (0: wake exactly when
    tokens exist).
    """

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None,
                 parents: tuple[RateLimiter, ...] = (), backoff_ns: int = 0,
                 clock=time.monotonic_ns):
        self.bandwidth = bandwidth
        self.ops = ops
        self.parents = parents
        self.backoff_ns = backoff_ns
        self._clock = clock
        self.bytes_passed = 0
        self.ops_passed = 0
        self.throttled_count = 0
        self.throttled_ns = 0
        self._throttled_since: int | None = None
        self._chain = tuple(self._all())      # this limiter, then its ancestors

    def _own_ok(self, nbytes: int) -> bool:
        return (self.bandwidth is None or self.bandwidth.can_take(nbytes)) and (
            self.ops is None or self.ops.can_take(1))

    def _all(self):
        yield self
        for parent in self.parents:
            yield from parent._all()

    def try_consume(self, nbytes: int) -> bool:
        """Take one op and `nbytes` from this limiter and its parents, or nothing."""
        chain = self._chain
        for limiter in chain:
            if limiter.bandwidth is not None or limiter.ops is not None:
                break
        else:               # nothing limits this request (the common case): count it
            self.count(1, nbytes)
            return True
        if not all(limiter._own_ok(nbytes) for limiter in chain):
            for limiter in chain:
                limiter._mark_throttled()
            return False
        for limiter in chain:
            if limiter.bandwidth is not None:
                limiter.bandwidth.take(nbytes)
            if limiter.ops is not None:
                limiter.ops.take(1)
            limiter.bytes_passed += nbytes
            limiter.ops_passed += 1
            limiter._mark_flowing()
        return True

    def limited(self) -> bool:
        """Whether a bucket of this limiter or of a parent applies. When none
        does, a device may let a batch through and count it at once."""
        for limiter in self._chain:
            if limiter.bandwidth is not None or limiter.ops is not None:
                return True
        return False

    def count(self, ops: int, nbytes: int) -> None:
        """Record `ops` requests of `nbytes` bytes in all that passed without
        limits (here and in the parents)."""
        for limiter in self._chain:
            limiter.bytes_passed += nbytes
            limiter.ops_passed += ops
            if limiter._throttled_since is not None:
                limiter._mark_flowing()

    def wait_ns(self, nbytes: int) -> int:
        """How long until try_consume(nbytes) can succeed."""
        wait = 0
        for limiter in self._all():
            if limiter.bandwidth is not None:
                wait = max(wait, limiter.bandwidth.wait_ns(nbytes))
            if limiter.ops is not None:
                wait = max(wait, limiter.ops.wait_ns(1))
            if limiter.backoff_ns and wait:
                wait = max(wait, limiter.backoff_ns)
        return wait

    def _mark_throttled(self) -> None:
        if self._throttled_since is None:
            self._throttled_since = self._clock()
            self.throttled_count += 1

    def _mark_flowing(self) -> None:
        if self._throttled_since is not None:
            self.throttled_ns += self._clock() - self._throttled_since
            self._throttled_since = None

    def update(self, bandwidth=..., ops=...) -> None:
        """Change the limits at run time (Firecracker's PATCH semantics): an
        argument left out is unchanged; None removes that bucket."""
        if bandwidth is not ...:
            self.bandwidth = bandwidth
        if ops is not ...:
            self.ops = ops

    def stats(self) -> dict:
        throttled = self.throttled_ns
        if self._throttled_since is not None:
            throttled += self._clock() - self._throttled_since
        return {
            "bytes": self.bytes_passed, "ops": self.ops_passed,
            "throttled_count": self.throttled_count, "throttled_ms": throttled / 1e6,
            "bandwidth": None if self.bandwidth is None else {
                "size": self.bandwidth.size, "refill_time": self.bandwidth.refill_time_ms,
                "budget": self.bandwidth.budget},
            "ops_bucket": None if self.ops is None else {
                "size": self.ops.size, "refill_time": self.ops.refill_time_ms,
                "budget": self.ops.budget},
        }
