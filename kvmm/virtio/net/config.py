"""Opening the TAPs of a guest's network interfaces (kvmm.spec.NetworkInterfaceSpec).

`open_nets(specs)` opens every TAP (all or none) and gives each NIC without a
MAC a generated locally administered one. Every error is one NetError (a
ValueError: the CLI exits 2) whose message names the NIC and says what to do.
"""
from __future__ import annotations

import os

from kvmm.spec.devices import MAC_LEN, MAC_LOCAL_BIT, MAC_MULTICAST_BIT, format_mac, parse_mac
from kvmm.virtio.errors import VirtioError

__all__ = ["NetError", "Nic", "open_nets", "generate_mac", "format_mac", "parse_mac"]


class NetError(VirtioError, ValueError):
    """A TAP that cannot be used; the message is one line that names the NIC
    and says what to do."""


def generate_mac(taken=(), randbytes=os.urandom) -> bytes:
    """A random locally administered unicast MAC not in `taken`."""
    while True:
        raw = bytearray(randbytes(MAC_LEN))
        raw[0] = (raw[0] & ~MAC_MULTICAST_BIT & 0xFF) | MAC_LOCAL_BIT
        mac = bytes(raw)
        if mac not in taken:
            return mac


class Nic:
    """An opened NIC: its spec, its TAP, its MAC and the TAP's MTU."""

    __slots__ = ("id", "tap", "mac", "mtu", "spec")

    def __init__(self, nic_id: str, tap, mac: bytes, mtu: int, spec=None):
        self.id = nic_id
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.spec = spec

    def close(self) -> None:
        self.tap.close()


def open_nets(specs: list) -> list[Nic]:
    """Open every NIC's TAP (all or none; the specs were checked together by
    kvmm.spec.VmSpec.validate); raise one NetError."""
    from kvmm.virtio.net.tap import TapError, open_tap
    taken = {s.mac for s in specs if s.guest_mac is not None}
    nics: list[Nic] = []
    try:
        for spec in specs:
            try:
                tap = open_tap(spec.host_dev_name)
            except TapError as e:
                raise NetError(f"{spec.label}: {e}") from None
            mac = spec.mac
            if mac is None:
                mac = generate_mac(taken)
                taken.add(mac)
            nics.append(Nic(spec.iface_id, tap, mac, tap.mtu(), spec))
    except BaseException:
        for nic in nics:
            nic.close()
        raise
    return nics
