"""NIC options, checked before the guest boots, and the opening of their TAPs.

`parse_net("tap=tap0,mac=02:00:00:00:00:01,id=lan")` gives a NetConfig;
`check_nets(configs)` finds every problem that needs no kernel (TAP names
longer than IFNAMSIZ - 1, MAC syntax, multicast MACs, the same MAC, TAP or id
given twice) and names default ids; `open_nets(configs)` opens every TAP (all
or none) and gives each NIC without a MAC a generated locally administered
one. Every error is one NetError (a ValueError: the CLI exits 2) whose
message names the NIC and says what to do.
"""
from __future__ import annotations

import os

from kvmm.quota.limits import DIRECTIONS, LimitError, check_shorthand, shorthand_keys
from kvmm.virtio.errors import VirtioError

NET_SYNTAX = ("tap=NAME[,mac=MAC][,id=NAME][,rx_bw=B/s][,tx_bw=B/s][,rx_iops=N][,tx_iops=N]"
              "[,rx_bw_burst=B][,tx_bw_burst=B]")
LIMIT_KEYS = shorthand_keys(DIRECTIONS)    # rx_bw=, tx_iops=, ... (kvmm.quota.limits)
MAC_EXAMPLE = "02:00:00:00:00:01"
MAC_LEN = 6
ID_MAX = 32
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HEX = frozenset("0123456789abcdefABCDEF")
# IEEE 802 first-octet bits: I/G (bit 0, group = multicast) and U/L (bit 1, locally administered)
MAC_MULTICAST_BIT = 0b01
MAC_LOCAL_BIT = 0b10


class NetError(VirtioError, ValueError):
    """A NIC option or TAP that cannot be used; the message is one line that
    names the NIC and says what to do."""


def parse_mac(text: str) -> bytes:
    """'02:00:00:00:00:01' -> 6 bytes; a unicast address, not all zeros."""
    parts = text.split(":")
    if len(parts) != MAC_LEN or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        raise NetError(f"MAC {text!r} is not six hex byte pairs separated by ':' "
                       f"(e.g. {MAC_EXAMPLE})")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & MAC_MULTICAST_BIT:
        raise NetError(f"MAC {text} is a multicast address (the low bit of its first byte is "
                       f"set); a NIC needs a unicast one, e.g. {MAC_EXAMPLE}")
    if mac == bytes(MAC_LEN):
        raise NetError(f"MAC {text} is all zeros; give a unicast address, e.g. {MAC_EXAMPLE}")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def generate_mac(taken=(), randbytes=os.urandom) -> bytes:
    """A random locally administered unicast MAC not in `taken`."""
    while True:
        raw = bytearray(randbytes(MAC_LEN))
        raw[0] = (raw[0] & ~MAC_MULTICAST_BIT & 0xFF) | MAC_LOCAL_BIT
        mac = bytes(raw)
        if mac not in taken:
            return mac


def _valid_id(text: str) -> bool:
    return (0 < len(text) <= ID_MAX and text[0].isascii() and text[0].isalnum()
            and all(c in _ID_CHARS for c in text))


