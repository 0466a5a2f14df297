"""virtio-net: NIC options, the TAP backend, the device."""
from kvmm.virtio.net.config import (
    NetConfig, NetError, Nic, check_nets, format_mac, generate_mac, open_nets, parse_mac,
    parse_net,
)
from kvmm.virtio.net.device import Net
from kvmm.virtio.net.tap import Tap, TapError, open_tap

__all__ = ["Net", "NetConfig", "NetError", "Nic", "check_nets", "format_mac", "generate_mac",
           "open_nets", "parse_mac", "parse_net", "Tap", "TapError", "open_tap"]
