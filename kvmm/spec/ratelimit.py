"""Rate limiters as configured: Firecracker's `RateLimiter` and `TokenBucket`
objects, and the CLI shorthands that build the same specs.

JSON (Firecracker's):
    {"bandwidth": {"size": 1048576, "refill_time": 100, "one_time_burst": 0},
     "ops": {"size": 50, "refill_time": 100}}
A bucket with size 0 means "no limit" for that bucket.

Shorthand (per drive or NIC direction, on the CLI): `bw=10M` (bytes/s),
`bw_burst=64M` (one-time burst, bytes), `iops=500` (ops/s), `iops_burst=N`.
A shorthand rate R becomes a bucket of R/10 tokens refilled every 100 ms (for
a rate below 1000 that is not a multiple of 10, the shortest period up to a
second that holds whole tokens), so a guest bursts at most that far ahead.
"""
from __future__ import annotations

from kvmm.spec.base import Field, Spec, SpecError, parse_amount

SHORTHAND_REFILL_MS = 100
SHORTHAND_KEYS = ("bw", "bw_burst", "iops", "iops_burst")
U64_MAX = (1 << 64) - 1


class TokenBucketSpec(Spec):
    """Firecracker's TokenBucket: `size` tokens refilled over `refill_time` ms,
    plus a `one_time_burst` spent first."""
    FIELDS = (
        Field("size", int, 0, required=True, minimum=0, maximum=U64_MAX, nullable=False),
        Field("one_time_burst", int, 0, minimum=0, maximum=U64_MAX),
        Field("refill_time", int, 0, required=True, minimum=0, maximum=U64_MAX,
              nullable=False),
    )

    def validate(self, where: str = "", labels=None) -> None:
        if self.one_time_burst is None:
            self.one_time_burst = 0
        if self.size == 0 and self.one_time_burst:
            raise SpecError(where, "a one-time burst needs a non-zero size")
        if self.size and self.refill_time == 0:
            raise SpecError(self.field_label(where, "refill_time", labels),
                            "must be above 0 ms when size is not 0")

    @property
    def limits(self) -> bool:
        return self.size > 0

    def bucket(self):
        """A fresh kvmm.quota.bucket.TokenBucket, or None for "no limit"."""
        if not self.size:
            return None
        from kvmm.quota.bucket import TokenBucket
        return TokenBucket(self.size, self.refill_time, self.one_time_burst)

    @classmethod
    def from_rate(cls, rate: int, burst: int, label: str) -> TokenBucketSpec | None:
        if rate == 0:
            if burst:
                raise SpecError(label, "a one-time burst needs a non-zero rate")
            return None
        # R/10 per 100 ms. A small rate that is not a multiple of 10 (iops=5)
        # would round far off; it gets the shortest period up to a second that
        # holds whole tokens instead. For R >= 1000 the rounding is under 1 %.
        per = 1000 // SHORTHAND_REFILL_MS
        if rate % per and rate < 1000:
            from math import gcd
            g = gcd(rate, per)
            return cls(size=rate // g, refill_time=1000 // g, one_time_burst=burst)
        return cls(size=rate // per, refill_time=SHORTHAND_REFILL_MS, one_time_burst=burst)


class RateLimiterSpec(Spec):
    """Firecracker's RateLimiter: a bytes bucket and an operations bucket,
    either absent."""
    FIELDS = (
        Field("bandwidth", TokenBucketSpec),
        Field("ops", TokenBucketSpec),
    )

    def __bool__(self) -> bool:
        return bool((self.bandwidth and self.bandwidth.limits) or (self.ops and self.ops.limits))

    def buckets(self) -> tuple:
        """(bandwidth, ops) kvmm.quota.bucket.TokenBucket objects, None where absent."""
        return (self.bandwidth.bucket() if self.bandwidth else None,
                self.ops.bucket() if self.ops else None)

    def patch_buckets(self) -> dict:
        """For a PATCH: only the buckets given, each a TokenBucket or None (size 0
        removes that limit); a bucket left out stays as it is."""
        out = {}
        for name in ("bandwidth", "ops"):
            spec = getattr(self, name)
            if spec is not None:
                out[name] = spec.bucket()
        return out

    def merged(self, patch: RateLimiterSpec) -> RateLimiterSpec:
        """This limiter with a PATCH applied (the configuration as it now stands)."""
        return RateLimiterSpec(bandwidth=patch.bandwidth or self.bandwidth,
                               ops=patch.ops or self.ops)

    @classmethod
    def from_shorthand(cls, values: dict[str, str], label: str,
                       prefix: str = "") -> RateLimiterSpec:
        """From `bw`, `bw_burst`, `iops`, `iops_burst` (each with `prefix`, such as
        `rx_`); missing keys mean no limit."""
        def get(key):
            text = values.get(prefix + key)
            return 0 if text is None else parse_amount(text, f"{label}: {prefix}{key}")
        return cls(bandwidth=TokenBucketSpec.from_rate(get("bw"), get("bw_burst"),
                                                       f"{label}: {prefix}bw"),
                   ops=TokenBucketSpec.from_rate(get("iops"), get("iops_burst"),
                                                 f"{label}: {prefix}iops"))

    @classmethod
    def from_group_option(cls, text: str, where: str, prefixes: tuple = ("",)
                          ) -> dict[str, RateLimiterSpec]:
        """`--drive-group bw=..,iops=..` / `--net-group rx_bw=..,tx_iops=..`:
        one spec per prefix."""
        keys = tuple(p + k for p in prefixes for k in SHORTHAND_KEYS)
        values = {}
        for item in text.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in keys:
                raise SpecError(f"{where} {text!r}", f"{item!r} is not one of "
                                                     f"{', '.join(k + '=' for k in keys)}")
            values[key] = value
        return {p: cls.from_shorthand(values, f"{where} {text!r}", p) for p in prefixes}


def shorthand_keys(prefixes: tuple = ("",)) -> tuple:
    return tuple(p + k for p in prefixes for k in SHORTHAND_KEYS)
