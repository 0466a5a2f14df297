"""The configuration of one guest, checked before anything is started."""
from __future__ import annotations

import os

from kvmm.arch.x86_64 import layout

MIN_MEM = 2 * layout.MiB
MAX_MEM = layout.PD_MAX_PAGES * layout.GiB - (layout.MMIO_GAP_END - layout.MMIO_GAP_START)
DEFAULT_MEM = 64 * layout.MiB
DEFAULT_KERNEL_NAME = "kvmm-guest.elf"
MEM_BACKINGS = ("normal", "thp", "hugetlb")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_SUFFIXES = ("IB", "B")


def parse_size(text: str, what: str = "size", default_unit: str = "") -> int:
    """'64M', '1G', '512K', '2MiB', '1048576' -> bytes (binary units); a bare
    number is in `default_unit`."""
    body = str(text).strip().upper()
    for suffix in _SIZE_SUFFIXES:
        if body.endswith(suffix) and len(body) > len(suffix) and not body[-len(suffix) - 1].isdigit():
            body = body[:-len(suffix)]
            break
    unit = default_unit
    if body and body[-1] in _SIZE_UNITS and body[-1]:
        unit, body = body[-1], body[:-1]
    if not body.isdigit() or not body.isascii():
        raise ConfigError(f"{what} {text!r} is not a size; write e.g. 64M, 1G or 1048576")
    return int(body) * _SIZE_UNITS[unit]


def default_kernel() -> str:
    """The guest kernel this repository builds (guest-kernel/build/kvmm-guest.elf),
    or $KVMM_GUEST_KERNEL."""
    env = os.environ.get("KVMM_GUEST_KERNEL")
    if env:
        return env
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(top, "guest-kernel", "build", DEFAULT_KERNEL_NAME)


class VmConfig:
    """One guest's configuration. Keyword arguments override the defaults below."""

    def __init__(self, **kwargs):
        self.kernel: str = default_kernel()
        self.mem_size = DEFAULT_MEM
        self.vcpus = 1
        self.cmdline = ""
        self.initrd: str | None = None   # an initramfs/initrd image, loaded below the kernel's limit
        self.console = "stdout"          # "stdout", "none", or a file path
        self.console_capture = False     # keep all console output in memory
        self.timeout: float | None = None   # seconds; None = no limit
        self.mem_backing = "normal"
        self.mem_prefault = False
        self.mem_lock = False
        self.dirty_log = False
        self.cpuid_hide: frozenset = frozenset()
        self.drives: list = []           # kvmm.virtio.blk DriveConfig
        self.nets: list = []             # kvmm.virtio.net NetConfig (TAPs open at build)
        self.interactive: bool | None = None   # stdin to the console; None = if a TTY
        # Quotas (kvmm.quota): group shorthands, --rate-limit JSON per target,
        # the monitor's cgroup and CPU placement, the control socket.
        self.drive_group: dict = {}
        self.net_group: dict = {}
        self.rate_limits: dict = {}
        self.throttle_backoff_ms = 0     # emulate a fixed back-off (benchmarks only)
        self.mem_overhead_limit: int | None = None
        self.cpu_quota: float | None = None
        self.cpu_pin: list | None = None
        self.api_sock: str | None = None
        self.stats_file: str | None = None
        for key, value in kwargs.items():
            if not hasattr(self, key):
                raise TypeError(f"VmConfig has no setting {key!r}")
            setattr(self, key, value)
        self.kernel = os.fspath(self.kernel)
        if self.initrd is not None:
            self.initrd = os.fspath(self.initrd)

    def validate(self, max_vcpus: int = layout.MAX_VCPUS) -> None:
        if not isinstance(self.vcpus, int) or not 1 <= self.vcpus <= min(max_vcpus,
                                                                        layout.MAX_VCPUS):
            raise ConfigError(f"--vcpus {self.vcpus!r}: give a whole number from 1 to "
                              f"{min(max_vcpus, layout.MAX_VCPUS)}")
        if self.mem_size < MIN_MEM:
            raise ConfigError(f"--mem {self.mem_size >> 20} MiB is too small: a guest needs "
                              f"at least {MIN_MEM >> 20} MiB")
        if self.mem_size > MAX_MEM:
            raise ConfigError(f"--mem {self.mem_size >> 30} GiB is more than kvmm maps "
                              f"({MAX_MEM >> 30} GiB)")
        if self.mem_size % layout.PAGE_SIZE:
            raise ConfigError("--mem must be a multiple of 4 KiB")
        if self.mem_backing not in MEM_BACKINGS:
            raise ConfigError(f"--mem-backing {self.mem_backing!r}: use one of "
                              f"{', '.join(MEM_BACKINGS)}")
        if self.cpu_pin is not None:
            if len(self.cpu_pin) != self.vcpus:
                raise ConfigError(f"--cpu-pin lists {len(self.cpu_pin)} CPUs for "
                                  f"{self.vcpus} vCPUs; give one host CPU per vCPU")
            allowed = os.sched_getaffinity(0)
            bad = [c for c in self.cpu_pin if c not in allowed]
            if bad:
                raise ConfigError(f"--cpu-pin: host CPU(s) {bad} are not available to kvmm "
                                  f"(allowed: {sorted(allowed)})")
        if self.cpu_quota is not None and not 0.01 <= self.cpu_quota <= os.cpu_count():
            raise ConfigError(f"--cpu-quota {self.cpu_quota}: give a number of CPUs from 0.01 "
                              f"to {os.cpu_count()}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"--timeout {self.timeout}: give a positive number of seconds")
        if self.nets:
            from kvmm.virtio.net.config import check_nets
            check_nets(self.nets)        # NetError (a ValueError) names the NIC
