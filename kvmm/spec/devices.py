"""Device specs: a drive (virtio-blk) and a network interface (virtio-net),
with Firecracker's JSON field names. The CLI forms (`--drive path=IMG,ro,id=X`,
`--net tap=NAME,mac=MAC,id=X`) build the same specs through the same checks.

A device spec also says how the builder makes its device: `kind` names it,
`device_module` is the module that opens its host side and makes the device
(kvmm.builder); the builder assigns its slot.
"""
from __future__ import annotations

from kvmm.spec.base import Field, Spec, SpecError, check_id
from kvmm.spec.ratelimit import RateLimiterSpec

SERIAL_MAX = 20              # VIRTIO_BLK_ID_BYTES (virtio 1.2 §5.2.6: "up to 20 bytes")
CACHE_TYPES = ("Unsafe", "Writeback")     # Firecracker's Drive.cache_type
IO_ENGINES = ("Sync",)                    # Firecracker's Drive.io_engine values kvmm has
MAC_LEN = 6
MAC_EXAMPLE = "06:00:ac:10:00:02"
IFNAMSIZ = 16                             # linux/if.h
# IEEE 802 first-octet bits: I/G (bit 0, group = multicast) and U/L (bit 1, local)
MAC_MULTICAST_BIT = 0b01
MAC_LOCAL_BIT = 0b10
_HEX = frozenset("0123456789abcdefABCDEF")


def _check_serial(serial: str) -> str | None:
    if not serial or not serial.isascii() or not serial.isprintable():
        return f"{serial!r} must be printable ASCII"
    if len(serial) > SERIAL_MAX:
        return f"{serial!r} is {len(serial)} characters; virtio-blk allows at most {SERIAL_MAX}"
    return None


def _check_path(path: str) -> str | None:
    return "is empty; give the path of the file" if not path else None


class DriveSpec(Spec):
    """A virtio-blk disk backed by a raw image file or block device
    (Firecracker's `Drive`, plus kvmm's `serial`)."""
    kind = "virtio-blk"
    device_module = "kvmm.virtio.blk"
    FIELDS = (
        Field("drive_id", str, None, required=True, check=check_id, cli="id"),
        Field("path_on_host", str, None, required=True, check=_check_path, cli="path"),
        Field("is_root_device", bool, False, required=True, nullable=False),
        Field("is_read_only", bool, False, cli="ro", cli_flag=True),
        Field("partuuid", str, None),
        Field("cache_type", str, "Unsafe", choices=CACHE_TYPES, nullable=False),
        Field("io_engine", str, "Sync", choices=IO_ENGINES, nullable=False),
        Field("rate_limiter", RateLimiterSpec),
        Field("serial", str, None, check=_check_serial, cli="serial"),
    )
    CLI_LIMITS = {"": "rate_limiter"}
    CLI_SYNTAX = "path=IMG[,ro][,id=NAME][,serial=S][,bw=B/s][,bw_burst=B][,iops=N][,iops_burst=N]"

    def validate(self, where: str = "", labels=None) -> None:
        if self.is_read_only is None:
            self.is_read_only = False
        if self.partuuid is not None and not self.is_root_device:
            raise SpecError(self.field_label(where, "partuuid", labels),
                            "is used only for the root device (is_root_device: true)")

    @classmethod
    def from_cli_option(cls, text: str, index: int) -> DriveSpec:
        """`--drive path=IMG[,ro][,id=NAME][,serial=S][,bw=..][,iops=..]`; a drive
        without an id is `drive<index>`."""
        return cls.from_cli(text, "--drive", extra={"drive_id": f"drive{index}",
                                                     "is_root_device": False})

    @property
    def id(self) -> str:
        return self.drive_id

    @property
    def label(self) -> str:
        return f"drive {self.drive_id!r} ({self.path_on_host})"


class PartialDriveSpec(Spec):
    """Firecracker's PartialDrive: what PATCH /drives/{id} may change on a
    running guest (a new image, the rate limiter)."""
    FIELDS = (
        Field("drive_id", str, None, required=True, check=check_id),
        Field("path_on_host", str, None, check=_check_path),
        Field("rate_limiter", RateLimiterSpec),
    )


