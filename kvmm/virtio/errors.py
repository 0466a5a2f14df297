"""Errors of the virtio layer.

`QueueError` is what a guest gets for breaking the virtqueue rules: the
transport catches it, marks the device DEVICE_NEEDS_RESET and goes on.
`DriveError` is a start-up problem with a disk image, worded for the user.
"""
from __future__ import annotations


class VirtioError(Exception):
    """Base of every error raised by kvmm.virtio."""


class QueueError(VirtioError):
    """The driver broke a virtqueue rule (virtio 1.2 §2.7); `reason` says which.

    Raised only by kvmm.virtio.queue and by request parsers for a request that
    cannot even be answered. The device is then unusable until the driver
    resets it.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class DriveError(VirtioError, ValueError):
    """A drive option or image that cannot be used; the message is one line
    that names the drive and says what to do."""
