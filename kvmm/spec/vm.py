"""The machine, its boot source, logging and metrics, kvmm's own host-side
settings, and `VmSpec`: the whole configuration of one guest (Firecracker's
configuration file, plus an optional "kvmm" section).
"""
from __future__ import annotations

import os

from kvmm.arch.x86_64 import layout
from kvmm.spec.base import Field, Spec, SpecError
from kvmm.spec.devices import DriveSpec, NetworkInterfaceSpec, format_mac, parse_mac
from kvmm.spec.ratelimit import RateLimiterSpec

MAX_VCPUS = 32               # Firecracker's MAX_SUPPORTED_VCPUS
MIN_MEM_MIB = 2
MAX_MEM_MIB = (layout.PD_MAX_PAGES * layout.GiB
               - (layout.MMIO_GAP_END - layout.MMIO_GAP_START)) >> 20
DEFAULT_MEM_MIB = 64
HUGE_PAGES = ("None", "2M")                 # Firecracker's HugePageConfig
MEM_BACKINGS = ("normal", "thp", "hugetlb")
CPUID_FEATURES = ("xsave", "x2apic")
LOG_LEVELS = ("Off", "Error", "Warning", "Info", "Debug", "Trace")
MMDS_VERSIONS = ("V1", "V2")
MMDS_DEFAULT_IPV4 = "169.254.169.254"


def _check_mem(mib: int) -> str | None:
    if mib < MIN_MEM_MIB:
        return f"{mib} MiB is too small: a guest needs at least {MIN_MEM_MIB} MiB"
    if mib > MAX_MEM_MIB:
        return f"{mib} MiB is more than kvmm maps ({MAX_MEM_MIB} MiB)"
    return None


class MachineSpec(Spec):
    """Firecracker's MachineConfiguration."""
    FIELDS = (
        Field("vcpu_count", int, 1, required=True, minimum=1, maximum=MAX_VCPUS,
              nullable=False),
        Field("mem_size_mib", int, DEFAULT_MEM_MIB, required=True, check=_check_mem,
              nullable=False),
        Field("smt", bool, False, nullable=False),
        Field("track_dirty_pages", bool, False, nullable=False),
        Field("huge_pages", str, "None", choices=HUGE_PAGES, nullable=False),
        Field("cpu_template", str, None, choices=("None",)),
    )

    def validate(self, where: str = "", labels=None) -> None:
        if self.smt and self.vcpu_count > 1 and self.vcpu_count % 2:
            raise SpecError(self.field_label(where, "smt", labels),
                            f"with smt, vcpu_count must be 1 or even (two threads a core), "
                            f"not {self.vcpu_count}")

    def to_json(self) -> dict:
        out = super().to_json()
        if out["cpu_template"] is None:
            del out["cpu_template"]
        return out

    @property
    def mem_size(self) -> int:
        return self.mem_size_mib << 20


class BootSourceSpec(Spec):
    """Firecracker's BootSource: the kernel (ELF or bzImage), an initrd, the
    command line."""
    FIELDS = (
        Field("kernel_image_path", str, None, required=True, cli="kernel"),
        Field("initrd_path", str, None, cli="initrd"),
        Field("boot_args", str, None, cli="cmdline"),
    )

    def validate(self, where: str = "", labels=None) -> None:
        if not self.kernel_image_path:
            raise SpecError(self.field_label(where, "kernel_image_path", labels),
                            "is empty; give the path of the kernel image")


class LoggerSpec(Spec):
    """Firecracker's Logger."""
    FIELDS = (
        Field("log_path", str, None),
        Field("level", str, "Info", check=lambda v: None if v.capitalize() in LOG_LEVELS
              else f"{v!r} is not one of {', '.join(LOG_LEVELS)}"),
        Field("show_level", bool, False),
        Field("show_log_origin", bool, False),
        Field("module", str, None),
    )

    def validate(self, where: str = "", labels=None) -> None:
        if self.level is None:
            self.level = "Info"
        self.level = self.level.capitalize()
        self.show_level = bool(self.show_level)
        self.show_log_origin = bool(self.show_log_origin)


