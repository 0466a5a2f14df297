"""A guest's I/O quotas: one rate limiter per device (per direction for NICs),
and per-guest group limiters shared by all of its drives and all of its NICs.

Targets name the limiters, in the control socket and `--rate-limit`:
    drive:ID        one drive            drives       the guest's drive group
    net:ID:rx|tx    one NIC direction    nets:rx|tx   the guest's NIC groups
Every device gets a limiter even without limits, so limits can be added,
changed or removed while the guest runs (Firecracker's PATCH semantics).
"""
from __future__ import annotations

from kvmm.quota.bucket import RateLimiter
from kvmm.quota.limits import LimitError, LimitSpec, RequestAdmission, bucket_from_json

GROUP_TARGETS = ("drives", "nets:rx", "nets:tx")


class GuestQuota:
    def __init__(self, backoff_ns: int = 0):
        self.backoff_ns = backoff_ns
        self.limiters: dict[str, RateLimiter] = {}
        for target in GROUP_TARGETS:
            self.limiters[target] = RateLimiter(backoff_ns=backoff_ns)

    def _device(self, target: str, group: str, spec: LimitSpec | None) -> RequestAdmission:
        spec = spec or LimitSpec()
        limiter = spec.limiter(parents=(self.limiters[group],), backoff_ns=self.backoff_ns)
        self.limiters[target] = limiter
        return RequestAdmission(limiter)

    def drive(self, drive_id: str, spec: LimitSpec | None = None) -> RequestAdmission:
        return self._device(f"drive:{drive_id}", "drives", spec)

    def nic(self, nic_id: str, direction: str, spec: LimitSpec | None = None
            ) -> RequestAdmission:
        return self._device(f"net:{nic_id}:{direction}", f"nets:{direction}", spec)

    def set_group(self, target: str, spec: LimitSpec) -> None:
        if target not in GROUP_TARGETS:
            raise LimitError(f"unknown group {target!r}; use one of {', '.join(GROUP_TARGETS)}")
        limiter = self.limiters[target]
        limiter.update(bandwidth=spec.bandwidth, ops=spec.ops)

    def patch(self, target: str, rate_limiter) -> None:
        """PATCH one limiter: a bucket left out is unchanged, a bucket of size 0
        is removed, any other replaces it (and starts full)."""
        limiter = self.limiters.get(target)
        if limiter is None:
            raise LimitError(f"no device or group {target!r} in this guest; targets: "
                             f"{', '.join(sorted(self.limiters))}")
        if not isinstance(rate_limiter, dict):
            raise LimitError("rate_limiter must be an object with bandwidth and/or ops")
        unknown = set(rate_limiter) - {"bandwidth", "ops"}
        if unknown:
            raise LimitError(f"rate_limiter: unknown field(s) {', '.join(sorted(unknown))}")
        changes = {}
        for key in ("bandwidth", "ops"):
            if key in rate_limiter:
                changes[key] = bucket_from_json(rate_limiter[key], f"rate_limiter.{key}")
        limiter.update(**changes)

    def check_targets(self, targets) -> None:
        for target in targets:
            if target not in self.limiters:
                raise LimitError(f"a rate limit is given for {target!r}, which this guest "
                                 f"does not have; targets: {', '.join(sorted(self.limiters))}")

    def stats(self) -> dict:
        return {target: limiter.stats() for target, limiter in sorted(self.limiters.items())}