def parse_mac(text: str, label: str = "guest_mac") -> bytes:
    """'06:00:ac:10:00:02' -> 6 bytes: a unicast address, not all zeros."""
    parts = text.split(":")
    if len(parts) != MAC_LEN or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        raise SpecError(label, f"{text!r} is not six hex byte pairs separated by ':' "
                               f"(e.g. {MAC_EXAMPLE})")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & MAC_MULTICAST_BIT:
        raise SpecError(label, f"{text} is a multicast address (the low bit of its first "
                               f"byte is set); a NIC needs a unicast one, e.g. {MAC_EXAMPLE}")
    if mac == bytes(MAC_LEN):
        raise SpecError(label, f"{text} is all zeros; give a unicast address, e.g. "
                               f"{MAC_EXAMPLE}")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _check_mac(text: str) -> str | None:
    try:
        parse_mac(text)
    except SpecError as e:
        return e.message
    return None


def check_tap_name(name: str) -> str | None:
    if not name or len(name.encode()) >= IFNAMSIZ:
        return f"TAP name {name!r} must be 1 to {IFNAMSIZ - 1} bytes (the kernel's IFNAMSIZ)"
    # net/core/dev.c dev_valid_name(): no '/', ':' or white space, not "." or ".."
    if "/" in name or ":" in name or any(c.isspace() for c in name) or name in (".", ".."):
        return f"TAP name {name!r} may not contain '/', ':' or spaces"
    return None


class NetworkInterfaceSpec(Spec):
    """A virtio-net NIC on a host TAP interface (Firecracker's `NetworkInterface`)."""
    kind = "virtio-net"
    device_module = "kvmm.virtio.net"
    FIELDS = (
        Field("iface_id", str, None, required=True, check=check_id, cli="id"),
        Field("host_dev_name", str, None, required=True, check=check_tap_name, cli="tap"),
        Field("guest_mac", str, None, check=_check_mac, cli="mac"),
        Field("rx_rate_limiter", RateLimiterSpec),
        Field("tx_rate_limiter", RateLimiterSpec),
    )
    CLI_LIMITS = {"rx_": "rx_rate_limiter", "tx_": "tx_rate_limiter"}
    CLI_SYNTAX = ("tap=NAME[,mac=MAC][,id=NAME][,rx_bw=B/s][,tx_bw=B/s][,rx_iops=N][,tx_iops=N]"
                  "[,rx_bw_burst=B][,tx_bw_burst=B]")

    @classmethod
    def from_cli_options(cls, texts: list[str]) -> list[NetworkInterfaceSpec]:
        """`--net tap=NAME[,mac=MAC][,id=NAME][,rx_bw=..]...`, each; a NIC without
        an id gets the first `net<N>` no other NIC names."""
        from kvmm.spec.base import split_options
        named = {item[3:] for text in texts for item in split_options(text)
                 if item.startswith("id=")}
        out, n = [], 0
        for text in texts:
            while f"net{n}" in named:
                n += 1
            out.append(cls.from_cli(text, "--net", extra={"iface_id": f"net{n}"}))
            named.add(out[-1].iface_id)
        return out

    @property
    def id(self) -> str:
        return self.iface_id

    @property
    def mac(self) -> bytes | None:
        return None if self.guest_mac is None else parse_mac(self.guest_mac)

    @property
    def label(self) -> str:
        return f"network interface {self.iface_id!r} (TAP {self.host_dev_name})"


class PartialNetworkInterfaceSpec(Spec):
    """Firecracker's PartialNetworkInterface: what PATCH /network-interfaces/{id}
    may change on a running guest (the rate limiters)."""
    FIELDS = (
        Field("iface_id", str, None, required=True, check=check_id),
        Field("rx_rate_limiter", RateLimiterSpec),
        Field("tx_rate_limiter", RateLimiterSpec),
    )