class MetricsSpec(Spec):
    """Firecracker's Metrics."""
    FIELDS = (Field("metrics_path", str, None, required=True, nullable=False),)


class MmdsConfigSpec(Spec):
    """Firecracker's MmdsConfig. kvmm stores and serves the metadata over its
    API; the guest-facing metadata service is not offered yet."""
    FIELDS = (
        Field("version", str, "V1", choices=MMDS_VERSIONS, nullable=False),
        Field("network_interfaces", list, (), required=True, item=str, nullable=False),
        Field("ipv4_address", str, MMDS_DEFAULT_IPV4),
    )


def _check_console(value: str) -> str | None:
    return "is empty; give stdout, none or a file path" if not value else None


class HostSpec(Spec):
    """kvmm's own settings, which Firecracker's configuration has no place for:
    the console, a time limit, host memory backing, CPU placement, group rate
    limits and the monitor's cgroup. In a configuration file they are the
    optional "kvmm" object."""
    FIELDS = (
        Field("console", str, "stdout", check=_check_console, nullable=False),
        Field("timeout", float, None, minimum=0.001),
        Field("mem_backing", str, "normal", choices=MEM_BACKINGS, nullable=False),
        Field("mem_prefault", bool, False, nullable=False),
        Field("mem_lock", bool, False, nullable=False),
        Field("hide_cpuid", list, (), item=str, choices=CPUID_FEATURES, nullable=False),
        Field("drive_group", RateLimiterSpec),
        Field("net_rx_group", RateLimiterSpec),
        Field("net_tx_group", RateLimiterSpec),
        Field("mem_overhead_limit_mib", int, None, minimum=0, maximum=1 << 40),
        Field("cpu_quota", float, None, minimum=0.01, maximum=float(os.cpu_count() or 1)),
        Field("cpu_pin", list, None, item=int, minimum=0),
        Field("throttle_backoff_ms", int, 0, minimum=0, maximum=60_000, nullable=False),
        Field("stats_file", str, None),
    )

    def validate(self, where: str = "", labels=None) -> None:
        if self.cpu_pin is not None:
            allowed = os.sched_getaffinity(0)
            bad = [c for c in self.cpu_pin if c not in allowed]
            if bad:
                raise SpecError(self.field_label(where, "cpu_pin", labels),
                                f"host CPU(s) {bad} are not available to kvmm (allowed: "
                                f"{sorted(allowed)})")


# Firecracker's configuration-file keys kvmm has no device for yet.
UNSUPPORTED_SECTIONS = {
    "balloon": "a balloon device", "vsock": "a vsock device", "entropy": "an entropy device",
    "cpu-config": "custom CPU templates",
}
UNSUPPORTED_MESSAGE = "kvmm does not offer {what} yet"
GROUP_TARGETS = {"drives": "drive_group", "nets:rx": "net_rx_group", "nets:tx": "net_tx_group"}


