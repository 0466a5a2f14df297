"""virtio: the split virtqueue (all its checks), the virtio-mmio transport, devices."""
from kvmm.virtio.device import VirtioDevice, VirtioInterrupt
from kvmm.virtio.errors import DriveError, QueueError, VirtioError
from kvmm.virtio.mmio import MmioTransport, cmdline_word
from kvmm.virtio.queue import DescriptorChain, Queue

__all__ = ["VirtioDevice", "VirtioInterrupt", "QueueError", "VirtioError", "DriveError",
           "MmioTransport", "cmdline_word", "DescriptorChain", "Queue"]
