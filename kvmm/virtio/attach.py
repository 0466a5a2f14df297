"""Wiring virtio-blk drives and virtio-net NICs into a Machine (called by the
builder, kvmm.machine).

Per drive (per NIC: attach_nets), in slot order after any virtio device already
attached:
  1. the Drive is opened, checked and locked (open_drives, all or none; for a
     NIC its TAP, open_nets);
  2. an EventFdTrigger for GSI `layout.VIRTIO_IRQ_BASE + slot`, bound with
     Vm.register_irqfd (interrupts never exit to user space);
  3. a Block (a Net) device behind an MmioTransport attached to the Machine's EventLoop;
  4. the transport on the MMIO bus at `layout.virtio_mmio_base(slot)`,
     `layout.VIRTIO_MMIO_SIZE` bytes;
  5. each queue's eventfd bound with Vm.register_ioeventfd at base + 0x50,
     4 bytes, datamatch = queue index (QueueNotify never exits either).
The guest learns of the devices from the kernel command line: `cmdline_words`
gives the words, computable before any KVM object exists.
"""
from __future__ import annotations

from kvmm.arch.x86_64 import layout
from kvmm.virtio.blk import Block, Drive, open_drives
from kvmm.virtio.errors import DriveError
from kvmm.virtio.mmio import QUEUE_NOTIFY_WIDTH, MmioTransport, cmdline_word


def slot_resources(slot: int) -> tuple[int, int]:
    """(MMIO base, GSI) of virtio-mmio slot `slot`."""
    gsi = layout.VIRTIO_IRQ_BASE + slot
    if gsi > layout.VIRTIO_IRQ_MAX:
        raise DriveError(f"too many virtio devices: slot {slot} would need IRQ {gsi}, past "
                         f"the last IOAPIC pin {layout.VIRTIO_IRQ_MAX}")
    return layout.virtio_mmio_base(slot), gsi


def cmdline_words(count: int, first_slot: int = 0) -> list[str]:
    """`virtio_mmio.device=4K@0xd0000000:5`-style words for `count` devices."""
    words = []
    for slot in range(first_slot, first_slot + count):
        base, gsi = slot_resources(slot)
        words.append(cmdline_word(base, gsi, layout.VIRTIO_MMIO_SIZE))
    return words


def attach_drives(m, configs: list, stack) -> list[MmioTransport]:
    """Attach a virtio-blk device per drive to Machine `m` (needs m.vm, m.mem,
    m.loop, m.mmio_bus). `configs` are DriveConfigs, opened here, or Drives
    already opened with open_drives (e.g. in prepare(), before any KVM object
    exists). Everything made is registered on `stack` (kvmm.cleanup.Cleanup)
    for tear-down. Raises DriveError (a ValueError) before touching the VM if
    an image is unusable."""
    first = len(m.virtio_devices)
    for slot in range(first, first + len(configs)):
        slot_resources(slot)          # fail before opening anything
    if all(isinstance(c, Drive) for c in configs):
        drives = list(configs)
    else:
        drives = open_drives(configs)
    for drive in drives:
        stack.callback(drive.close)
    transports = []
    quota = getattr(m, "quota", None)
    for slot, drive in enumerate(drives, start=first):
        limiter = None
        if quota is not None:
            from kvmm.quota.limits import spec_from_shorthand
            limiter = quota.drive(drive.id, spec_from_shorthand(drive.config.limits))
        transports.append(_attach_device(m, Block(drive, limiter=limiter), slot,
                                         f"virtio-blk:{drive.id}", stack))
    return transports


def _attach_device(m, device, slot: int, name: str, stack) -> MmioTransport:
    """Steps 2 to 5 above for one device in virtio-mmio slot `slot`."""
    from kvmm.devices.irq import EventFdTrigger
    vm = m.vm
    base, gsi = slot_resources(slot)
    irq = EventFdTrigger(gsi)
    stack.callback(irq.close)
    vm.register_irqfd(irq.fd, gsi)     # KVM keeps its own reference: closing is safe
    transport = MmioTransport(device, m.mem, irq, loop=m.loop, name=name)
    stack.callback(transport.close)
    m.mmio_bus.insert(transport, base, layout.VIRTIO_MMIO_SIZE)
    for offset, datamatch, fd in transport.notifiers():
        vm.register_ioeventfd(fd, base + offset, QUEUE_NOTIFY_WIDTH, datamatch)
    m.virtio_devices.append(transport)
    return transport


def attach_nets(m, configs: list, stack) -> list[MmioTransport]:
    """Attach a virtio-net device per NIC to Machine `m`, in the slots after the
    devices already attached (drives first). `configs` are NetConfigs: every
    TAP is opened here, all or none, before anything is added to the VM;
    kvmm.virtio.net.NetError (a ValueError) says which NIC cannot be used.
    The device watches its TAP on m.loop, the same I/O thread as its queues."""
    first = len(m.virtio_devices)
    for slot in range(first, first + len(configs)):
        slot_resources(slot)          # fail before opening anything
    import functools

    from kvmm.virtio.net import Net, open_nets
    from kvmm.virtio.net.device import RX_QUEUE
    nics = open_nets(configs)
    for nic in nics:
        stack.callback(nic.close)
    transports = []
    quota = getattr(m, "quota", None)
    for slot, nic in enumerate(nics, start=first):
        rx = tx = None
        if quota is not None:         # limiters net:ID:rx and net:ID:tx (kvmm.quota.guest)
            from kvmm.quota.limits import spec_from_shorthand
            limits = nic.config.limits if nic.config is not None else {}
            rx = quota.nic(nic.id, "rx", spec_from_shorthand(limits, "rx_"))
            tx = quota.nic(nic.id, "tx", spec_from_shorthand(limits, "tx_"))
        net = Net(nic.tap, mac=nic.mac, net_id=nic.id, loop=m.loop, mtu=nic.mtu,
                  rx_limiter=rx, tx_limiter=tx)
        transport = _attach_device(m, net, slot, f"virtio-net:{nic.id}", stack)
        net.set_rx_handler(functools.partial(transport.process, RX_QUEUE))
        transports.append(transport)
    return transports