class VmSpec:
    """One guest's whole configuration. Devices are kept in the order the
    builder gives them slots: drives (the root device first), then NICs."""

    def __init__(self, machine: MachineSpec | None = None,
                 boot_source: BootSourceSpec | None = None,
                 drives: list | None = None, network_interfaces: list | None = None,
                 logger: LoggerSpec | None = None, metrics: MetricsSpec | None = None,
                 mmds_config: MmdsConfigSpec | None = None, host: HostSpec | None = None):
        self.machine = machine or MachineSpec()
        self.boot_source = boot_source
        self.drives: list[DriveSpec] = list(drives or [])
        self.network_interfaces: list[NetworkInterfaceSpec] = list(network_interfaces or [])
        self.logger = logger
        self.metrics = metrics
        self.mmds_config = mmds_config
        self.host = host or HostSpec()
        self.labels: dict[str, str] = {}    # how the user named a setting (e.g. "--console")

    def label(self, name: str, default: str) -> str:
        return self.labels.get(name, default)

    # The configuration file. ------------------------------------------------
    @classmethod
    def from_json(cls, obj, where: str = "") -> VmSpec:
        """Firecracker's full configuration object (its --config-file)."""
        if not isinstance(obj, dict):
            raise SpecError(where, "must be a JSON object with boot-source, machine-config, "
                                   "drives, network-interfaces...")
        known = ("boot-source", "machine-config", "drives", "network-interfaces", "logger",
                 "metrics", "mmds-config", "kvmm") + tuple(UNSUPPORTED_SECTIONS)
        unknown = [k for k in obj if k not in known]
        if unknown:
            raise SpecError(where, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                   f"known: {', '.join(known)}")
        for key, what in UNSUPPORTED_SECTIONS.items():
            if obj.get(key) is not None:
                raise SpecError(f"{where}{key}", UNSUPPORTED_MESSAGE.format(what=what)
                                + f"; remove the \"{key}\" section")
        if obj.get("boot-source") is None:
            raise SpecError(f"{where}boot-source", "is required (the kernel to boot)")

        def one(key, spec_cls):
            value = obj.get(key)
            return None if value is None else spec_cls.from_json(value, where + key)

        def many(key, spec_cls):
            value = obj.get(key)
            if value is None:
                return []
            if not isinstance(value, list):
                raise SpecError(where + key, "must be an array")
            return [spec_cls.from_json(v, f"{where}{key}[{i}]") for i, v in enumerate(value)]

        spec = cls(machine=one("machine-config", MachineSpec) or MachineSpec(),
                   boot_source=one("boot-source", BootSourceSpec),
                   drives=many("drives", DriveSpec),
                   network_interfaces=many("network-interfaces", NetworkInterfaceSpec),
                   logger=one("logger", LoggerSpec), metrics=one("metrics", MetricsSpec),
                   mmds_config=one("mmds-config", MmdsConfigSpec),
                   host=one("kvmm", HostSpec) or HostSpec())
        spec.validate()
        return spec

    @classmethod
    def from_file(cls, path: str) -> VmSpec:
        import json
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as e:
            raise SpecError(f"--config-file {path}", f"cannot read it ({e.strerror})") from None
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise SpecError(f"--config-file {path}", f"is not valid JSON ({e})") from None
        try:
            return cls.from_json(obj)
        except SpecError as e:
            raise SpecError(f"--config-file {path}: {e.field}" if e.field else
                            f"--config-file {path}", e.message) from None

    def to_json(self) -> dict:
        """GET /vm/config: Firecracker's FullVmConfiguration."""
        return {
            "balloon": None,
            "drives": [d.to_json() for d in self.drives],
            "boot-source": self.boot_source.to_json() if self.boot_source else None,
            "cpu-config": None,
            "logger": self.logger.to_json() if self.logger else None,
            "machine-config": self.machine.to_json(),
            "metrics": self.metrics.to_json() if self.metrics else None,
            "mmds-config": self.mmds_config.to_json() if self.mmds_config else None,
            "network-interfaces": [n.to_json() for n in self.network_interfaces],
            "vsock": None,
            "entropy": None,
        }

    # Checks across specs. ---------------------------------------------------
    def validate(self, booting: bool = False) -> None:
        """Everything that needs no host resource; `booting` adds what must be
        there to start (a boot source)."""
        if booting and self.boot_source is None:
            raise SpecError("boot-source", "no kernel is configured; PUT /boot-source (or "
                                           "--kernel) first")
        drive_ids: set[str] = set()
        roots = []
        for d in self.drives:
            if d.drive_id in drive_ids:
                raise SpecError("drives", f"drive id {d.drive_id!r} is used twice; give each "
                                          "drive its own id")
            drive_ids.add(d.drive_id)
            if d.is_root_device:
                roots.append(d.drive_id)
        if len(roots) > 1:
            raise SpecError("drives", f"drives {roots[0]!r} and {roots[1]!r} are both root "
                                      "devices; a guest has one root device")
        ids: set[str] = set()
        taps: dict[str, str] = {}
        macs: dict[bytes, str] = {}
        for n in self.network_interfaces:
            if n.iface_id in ids:
                raise SpecError("network-interfaces", f"interface id {n.iface_id!r} is used "
                                                      "twice; ids must be unique")
            ids.add(n.iface_id)
            if n.host_dev_name in taps:
                raise SpecError("network-interfaces", f"TAP {n.host_dev_name} is given to "
                                f"interfaces {taps[n.host_dev_name]!r} and {n.iface_id!r}; a "
                                "TAP carries one NIC (create another TAP, or bridge them)")
            taps[n.host_dev_name] = n.iface_id
            if n.guest_mac is not None:
                mac = parse_mac(n.guest_mac)
                if mac in macs:
                    raise SpecError("network-interfaces", f"MAC {format_mac(mac)} is given to "
                                    f"interfaces {macs[mac]!r} and {n.iface_id!r}; every NIC "
                                    "needs its own")
                macs[mac] = n.iface_id
        if self.mmds_config is not None:
            for name in self.mmds_config.network_interfaces:
                if name not in ids:
                    raise SpecError("mmds-config.network_interfaces", f"no network interface "
                                                                      f"{name!r} is configured")
        pin = self.host.cpu_pin
        if pin is not None and len(pin) != self.machine.vcpu_count:
            raise SpecError(self.label("cpu_pin", "kvmm.cpu_pin"), f"lists {len(pin)} CPUs for "
                                         f"{self.machine.vcpu_count} vCPUs; give one host "
                                         "CPU per vCPU")
        if self.host.mem_backing == "hugetlb" and self.machine.huge_pages == "None":
            self.machine.huge_pages = "2M"
        elif self.machine.huge_pages == "2M":
            self.host.mem_backing = "hugetlb"

    # What the builder walks. -------------------------------------------------
    def devices(self) -> list:
        """Device specs in slot order: the root drive, the other drives, the NICs."""
        drives = sorted(self.drives, key=lambda d: not d.is_root_device)
        return drives + list(self.network_interfaces)

    def boot_args(self) -> str:
        """The command line, with Firecracker's `root=` words for a root drive."""
        args = (self.boot_source.boot_args if self.boot_source else None) or ""
        root = next((d for d in self.drives if d.is_root_device), None)
        if root is None:
            return args
        where = f"PARTUUID={root.partuuid}" if root.partuuid else "/dev/vda"
        words = [f"root={where}", "ro" if root.is_read_only else "rw"]
        return " ".join(words + ([args] if args else []))

    def group_limits(self) -> dict[str, RateLimiterSpec]:
        """Rate-limit targets `drives`, `nets:rx`, `nets:tx` that have a limit."""
        out = {}
        for target, field in GROUP_TARGETS.items():
            spec = getattr(self.host, field)
            if spec is not None:
                out[target] = spec
        return out

    def rate_limiter(self, target: str) -> RateLimiterSpec | None:
        """The limiter configured for a target (None: none, or no such target)."""
        if target in GROUP_TARGETS:
            return getattr(self.host, GROUP_TARGETS[target])
        kind, _, rest = target.partition(":")
        if kind == "drive":
            return next((d.rate_limiter for d in self.drives if d.drive_id == rest), None)
        nic_id, _, direction = rest.rpartition(":")
        if kind == "net" and direction in ("rx", "tx"):
            return next((getattr(n, f"{direction}_rate_limiter")
                         for n in self.network_interfaces if n.iface_id == nic_id), None)
        return None

    def set_rate_limiter(self, target: str, spec: RateLimiterSpec, where: str) -> None:
        """Put a rate limiter on a target: drive:ID, net:ID:rx|tx, drives or nets:rx|tx."""
        if target in GROUP_TARGETS:
            setattr(self.host, GROUP_TARGETS[target], spec)
            return
        kind, _, rest = target.partition(":")
        if kind == "drive":
            for d in self.drives:
                if d.drive_id == rest:
                    d.rate_limiter = spec
                    return
        elif kind == "net":
            nic_id, _, direction = rest.rpartition(":")
            for n in self.network_interfaces:
                if n.iface_id == nic_id and direction in ("rx", "tx"):
                    setattr(n, f"{direction}_rate_limiter", spec)
                    return
        targets = sorted(list(GROUP_TARGETS) + [f"drive:{d.drive_id}" for d in self.drives]
                         + [f"net:{n.iface_id}:{x}" for n in self.network_interfaces
                            for x in ("rx", "tx")])
        raise SpecError(where, f"this guest has no {target!r}; targets: {', '.join(targets)}")
