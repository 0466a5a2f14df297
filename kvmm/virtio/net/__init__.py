"""virtio-net: the TAP backend, the device."""
from kvmm.virtio.net.config import NetError, Nic, format_mac, generate_mac, open_nets, parse_mac
from kvmm.virtio.net.device import Net
from kvmm.virtio.net.tap import Tap, TapError, open_tap

__all__ = ["Net", "NetError", "Nic", "format_mac", "generate_mac", "open_nets", "parse_mac",
           "Tap", "TapError", "open_tap", "open_backends", "make_device"]

open_backends = open_nets           # the builder's device-module interface (kvmm.builder)


def make_device(machine, nic: Nic, quota):
    """A virtio-net device on an opened NIC, with limiters `net:ID:rx|tx`; once
    its transport exists, received frames are processed through it."""
    import functools

    from kvmm.virtio.net.device import RX_QUEUE
    rx = tx = None
    if quota is not None:
        rx = quota.nic(nic.id, "rx", nic.spec.rx_rate_limiter)
        tx = quota.nic(nic.id, "tx", nic.spec.tx_rate_limiter)
    net = Net(nic.tap, mac=nic.mac, net_id=nic.id, loop=machine.loop, mtu=nic.mtu,
              rx_limiter=rx, tx_limiter=tx)

    def after_attach(transport) -> None:
        net.set_rx_handler(functools.partial(transport.process, RX_QUEUE))
    return net, after_attach
