"""Rate-limit settings: parsing the CLI shorthands and the JSON form, and the
adapters devices call (`admit`).

Shorthand (per drive or NIC direction): `bw=10M` (bytes/s), `bw_burst=64M`
(one-time burst, bytes), `iops=500` (ops/s), `iops_burst=N`. A shorthand rate
R becomes a bucket of R/10 tokens refilled every 100 ms, so a guest can burst
at most a tenth of a second ahead of its rate.

JSON form (Firecracker's `RateLimiter` object):
    {"bandwidth": {"size": 1048576, "refill_time": 100, "one_time_burst": 0},
     "ops": {"size": 50, "refill_time": 100}}
A bucket with size 0 means "no limit" for that bucket.
"""
from __future__ import annotations

from kvmm.quota.bucket import RateLimiter, TokenBucket

SHORTHAND_REFILL_MS = 100
SHORTHAND_KEYS = ("bw", "bw_burst", "iops", "iops_burst")
DIRECTIONS = ("rx_", "tx_")       # prefixes of a NIC's per-direction shorthands
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class LimitError(ValueError):
    """A rate-limit setting that cannot be used; the message names it."""


def parse_amount(key: str, text: str) -> int:
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = ""
    if body and body[-1] in _UNITS:
        unit, body = body[-1], body[:-1]
    if not body.isdigit() or not body.isascii():
        raise LimitError(f"{key}={text!r} is not a non-negative whole number (units K, M, G "
                         "allowed)")
    return int(body) * _UNITS[unit]


def bucket_from_rate(rate: int, burst: int = 0) -> TokenBucket | None:
    if rate == 0:
        if burst:
            raise LimitError("a one-time burst needs a non-zero rate")
        return None
    size = max(1, rate * SHORTHAND_REFILL_MS // 1000)
    return TokenBucket(size, SHORTHAND_REFILL_MS, burst)


def bucket_from_json(obj, what: str) -> TokenBucket | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise LimitError(f"{what} must be an object with size and refill_time")
    unknown = set(obj) - {"size", "refill_time", "one_time_burst"}
    if unknown:
        raise LimitError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    fields = {}
    for name in ("size", "refill_time", "one_time_burst"):
        value = obj.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LimitError(f"{what}.{name} must be a whole number >= 0, not {value!r}")
        fields[name] = value
    if fields["size"] == 0:
        if fields["one_time_burst"]:
            raise LimitError(f"{what}: a one-time burst needs a non-zero size")
        return None
    if fields["refill_time"] == 0:
        raise LimitError(f"{what}: refill_time must be above 0 ms when size is not 0")
    return TokenBucket(fields["size"], fields["refill_time"], fields["one_time_burst"])


class LimitSpec:
    """Buckets for one limiter, as configured (None = that bucket absent)."""
    __slots__ = ("bandwidth", "ops")

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None):
        self.bandwidth = bandwidth
        self.ops = ops

    def __bool__(self) -> bool:
        return self.bandwidth is not None or self.ops is not None

    def limiter(self, parents=(), backoff_ns: int = 0) -> RateLimiter:
        return RateLimiter(self.bandwidth, self.ops, parents=parents, backoff_ns=backoff_ns)


def spec_from_shorthand(values: dict[str, str], prefix: str = "") -> LimitSpec:
    """From `bw`, `bw_burst`, `iops`, `iops_burst` (with an optional prefix such as
    `rx_`); missing keys mean no limit."""
    def get(key):
        text = values.get(prefix + key)
        return 0 if text is None else parse_amount(prefix + key, text)
    return LimitSpec(bucket_from_rate(get("bw"), get("bw_burst")),
                     bucket_from_rate(get("iops"), get("iops_burst")))


def shorthand_keys(prefixes: tuple = ("",)) -> tuple:
    """The shorthand option names, once per prefix (e.g. DIRECTIONS)."""
    return tuple(p + k for p in prefixes for k in SHORTHAND_KEYS)


def check_shorthand(values: dict[str, str], prefixes: tuple = ("",)) -> None:
    """Raise LimitError if the shorthands under any prefix cannot be used."""
    for prefix in prefixes:
        spec_from_shorthand(values, prefix)


def spec_from_json(obj, what: str = "rate_limiter") -> LimitSpec:
    if obj is None:
        return LimitSpec()
    if not isinstance(obj, dict):
        raise LimitError(f"{what} must be an object with bandwidth and/or ops")
    unknown = set(obj) - {"bandwidth", "ops"}
    if unknown:
        raise LimitError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    return LimitSpec(bucket_from_json(obj.get("bandwidth"), f"{what}.bandwidth"),
                     bucket_from_json(obj.get("ops"), f"{what}.ops"))


class RequestAdmission:
    """The device hook: a block request or a frame costs one op plus its bytes
    (reads and writes; other block requests cost one op and no bytes)."""

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
        from kvmm.virtio.blk.request import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
        nbytes = request.nbytes if request.type in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT) else 0
        return self.admit_bytes(nbytes)
