"""virtio-net: the TAP backend, the device."""
from kvmm.virtio.net.config import NetError, Nic, format_mac, generate_mac, open_nets, parse_mac
from kvmm.virtio.net.device import Net
from kvmm.virtio.net.tap import Tap, TapError, open_tap

__all__ = ["Net", "NetError", "Nic", "format_mac", "generate_mac", "open_nets", "parse_mac",
           "Tap", "TapError", "open_tap"]
