"""A guest's I/O quotas: one rate limiter per device (per direction for NICs),
and per-guest group limiters shared by all of its drives and all of its NICs.

Targets name the limiters, in the API (`PATCH /kvmm/rate-limiters/{target}`)
and `--rate-limit`:
    drive:ID        one drive            drives       the guest's drive group
    net:ID:rx|tx    one NIC direction    nets:rx|tx   the guest's NIC groups
Every device gets a limiter even without limits, so limits can be added,
changed or removed while the guest runs (Firecracker's PATCH semantics).
"""
from __future__ import annotations

from kvmm.quota.bucket import RateLimiter
from kvmm.quota.limits import RequestAdmission

GROUP_TARGETS = ("drives", "nets:rx", "nets:tx")


class LimitError(ValueError):
    """A rate-limit target this guest does not have."""


class GuestQuota:
    def __init__(self, backoff_ns: int = 0):
        self.backoff_ns = backoff_ns
        self.limiters: dict[str, RateLimiter] = {}
        for target in GROUP_TARGETS:
            self.limiters[target] = RateLimiter(backoff_ns=backoff_ns)

    def _device(self, target: str, group: str, spec) -> RequestAdmission:
        bandwidth, ops = spec.buckets() if spec is not None else (None, None)
        limiter = RateLimiter(bandwidth, ops, parents=(self.limiters[group],),
                              backoff_ns=self.backoff_ns)
        self.limiters[target] = limiter
        return RequestAdmission(limiter)

    def drive(self, drive_id: str, spec=None) -> RequestAdmission:
        """The limiter of drive `drive_id`; `spec` a kvmm.spec.RateLimiterSpec or None."""
        return self._device(f"drive:{drive_id}", "drives", spec)

    def nic(self, nic_id: str, direction: str, spec=None) -> RequestAdmission:
        return self._device(f"net:{nic_id}:{direction}", f"nets:{direction}", spec)

    def set_group(self, target: str, spec) -> None:
        if target not in GROUP_TARGETS:
            raise LimitError(f"unknown group {target!r}; use one of {', '.join(GROUP_TARGETS)}")
        bandwidth, ops = spec.buckets()
        self.limiters[target].update(bandwidth=bandwidth, ops=ops)

    def patch(self, target: str, spec) -> None:
        """PATCH one limiter with a kvmm.spec.RateLimiterSpec: a bucket left out
        is unchanged, a bucket of size 0 is removed, any other replaces it (and
        starts full)."""
        limiter = self.limiters.get(target)
        if limiter is None:
            raise LimitError(f"no device or group {target!r} in this guest; targets: "
                             f"{', '.join(sorted(self.limiters))}")
        limiter.update(**spec.patch_buckets())

    def stats(self) -> dict:
        return {target: limiter.stats() for target, limiter in sorted(self.limiters.items())}
