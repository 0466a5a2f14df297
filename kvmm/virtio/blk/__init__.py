"""virtio-blk: opened images, request parsing, the device."""
from kvmm.virtio.blk.device import Block
from kvmm.virtio.blk.drive import Drive, open_drive, open_drives
from kvmm.virtio.blk.request import BadRequest, BlockRequest, RequestLimits
from kvmm.virtio.errors import DriveError

__all__ = ["Block", "Drive", "DriveError", "open_drive", "open_drives", "BadRequest",
           "BlockRequest", "RequestLimits", "open_backends", "make_device"]

open_backends = open_drives         # the builder's device-module interface (kvmm.builder)


def make_device(machine, drive: Drive, quota):
    """A virtio-blk device for an opened Drive, with its limiter `drive:ID`."""
    limiter = quota.drive(drive.id, drive.spec.rate_limiter) if quota is not None else None
    return Block(drive, limiter=limiter), None