class NetConfig:
    """One --net option: the TAP's name, an optional MAC (6 bytes) and an id."""

    __slots__ = ("tap", "mac", "id", "limits")

    def __init__(self, tap: str, mac: bytes | None = None, id: str | None = None,
                 limits: dict | None = None):
        self.tap = tap
        self.mac = mac
        self.id = id
        self.limits = limits or {}       # rx_bw=..., tx_iops=... (kvmm.quota.limits)

    def describe(self) -> str:
        words = [f"tap={self.tap}"]
        if self.mac is not None:
            words.append(f"mac={format_mac(self.mac)}")
        if self.id is not None:
            words.append(f"id={self.id}")
        return ",".join(words)

    def _key(self) -> tuple:
        return (self.tap, self.mac, self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"NetConfig({self.describe()})"


def parse_net(text: str) -> NetConfig:
    """Parse the CLI form `tap=NAME[,mac=MAC][,id=NAME]`."""
    if not text.strip():
        raise NetError(f"empty --net option; expected {NET_SYNTAX}")
    seen: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise NetError(f"--net item {item!r} in {text!r} is not key=value; expected "
                           f"{NET_SYNTAX}")
        if key not in ("tap", "mac", "id") + LIMIT_KEYS:
            raise NetError(f"unknown --net option {key!r} in {text!r}; expected {NET_SYNTAX}")
        if key in seen:
            raise NetError(f"--net option {key!r} given twice in {text!r}")
        seen[key] = value
    tap = seen.get("tap")
    if not tap:
        raise NetError(f"--net {text!r} names no TAP interface; expected {NET_SYNTAX}")
    mac = seen.get("mac")
    limits = {k: seen[k] for k in LIMIT_KEYS if k in seen}
    if limits:
        try:
            check_shorthand(limits, DIRECTIONS)
        except LimitError as e:
            raise NetError(f"--net {text!r}: {e}") from None
    return NetConfig(tap, parse_mac(mac) if mac is not None else None, seen.get("id"),
                     limits)


def check_nets(configs: list[NetConfig]) -> None:
    """Check every NIC and the set of them; give NICs without an id one
    (net0, net1, ... skipping ids already taken)."""
    from kvmm.virtio.net.tap import TapError, check_name
    taps: dict[str, int] = {}
    macs: dict[bytes, int] = {}
    ids: dict[str, int] = {}
    for i, c in enumerate(configs):
        try:
            check_name(c.tap)
        except TapError as e:
            raise NetError(f"--net {c.describe()}: {e}") from None
        if c.mac is not None:
            if len(c.mac) != MAC_LEN or c.mac[0] & MAC_MULTICAST_BIT:
                raise NetError(f"--net {c.describe()}: the MAC must be 6 bytes, unicast")
            if c.mac in macs:
                raise NetError(f"MAC {format_mac(c.mac)} is given to two NICs (--net "
                               f"{configs[macs[c.mac]].describe()} and --net {c.describe()}); "
                               "every NIC needs its own")
            macs[c.mac] = i
        if c.tap in taps:
            raise NetError(f"TAP {c.tap} is given to two NICs; a TAP carries one NIC (create "
                           "another TAP, or bridge them on the host)")
        taps[c.tap] = i
        if c.id is not None:
            if not _valid_id(c.id):
                raise NetError(f"NIC id {c.id!r} must be 1-{ID_MAX} letters, digits, '_', '.' "
                               "or '-', starting with a letter or digit")
            if c.id in ids:
                raise NetError(f"NIC id {c.id} is given twice; ids must be unique")
            ids[c.id] = i
    n = 0
    for c in configs:
        if c.id is None:
            while f"net{n}" in ids:
                n += 1
            c.id = f"net{n}"
            ids[c.id] = n


class Nic:
    """An opened NIC: its configuration, its TAP, its MAC and the TAP's MTU."""

    __slots__ = ("id", "tap", "mac", "mtu", "config")

    def __init__(self, nic_id: str, tap, mac: bytes, mtu: int,
                 config: NetConfig | None = None):
        self.id = nic_id
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.config = config

    def close(self) -> None:
        self.tap.close()


def open_nets(configs: list[NetConfig]) -> list[Nic]:
    """Check, then open every NIC's TAP (all or none); raise one NetError."""
    from kvmm.virtio.net.tap import TapError, open_tap
    check_nets(configs)
    taken = {c.mac for c in configs if c.mac is not None}
    nics: list[Nic] = []
    try:
        for c in configs:
            try:
                tap = open_tap(c.tap)
            except TapError as e:
                raise NetError(f"--net {c.describe()}: {e}") from None
            mac = c.mac
            if mac is None:
                mac = generate_mac(taken)
                taken.add(mac)
            nics.append(Nic(c.id, tap, mac, tap.mtu(), c))
    except BaseException:
        for nic in nics:
            nic.close()
        raise
    return nics
